"""Executors run per-case tasks anywhere; run_cases keeps order, resume and stops in one place."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import SAMPLE_DATA

from calibkit.calibrate import fit_temperature_folder
from calibkit.errors import CalibkitError
from calibkit.execution import PoolExecutor, SerialExecutor, executor_for, run_cases
from calibkit.records import EvaluationOptions


class MemoryStore:
    def __init__(self, done: dict[str, int]) -> None:
        self.done = dict(done)
        self.saved: list[int] = []

    def load_done(self) -> dict[str, int]:
        return dict(self.done)

    def save(self, result: int) -> None:
        self.saved.append(result)


def test_results_come_back_in_item_order_whatever_finishes_first() -> None:
    """The first case waits, in its worker, until the last one has been reported."""
    last_reported = threading.Event()
    held: list[bool] = []

    def task(item: int) -> int:
        if item == 0:
            held.append(last_reported.wait(timeout=30))
        return item * 10

    def progress(case_id: str) -> None:
        reported.append(case_id)
        if case_id == "c3":
            last_reported.set()

    reported: list[str] = []
    items = {f"c{i}": i for i in range(4)}
    results = run_cases(
        task, items, executor=PoolExecutor(4, pool=ThreadPoolExecutor), progress=progress
    )
    assert results == [0, 10, 20, 30] and held == [True]
    assert reported[-1] == "c0" and sorted(reported) == sorted(items)


def test_finished_cases_come_from_the_store_and_are_not_run_again() -> None:
    ran: list[int] = []

    def task(item: int) -> int:
        ran.append(item)
        return item * 10

    store = MemoryStore({"c1": 10, "elsewhere": 99})
    reported: list[str] = []
    results = run_cases(task, {"c0": 0, "c1": 1, "c2": 2}, store=store, progress=reported.append)
    assert results == [0, 10, 20]
    assert ran == [0, 2] and store.saved == [0, 20]
    assert reported == ["c1", "c0", "c2"]  # the stored case first, then as each ends


def test_a_failing_case_stops_the_cases_not_yet_started() -> None:
    """The other workers hold their cases until the pool shuts down, after the cancel."""
    started: list[int] = []
    lock = threading.Lock()
    released = threading.Event()

    class ReleasingPool(ThreadPoolExecutor):
        def shutdown(self, wait: bool = True, **options: bool) -> None:
            released.set()
            super().shutdown(wait, **options)

    def task(item: int) -> int:
        with lock:
            started.append(item)
        if item == 0:
            raise CalibkitError("case 0 is bad")
        released.wait(timeout=30)
        return item

    items = {f"c{i}": i for i in range(40)}
    with pytest.raises(CalibkitError, match="case 0 is bad"):
        run_cases(task, items, executor=PoolExecutor(2, pool=ReleasingPool))
    # case 0, the case beside it, and at most one that case 0's worker took next
    assert len(started) <= 3


def test_executor_for_picks_this_process_for_one_worker() -> None:
    assert isinstance(executor_for(1), SerialExecutor)
    assert isinstance(executor_for(3), PoolExecutor)
    with pytest.raises(CalibkitError, match="at least 1"):
        executor_for(0)


def test_fit_temperature_gives_the_same_temperature_on_any_executor(tmp_path: Path) -> None:
    """The per-case samples are seeded by case id, so where they are drawn does not matter."""
    options = EvaluationOptions(preset="brats")
    args = (SAMPLE_DATA / "predictions" / "dsc", SAMPLE_DATA / "brats")
    serial = fit_temperature_folder(*args, options=options, max_voxels=200_000)
    threads = PoolExecutor(2, pool=ThreadPoolExecutor)
    pooled = fit_temperature_folder(*args, options=options, max_voxels=200_000, executor=threads)
    assert pooled.record() == serial.record()
