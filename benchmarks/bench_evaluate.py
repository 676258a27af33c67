"""``evaluate`` over many BraTS-sized cases against only reading the same files.

Run: ``python benchmarks/bench_evaluate.py [--cases 20] [--workers 2]``.
Writes (once, then reuses) seeded 3 x 240 x 240 x 155 float32 probability maps as
``.nii.gz`` with label maps into ``--data`` (default: a folder in the temp
directory), then measures in one run: reading every prediction and label with
calibkit's readers in the same number of worker processes, and the whole
``evaluate_folders``; then the same two in a fresh process each: a Python process
that only reads, and the ``calibkit evaluate`` command (its start-up and the table
files included). The ratio is the cost of everything that is not reading.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np

SHAPE = (240, 240, 155)


def make_case(folder: Path, case_id: str, seed: int) -> None:
    import nibabel as nib

    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*(np.arange(n, dtype=np.float32) for n in SHAPE), indexing="ij"))
    centre = rng.uniform(60, 150, size=3).astype(np.float32)[:, None, None, None]
    distance = np.sqrt(((grid - centre) ** 2).sum(axis=0))
    radii = np.array([10, 18, 30], np.float32) * rng.uniform(0.8, 1.2)
    label = np.zeros(SHAPE, np.uint8)
    for value, radius in zip((2, 1, 4), radii[::-1], strict=True):
        label[distance < radius] = value
    probabilities = np.empty((*SHAPE, 3), np.float32)
    for c, radius in enumerate(radii):
        # A network's float32 output: smooth, never exactly 0 or 1, so it compresses
        # about as badly as real exported probabilities.
        probabilities[..., c] = 1 / (1 + np.exp((distance - radius * 1.05) / 3.0))
    affine = np.diag([-1.0, -1.0, 1.0, 1.0])
    nib.save(nib.Nifti1Image(probabilities, affine), folder / "preds" / f"{case_id}_pred.nii.gz")
    nib.save(nib.Nifti1Image(label, affine), folder / "labels" / f"{case_id}_seg.nii.gz")


def ensure_data(folder: Path, n_cases: int) -> None:
    (folder / "preds").mkdir(parents=True, exist_ok=True)
    (folder / "labels").mkdir(parents=True, exist_ok=True)
    for i in range(n_cases):
        case_id = f"case{i:03d}"
        if not (folder / "labels" / f"{case_id}_seg.nii.gz").exists():
            make_case(folder, case_id, seed=i)


def read_pair(paths: tuple[Path, Path]) -> int:
    from calibkit.io.volumes import read_label, read_prediction

    prediction, label = read_prediction(paths[0]), read_label(paths[1])
    return int(prediction.array.shape[0] + label.array.ndim)


def time_reading(folder: Path, workers: int) -> float:
    from calibkit.io.pairing import pair_cases

    pairs = [(p.prediction, p.label) for p in pair_cases(folder / "preds", folder / "labels").pairs]
    start = time.perf_counter()
    if workers == 1:
        for pair in pairs:
            read_pair(pair)
    else:
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
            list(pool.map(read_pair, pairs))
    return time.perf_counter() - start


def time_evaluate(folder: Path, workers: int) -> float:
    from calibkit.evaluate import EvaluationOptions, evaluate_folders

    start = time.perf_counter()
    options = EvaluationOptions(preset="brats")  # channels are the regions ET, TC, WT
    evaluate_folders(folder / "preds", folder / "labels", options, workers=workers)
    return time.perf_counter() - start


def time_reading_process(folder: Path, workers: int) -> float:
    command = [sys.executable, __file__, "--read-only", "--data", str(folder)]
    start = time.perf_counter()
    subprocess.run([*command, "--workers", str(workers)], check=True, capture_output=True)
    return time.perf_counter() - start


def time_command(folder: Path, workers: int) -> float:
    with tempfile.TemporaryDirectory() as scratch:
        command = [
            *(sys.executable, "-m", "calibkit", "evaluate"),
            *(str(folder / "preds"), str(folder / "labels")),
            *("--preset", "brats", "--workers", str(workers), "--out", f"{scratch}/out"),
        ]
        start = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True)
        return time.perf_counter() - start


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cases", type=int, default=20)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "calibkit-bench")
    parser.add_argument("--read-only", action="store_true", help="only read the cases, once")
    args = parser.parse_args(argv)
    if args.read_only:
        return f"{time_reading(args.data, args.workers):.2f}"
    ensure_data(args.data, args.cases)
    time_evaluate(args.data, args.workers)  # warm-up: page cache, compiled kernel cache
    # Interleaved rounds: a machine that slows down or speeds up during the run
    # touches every contender alike.
    steps = {
        "read": time_reading,
        "evaluate": time_evaluate,
        "read process": time_reading_process,
        "command": time_command,
    }
    seconds: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(args.rounds):
        for name, step in steps.items():
            seconds[name].append(step(args.data, args.workers))
    reading, evaluating, reading_process, command = (min(seconds[name]) for name in steps)
    per_round = {
        name: ", ".join(
            f"{mine / read:.2f}" for mine, read in zip(seconds[name], seconds[base], strict=True)
        )
        for name, base in (("evaluate", "read"), ("command", "read process"))
    }
    report = "\n".join(
        [
            f"evaluate over {args.cases} cases of 3x240x240x155 float32 (.nii.gz), "
            f"{args.workers} worker(s); best of {args.rounds} interleaved rounds. The "
            "last two rows each start a fresh Python process; the command is compared "
            "with the process that only reads.",
            "",
            "| step | seconds | per case | × read only |",
            "|---|---:|---:|---:|",
            f"| read predictions and labels only | {reading:.2f} | "
            f"{reading / args.cases:.3f} | 1.00 |",
            f"| calibkit evaluate (read + bin + Dice + tables) | {evaluating:.2f} | "
            f"{evaluating / args.cases:.3f} | {evaluating / reading:.2f} |",
            f"| a fresh process that only reads | {reading_process:.2f} | "
            f"{reading_process / args.cases:.3f} | 1.00 |",
            f"| `calibkit evaluate` command (writes the tables) | {command:.2f} | "
            f"{command / args.cases:.3f} | {command / reading_process:.2f} |",
            "",
            f"Ratio to reading in each round: evaluate {per_round['evaluate']}; "
            f"command {per_round['command']}.",
        ]
    )
    print(report)
    return report


if __name__ == "__main__":
    main()
