"""Fuzz the readers: thousands of mutated NIfTI / .npz / .mha / .png files through the CLI.

Run: ``python benchmarks/fuzz_readers.py [--count 600] [--fit-count 150] [--jobs 2]``;
``--count 1600 --fit-count 400`` (8000 trials) took about 6 minutes on 2 shared cores.

Each trial writes a valid two-case data set in one format, spoils one file with one
seeded mutation (``tests/fuzz_inputs.py``: byte flips in header and data,
truncation, extreme header fields, cut or corrupted gzip streams, renamed members,
wrong dtypes, headers that claim huge arrays) and runs ``calibkit evaluate`` (or
``fit-temperature``) on it in a worker process through the in-process CLI runner.
A trial passes when the command exits 1 with one ``error:`` line naming a case file
and leaves no output, or succeeds with the numbers of an independent decoding of
the data. Workers run under an address-space limit (a memory bomb shows up as a
MemoryError) and each run under a wall-clock limit (a worker that exceeds it is
killed and the trial counted as a hang). A few trials are also run as real
``python -m calibkit`` subprocesses, to check the one-line stderr of the real CLI.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import select
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

MEMORY_LIMIT = 4 << 30  # address space of a worker; the data sets are a few kB


def worker() -> None:
    """Run trials read as JSON lines on stdin; answer one JSON line each."""
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
    from fuzz_inputs import check_trial, make_trial, run_in_process

    timings: list[tuple[float, float]] = []  # (wall, CPU) seconds of each run of a trial

    def timed(args: list[str]) -> tuple[int, str, str, BaseException | None]:
        wall, cpu = time.perf_counter(), time.process_time()
        result = run_in_process(args)
        timings.append((time.perf_counter() - wall, time.process_time() - cpu))
        return result

    for line in sys.stdin:
        task = json.loads(line)
        timings.clear()

        with tempfile.TemporaryDirectory() as root:
            try:
                trial = make_trial(Path(root), task["fmt"], task["seed"], task["command"])
                outcome, problems = check_trial(trial, timed)
                mutation, target = trial.mutation, trial.target.name
            except Exception as error:  # the harness itself failed: report, go on
                outcome, problems, mutation, target = "harness", [repr(error)], "?", "?"
        wall, cpu = timings[0] if timings else (0.0, 0.0)
        reply = {
            **task,
            "outcome": outcome,
            "problems": problems,
            "mutation": mutation[:200],
            "target": target,
            "wall": wall,
            "cpu": cpu,
            "maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        }
        print(json.dumps(reply), flush=True)


class Worker:
    """A worker process fed one task at a time, killed when a task overruns."""

    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, __file__, "--worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        self.task: dict[str, Any] | None = None
        self.started = 0.0

    def send(self, task: dict[str, Any]) -> None:
        assert self.process.stdin is not None
        self.task, self.started = task, time.perf_counter()
        self.process.stdin.write(json.dumps(task) + "\n")
        self.process.stdin.flush()

    def kill(self) -> None:
        self.process.kill()
        self.process.wait()


def run_all(tasks: list[dict[str, Any]], jobs: int, limit: float) -> list[dict[str, Any]]:
    """Run ``tasks`` on ``jobs`` workers; a task over ``limit`` seconds is a hang."""
    pending = list(reversed(tasks))
    results: list[dict[str, Any]] = []
    workers = [Worker() for _ in range(jobs)]
    # The first task of a worker also imports calibkit and compiles its kernels.
    warm = {id(w): False for w in workers}
    for w in workers:
        for command in ("evaluate", "fit-temperature"):
            w.send({"fmt": "nii.gz", "seed": 999_999, "command": command})
            assert w.process.stdout is not None
            w.process.stdout.readline()
        warm[id(w)] = True
        if pending:
            w.send(pending.pop())
    while any(w.task is not None for w in workers):
        busy = {w.process.stdout: w for w in workers if w.task is not None}
        ready, _, _ = select.select(list(busy), [], [], 0.5)
        for stream in ready:
            w = busy[stream]
            line = stream.readline()  # type: ignore[union-attr]
            task = w.task
            assert task is not None
            if line:
                results.append(json.loads(line))
            else:  # the worker died (e.g. killed for memory)
                results.append(
                    {
                        **task,
                        "outcome": "crash",
                        "problems": ["worker died"],
                        "mutation": "?",
                        "target": "?",
                        "wall": 0.0,
                        "cpu": 0.0,
                    }
                )
                workers[workers.index(w)] = w = Worker()
            w.task = None
            if pending:
                w.send(pending.pop())
        now = time.perf_counter()
        for i, w in enumerate(workers):
            # the limit covers the oracle's decoding and its clean run as well
            if w.task is not None and now - w.started > 3 * limit:
                results.append(
                    {
                        **w.task,
                        "outcome": "hang",
                        "problems": ["hang"],
                        "mutation": "?",
                        "target": "?",
                        "wall": now - w.started,
                        "cpu": 0.0,
                    }
                )
                w.kill()
                workers[i] = Worker()
                if pending:
                    workers[i].send(pending.pop())
        if len(results) % 200 == 0 and ready:
            print(f"  {len(results)}/{len(tasks)} trials", file=sys.stderr, flush=True)
    for w in workers:
        assert w.process.stdin is not None
        w.process.stdin.close()
        w.process.wait()
    return results


def subprocess_checks(count: int, limit: float) -> list[dict[str, Any]]:
    """Mutated data sets through a real ``python -m calibkit evaluate`` process."""
    from fuzz_inputs import FORMATS, cli_args, make_trial

    checks = []
    for i in range(count):
        fmt = FORMATS[i % len(FORMATS)]
        with tempfile.TemporaryDirectory() as root:
            trial = make_trial(Path(root), fmt, 10_000 + i, "evaluate")
            out = Path(root) / "out"
            started = time.perf_counter()
            try:
                completed = subprocess.run(
                    [sys.executable, "-m", "calibkit", *cli_args(trial, out)],
                    capture_output=True,
                    text=True,
                    timeout=limit,
                    env={**os.environ, "PYTHONPATH": str(REPO)},
                )
            except subprocess.TimeoutExpired:
                checks.append({"fmt": fmt, "ok": False, "why": "timeout", "wall": limit})
                continue
            wall = time.perf_counter() - started
            lines = [line for line in completed.stderr.splitlines() if line.strip()]
            ok = (completed.returncode == 0 and out.exists()) or (
                completed.returncode == 1
                and len(lines) == 1
                and lines[0].startswith("error:")
                and not out.exists()
            )
            why = "" if ok else f"rc {completed.returncode}: {completed.stderr[-300:]!r}"
            checks.append(
                {
                    "fmt": fmt,
                    "ok": ok,
                    "why": why,
                    "wall": wall,
                    "refused": completed.returncode == 1,
                    "mutation": trial.mutation,
                }
            )
    return checks


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=600, help="evaluate trials per format")
    parser.add_argument(
        "--fit-count", type=int, default=150, help="fit-temperature trials per format"
    )
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--limit", type=float, default=10.0, help="seconds allowed per run")
    parser.add_argument("--subprocess", type=int, default=12, help="real CLI processes")
    parser.add_argument("--formats", nargs="+", help="only these formats (default: all)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker()
        return ""
    from fuzz_inputs import FORMATS

    tasks = [
        {"fmt": fmt, "seed": seed, "command": command}
        for command, count in (("evaluate", args.count), ("fit-temperature", args.fit_count))
        for fmt in args.formats or FORMATS
        for seed in range(count)
    ]
    started = time.perf_counter()
    results = run_all(tasks, args.jobs, args.limit)
    in_process = time.perf_counter() - started
    checks = subprocess_checks(args.subprocess, max(args.limit, 30.0))
    total = time.perf_counter() - started

    rows = defaultdict(Counter)
    slowest: dict[tuple[str, str], float] = defaultdict(float)
    for r in results:
        key = (r["fmt"], r["command"])
        rows[key]["tried"] += 1
        rows[key][r["outcome"]] += 1
        rows[key]["problems"] += bool(r["problems"])
        rows[key]["over limit"] += r["wall"] > args.limit
        slowest[key] = max(slowest[key], r["wall"])
    lines = [
        "| format | command | tried | accepted | refused | problems | hangs | slowest run (s) |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for key in sorted(rows):
        c = rows[key]
        lines.append(
            f"| {key[0]} | {key[1]} | {c['tried']} | {c['accepted']} | {c['refused']} | "
            f"{c['problems']} | {c['hang']} | {slowest[key]:.2f} |"
        )
    worst = max(results, key=lambda r: r["wall"])
    peak = max(r.get("maxrss_mib", 0.0) for r in results)
    lines += [
        "",
        f"{len(results)} trials in {in_process:.0f} s on {args.jobs} workers; slowest single "
        f"run {worst['wall']:.2f} s wall ({worst['cpu']:.2f} s CPU; {worst['fmt']} "
        f"{worst['command']}: {worst['mutation']}); peak worker RSS {peak:.0f} MiB "
        f"(address space limited to {MEMORY_LIMIT >> 30} GiB)",
        f"real CLI processes: {sum(c['ok'] for c in checks)}/{len(checks)} behaved "
        f"({sum(c.get('refused', False) for c in checks)} refused), slowest "
        f"{max((c['wall'] for c in checks), default=0):.2f} s; total {total:.0f} s",
    ]
    problems = [r for r in results if r["problems"]] + [c for c in checks if not c["ok"]]
    for p in problems[:40]:
        lines.append(f"PROBLEM {json.dumps(p)[:600]}")
    report = "\n".join(lines)
    print(report)
    return report


if __name__ == "__main__":
    main()
