"""Bin statistics with binary targets of each dtype: every one should take the fast kernel.

Run: ``python benchmarks/bench_binning_dtypes.py [--shape 4 240 240 155] [--repeats 5]``.
The same seeded float32 probabilities and the same 0/1 targets, held as ``bool``,
``uint8`` (what ``np.eye(C, dtype=np.uint8)[labels]`` gives), ``int64`` (what
``torch.nn.functional.one_hot`` gives) and ``float32``. Prints the median of
interleaved warm rounds (see :func:`bench_binning.interleaved_medians`) and each
time as a ratio to the ``bool`` time; the aim is every ratio within 1.2. Nothing
here asserts on time.

A wider target must at least be read: the last column is the floor that reading
sets, ``(bool time + extra read) / bool time``, where the extra read is one numpy
pass over the targets (``max``) less the same pass over the ``bool`` ones, timed in
the same rounds. Where that floor is above 1.2 the aim cannot be met on this
machine's memory bandwidth, whatever the kernel does.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import numpy as np
from bench_binning import interleaved_medians


def contenders(shape: tuple[int, ...], n_bins: int) -> dict[str, Callable[[], object]]:
    from calibkit.binning import bin_statistics

    rng = np.random.default_rng(0)
    probabilities = rng.random(shape, dtype=np.float32)
    mask = rng.random(shape, dtype=np.float32) < probabilities
    targets = {
        "bool": mask,
        "uint8": mask.view(np.uint8),
        "int64": mask.astype(np.int64),
        "float32": mask.astype(np.float32),
    }
    binning = {
        name: (lambda y=y: bin_statistics(probabilities, y, n_bins)) for name, y in targets.items()
    }
    reading = {f"read {name}": (lambda y=y: y.max()) for name, y in targets.items()}
    return {**binning, **reading}


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--shape", type=int, nargs=4, default=[4, 240, 240, 155])
    parser.add_argument("--n-bins", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)

    from calibkit.binning import numba_available

    timings = interleaved_medians(contenders(tuple(args.shape), args.n_bins), args.repeats)
    reference = timings["bool"]
    lines = [
        f"`bin_statistics` of one {'x'.join(map(str, args.shape))} float32 volume, "
        f"{args.n_bins} bins, 0/1 targets of each dtype; median of {args.repeats} "
        f"interleaved rounds; numba {'installed' if numba_available() else 'missing'}.",
        "",
        "| targets | seconds | × bool | floor from reading the targets |",
        "|---|---:|---:|---:|",
    ]
    for name, seconds in timings.items():
        if name.startswith("read "):
            continue
        extra_read = max(0.0, timings[f"read {name}"] - timings["read bool"])
        floor = (reference + extra_read) / reference
        lines.append(f"| {name} | {seconds:.4f} | {seconds / reference:.2f} | {floor:.2f} |")
    report = "\n".join(lines)
    print(report)
    return report


if __name__ == "__main__":
    main()
