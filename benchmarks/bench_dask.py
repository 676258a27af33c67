"""``evaluate`` on a Dask cluster against the local process pool, and a projection.

Run: ``python benchmarks/bench_dask.py [--cases 20] [--tiny-cases 200] [--rounds 3]``
(needs ``calibkit[distributed]``).

Measures in one run, on the same seeded files:

* scaling: ``evaluate_folders`` over ``--cases`` BraTS-sized cases (3 x 240 x 240 x
  155 float32 ``.nii.gz``, the cases of ``bench_evaluate.py``) in this process
  (``--workers 1``), with the local process pool of 2 workers (``--workers 2``),
  ``--scheduler local:1`` and ``local:2`` (each starting its cluster, as the command
  does) and on already running clusters of 1 and 2 workers (what
  ``--scheduler tcp://...`` meets);
* memory: the peak resident memory of a worker process that evaluated those cases,
  and of a fresh worker that evaluates, then fits a temperature on, one BraTS
  softmax case (4 x 240 x 240 x 155 float32): what a job needs per worker;
* per-task overhead: tasks per second over ``--tiny-cases`` cases of 3 x 64^3, for
  the same six, and what a task costs a running 1-worker cluster beyond its work
  in this process;
* a projection, on paper, of 10,000 BraTS cases on a 20-node cluster from these
  figures, printed as such.
"""

from __future__ import annotations

import argparse
import logging
import os
import resource
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_evaluate import ensure_data  # noqa: E402  (the same seeded BraTS-sized cases)

TINY_SHAPE = (64, 64, 64)


def ensure_tiny_data(folder: Path, n_cases: int) -> None:
    """Seeded 3-channel 64^3 softmax maps and label maps (written once)."""
    import nibabel as nib

    (folder / "preds").mkdir(parents=True, exist_ok=True)
    (folder / "labels").mkdir(parents=True, exist_ok=True)
    affine = np.diag([-1.0, -1.0, 1.0, 1.0])
    for i in range(n_cases):
        label_path = folder / "labels" / f"tiny{i:04d}_seg.nii.gz"
        if label_path.exists():
            continue
        rng = np.random.default_rng(i)
        logits = rng.normal(size=(*TINY_SHAPE, 3)).astype(np.float32) * 3
        probabilities = np.exp(logits) / np.exp(logits).sum(axis=-1, keepdims=True)
        nib.save(
            nib.Nifti1Image(probabilities, affine), folder / "preds" / f"tiny{i:04d}_pred.nii.gz"
        )
        label = rng.integers(0, 3, TINY_SHAPE).astype(np.uint8)
        nib.save(nib.Nifti1Image(label, affine), label_path)


def ensure_softmax_case(folder: Path) -> None:
    """One seeded BraTS-sized 4-channel softmax map (BG, NCR, ED, ET) and its labels."""
    import nibabel as nib

    (folder / "preds").mkdir(parents=True, exist_ok=True)
    (folder / "labels").mkdir(parents=True, exist_ok=True)
    label_path = folder / "labels" / "case0_seg.nii.gz"
    if label_path.exists():
        return
    rng = np.random.default_rng(0)
    shape = (240, 240, 155)
    logits = rng.normal(size=(*shape, 4)).astype(np.float32) * 2
    probabilities = np.exp(logits)
    probabilities /= probabilities.sum(axis=-1, keepdims=True)
    affine = np.diag([-1.0, -1.0, 1.0, 1.0])
    nib.save(nib.Nifti1Image(probabilities, affine), folder / "preds" / "case0_pred.nii.gz")
    labels = rng.choice(np.array([0, 1, 2, 4], np.uint8), size=shape)
    nib.save(nib.Nifti1Image(labels, affine), label_path)


def one_case_memory(folder: Path) -> dict[str, float]:
    """Peak memory (MiB) of a fresh worker: idle, after evaluate, after fit-temperature."""
    import distributed

    from calibkit.calibrate import fit_temperature_folder
    from calibkit.cluster import DaskExecutor
    from calibkit.evaluate import EvaluationOptions, evaluate_folders

    options = EvaluationOptions(preset="brats")
    with (
        distributed.LocalCluster(
            n_workers=1,
            threads_per_worker=1,
            host="127.0.0.1",
            dashboard_address=None,
            scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
            silence_logs=logging.ERROR,
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        peaks = {"idle": max(client.run(peak_memory_mib).values())}
        evaluate_folders(
            folder / "preds", folder / "labels", options, executor=DaskExecutor(client)
        )
        peaks["evaluate"] = max(client.run(peak_memory_mib).values())
        fit_temperature_folder(
            folder / "preds", folder / "labels", options=options, executor=DaskExecutor(client)
        )
        peaks["fit-temperature"] = max(client.run(peak_memory_mib).values())
    return peaks


def evaluate_with(folder: Path, executor: object, preset: str | None) -> float:
    from calibkit.evaluate import EvaluationOptions, evaluate_folders

    options = EvaluationOptions(preset=preset)
    start = time.perf_counter()
    evaluate_folders(folder / "preds", folder / "labels", options, executor=executor)  # type: ignore[arg-type]
    return time.perf_counter() - start


def peak_memory_mib() -> float:
    """Peak resident memory of this process (a worker), in MiB.

    Linux's ``VmHWM``: ``ru_maxrss`` would carry over the peak of the process that
    started the worker (it survives fork and exec).
    """
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # elsewhere


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cases", type=int, default=20)
    parser.add_argument("--tiny-cases", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "calibkit-bench")
    parser.add_argument(
        "--tiny-data", type=Path, default=Path(tempfile.gettempdir()) / "calibkit-bench-tiny"
    )
    parser.add_argument(
        "--softmax-data",
        type=Path,
        default=Path(tempfile.gettempdir()) / "calibkit-bench-softmax",
    )
    parser.add_argument(
        "--filesystem-gbps",
        type=float,
        default=10.0,
        help="assumed read bandwidth of the cluster's shared file system, for the projection",
    )
    parser.add_argument("--workers-per-node", type=int, default=16, help="for the projection")
    args = parser.parse_args(argv)

    import distributed

    from calibkit.cluster import DaskExecutor
    from calibkit.execution import PoolExecutor, SerialExecutor

    ensure_data(args.data, args.cases)
    ensure_tiny_data(args.tiny_data, args.tiny_cases)
    ensure_softmax_case(args.softmax_data)
    one_case = one_case_memory(args.softmax_data)
    serial = "this process (--workers 1)"
    pool = "process pool, 2 workers (--workers 2)"
    local1 = "--scheduler local:1 (cluster started per run)"
    local2 = "--scheduler local:2 (cluster started per run)"
    running1 = "running 1-worker cluster (--scheduler tcp://...)"
    running2 = "running 2-worker cluster (--scheduler tcp://...)"
    with ExitStack() as stack:
        clients = {}
        for n_workers in (1, 2):
            cluster = stack.enter_context(
                distributed.LocalCluster(
                    n_workers=n_workers,
                    threads_per_worker=1,
                    host="127.0.0.1",
                    dashboard_address=None,
                    scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
                    silence_logs=logging.ERROR,
                )
            )
            clients[n_workers] = stack.enter_context(distributed.Client(cluster))
        idle_mib = max(clients[1].run(peak_memory_mib).values())
        contenders: dict[str, Callable[[], object]] = {
            serial: SerialExecutor,
            pool: lambda: PoolExecutor(2),
            local1: lambda: DaskExecutor("local:1"),
            local2: lambda: DaskExecutor("local:2"),
            running1: lambda: DaskExecutor(clients[1]),
            running2: lambda: DaskExecutor(clients[2]),
        }
        sets = {
            "brats": (args.data, "brats", args.cases),
            "tiny": (args.tiny_data, None, args.tiny_cases),
        }
        seconds: dict[tuple[str, str], list[float]] = {
            (kind, name): [] for kind in sets for name in contenders
        }
        for folder, preset, _ in sets.values():  # warm-up: page cache, kernel cache
            for client in clients.values():
                evaluate_with(folder, DaskExecutor(client), preset)
            evaluate_with(folder, PoolExecutor(2), preset)
            evaluate_with(folder, SerialExecutor(), preset)  # numba's kernels, here too
        # Interleaved rounds: a machine that slows down or speeds up touches all alike.
        for _ in range(args.rounds):
            for kind, (folder, preset, _) in sets.items():
                for name, make in contenders.items():
                    seconds[kind, name].append(evaluate_with(folder, make(), preset))
        peak_mib = max(clients[1].run(peak_memory_mib).values())

    best = {key: min(values) for key, values in seconds.items()}
    lines = [
        f"evaluate over {args.cases} cases of 3x240x240x155 float32 (.nii.gz, --preset brats) and "
        f"{args.tiny_cases} cases of 3x64x64x64; best of {args.rounds} interleaved rounds on "
        f"{os.cpu_count()} cores.",
        "",
        "| executor | BraTS-sized: s | s per case | × pool | tiny: s | tasks / s | × pool |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name in contenders:
        big, tiny = best["brats", name], best["tiny", name]
        lines.append(
            f"| {name} | {big:.2f} | {big / args.cases:.3f} | {big / best['brats', pool]:.2f} | "
            f"{tiny:.2f} | {args.tiny_cases / tiny:.0f} | {tiny / best['tiny', pool]:.2f} |"
        )

    def per_case_ms(kind: str, name: str, base: str) -> float:
        cases = args.cases if kind == "brats" else args.tiny_cases
        return (best[kind, name] - best[kind, base]) / cases * 1000

    # One worker against this process, both on one core: what a task costs beyond its work.
    task_cost_ms = per_case_ms("tiny", running1, serial)
    per_case_one_core = best["brats", serial] / args.cases
    case_bytes = (
        sum(
            path.stat().st_size
            for path in [*(args.data / "preds").iterdir(), *(args.data / "labels").iterdir()]
        )
        / args.cases
    )
    lines += [
        "",
        "Cluster overhead per case against the pool of 2: local:2 "
        f"{per_case_ms('brats', local2, pool):+.0f} ms (its start included), a running "
        f"2-worker cluster {per_case_ms('brats', running2, pool):+.0f} ms (BraTS-sized); tiny "
        f"cases {per_case_ms('tiny', local2, pool):+.1f} and "
        f"{per_case_ms('tiny', running2, pool):+.1f} ms. Scaling: local:2 takes "
        f"{best['brats', local2] / best['brats', local1]:.2f} × the time of local:1 "
        f"(running clusters: {best['brats', running2] / best['brats', running1]:.2f} ×). "
        f"Per task, a running 1-worker cluster adds {task_cost_ms:.1f} ms to the work this "
        f"process does for a tiny case ({best['tiny', serial] / args.tiny_cases * 1000:.1f} ms).",
        f"Memory: a worker process peaked at {peak_mib / 1024:.2f} GiB resident after these "
        f"cases ({idle_mib:.0f} MiB when idle); one case at a time per worker, one thread. "
        "One BraTS softmax case (4x240x240x155 float32) took a fresh worker from "
        f"{one_case['idle']:.0f} MiB to {one_case['evaluate'] / 1024:.2f} GiB (evaluate) and "
        f"{one_case['fit-temperature'] / 1024:.2f} GiB (fit-temperature).",
    ]
    # The projection: read-bound per-case time, spread over every worker of every node.
    n_cases, nodes, per_node = 10_000, 20, args.workers_per_node
    compute_s = per_case_one_core * n_cases / (nodes * per_node)
    total_bytes = case_bytes * n_cases
    filesystem_s = total_bytes / (args.filesystem_gbps * 1e9)
    lines += [
        "",
        f"Projection (on paper, not measured): 10,000 BraTS cases on {nodes} nodes × {per_node} "
        f"single-threaded workers. One core takes {per_case_one_core:.2f} s per case here "
        f"(--workers 1; reading dominates), so the workers need {per_case_one_core:.2f} s × "
        f"{n_cases:,} / {nodes * per_node} ≈ {compute_s:.0f} s; the cases hold "
        f"{total_bytes / 1e12:.2f} TB ({case_bytes / 1e6:.0f} MB each), which a shared file "
        f"system reading {args.filesystem_gbps:g} GB/s delivers in ≈ {filesystem_s:.0f} s. "
        f"The cost of the tasks themselves ({max(task_cost_ms, 0):.1f} ms each) adds "
        f"{max(task_cost_ms, 0) / 1000 * n_cases / (nodes * per_node):.1f} s. Estimate: about "
        f"{max(compute_s, filesystem_s) / 60:.0f} min, bound by the "
        f"{'file system' if filesystem_s > compute_s else 'workers'}, plus the time the job "
        f"queue takes to start the jobs; each node needs {per_node} cores and "
        f"{per_node * peak_mib / 1024:.0f} GiB for its workers' peaks.",
    ]
    report = "\n".join(lines)
    print(report)
    return report


if __name__ == "__main__":
    main()
