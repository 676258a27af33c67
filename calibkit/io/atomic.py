"""Atomic file writes: a temporary file in the target folder, then ``os.replace``.

A crash or an exception while writing never leaves a half-written file under the
final name, and never leaves the temporary file behind. :func:`staged_folder`
extends this to a set of files (a result folder): the new set is written beside
the old one and moved in only once it is complete.

Every failure to write is a :class:`~calibkit.errors.WriteError` that names the
final file and says in plain words what happened (``no space left on device``,
``file too large``, ``read-only file system``, ...) and what to do.
"""

from __future__ import annotations

import errno
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from calibkit.errors import WriteError

__all__ = [
    "STAGING_PREFIX",
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_text",
    "os_error_reason",
    "remove_stale_staging",
    "staged_folder",
    "unwritable_reason",
    "write_error",
]

STAGING_PREFIX = ".calibkit-staging."

# What a user should do about the usual reasons a write fails.
_REASONS: dict[int, tuple[str, str]] = {
    errno.ENOSPC: ("no space left on device", "free some space and run again"),
    errno.EDQUOT: ("disk quota exceeded", "free some space and run again"),
    errno.EFBIG: (
        "file too large",
        "the file system or the file-size limit (ulimit -f) allows no larger file; "
        "raise the limit or write elsewhere",
    ),
    errno.EROFS: ("read-only file system", "choose a writable folder"),
    errno.EACCES: ("permission denied", "check the folder's permissions or choose another"),
    errno.EPERM: ("operation not permitted", "check the folder's permissions or choose another"),
    errno.EIO: ("input/output error", "check the disk"),
}


def os_error_reason(error: OSError) -> str:
    """The reason of an ``OSError`` in lower case: ``no space left on device``."""
    if error.errno in _REASONS:
        return _REASONS[error.errno][0]
    text = error.strerror or str(error) or type(error).__name__
    return text[:1].lower() + text[1:]


def write_error(path: Path | str, error: OSError) -> WriteError:
    """A one-line :class:`WriteError` for ``error``, raised while writing ``path``."""
    reason = os_error_reason(error)
    problem = f"cannot write ({reason})"
    if error.errno in _REASONS:
        problem += f"; {_REASONS[error.errno][1]}"
    return WriteError(path, problem, error.errno)


def unwritable_reason(folder: Path | str) -> str | None:
    """Why no file can be created in ``folder``, or None when one can.

    A folder that does not exist yet is judged by its nearest existing parent (where
    it would be created). ``os.access`` alone says "no" on a read-only mount
    without saying why.
    """
    folder = Path(folder).absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        read_only = bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except OSError:
        read_only = False
    if read_only:
        return "read-only file system"
    if not os.access(folder, os.W_OK | os.X_OK):
        return "permission denied"
    return None


def _full_suffix(path: Path) -> str:
    """Return ``.nii.gz`` / ``.tar.gz`` style double suffixes whole, else the last suffix."""
    suffixes = path.suffixes
    if len(suffixes) >= 2 and suffixes[-1].lower() in (".gz", ".bz2", ".zst", ".xz"):
        return "".join(suffixes[-2:])
    return path.suffix


@contextmanager
def atomic_path(path: Path | str) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; move it onto ``path`` on success.

    The temporary name starts with ``.`` (hidden, so folder scans skip it) and ends
    with the same suffix as ``path`` (so writers that pick a format by suffix, such
    as nibabel choosing gzip for ``.nii.gz``, behave the same). On any exception the
    temporary file is removed and the exception propagates (an ``OSError`` as a
    :class:`WriteError`); ``path`` is untouched.

    Args:
        path: final destination. Its folder must exist.

    Yields:
        The temporary path to write to (the file exists and is empty).

    Raises:
        WriteError: the folder does not exist, or the file cannot be written there
            (disk full, file too large, read-only file system, permissions).
    """
    path = Path(path)
    folder = path.parent
    tmp = _create_temporary(path)
    try:
        try:
            yield tmp
            _fsync_file(tmp)
            os.replace(tmp, path)
        except OSError as error:
            raise write_error(path, error) from error
    except BaseException:
        _discard(tmp)
        raise
    _fsync_dir(folder)


def _discard(tmp: Path) -> None:
    """Remove a temporary file, emptying it first.

    A writer that left it open (a library's bug) would otherwise keep its disk
    space in use until that handle is collected.
    """
    try:
        os.truncate(tmp, 0)
    except OSError:
        pass
    tmp.unlink(missing_ok=True)


def _create_temporary(path: Path) -> Path:
    """Create an empty hidden file next to ``path``.

    ``os.open`` with mode 0o666 lets the umask decide the permissions, as for any
    new file (``tempfile.mkstemp`` would leave the result readable by its owner only).
    """
    stem = path.name[: -len(_full_suffix(path))] if _full_suffix(path) else path.name
    for _ in range(100):
        tmp = path.with_name(f".{stem}.{secrets.token_hex(4)}.tmp{_full_suffix(path)}")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        except (FileNotFoundError, NotADirectoryError) as error:
            raise WriteError(
                path,
                f"cannot create a file in {path.parent} ({os_error_reason(error)}); "
                "check that the folder exists and is writable",
                error.errno,
            ) from error
        except OSError as error:
            raise write_error(path, error) from error
        os.close(fd)
        return tmp
    raise WriteError(path, f"cannot find a free temporary file name in {path.parent}")


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())


def _fsync_dir(folder: Path) -> None:
    """Persist the rename; not possible on every platform, so best effort."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path | str, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temporary file, fsync, rename).

    Args:
        path: destination file; its folder must exist.
        data: the complete file content.

    Raises:
        WriteError: the file cannot be written (``path`` keeps its old content).
    """
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            handle.write(data)


def atomic_write_text(path: Path | str, text: str, encoding: str = "utf-8") -> None:
    """Write ``text`` to ``path`` atomically (temporary file, fsync, rename).

    Args:
        path: destination file; its folder must exist.
        text: the complete file content.
        encoding: text encoding (UTF-8 by default).

    Raises:
        WriteError: the file cannot be written (``path`` keeps its old content).
    """
    atomic_write_bytes(path, text.encode(encoding))


# --------------------------------------------------------------------------- file sets


@contextmanager
def staged_folder(folder: Path | str) -> Iterator[Path]:
    """A hidden folder inside ``folder`` for a set of files that must appear together.

    Write each file of the set into the yielded folder under its final relative
    name (``figures/x.png`` for ``folder/figures/x.png``). When the block ends
    without an exception, the files move onto their final names (``os.replace``, a
    rename within one file system, which needs no free space), so the files of an
    earlier result are replaced only once the whole new set is on disk. On an
    exception ``folder`` is left as it was. The staging folder is removed either way.

    Args:
        folder: the existing folder the files belong in.

    Yields:
        The staging folder (empty).

    Raises:
        WriteError: the staging folder cannot be created, a file in it cannot be
            written (named by its final path), or the files cannot be moved in.
    """
    folder = Path(folder)
    try:
        staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, suffix=".tmp", dir=folder))
    except OSError as error:
        raise write_error(folder, error) from error
    try:
        try:
            yield staging
        except WriteError as error:
            raise _in_final_place(error, staging, folder) from error
        _move_in(staging, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _in_final_place(error: WriteError, staging: Path, folder: Path) -> WriteError:
    """``error`` naming the final path of a staged file (not its place in ``staging``).

    It also says that ``folder`` was left as it was.
    """
    try:
        path = folder / error.path.relative_to(staging)
    except ValueError:
        path = error.path
    return error.noted(f"nothing in {folder} was replaced", path)


def _move_in(staging: Path, folder: Path) -> None:
    files = sorted(path for path in staging.rglob("*") if path.is_file())
    targets = [folder / path.relative_to(staging) for path in files]
    for parent in sorted({target.parent for target in targets}):
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise write_error(parent, error) from error
    for moved, (source, target) in enumerate(zip(files, targets, strict=True)):
        try:
            os.replace(source, target)
        except OSError as error:
            raise write_error(target, error).noted(
                f"{moved} of {len(files)} file(s) of the new result were moved in before it"
            ) from error
    for parent in sorted({target.parent for target in targets}):
        _fsync_dir(parent)


def remove_stale_staging(folder: Path | str) -> None:
    """Remove staging folders that a killed process left in ``folder``.

    Call it only while no other process may be writing ``folder`` (under its lock).
    """
    for path in Path(folder).glob(f"{STAGING_PREFIX}*.tmp"):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
