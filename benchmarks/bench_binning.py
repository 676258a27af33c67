"""Bin statistics of one volume: calibkit against its peers, measured in one run.

Run: ``python benchmarks/bench_binning.py [--shape 3 240 240 155] [--repeats 5]``.
Every contender gets the same seeded float32 probabilities and binary targets.
Prints the median of several repetitions and each contender's time as a ratio
to calibkit's default kernel and to one ``np.sum`` pass over the array (the
physical floor: every method has to read each probability once). Nothing here
asserts on time.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np


def median_seconds(run: Callable[[], object], repeats: int) -> float:
    """Median wall time of ``repeats`` calls, after one warm-up call."""
    run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def interleaved_medians(runs: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median wall time of each run over ``repeats`` rounds that time every run once.

    Rounds, not one contender after another: a machine that slows down or speeds up
    during the benchmark touches every contender alike, so the ratios hold. Within
    a round each run is called once untimed right before its timed call, so that
    every contender is timed warm (its own caches, threads and buffers), as in a
    loop over many volumes.
    """
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            run()
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def numpy_bincount_pipeline(p: np.ndarray, y: np.ndarray, n_bins: int) -> np.ndarray:
    """The straightforward numpy way: digitize, then three bincounts per class."""
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    out = []
    for c in range(p.shape[0]):
        flat_p, flat_y = p[c].ravel(), y[c].ravel()
        index = np.clip(np.digitize(flat_p, edges[1:-1], right=True), 0, n_bins - 1)
        count = np.bincount(index, minlength=n_bins)
        sum_p = np.bincount(index, weights=flat_p, minlength=n_bins)
        sum_y = np.bincount(index, weights=flat_y, minlength=n_bins)
        with np.errstate(invalid="ignore", divide="ignore"):
            out.append(np.nanmean(np.abs(sum_p - sum_y) / count))
    return np.array(out)


def contenders(shape: tuple[int, ...], n_bins: int) -> tuple[dict[str, Callable[[], object]], int]:
    import torch
    from monai.metrics import CalibrationErrorMetric

    from calibkit.binning import bin_statistics, numba_available
    from calibkit.binning_torch import bin_statistics_torch
    from calibkit.metrics import calibration_errors

    rng = np.random.default_rng(0)
    probabilities = rng.random(shape, dtype=np.float32)
    targets = rng.random(shape, dtype=np.float32) < probabilities
    p_tensor, y_tensor = torch.from_numpy(probabilities), torch.from_numpy(targets)
    monai_metric = CalibrationErrorMetric(
        num_bins=n_bins, calibration_reduction="average", metric_reduction="none"
    )
    runs: dict[str, Callable[[], object]] = {
        "np.sum (one pass, the floor)": lambda: probabilities.sum(),
    }
    if numba_available():
        runs["calibkit numba kernel (default)"] = lambda: calibration_errors(
            bin_statistics(probabilities, targets, n_bins, kernel="numba")
        )
    runs["calibkit numpy kernel"] = lambda: calibration_errors(
        bin_statistics(probabilities, targets, n_bins, kernel="numpy")
    )
    runs["calibkit torch (cpu)"] = lambda: calibration_errors(
        bin_statistics_torch(p_tensor, y_tensor, n_bins)
    )
    runs["numpy bincount pipeline"] = lambda: numpy_bincount_pipeline(
        probabilities, targets, n_bins
    )
    runs["MONAI CalibrationErrorMetric"] = lambda: monai_metric(
        y_pred=p_tensor[None], y=y_tensor[None].float()
    )
    try:
        from torchmetrics.functional.classification import binary_calibration_error

        y_long = y_tensor.long()
        runs["torchmetrics binary_calibration_error (per class)"] = lambda: [
            binary_calibration_error(p_tensor[c].ravel(), y_long[c].ravel(), n_bins=n_bins)
            for c in range(shape[0])
        ]
    except ImportError:
        pass
    if torch.cuda.is_available():
        p_cuda, y_cuda = p_tensor.cuda(), y_tensor.cuda()

        def on_cuda() -> object:
            stats = bin_statistics_torch(p_cuda, y_cuda, n_bins)
            torch.cuda.synchronize()
            return stats

        runs["calibkit torch (cuda)"] = on_cuda
    return runs, probabilities.nbytes


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--shape", type=int, nargs=4, default=[3, 240, 240, 155])
    parser.add_argument("--n-bins", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)

    import torch

    runs, n_bytes = contenders(tuple(args.shape), args.n_bins)
    timings = interleaved_medians(runs, args.repeats)
    floor = timings["np.sum (one pass, the floor)"]
    default = next(v for k, v in timings.items() if k.startswith("calibkit"))
    lines = [
        f"Bin statistics of one {'x'.join(map(str, args.shape))} float32 volume "
        f"({n_bytes / 1e6:.0f} MB), {args.n_bins} bins; median of {args.repeats} "
        f"interleaved rounds; torch threads {torch.get_num_threads()}.",
        "",
        "| contender | seconds | × calibkit default | × np.sum |",
        "|---|---:|---:|---:|",
    ]
    for name, seconds in timings.items():
        lines.append(
            f"| {name} | {seconds:.4f} | {seconds / default:.2f} | {seconds / floor:.1f} |"
        )
    report = "\n".join(lines)
    print(report)
    return report


if __name__ == "__main__":
    main()
