"""Calibration errors (mL1-ACE, ECE, MCE) and Dice from bin statistics.

Pure numpy: every function takes arrays or :class:`~calibkit.binning.BinStats`
and returns arrays. Definitions are SPEC.md §1:

* ACE = mean over non-empty bins of ``|pbar_k - ybar_k|``;
* ECE = ``sum_k n_k |pbar_k - ybar_k| / sum_k n_k``;
* MCE = max over non-empty bins of ``|pbar_k - ybar_k|``;
* all three are NaN when every bin is empty;
* Dice = ``2 |P ∩ G| / (|P| + |G|)``, NaN when the ground truth is empty.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from calibkit.binning import BinStats

METRICS = ("ace", "ece", "mce", "dice")
CALIBRATION_METRICS = ("ace", "ece", "mce")


@dataclass(frozen=True)
class CalibrationErrors:
    """ACE, ECE and MCE with the leading shape of the :class:`BinStats` they came from."""

    ace: npt.NDArray[np.float64]
    ece: npt.NDArray[np.float64]
    mce: npt.NDArray[np.float64]


def calibration_errors(stats: BinStats) -> CalibrationErrors:
    """All three marginal L1 calibration errors of per-bin statistics.

    Args:
        stats: statistics of shape ``(..., M)``.

    Returns:
        :class:`CalibrationErrors`, each array of shape ``stats.shape``.

    Example:
        >>> from calibkit.binning import bin_statistics
        >>> stats = bin_statistics([[0.7, 0.3, 0.5, 0.5]], [[0, 1, 1, 0]], n_bins=5)
        >>> errors = calibration_errors(stats)
        >>> [round(float(v[0]), 4) for v in (errors.ace, errors.ece, errors.mce)]
        [0.4667, 0.35, 0.7]
    """
    non_empty = stats.count > 0
    n_non_empty = non_empty.sum(axis=-1)
    n_total = stats.count.sum(axis=-1)
    gap = np.abs(stats.mean_p - stats.mean_y)
    gap_or_zero = np.where(non_empty, gap, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        ace = gap_or_zero.sum(axis=-1) / n_non_empty
        # n_k |pbar_k - ybar_k| = |sum_p_k - sum_y_k|: no per-bin division needed.
        ece = np.abs(stats.sum_p - stats.sum_y).sum(axis=-1) / n_total
    mce = np.where(n_non_empty > 0, np.where(non_empty, gap, -np.inf).max(axis=-1), np.nan)
    empty = n_total == 0
    return CalibrationErrors(
        ace=np.where(empty, np.nan, ace),
        ece=np.where(empty, np.nan, ece),
        mce=np.asarray(mce, dtype=np.float64),
    )


def average_calibration_error(stats: BinStats) -> npt.NDArray[np.float64]:
    """mL1-ACE: mean over non-empty bins of ``|pbar_k - ybar_k|`` (:func:`calibration_errors`)."""
    return calibration_errors(stats).ace


def expected_calibration_error(stats: BinStats) -> npt.NDArray[np.float64]:
    """mL1-ECE: count-weighted mean of ``|pbar_k - ybar_k|`` (:func:`calibration_errors`)."""
    return calibration_errors(stats).ece


def maximum_calibration_error(stats: BinStats) -> npt.NDArray[np.float64]:
    """mL1-MCE: largest ``|pbar_k - ybar_k|`` over non-empty bins (:func:`calibration_errors`)."""
    return calibration_errors(stats).mce


@dataclass(frozen=True)
class OverlapCounts:
    """Voxel counts behind Dice, shape ``(...)`` per class.

    Attributes:
        intersection: ``|P ∩ G|``.
        predicted: ``|P|``.
        truth: ``|G|``.
    """

    intersection: npt.NDArray[np.int64]
    predicted: npt.NDArray[np.int64]
    truth: npt.NDArray[np.int64]

    @property
    def dice(self) -> npt.NDArray[np.float64]:
        """Dice per class; NaN where the ground truth is empty (MONAI ``ignore_empty=True``)."""
        denominator = (self.predicted + self.truth).astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            dice = 2.0 * self.intersection / denominator
        return np.where(self.truth > 0, dice, np.nan)


def overlap_counts(predicted_mask: npt.ArrayLike, target_mask: npt.ArrayLike) -> OverlapCounts:
    """Intersection and sizes of binary masks, per class.

    Args:
        predicted_mask: ``(C, *spatial)`` boolean prediction.
        target_mask: ``(C, *spatial)`` boolean ground truth.

    Returns:
        :class:`OverlapCounts` of shape ``(C,)``.
    """
    predicted = np.asarray(predicted_mask, dtype=bool)
    truth = np.asarray(target_mask, dtype=bool)
    if predicted.shape != truth.shape:
        raise ValueError(f"masks differ in shape: {predicted.shape} vs {truth.shape}")
    axes = tuple(range(1, predicted.ndim))
    return OverlapCounts(
        intersection=np.count_nonzero(predicted & truth, axis=axes).astype(np.int64),
        predicted=np.count_nonzero(predicted, axis=axes).astype(np.int64),
        truth=np.count_nonzero(truth, axis=axes).astype(np.int64),
    )


def dice_score(
    predicted_mask: npt.ArrayLike, target_mask: npt.ArrayLike
) -> npt.NDArray[np.float64]:
    """Dice per class of binary masks ``(C, *spatial)``; NaN where the target is empty.

    Example:
        >>> dice_score([[1, 1, 0, 0]], [[1, 0, 0, 0]]).round(4).tolist()
        [0.6667]
    """
    return overlap_counts(predicted_mask, target_mask).dice


@dataclass(frozen=True)
class MacroSummary:
    """Mean, standard deviation (ddof 1), median and count over images, ignoring NaN."""

    mean: npt.NDArray[np.float64]
    std: npt.NDArray[np.float64]
    median: npt.NDArray[np.float64]
    n: npt.NDArray[np.int64]


def macro_summary(values: npt.ArrayLike, axis: int = 0) -> MacroSummary:
    """Summarise per-image values over images (the paper's dataset numbers).

    Args:
        values: per-image values, images along ``axis``; NaN entries are left out.
        axis: the image axis.

    Returns:
        :class:`MacroSummary`; NaN where fewer than one (mean) or two (std) values exist.
    """
    array = np.asarray(values, dtype=np.float64)
    finite = ~np.isnan(array)
    n = finite.sum(axis=axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        total = np.where(finite, array, 0.0).sum(axis=axis)
        mean = np.where(n > 0, total / np.maximum(n, 1), np.nan)
        deviation = np.where(finite, array - np.expand_dims(mean, axis), 0.0)
        variance = (deviation**2).sum(axis=axis) / (n - 1)
    std = np.where(n > 1, np.sqrt(np.where(n > 1, variance, 0.0)), np.nan)
    median = _nanmedian(array, axis)
    return MacroSummary(mean=mean, std=std, median=median, n=n.astype(np.int64))


def _nanmedian(array: npt.NDArray[np.float64], axis: int) -> npt.NDArray[np.float64]:
    # nanmedian warns on all-NaN slices and returns NaN there, which is what we want.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.asarray(np.nanmedian(array, axis=axis), dtype=np.float64)


def per_image_mean(values: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """Per-image value of a metric: the NaN-mean over classes (last axis)."""
    array = np.asarray(values, dtype=np.float64)
    finite = ~np.isnan(array)
    n = finite.sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, np.where(finite, array, 0.0).sum(axis=-1) / n, np.nan)
