"""Per-case results → the tables of an evaluation (``per_image``, ``summary``).

Pure tables from :class:`~calibkit.records.CaseResult` records: every workflow that
gathers cases (``evaluate`` locally or on a cluster, training validation, loop
metrics) builds its :class:`~calibkit.records.Evaluation` here, so the tables are
computed in one place.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from calibkit.binning import BinStats
from calibkit.errors import CalibkitError, InputError
from calibkit.metrics import (
    METRICS,
    OverlapCounts,
    calibration_errors,
    macro_summary,
    per_image_mean,
)
from calibkit.records import CaseResult, Evaluation, EvaluationOptions

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["MEAN_ROW", "assemble_evaluation", "per_image_table", "summary_table"]

MEAN_ROW = "mean"


def assemble_evaluation(
    results: Sequence[CaseResult],
    options: EvaluationOptions,
    *,
    extra_warnings: Sequence[str] = (),
    missing_label: tuple[str, ...] = (),
    missing_prediction: tuple[str, ...] = (),
    sources: dict[str, str] | None = None,
) -> Evaluation:
    """Build the tables from per-case results (sorted by case id)."""
    if not results:
        raise CalibkitError("no cases to evaluate")
    ordered = sorted(results, key=lambda result: result.case_id)
    class_names = ordered[0].class_names
    for result in ordered[1:]:
        if result.class_names != class_names:
            raise InputError(
                result.source,
                f"gives classes {', '.join(result.class_names)} but {ordered[0].source} gives "
                f"{', '.join(class_names)}: every prediction must have the same channels",
            )
    bins = BinStats.stack([result.stats for result in ordered])
    overlap = OverlapCounts(
        intersection=np.stack([r.overlap.intersection for r in ordered]),
        predicted=np.stack([r.overlap.predicted for r in ordered]),
        truth=np.stack([r.overlap.truth for r in ordered]),
    )
    case_ids = tuple(result.case_id for result in ordered)
    n_voxels = np.array([result.n_voxels for result in ordered], dtype=np.int64)
    per_image = per_image_table(case_ids, class_names, bins, overlap, n_voxels)
    summary = summary_table(per_image, class_names, bins, overlap)
    notes = [note for result in ordered for note in result.warnings] + list(extra_warnings)
    return Evaluation(
        per_image=per_image,
        summary=summary,
        bins=bins,
        overlap=overlap,
        case_ids=case_ids,
        class_names=class_names,
        options=options,
        warnings=tuple(notes),
        missing_label=missing_label,
        missing_prediction=missing_prediction,
        sources=sources or {},
    )


def per_image_table(
    case_ids: Sequence[str],
    class_names: Sequence[str],
    bins: BinStats,
    overlap: OverlapCounts,
    n_voxels: npt.NDArray[np.int64],
) -> pd.DataFrame:
    """Long table, one row per (case, class), from stacked bins ``(cases, classes, M)``."""
    import pandas as pd  # not at module level: worker processes need no pandas

    errors = calibration_errors(bins)
    n_cases, n_classes = len(case_ids), len(class_names)
    return pd.DataFrame(
        {
            "case_id": np.repeat(np.asarray(case_ids, dtype=object), n_classes),
            "class": np.tile(np.asarray(class_names, dtype=object), n_cases),
            "ace": errors.ace.ravel(),
            "ece": errors.ece.ravel(),
            "mce": errors.mce.ravel(),
            "dice": overlap.dice.ravel(),
            "n_voxels": np.repeat(n_voxels, n_classes),
            "gt_voxels": overlap.truth.ravel(),
            "gt_empty": (overlap.truth == 0).ravel(),
            "pred_voxels": overlap.predicted.ravel(),
            "intersection": overlap.intersection.ravel(),
        }
    )


def summary_table(
    per_image: pd.DataFrame,
    class_names: Sequence[str],
    bins: BinStats,
    overlap: OverlapCounts,
) -> pd.DataFrame:
    """Macro (mean, std, median, n over cases) and pooled values per class and metric.

    ``pooled`` sums the bins (and overlap counts) of all cases first, then applies the
    formulas once: a dataset-level calibration that differs from the macro mean.
    The ``mean`` row summarises the per-image means over classes; its pooled value is
    the mean of the classes' pooled values.
    """
    n_classes = len(class_names)
    pooled_errors = calibration_errors(bins.pooled(axis=0))
    pooled_overlap = OverlapCounts(
        overlap.intersection.sum(axis=0), overlap.predicted.sum(axis=0), overlap.truth.sum(axis=0)
    )
    pooled = {
        "ace": pooled_errors.ace,
        "ece": pooled_errors.ece,
        "mce": pooled_errors.mce,
        "dice": pooled_overlap.dice,
    }
    rows = []
    for metric in METRICS:
        values = per_image[metric].to_numpy(dtype=np.float64).reshape(-1, n_classes)
        columns = {
            **{name: values[:, i] for i, name in enumerate(class_names)},
            MEAN_ROW: per_image_mean(values),
        }
        for i, (name, column) in enumerate(columns.items()):
            summary = macro_summary(column)
            pooled_value = float(pooled[metric][i]) if i < n_classes else _nanmean(pooled[metric])
            rows.append(
                {
                    "class": name,
                    "metric": metric,
                    "mean": float(summary.mean),
                    "std": float(summary.std),
                    "median": float(summary.median),
                    "n": int(summary.n),
                    "pooled": pooled_value,
                }
            )
    import pandas as pd

    table = pd.DataFrame(rows)
    order = {name: i for i, name in enumerate([*class_names, MEAN_ROW])}
    table["_order"] = table["class"].map(order)
    table["_metric"] = table["metric"].map({m: i for i, m in enumerate(METRICS)})
    table = table.sort_values(["_order", "_metric"], kind="stable").drop(
        columns=["_order", "_metric"]
    )
    return table.reset_index(drop=True)


def _nanmean(values: npt.NDArray[np.float64]) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(np.nanmean(values)) if values.size else float("nan")
