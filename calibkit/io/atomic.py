"""Atomic file writes: a temporary file in the target folder, then ``os.replace``.

A crash or an exception while writing never leaves a half-written file under the
final name, and never leaves the temporary file behind.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from calibkit.errors import OutputError

__all__ = ["atomic_path", "atomic_write_bytes", "atomic_write_text"]


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
    temporary file is removed and the exception propagates; ``path`` is untouched.

    Args:
        path: final destination. Its folder must exist.

    Yields:
        The temporary path to write to (the file exists and is empty).

    Raises:
        OutputError: the destination folder does not exist or cannot be written.
    """
    path = Path(path)
    folder = path.parent
    tmp = _create_temporary(path)
    try:
        yield tmp
        _fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(folder)


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
        except OSError as error:
            raise OutputError(
                f"{path}: cannot create a file in {path.parent} ({error.strerror or error}); "
                "check that the folder exists and is writable"
            ) from error
        os.close(fd)
        return tmp
    raise OutputError(f"{path}: cannot find a free temporary file name in {path.parent}")


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
        OutputError: the destination folder cannot be written.
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
        OutputError: the destination folder cannot be written.
    """
    atomic_write_bytes(path, text.encode(encoding))
