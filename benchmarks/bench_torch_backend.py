"""The torch backend on the CPU against the compiled kernel, measured in one run.

Run: ``python benchmarks/bench_torch_backend.py [--repeats 7] [--quick]``.

Three inputs, each binned (20 bins, binary targets) through the public entry
``bin_statistics``: by the compiled kernel (numba, its default threads) and by the
torch backend on the CPU (``backend="torch", device="cpu"``) with torch's default
thread count and with one thread:

* one BraTS-sized 3 x 240 x 240 x 155 float32 volume of uniform noise;
* the same size of network-like maps (mostly 0, a smooth rim around three nested
  regions, as ``bench_evaluate.py`` writes them), which the kernel bins faster;
* 110 classes of 64 x 64 x 48 (a softmax of random logits: mostly tiny values).

Rounds are interleaved (every contender once per round, after an untimed warm-up
call), so that a machine that slows down touches all alike. It prints the least
wall time and the least CPU time (all threads of the process) of each contender
and the ratio torch / kernel of each. On a machine shared with other work, torch's
threads wait for each other in every op (a dozen per chunk of 65,536 voxels), so
its default-thread wall time there says more about the load than about torch;
the one-thread rows and the CPU time do not depend on it. Nothing here asserts on
time.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np


def network_like(shape: tuple[int, ...], n_classes: int, seed: int) -> np.ndarray:
    """``(n_classes, *shape)`` float32 maps: sigmoids of the distance to nested spheres."""
    rng = np.random.default_rng(seed)
    grid = np.meshgrid(*(np.arange(n, dtype=np.float32) for n in shape), indexing="ij")
    centre = [rng.uniform(0.3, 0.7) * n for n in shape]
    distance = np.sqrt(sum((axis - c) ** 2 for axis, c in zip(grid, centre, strict=True)))
    radii = np.linspace(10, 30, n_classes, dtype=np.float32) * rng.uniform(0.8, 1.2)
    return np.stack([1 / (1 + np.exp((distance - r * 1.05) / 3.0)) for r in radii]).astype(
        np.float32
    )


def softmax_classes(shape: tuple[int, ...], n_classes: int, seed: int) -> np.ndarray:
    """``(n_classes, *shape)`` float32 softmax of random logits."""
    rng = np.random.default_rng(seed)
    logits = rng.standard_normal((n_classes, *shape), dtype=np.float32) * 3
    logits -= logits.max(axis=0, keepdims=True)
    np.exp(logits, out=logits)
    logits /= logits.sum(axis=0, keepdims=True)
    return logits


def inputs(quick: bool) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Named (probabilities, binary targets) pairs."""
    rng = np.random.default_rng(0)
    brats = (64, 64, 64) if quick else (240, 240, 155)
    small = (16, 16, 12) if quick else (64, 64, 48)
    volumes = {
        f"uniform 3x{'x'.join(map(str, brats))}": rng.random((3, *brats), dtype=np.float32),
        f"network-like 3x{'x'.join(map(str, brats))}": network_like(brats, 3, seed=1),
        f"softmax 110x{'x'.join(map(str, small))}": softmax_classes(small, 110, seed=2),
    }
    return {name: (p, rng.random(p.shape, dtype=np.float32) < p) for name, p in volumes.items()}


def with_torch_threads(threads: int | None, run: Callable[[], object]) -> Callable[[], object]:
    """``run`` with torch's intra-op threads set to ``threads`` (None: as they are)."""
    import torch

    def call() -> object:
        if threads is None:
            return run()
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            return run()
        finally:
            torch.set_num_threads(before)

    return call


def least_times(
    runs: dict[str, Callable[[], object]], repeats: int
) -> dict[str, tuple[float, float]]:
    """Least wall and CPU seconds of each run over ``repeats`` interleaved rounds."""
    wall: dict[str, list[float]] = {name: [] for name in runs}
    cpu: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            run()
            start, start_cpu = time.perf_counter(), time.process_time()
            run()
            wall[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
    return {name: (min(wall[name]), min(cpu[name])) for name in runs}


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="small inputs, for a smoke test")
    args = parser.parse_args(argv)

    import torch

    from calibkit.binning import bin_statistics, numba_available

    kernel_name = "numba kernel" if numba_available() else "numpy kernel (numba missing)"
    threads = torch.get_num_threads()
    lines = [
        f"Bin statistics, 20 bins, binary targets; least of {args.repeats} interleaved "
        f"rounds; torch's default threads here: {threads}. Ratios are torch / "
        f"{kernel_name}.",
        "",
        "| input | contender | wall s | CPU s | wall × kernel | CPU × kernel |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for name, (p, y) in inputs(args.quick).items():
        runs: dict[str, Callable[[], object]] = {
            kernel_name: lambda p=p, y=y: bin_statistics(p, y, 20, backend="numpy"),
            f"torch cpu, {threads} threads": with_torch_threads(
                None, lambda p=p, y=y: bin_statistics(p, y, 20, backend="torch", device="cpu")
            ),
            "torch cpu, 1 thread": with_torch_threads(
                1, lambda p=p, y=y: bin_statistics(p, y, 20, backend="torch", device="cpu")
            ),
        }
        times = least_times(runs, args.repeats)
        kernel_wall, kernel_cpu = times[kernel_name]
        for contender, (wall, cpu) in times.items():
            lines.append(
                f"| {name} | {contender} | {wall:.4f} | {cpu:.4f} | "
                f"{wall / kernel_wall:.2f} | {cpu / kernel_cpu:.2f} |"
            )
    report = "\n".join(lines)
    print(report)
    return report


if __name__ == "__main__":
    main()
