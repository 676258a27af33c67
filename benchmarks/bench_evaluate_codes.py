"""``calibkit evaluate`` over maps stored as uint8 codes against only reading them with nibabel.

Run: ``python benchmarks/bench_evaluate_codes.py [--cases 8] [--rounds 5]
[--baseline /path/to/other/checkout]``.

Writes (once, then reuses) seeded 4 x 240 x 240 x 155 softmax maps stored as uint8
with ``scl_slope = 1/255`` (``.nii.gz``, channels background, NCR, ED, ET) and their
BraTS label maps into ``--data``. Then times, each in a fresh Python process and in
interleaved rounds (best of them):

* nibabel reading every map and label as a user would, ``np.asanyarray(img.dataobj)``
  (the scale factor applied);
* nibabel reading only the stored values, ``img.dataobj.get_unscaled()`` (inflate and
  nothing else);
* ``calibkit evaluate --preset brats --workers 1`` (start-up and table files
  included), and with ``--baseline`` the same command run from another checkout
  (e.g. the commit before a change), for a before / after in the same run;
* ``evaluate_folders`` in this process (no start-up), binning from the codes, and
  with the code path switched off (each map decoded to float32, the path before).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SHAPE = (240, 240, 155)
LABELS = (0, 1, 2, 4)  # background, NCR, ED, ET: the channels of the softmax map

READ_SCRIPT = """
import sys
from pathlib import Path
import nibabel as nib
import numpy as np
for path in sorted(Path(sys.argv[1]).glob("*/*.nii.gz")):
    img = nib.load(path)
    {read}
"""
READS = {
    "scaled": "np.asanyarray(img.dataobj)",
    "unscaled": "np.asanyarray(img.dataobj.get_unscaled())",
}


def make_case(folder: Path, case_id: str, seed: int) -> None:
    import nibabel as nib

    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*(np.arange(n, dtype=np.float32) for n in SHAPE), indexing="ij"))
    centre = rng.uniform(60, 150, size=3).astype(np.float32)[:, None, None, None]
    distance = np.sqrt(((grid - centre) ** 2).sum(axis=0))
    del grid
    radii = np.array([30, 18, 10], np.float32) * rng.uniform(0.8, 1.2)  # WT, TC, ET
    label = np.zeros(SHAPE, np.uint8)
    for value, radius in zip((2, 1, 4), radii, strict=True):
        label[distance < radius] = value
    # Smooth logits of each label's shell, as a network's softmax output is smooth.
    logits = np.empty((*SHAPE, 4), np.float32)
    logits[..., 0] = (distance - radii[0]) / 3.0
    logits[..., 1] = -np.abs(distance - (radii[1] + radii[2]) / 2) / 3.0 + 1.0
    logits[..., 2] = -np.abs(distance - (radii[0] + radii[1]) / 2) / 3.0 + 1.0
    logits[..., 3] = (radii[2] - distance) / 3.0
    logits -= logits.max(axis=-1, keepdims=True)
    np.exp(logits, out=logits)
    logits /= logits.sum(axis=-1, keepdims=True)
    codes = np.round(logits * 255).astype(np.uint8)
    affine = np.diag([-1.0, -1.0, 1.0, 1.0])
    img = nib.Nifti1Image(codes, affine)
    img.header.set_slope_inter(1 / 255, 0.0)
    nib.save(img, folder / "preds" / f"{case_id}_pred.nii.gz")
    nib.save(nib.Nifti1Image(label, affine), folder / "labels" / f"{case_id}_seg.nii.gz")


def ensure_data(folder: Path, n_cases: int) -> None:
    (folder / "preds").mkdir(parents=True, exist_ok=True)
    (folder / "labels").mkdir(parents=True, exist_ok=True)
    for i in range(n_cases):
        case_id = f"case{i:03d}"
        if not (folder / "labels" / f"{case_id}_seg.nii.gz").exists():
            make_case(folder, case_id, seed=i)


def time_read(folder: Path, how: str) -> float:
    code = READ_SCRIPT.format(read=READS[how])
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code, str(folder)], check=True, capture_output=True)
    return time.perf_counter() - start


def time_command(folder: Path, checkout: Path | None) -> float:
    environment = dict(os.environ)
    if checkout is not None:
        environment["PYTHONPATH"] = str(checkout)
    with tempfile.TemporaryDirectory() as scratch:
        command = [
            *(sys.executable, "-m", "calibkit", "evaluate"),
            *(str(folder / "preds"), str(folder / "labels")),
            *("--preset", "brats", "--workers", "1", "--out", f"{scratch}/out"),
        ]
        start = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True, env=environment)
        return time.perf_counter() - start


def time_in_process(folder: Path, from_codes: bool) -> float:
    """``evaluate_folders`` in this process (no start-up), binning from the codes or not."""
    from calibkit import cases
    from calibkit.evaluate import EvaluationOptions, evaluate_folders

    applies = cases._coded_pass_applies
    if not from_codes:  # the float path: each map decoded to float32, as before
        cases._coded_pass_applies = lambda case, options: False  # type: ignore[assignment]
    try:
        start = time.perf_counter()
        options = EvaluationOptions(preset="brats")
        evaluate_folders(folder / "preds", folder / "labels", options, workers=1)
        return time.perf_counter() - start
    finally:
        cases._coded_pass_applies = applies  # type: ignore[assignment]


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cases", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--data", type=Path, default=Path(tempfile.gettempdir()) / "calibkit-bench-uint8"
    )
    parser.add_argument("--baseline", type=Path, help="another checkout to time alike")
    args = parser.parse_args(argv)
    ensure_data(args.data, args.cases)
    here = Path(__file__).resolve().parents[1]
    steps = {
        "nibabel read, scaled": lambda: time_read(args.data, "scaled"),
        "nibabel read, unscaled": lambda: time_read(args.data, "unscaled"),
        "calibkit evaluate": lambda: time_command(args.data, here),
    }
    steps["evaluate in-process, from the codes"] = lambda: time_in_process(args.data, True)
    steps["evaluate in-process, decoded to float32"] = lambda: time_in_process(args.data, False)
    if args.baseline is not None:
        steps["calibkit evaluate (baseline)"] = lambda: time_command(args.data, args.baseline)
    for step in steps.values():  # warm-up: page cache, compiled kernel caches
        step()
    seconds: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(args.rounds):  # interleaved: a machine that slows touches all alike
        for name, step in steps.items():
            seconds[name].append(step())
    best = {name: min(times) for name, times in seconds.items()}
    read = best["nibabel read, scaled"]
    rows = [
        f"| {name} | {best[name]:.2f} | {best[name] / args.cases:.3f} | {best[name] / read:.2f} |"
        for name in steps
    ]
    report = "\n".join(
        [
            f"`calibkit evaluate --preset brats --workers 1` over {args.cases} cases of "
            "4x240x240x155 uint8 maps (scl_slope 1/255, .nii.gz); each row but the "
            "in-process ones a fresh Python process; best of "
            f"{args.rounds} interleaved rounds.",
            "",
            "| step | seconds | per case | × nibabel read (scaled) |",
            "|---|---:|---:|---:|",
            *rows,
            "",
            "Each round: "
            + "; ".join(
                f"{name} " + ", ".join(f"{t:.2f}" for t in times) for name, times in seconds.items()
            ),
        ]
    )
    print(report)
    return report


if __name__ == "__main__":
    main()
