"""Reading one BraTS-sized ``.nii.gz`` prediction: calibkit's reader against SimpleITK.

Run: ``python benchmarks/bench_readers.py [--data DIR]``.
Reads the same files with calibkit's ``read_prediction`` (nibabel with
``indexed_gzip``, no float64 copy) and with SimpleITK (``ReadImage`` +
``GetArrayFromImage``, one thread and all threads), and times one plain
``zlib`` decompression of the same bytes. Two files: the float32 maps of
``bench_evaluate.py`` (smooth values, barely compressible) and the same map stored
as scaled uint8, as ``calibkit predict --storage uint8`` writes (very compressible).
"""

from __future__ import annotations

import argparse
import tempfile
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
from bench_binning import median_seconds
from bench_evaluate import ensure_data


def uint8_copy(source: Path, target: Path) -> Path:
    import nibabel as nib

    if not target.exists():
        image = nib.load(source)
        quantised = np.round(np.asarray(image.dataobj) * 255).astype(np.uint8)
        stored = nib.Nifti1Image(quantised, image.affine)
        stored.header.set_slope_inter(1 / 255, 0)
        nib.save(stored, target)
    return target


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "calibkit-bench")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    import SimpleITK as sitk

    from calibkit.io.volumes import read_prediction

    ensure_data(args.data, 1)
    float_file = args.data / "preds" / "case000_pred.nii.gz"
    files = {
        "float32": float_file,
        "uint8 (scaled)": uint8_copy(float_file, args.data / "case000_pred_uint8.nii.gz"),
    }
    threads = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()

    def simpleitk(path: Path, n_threads: int) -> Callable[[], object]:
        def run() -> object:
            sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(n_threads)
            return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))

        return run

    lines = [
        f"One 240x240x155x3 prediction (.nii.gz); median of {args.repeats} reads.",
        "",
        "| file | MB on disk | calibkit (nibabel) | SimpleITK, 1 thread | "
        f"SimpleITK, {threads} threads | zlib alone |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, path in files.items():
        compressed = path.read_bytes()
        seconds = [
            median_seconds(lambda p=path: read_prediction(p), args.repeats),
            median_seconds(simpleitk(path, 1), args.repeats),
            median_seconds(simpleitk(path, threads), args.repeats),
            median_seconds(lambda c=compressed: zlib.decompress(c, 31), args.repeats),
        ]
        cells = " | ".join(f"{s:.3f} s" for s in seconds)
        lines.append(f"| {name} | {len(compressed) / 1e6:.1f} | {cells} |")
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
    report = "\n".join(lines)
    print(report)
    return report


if __name__ == "__main__":
    main()
