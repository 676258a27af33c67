"""Where the compiled kernels of :mod:`calibkit._kernels` are cached: once per install.

numba caches a function next to its source (``calibkit/__pycache__``) when that
folder is writable, else in the user's cache (``~/.cache/numba``), and fails at
import when neither is. calibkit keeps numba's rule where it works: the folder
named by ``NUMBA_CACHE_DIR``, else the package's ``__pycache__``. A read-only
install (a root-owned site-packages, a container image run by another user)
caches in ``$XDG_CACHE_HOME/calibkit`` (``~/.cache/calibkit``), else in the
temporary folder, else nowhere (each process compiles; nothing fails). Such a
cache starts as a copy of the kernels compiled into the package's ``__pycache__``
(by ``calibkit prebuild`` at install time), so a read-only install compiles them
once, when it is installed, not once per user or per container.

"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numba

__all__ = ["choose_cache_dir", "enable_caching", "package_cache_dir", "user_cache_dirs"]


def package_cache_dir(source: Path) -> Path:
    """Where numba caches the functions of ``source`` by default: its ``__pycache__``."""
    return source.parent / "__pycache__"


def user_cache_dirs(source: Path, numba_version: str) -> list[Path]:
    """Writable places to try when the package's own cache is not, best first.

    Each is specific to the kernels' source and the numba version, so that an
    upgrade starts from the new package's prebuilt kernels, not the old ones.
    """
    key = hashlib.sha256(source.read_bytes() + numba_version.encode()).hexdigest()[:16]
    name = f"kernels-{key}"
    places = []
    cache_home = os.environ.get("XDG_CACHE_HOME")
    if not cache_home:
        try:
            cache_home = str(Path.home() / ".cache")
        except (RuntimeError, KeyError):  # no HOME and no user database entry
            cache_home = None
    if cache_home:
        places.append(Path(cache_home) / "calibkit" / name)
    user = str(os.getuid()) if hasattr(os, "getuid") else "user"  # one folder per user
    places.append(Path(tempfile.gettempdir()) / f"calibkit-{user}" / name)
    return places


def writable(folder: Path) -> bool:
    """Whether a file can be created in ``folder`` (made if missing), as numba checks it."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=folder).close()
    except OSError:
        return False
    return True


def choose_cache_dir(
    user_choice: str | None, package_cache: Path, fallbacks: Iterable[Path]
) -> Path | None:
    """The folder calibkit points numba at, or None where numba's own rule applies.

    Args:
        user_choice: ``NUMBA_CACHE_DIR`` (numba's own setting), if set.
        package_cache: the package's ``__pycache__``.
        fallbacks: places to try, best first, when the package's cache is read-only.

    Returns:
        None when numba's own rule finds a writable place (``NUMBA_CACHE_DIR`` or
        the package's ``__pycache__``); else the first writable fallback.

    Raises:
        LookupError: no place is writable.
    """
    if user_choice or writable(package_cache):
        return None
    for folder in fallbacks:
        if writable(folder):
            return folder
    raise LookupError("no writable cache folder")


def enable_caching(dispatchers: Iterable[Any], source: Path) -> Path | None:
    """Turn on numba's disk cache of ``dispatchers`` (defined in ``source``) where it works.

    Each dispatcher must have been made with ``cache=False``. A cache elsewhere than
    the package's ``__pycache__`` is seeded from it (:func:`seed`). Returns the
    folder of the cache, or None when nothing is writable (nothing is cached).
    """
    dispatchers = list(dispatchers)
    package_cache = package_cache_dir(source)
    config: Any = numba.config  # its settings are made at run time: mypy sees none
    try:
        folder = choose_cache_dir(
            config.CACHE_DIR, package_cache, user_cache_dirs(source, numba.__version__)
        )
    except LookupError:
        return None  # each process compiles, as it would without a cache
    # numba reads its folder setting when each dispatcher's cache is made, and only
    # then: point it at the fallback for calibkit's kernels, no other package's.
    previous = config.CACHE_DIR
    if folder is not None:
        config.CACHE_DIR = str(folder)
    try:
        for dispatcher in dispatchers:
            dispatcher.enable_caching()
    except RuntimeError:  # numba found no place after all (an unwritable NUMBA_CACHE_DIR)
        return None
    finally:
        config.CACHE_DIR = previous
    if not dispatchers:
        return None
    cache = Path(dispatchers[0].stats.cache_path)
    if cache != package_cache:
        seed(package_cache, cache, source.stem)
    return cache


def seed(prebuilt: Path, cache: Path, module: str) -> int:
    """Copy the kernels prebuilt into the package's cache to a cache without them.

    Only when ``cache`` holds no index of ``module`` yet: never over entries that
    numba wrote there itself. numba checks every entry it loads (source, numba
    version, CPU), so a copy that does not fit is compiled again, not used.
    Returns the number of files copied.
    """
    if any(cache.glob(f"{module}.*.nbi")):
        return 0
    copied = 0
    try:
        files = sorted(prebuilt.glob(f"{module}.*.nb[ic]"))
        cache.mkdir(parents=True, exist_ok=True)
        # Data files first, the indexes that name them last: a process reading the
        # cache meanwhile never finds an index without its data.
        for path in sorted(files, key=lambda path: path.suffix == ".nbi"):
            partial = cache / f"{path.name}.{os.getpid()}.partial"
            shutil.copyfile(path, partial)
            os.replace(partial, cache / path.name)
            copied += 1
    except OSError:
        return copied  # a copy is an optimisation only: numba compiles what is missing
    return copied
