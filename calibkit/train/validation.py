"""Validation during training: Dice, ACE, ECE, MCE per case and BraTS region.

:func:`validate` runs whole-volume sliding-window inference on the validation cases
and measures them with the same code as ``calibkit evaluate --preset brats``;
:class:`ValidationResult` holds the per-case arrays and gives the validation columns
of one epoch's ``metrics.csv`` row. torch is imported inside :func:`validate`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from calibkit.cases import case_statistics
from calibkit.classes import resolve_classes
from calibkit.metrics import calibration_errors, macro_summary, per_image_mean
from calibkit.records import EvaluationOptions
from calibkit.train.config import TrainConfig
from calibkit.train.data import load_case
from calibkit.train.predict import sliding_window_logits

if TYPE_CHECKING:
    import torch

    from calibkit.train.data import Case

__all__ = ["REGIONS", "VAL_METRICS", "ValidationResult", "validate"]

REGIONS = ("ET", "TC", "WT")
VAL_METRICS = ("dice", "ace", "ece", "mce")


@dataclass(frozen=True)
class ValidationResult:
    """Validation metrics per case: arrays ``(cases, 3)`` over the regions ET, TC, WT."""

    case_ids: tuple[str, ...]
    dice: np.ndarray
    ace: np.ndarray
    ece: np.ndarray
    mce: np.ndarray

    def row(self) -> dict[str, float]:
        """``val_{metric}_{region}`` means over cases, and ``val_{metric}_mean``.

        ``mean`` is the mean over cases of the per-case NaN-mean over regions, as
        ``calibkit evaluate``'s ``mean`` row.
        """

        row: dict[str, float] = {}
        for metric in VAL_METRICS:
            values = getattr(self, metric)
            per_region = macro_summary(values, axis=0).mean
            for region, value in zip(REGIONS, per_region, strict=True):
                row[f"val_{metric}_{region}"] = float(value)
            row[f"val_{metric}_mean"] = float(macro_summary(per_image_mean(values)).mean)
        return row


def validate(
    model: torch.nn.Module,
    cases: Sequence[Case],
    label_map: dict[int, int],
    config: TrainConfig,
    device: torch.device,
    cache: dict[str, Any] | None = None,
) -> ValidationResult:
    """Whole-volume sliding-window validation: Dice, ACE, ECE, MCE per case and region.

    The numbers come from the same code as ``calibkit evaluate --preset brats``
    (bins of :func:`calibkit.binning.bin_statistics`, Dice at p >= 0.5).
    """
    import torch

    plan = resolve_classes(4, preset="brats")
    options = EvaluationOptions(n_bins=config.n_bins, preset="brats", backend="numpy")
    was_training = model.training
    threads = torch.get_num_threads()
    model.eval()
    rows: dict[str, list[np.ndarray]] = {metric: [] for metric in VAL_METRICS}
    try:
        for case in cases:
            data = None if cache is None else cache.get(case.case_id)
            if data is None:
                data = load_case(case, label_map)
                if cache is not None and _cache_allows(cache, data, config.cache_mb):
                    cache[case.case_id] = data
            logits = sliding_window_logits(
                model,
                data.image,
                roi_size=config.patch_size,
                sw_batch_size=config.sw_batch_size,
                overlap=config.sw_overlap,
                device=device,
                amp=config.amp,
            )
            probabilities = torch.softmax(logits, dim=0).numpy()
            assert data.label is not None
            stats, overlap = case_statistics(probabilities, data.label[0], plan, options)
            # numba's OpenMP layer resets the OpenMP thread count that torch shares; a
            # changed count changes the order of torch's sums, so resumed runs would drift.
            torch.set_num_threads(threads)
            errors = calibration_errors(stats)
            rows["dice"].append(overlap.dice)
            rows["ace"].append(errors.ace)
            rows["ece"].append(errors.ece)
            rows["mce"].append(errors.mce)
    finally:
        model.train(was_training)
    arrays = {
        metric: np.array(values, dtype=np.float64).reshape(len(cases), len(REGIONS))
        for metric, values in rows.items()
    }
    return ValidationResult(tuple(case.case_id for case in cases), **arrays)


def _cache_allows(cache: dict[str, Any], data: Any, cache_mb: int) -> bool:
    used = sum(int(item.image.nbytes) for item in cache.values()) + int(data.image.nbytes)
    return used / 2**20 <= cache_mb


def _merge(parts: Sequence[ValidationResult]) -> ValidationResult:
    ids = tuple(case for part in parts for case in part.case_ids)
    arrays = {
        metric: np.concatenate([getattr(part, metric) for part in parts], axis=0)
        for metric in VAL_METRICS
    }
    return ValidationResult(ids, **arrays)
