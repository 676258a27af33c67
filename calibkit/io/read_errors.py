"""How a reader's failure becomes one line: the exceptions that mean "this file is
damaged", turned into an InputError that names the format and the reason."""

from __future__ import annotations

import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path

from calibkit.errors import InputError


@cache
def _read_errors_types() -> tuple[type[BaseException], ...]:
    """Exceptions that mean "this file is damaged or not what its name says".

    nibabel is imported by the readers and writers only: the process that hands
    cases to ``evaluate``'s workers never reads a volume and need not import it.
    """
    from nibabel.filebasedimages import ImageFileError
    from nibabel.spatialimages import HeaderDataError
    from nibabel.wrapstruct import WrapStructError

    return (
        OSError,  # includes gzip.BadGzipFile and nibabel's "Expected N bytes" truncation
        EOFError,
        OverflowError,  # nibabel: vox_offset inf
        zlib.error,
        ValueError,
        ImageFileError,
        HeaderDataError,
        WrapStructError,
        RuntimeError,  # SimpleITK
        zipfile.BadZipFile,
    )


@contextmanager
def _read_errors(path: Path, kind: str) -> Iterator[None]:
    """Turn a reader's low-level exception into one InputError line."""
    try:
        yield
    except InputError:
        raise
    except _read_errors_types() as error:
        raise InputError(
            path,
            f"cannot be read as {kind} (truncated or corrupt file: {_short_reason(error, path)}); "
            "re-export or re-download it",
        ) from error


def _short_reason(error: BaseException, path: Path) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if isinstance(error, RuntimeError) and len(lines) > 1:
        # SimpleITK: "Exception thrown in ...: file.cxx:99:\nITK ERROR: Reader(0x..): reason"
        lines = [line.split("): ", 1)[-1].split("ERROR: ", 1)[-1] for line in lines[1:]]
    reason = " ".join(lines).replace(f'"{path}"', "file").replace(str(path), "file")
    return _shorten(reason or type(error).__name__)


def _shorten(reason: str) -> str:
    return reason if len(reason) <= 120 else reason[:117] + "..."
