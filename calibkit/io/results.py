"""Result folders of ``calibkit evaluate``: safe to write, easy to read back.

A result folder holds ``per_image.csv``, ``summary.csv``, ``summary.json`` and
``bins.npz``. They are written only after every case was computed, into a hidden
staging folder first, and moved into place together once all are complete: a
failed run (bad input, a full disk) leaves nothing behind and replaces nothing.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from calibkit.binning import BinStats, bin_edges
from calibkit.errors import InputError, OutputError
from calibkit.io.atomic import (
    atomic_write_bytes,
    atomic_write_text,
    staged_folder,
    unwritable_reason,
    write_error,
)
from calibkit.metrics import OverlapCounts
from calibkit.records import Evaluation, SavedBins

if TYPE_CHECKING:
    import pandas as pd

RESULT_FILES = ("per_image.csv", "summary.csv", "summary.json", "bins.npz")


def prepare_output_dir(out: Path, inputs: list[Path], *, overwrite: bool = False) -> None:
    """Check that ``out`` can take results, before any work is done.

    Raises:
        OutputError: ``out`` is a file, lies inside an input folder, already holds
            results (without ``overwrite``), or cannot be created or written.
    """
    out = Path(out)
    resolved = out.resolve()
    for folder in inputs:
        folder_resolved = Path(folder).resolve()
        if resolved == folder_resolved or folder_resolved in resolved.parents:
            raise OutputError(
                f"{out}: the output folder lies inside the input folder {folder}; "
                "choose a folder outside the inputs"
            )
    if out.exists() and not out.is_dir():
        raise OutputError(f"{out}: exists and is not a folder")
    if out.is_dir() and not overwrite:
        present = [name for name in RESULT_FILES if (out / name).exists()]
        if present:
            raise OutputError(
                f"{out}: already holds results ({', '.join(present)}); "
                "use --overwrite to replace them or choose another --out"
            )
    existing = out if out.is_dir() else _nearest_existing_parent(out)
    reason = unwritable_reason(existing)
    if reason is not None:
        raise OutputError(f"{out}: cannot write here ({reason} on {existing})")


def _nearest_existing_parent(path: Path) -> Path:
    for parent in path.absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise OutputError(f"{path}: {parent} is a file, not a folder")
            return parent
    return Path("/")


def save_evaluation(evaluation: Evaluation, out: Path) -> list[Path]:
    """Write the four result files of an evaluation into ``out`` (created if needed).

    The files appear together or not at all: they are staged beside any earlier
    result and replace it only once all four are written.

    Returns:
        The paths written.

    Raises:
        WriteError: a file cannot be written (disk full, read-only, ...); ``out``
            is left as it was.
    """
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise write_error(out, error) from None
    with staged_folder(out) as staging:
        write_result_files(evaluation, staging)
    return [out / name for name in RESULT_FILES]


def write_result_files(evaluation: Evaluation, folder: Path) -> list[Path]:
    """Write the four result files into the existing ``folder``, each atomically.

    :func:`save_evaluation` writes them as a set; this is its one-by-one part, for
    callers that stage more files with them (``calibkit evaluate --plots``).

    Returns:
        The paths written.
    """
    paths = [Path(folder) / name for name in RESULT_FILES]
    per_image_csv, summary_csv, summary_json, bins_npz = paths
    atomic_write_text(per_image_csv, evaluation.per_image.to_csv(index=False))
    atomic_write_text(summary_csv, evaluation.summary.to_csv(index=False))
    atomic_write_text(
        summary_json, json.dumps(evaluation.summary_record(), indent=2, allow_nan=False) + "\n"
    )
    atomic_write_bytes(bins_npz, _bins_bytes(evaluation))
    return paths


def _bins_bytes(evaluation: Evaluation) -> bytes:
    buffer = io.BytesIO()
    np.savez_compressed(
        buffer,
        count=evaluation.bins.count,
        sum_p=evaluation.bins.sum_p,
        sum_y=evaluation.bins.sum_y,
        intersection=evaluation.overlap.intersection,
        pred_voxels=evaluation.overlap.predicted,
        gt_voxels=evaluation.overlap.truth,
        case_ids=np.asarray(evaluation.case_ids, dtype=str),
        class_names=np.asarray(evaluation.class_names, dtype=str),
        bin_edges=bin_edges(evaluation.options.n_bins),
    )
    return buffer.getvalue()


def load_bins(folder: Path) -> SavedBins:
    """Read ``bins.npz`` from a result folder written by ``calibkit evaluate``.

    Raises:
        InputError: the folder or file is missing or not a calibkit result.
    """
    path = Path(folder) / "bins.npz"
    if not path.is_file():
        raise InputError(folder, "no bins.npz here; is this a folder written by calibkit evaluate?")
    try:
        with np.load(path, allow_pickle=False) as data:
            return SavedBins(
                stats=BinStats(data["count"], data["sum_p"], data["sum_y"]),
                overlap=OverlapCounts(data["intersection"], data["pred_voxels"], data["gt_voxels"]),
                case_ids=tuple(str(value) for value in data["case_ids"]),
                class_names=tuple(str(value) for value in data["class_names"]),
                bin_edges=data["bin_edges"],
            )
    except (KeyError, ValueError, OSError) as error:
        raise InputError(path, f"not a calibkit bins file ({error})") from None


def load_per_image(folder: Path) -> pd.DataFrame:
    """Read ``per_image.csv`` from a result folder."""
    import pandas as pd

    path = Path(folder) / "per_image.csv"
    if not path.is_file():
        raise InputError(
            folder, "no per_image.csv here; is this a folder written by calibkit evaluate?"
        )
    table = pd.read_csv(path, dtype={"case_id": str, "class": str})
    missing = {"case_id", "class", "ace", "ece", "mce", "dice"} - set(table.columns)
    if missing:
        raise InputError(path, f"missing column(s) {', '.join(sorted(missing))}")
    return table


def load_summary(folder: Path) -> dict[str, Any]:
    """Read ``summary.json`` from a result folder."""
    path = Path(folder) / "summary.json"
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, ValueError) as error:
        raise InputError(path, f"cannot read the summary ({error})") from None
