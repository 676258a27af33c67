"""Per-case results kept on disk while ``calibkit evaluate`` runs: resume and locking.

Every finished case is written atomically to ``OUT/.calibkit-partial/CASE.npz``.
A killed run (even ``kill -9``) keeps them, and ``--resume`` computes only the
cases that are missing; the final tables equal an uninterrupted run's because
they are assembled from the same per-case results, sorted by case id.
``OUT/.calibkit.lock`` keeps a second process from writing the same folder.

When the disk fills up (or the folder turns read-only) the run stops with a
:class:`~calibkit.errors.WriteError` that says so; the cases finished until then
stay, so the same command with ``--resume`` continues once there is space.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from calibkit.binning import BinStats
from calibkit.errors import OutputError, WriteError
from calibkit.io.atomic import (
    atomic_write_bytes,
    atomic_write_text,
    remove_stale_staging,
    write_error,
)
from calibkit.metrics import OverlapCounts
from calibkit.records import CaseResult

PARTIAL_DIR = ".calibkit-partial"
LOCK_FILE = ".calibkit.lock"
RUN_FILE = "run.json"


class CaseStore:
    """Finished cases of one evaluation, kept in ``out/.calibkit-partial``.

    Use as a context manager: entering takes the lock (and checks what an earlier
    run left), leaving releases it. :meth:`discard` removes the partial results
    (after a user error), :meth:`finish` removes them once the tables are written.

    Args:
        out: the result folder.
        fingerprint: the options and inputs that determine the numbers; a resumed
            run must have the same.
        resume: continue an unfinished run in ``out``.
        overwrite: throw away an unfinished run in ``out``.
    """

    def __init__(
        self, out: Path, fingerprint: dict[str, Any], *, resume: bool, overwrite: bool
    ) -> None:
        self.out = Path(out)
        self.partial = self.out / PARTIAL_DIR
        self.lock_path = self.out / LOCK_FILE
        self.fingerprint = json.loads(json.dumps(fingerprint, default=str))
        self.resume = resume
        self.overwrite = overwrite
        self._created_out = False
        self._locked = False

    def __enter__(self) -> CaseStore:
        if not self.out.exists():
            try:
                self.out.mkdir(parents=True)
            except OSError as error:
                raise write_error(self.out, error) from None
            self._created_out = True
        self._take_lock()
        try:
            remove_stale_staging(self.out)  # of a killed run; the lock keeps others out
            self._check_earlier_run()
        except BaseException:
            self._release()
            raise
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._release()

    def _take_lock(self) -> None:
        owner = f"{socket.gethostname()} {os.getpid()}"
        for _ in range(2):
            try:
                descriptor = os.open(self.lock_path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._lock_holder()
                if holder is not None:
                    raise OutputError(
                        f"{self.out}: another calibkit process ({holder}) is writing here; "
                        f"wait for it, or remove {self.lock_path} if that process is gone"
                    ) from None
                self.lock_path.unlink(missing_ok=True)  # stale: its process is gone
                continue
            except OSError as error:  # a read-only folder, say
                self._release()
                raise write_error(self.lock_path, error) from None
            try:
                with os.fdopen(descriptor, "w") as handle:
                    handle.write(owner + "\n")
            except OSError as error:  # a full disk: the lock file stays empty
                self.lock_path.unlink(missing_ok=True)
                self._release()
                raise write_error(self.lock_path, error) from None
            self._locked = True
            return
        raise OutputError(f"{self.out}: cannot take the lock {self.lock_path}")

    def _lock_holder(self) -> str | None:
        """``"host pid"`` of a live holder, or None when the lock is stale."""
        try:
            host, pid_text = self.lock_path.read_text().split()
            pid = int(pid_text)
        except (OSError, ValueError):
            return None
        if host != socket.gethostname():
            return f"{host} pid {pid}"  # cannot check another machine: assume alive
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return f"pid {pid}"

    def _release(self) -> None:
        if self._locked:
            self.lock_path.unlink(missing_ok=True)
            self._locked = False
        if self._created_out and self.out.is_dir() and not any(self.out.iterdir()):
            self.out.rmdir()

    def _check_earlier_run(self) -> None:
        if not self.partial.exists():
            if self.resume:
                raise OutputError(
                    f"{self.out}: no unfinished run to resume here; run without --resume"
                )
            self._start_partial()
            return
        if self.overwrite and not self.resume:
            shutil.rmtree(self.partial)
            self._start_partial()
            return
        if not self.resume:
            raise OutputError(
                f"{self.out}: holds an unfinished run ({len(self.done_ids())} case(s) done); "
                "use --resume to continue it or --overwrite to start again"
            )
        try:
            earlier = json.loads((self.partial / RUN_FILE).read_text())
        except (OSError, ValueError):
            earlier = None
        if earlier != self.fingerprint:
            raise OutputError(
                f"{self.out}: the unfinished run here used other inputs or options; "
                "resume with the same command, or use --overwrite to start again"
            )

    def _start_partial(self) -> None:
        """Create the store and its ``run.json``, or nothing at all (a full disk)."""
        try:
            self.partial.mkdir()
            atomic_write_text(self.partial / RUN_FILE, json.dumps(self.fingerprint, indent=2))
        except OSError as error:
            shutil.rmtree(self.partial, ignore_errors=True)
            raise write_error(self.partial, error) from None
        except BaseException:
            shutil.rmtree(self.partial, ignore_errors=True)
            raise

    def resume_note(self) -> str:
        """What a user can do after a failed write: the finished cases are kept."""
        done = len(self.done_ids())
        kept = f"the {done} finished case(s) are kept" if done else "the unfinished run is kept"
        return f"{kept} in {self.partial}: add --resume to the same command to continue"

    def done_ids(self) -> list[str]:
        """Case ids with a stored result."""
        # Not the hidden temporary file of a save that a kill (or Ctrl-C) cut short.
        return sorted(
            path.name[: -len(".npz")]
            for path in self.partial.glob("*.npz")
            if not path.name.startswith(".")
        )

    def load_done(self) -> dict[str, CaseResult]:
        """Stored results by case id (unreadable ones are dropped and recomputed)."""
        results = {}
        for case_id in self.done_ids():
            result = _read_case(self.partial / f"{case_id}.npz", case_id)
            if result is not None:
                results[case_id] = result
        return results

    def save(self, result: CaseResult) -> None:
        """Store one finished case atomically.

        Raises:
            WriteError: the case cannot be stored (disk full, ...); the message says
                that the cases stored before it are kept for ``--resume``.
        """
        buffer = io.BytesIO()
        np.savez(
            buffer,
            count=result.stats.count,
            sum_p=result.stats.sum_p,
            sum_y=result.stats.sum_y,
            intersection=result.overlap.intersection,
            predicted=result.overlap.predicted,
            truth=result.overlap.truth,
            n_voxels=np.int64(result.n_voxels),
            class_names=np.asarray(result.class_names, dtype=str),
            warnings=np.asarray(result.warnings, dtype=str),
            source=np.asarray(str(result.source)),
        )
        try:
            atomic_write_bytes(self.partial / f"{result.case_id}.npz", buffer.getvalue())
        except WriteError as error:
            raise error.noted(self.resume_note()) from None

    def discard(self) -> None:
        """Remove the partial results (the run failed on bad input)."""
        shutil.rmtree(self.partial, ignore_errors=True)

    def finish(self) -> None:
        """Remove the partial results once the final tables are written."""
        shutil.rmtree(self.partial, ignore_errors=True)


def _read_case(path: Path, case_id: str) -> CaseResult | None:
    try:
        with np.load(path, allow_pickle=False) as data:
            return CaseResult(
                case_id=case_id,
                source=Path(str(data["source"])),
                class_names=tuple(str(name) for name in data["class_names"]),
                stats=BinStats(data["count"], data["sum_p"], data["sum_y"]),
                overlap=OverlapCounts(data["intersection"], data["predicted"], data["truth"]),
                n_voxels=int(data["n_voxels"]),
                warnings=tuple(str(note) for note in data["warnings"]),
            )
    except (OSError, ValueError, KeyError, EOFError):  # EOFError: an empty file
        return None
