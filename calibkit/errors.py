"""Errors that calibkit reports to a user as one clear line."""

from __future__ import annotations

from pathlib import Path


class CalibkitError(Exception):
    """Base class of every error calibkit raises on bad input or usage.

    The command line prints ``str(error)`` as one line on stderr and exits 1.
    """


class InputError(CalibkitError):
    """A file or folder given by the user cannot be used.

    Args:
        path: the offending file or folder (named first in the message).
        problem: what is wrong and, where possible, how to fix it.
    """

    def __init__(self, path: Path | str, problem: str) -> None:
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}")

    def __reduce__(self) -> tuple[type[InputError], tuple[Path, str]]:
        # Errors cross process boundaries (--workers): rebuild from both fields.
        return (InputError, (self.path, self.problem))


class PairingError(CalibkitError):
    """Prediction and label folders do not pair up case by case."""


class ClusterError(CalibkitError):
    """The cluster running the cases failed them (``--scheduler``): not the input's fault.

    Finished cases are kept for ``--resume``, as after a failed write.
    """


class OutputError(CalibkitError):
    """The output location cannot be written safely."""


class WriteError(OutputError):
    """Writing a file failed: the disk is full, read-only, or refuses the file.

    Args:
        path: the file (its final name, never a temporary one) or folder.
        problem: what went wrong and what to do about it.
        errno: the operating system's error number, when there is one.
    """

    def __init__(self, path: Path | str, problem: str, errno: int | None = None) -> None:
        self.path = Path(path)
        self.problem = problem
        self.errno = errno
        super().__init__(f"{path}: {problem}")

    def __reduce__(self) -> tuple[type[WriteError], tuple[Path, str, int | None]]:
        return (WriteError, (self.path, self.problem, self.errno))

    def noted(self, note: str, path: Path | str | None = None) -> WriteError:
        """The same error with ``note`` appended (and the file renamed to ``path``)."""
        where = self.path if path is None else path
        return WriteError(where, f"{self.problem}; {note}", self.errno)
