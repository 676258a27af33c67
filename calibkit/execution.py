"""Where per-case work runs: in this process, or in a pool of worker processes.

The workflows (``evaluate``, ``fit-temperature``, ``apply-temperature``, ``predict``)
hand :func:`run_cases` one task and the cases to run it on; an :class:`Executor`
decides where each call runs, so the numeric code never knows. :func:`run_cases`
keeps the rest in one place whatever the executor: cases an interrupted run already
finished come from the store (``--resume``), each finished case is stored and
reported as it ends, results come back in case order, and a failure (a bad case, a
failed save, Ctrl-C) stops the cases not yet started.

A new backend implements :class:`Executor`: one method that runs a task on every
item and reports each result in the calling process as it finishes.
:class:`calibkit.cluster.DaskExecutor` is one (``--scheduler``, a Dask cluster).
"""

from __future__ import annotations

import atexit
import os
import sys
from collections.abc import Callable, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures import Executor as FuturesExecutor
from multiprocessing import get_context
from typing import Protocol, TypeVar

from calibkit.binning import numba_available
from calibkit.errors import CalibkitError

__all__ = [
    "CaseStoreLike",
    "Executor",
    "PoolExecutor",
    "SerialExecutor",
    "executor_for",
    "run_cases",
]

ItemT = TypeVar("ItemT")
ResultT = TypeVar("ResultT")


class Executor(Protocol):
    """Runs one task on many items somewhere, reporting results here as they finish."""

    def run(
        self,
        task: Callable[[ItemT], ResultT],
        items: Mapping[str, ItemT],
        on_result: Callable[[str, ResultT], None],
    ) -> None:
        """Call ``task(item)`` for every item; ``on_result(key, result)`` as each ends.

        ``on_result`` runs in the calling process. Any exception (from a task, from
        ``on_result`` or a Ctrl-C) stops the items not yet started and propagates.
        """


class SerialExecutor:
    """Every case in this process, one after the other."""

    def run(
        self,
        task: Callable[[ItemT], ResultT],
        items: Mapping[str, ItemT],
        on_result: Callable[[str, ResultT], None],
    ) -> None:
        for key, item in items.items():
            on_result(key, task(item))


class PoolExecutor:
    """Cases in a pool of worker processes on this machine (``--workers N``).

    Workers are spawned, not forked: torch (CUDA) and BLAS thread pools do not
    survive a fork. Each worker runs one numba thread (the parallelism comes from the
    processes) and leaves without tearing its interpreter down.

    Args:
        workers: pool size (at most one worker per item is started).
        while_waiting: called in this process once the tasks are submitted, while
            the workers start and read their first cases (say, to import what the
            results need at the end).
        pool: makes the pool from the worker count (tests use threads); default: a
            process pool as above.
    """

    def __init__(
        self,
        workers: int,
        *,
        while_waiting: Callable[[], object] | None = None,
        pool: Callable[[int], FuturesExecutor] | None = None,
    ) -> None:
        if workers < 1:
            raise CalibkitError(f"--workers must be at least 1, got {workers}")
        self.workers = workers
        self.while_waiting = while_waiting
        self.pool = pool or _process_pool

    def run(
        self,
        task: Callable[[ItemT], ResultT],
        items: Mapping[str, ItemT],
        on_result: Callable[[str, ResultT], None],
    ) -> None:
        if len(items) <= 1:  # starting a pool for one case costs more than it saves
            SerialExecutor().run(task, items, on_result)
            return
        with self.pool(min(self.workers, len(items))) as pool:
            futures: dict[Future[ResultT], str] = {
                pool.submit(task, item): key for key, item in items.items()
            }
            pending = set(futures)
            try:
                if self.while_waiting is not None:
                    self.while_waiting()
                while pending:
                    done, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for future in done:
                        on_result(futures[future], future.result())  # a task's error raises here
            except BaseException:
                # A bad case, a failed save or Ctrl-C: cases not yet started never start.
                for other in pending:
                    other.cancel()
                raise


def executor_for(workers: int, *, while_waiting: Callable[[], object] | None = None) -> Executor:
    """The executor for ``--workers N``: this process for 1, a process pool above.

    Raises:
        CalibkitError: ``workers`` is below 1 (from :class:`PoolExecutor`).
    """
    if workers == 1:
        return SerialExecutor()
    return PoolExecutor(workers, while_waiting=while_waiting)


class CaseStoreLike(Protocol[ResultT]):
    """Keeps finished cases on disk (:class:`calibkit.io.checkpoint.CaseStore`)."""

    def load_done(self) -> dict[str, ResultT]: ...

    def save(self, result: ResultT) -> None: ...


def run_cases(
    task: Callable[[ItemT], ResultT],
    items: Mapping[str, ItemT],
    *,
    executor: Executor | None = None,
    store: CaseStoreLike[ResultT] | None = None,
    progress: Callable[[str], None] | None = None,
) -> list[ResultT]:
    """Run ``task`` on every case not already finished; results in the items' order.

    Args:
        task: computes one case's result from its item (picklable for a process pool).
        items: the cases, by case id, in the order the results are wanted.
        executor: where the tasks run; default: in this process.
        store: supplies cases an earlier, interrupted run finished and keeps each
            new result as it finishes (``--resume``).
        progress: called with each case id as it finishes (finished earlier ones
            first).

    Returns:
        One result per item, in the items' order.
    """
    done: dict[str, ResultT] = {}
    if store is not None:
        done = {key: result for key, result in store.load_done().items() if key in items}
    for key in done:
        if progress is not None:
            progress(key)

    def finished(key: str, result: ResultT) -> None:
        if store is not None:
            store.save(result)
        done[key] = result
        if progress is not None:
            progress(key)

    todo = {key: item for key, item in items.items() if key not in done}
    if todo:
        (executor or SerialExecutor()).run(task, todo, finished)
    return [done[key] for key in items]


def _process_pool(workers: int) -> FuturesExecutor:
    return ProcessPoolExecutor(
        max_workers=workers, mp_context=get_context("spawn"), initializer=_prepare_worker
    )


def _prepare_worker() -> None:
    """Initializer of each worker process: one numba thread, a quick start and exit."""
    if numba_available():
        # Deferred: numba takes about 0.5 s to import, and only workers need it here.
        import numba

        from calibkit import _kernels  # chooses numba's threading layer first

        # Parallelism comes from the worker processes; threads inside each would
        # oversubscribe the cores.
        numba.set_num_threads(1)
        _kernels.start_without_blas_probe()  # a worker runs only calibkit's kernels
    # A worker's results have all been sent when the pool shuts it down; tearing down
    # its interpreter (numba and LLVM above all) then only delays the end of the run
    # by about half a second. The handler registered last runs first at exit, so
    # handlers registered earlier (logging, coverage) do not run in workers.
    atexit.register(_leave_at_once)


def _leave_at_once() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
