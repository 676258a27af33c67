"""Time per-volume bin statistics: calibkit (numpy, torch) against MONAI and one np.sum pass.

Run: ``python benchmarks/bench_binning.py [--shape 3 240 240 155] [--repeats 5]``.
Prints the median of several repetitions for each contender on the same seeded
inputs, and each one's ratio to calibkit's numpy backend. Nothing here asserts
on time; the numbers are for the README and the changelog.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np


def median_seconds(run: Callable[[], object], repeats: int) -> float:
    run()  # warm-up: caches, lazy imports, allocator
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--shape", type=int, nargs=4, default=[3, 240, 240, 155])
    parser.add_argument("--n-bins", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    import torch
    from monai.metrics import CalibrationErrorMetric

    from calibkit.binning import bin_statistics
    from calibkit.binning_torch import bin_statistics_torch
    from calibkit.metrics import calibration_errors

    rng = np.random.default_rng(0)
    shape = tuple(args.shape)
    probabilities = rng.random(shape, dtype=np.float32)
    targets = rng.random(shape, dtype=np.float32) < probabilities
    p_tensor = torch.from_numpy(probabilities)
    y_tensor = torch.from_numpy(targets)
    monai_metric = CalibrationErrorMetric(
        num_bins=args.n_bins, calibration_reduction="average", metric_reduction="none"
    )

    contenders: dict[str, Callable[[], object]] = {
        "np.sum (one pass, floor)": lambda: probabilities.sum(),
        "calibkit numpy": lambda: calibration_errors(
            bin_statistics(probabilities, targets, args.n_bins)
        ),
        "calibkit torch (cpu)": lambda: calibration_errors(
            bin_statistics_torch(p_tensor, y_tensor, args.n_bins)
        ),
        "MONAI CalibrationErrorMetric": lambda: monai_metric(
            y_pred=p_tensor[None], y=y_tensor[None].float()
        ),
    }
    if torch.cuda.is_available():
        p_cuda, y_cuda = p_tensor.cuda(), y_tensor.cuda()
        contenders["calibkit torch (cuda)"] = lambda: calibration_errors(
            bin_statistics_torch(p_cuda, y_cuda, args.n_bins)
        )

    timings = {name: median_seconds(run, args.repeats) for name, run in contenders.items()}
    reference = timings["calibkit numpy"]
    size_mb = probabilities.nbytes / 1e6
    print(
        f"bin statistics of a {'x'.join(map(str, shape))} float32 volume ({size_mb:.0f} MB), "
        f"{args.n_bins} bins, median of {args.repeats}, torch threads {torch.get_num_threads()}"
    )
    print()
    print("| contender | seconds | x calibkit numpy time |")
    print("|---|---:|---:|")
    for name, seconds in timings.items():
        print(f"| {name} | {seconds:.4f} | {seconds / reference:.2f} |")


if __name__ == "__main__":
    main()
