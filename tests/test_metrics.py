"""ACE / ECE / MCE / Dice against MONAI and a plain float64 evaluation (SPEC.md §1)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import edge_probabilities
from monai.metrics import CalibrationErrorMetric, DiceMetric

from calibkit.binning import bin_statistics
from calibkit.metrics import (
    OverlapCounts,
    average_calibration_error,
    calibration_errors,
    dice_score,
    expected_calibration_error,
    macro_summary,
    maximum_calibration_error,
    per_image_mean,
)

CONFORMANCE = [
    # p, y, counts, ace, ece, mce (M = 5), SPEC.md §1
    ([0.7, 0.3, 0.1, 0.9], [1, 0, 0, 1], [1, 1, 0, 1, 1], 0.2, 0.2, 0.3),
    ([0.65, 0.25, 0.15, 0.95], [1, 0, 0, 1], [1, 1, 0, 1, 1], 0.2, 0.2, 0.35),
    ([0.8, 0.2, 0.4, 0.6], [1, 0, 0, 1], [1, 1, 1, 1, 0], 0.3, 0.3, 0.4),
    ([0.7, 0.3, 0.5, 0.5], [0, 1, 1, 0], [0, 1, 2, 1, 0], 0.4667, 0.35, 0.7),
]


@pytest.mark.parametrize(("p", "y", "counts", "ace", "ece", "mce"), CONFORMANCE)
def test_conformance_vectors(p, y, counts, ace, ece, mce) -> None:  # type: ignore[no-untyped-def]
    stats = bin_statistics([p], np.array([y], dtype=bool), 5)
    assert stats.count[0].tolist() == counts
    errors = calibration_errors(stats)
    assert errors.ace[0] == pytest.approx(ace, abs=1e-4)
    assert errors.ece[0] == pytest.approx(ece, abs=1e-6)
    assert errors.mce[0] == pytest.approx(mce, abs=1e-6)


def plain_float64_errors(p: np.ndarray, y: np.ndarray, n_bins: int) -> tuple[float, float, float]:
    """The definition written out plainly, one bin at a time, in float64."""
    edges = torch.linspace(0.0, 1.0 + torch.finfo(torch.float32).eps, n_bins + 1).numpy()
    p32 = p.astype(np.float32).ravel()
    truth = y.astype(np.float64).ravel()
    gaps, weights = [], []
    for k in range(n_bins):
        if k == 0:
            members = p32 <= edges[1]
        elif k == n_bins - 1:
            members = p32 > edges[k]
        else:
            members = (p32 > edges[k]) & (p32 <= edges[k + 1])
        if members.any():
            gap = abs(p32[members].astype(np.float64).mean() - truth[members].mean())
            gaps.append(gap)
            weights.append(members.sum())
    if not gaps:
        return (np.nan, np.nan, np.nan)
    gaps_array = np.array(gaps)
    ece = float((gaps_array * np.array(weights)).sum() / p32.size)
    return float(gaps_array.mean()), ece, float(gaps_array.max())


def monai_errors(p: np.ndarray, y: np.ndarray, n_bins: int) -> np.ndarray:
    """MONAI's three reductions for (B, C, *spatial) inputs -> (3, B, C)."""
    out = []
    for reduction in ("average", "expected", "maximum"):
        metric = CalibrationErrorMetric(
            num_bins=n_bins,
            include_background=True,
            calibration_reduction=reduction,
            metric_reduction="none",
        )
        out.append(
            metric(y_pred=torch.from_numpy(p), y=torch.from_numpy(y.astype(np.float32))).numpy()
        )
    return np.stack(out)


def random_case(rng: np.random.Generator, n_bins: int, kind: str) -> tuple[np.ndarray, np.ndarray]:
    shape = (2, 3, 9, 10, 11)
    if kind == "uniform":
        p = rng.random(shape, dtype=np.float32)
    elif kind == "edges":
        p = rng.choice(edge_probabilities(n_bins), size=shape).astype(np.float32)
    elif kind == "extremes":
        p = rng.choice(np.array([0.0, 1.0], np.float32), size=shape)
    else:  # over-confident: piles near 0 and 1, many empty middle bins
        p = (rng.random(shape) ** 8).astype(np.float32)
        p = np.where(rng.random(shape) < 0.5, p, 1 - p).astype(np.float32)
    y = rng.random(shape) < np.clip(p * 0.8 + 0.1, 0, 1)
    y[1, 2] = False  # an empty class
    return p, y


@pytest.mark.parametrize("n_bins", [1, 5, 20, 100])
@pytest.mark.parametrize("kind", ["uniform", "edges", "extremes", "overconfident"])
def test_matches_monai_and_plain_definition(n_bins: int, kind: str) -> None:
    rng = np.random.default_rng(n_bins * 31 + len(kind))
    p, y = random_case(rng, n_bins, kind)
    expected_monai = monai_errors(p, y, n_bins)
    for b in range(p.shape[0]):
        stats = bin_statistics(p[b], y[b], n_bins)
        errors = calibration_errors(stats)
        ours = np.stack([errors.ace, errors.ece, errors.mce])
        np.testing.assert_allclose(ours, expected_monai[:, b], atol=1e-5, rtol=0)
        for c in range(p.shape[1]):
            plain = plain_float64_errors(p[b, c], y[b, c], n_bins)
            np.testing.assert_allclose(ours[:, c], plain, atol=1e-9, rtol=0)


@pytest.mark.parametrize("n_bins", [5, 20])
def test_bin_counts_identical_to_monai(n_bins: int, rng: np.random.Generator) -> None:
    from monai.metrics.calibration import calibration_binning

    p, y = random_case(rng, n_bins, "edges")
    _, _, monai_counts = calibration_binning(
        torch.from_numpy(p), torch.from_numpy(y.astype(np.float32)), n_bins
    )
    for b in range(p.shape[0]):
        stats = bin_statistics(p[b], y[b], n_bins)
        np.testing.assert_array_equal(stats.count, monai_counts[b].numpy().astype(np.int64))


def test_empty_image_is_nan() -> None:
    stats = bin_statistics(np.zeros((1, 0), np.float32), np.zeros((1, 0), bool), 20)
    errors = calibration_errors(stats)
    assert np.isnan(errors.ace).all() and np.isnan(errors.ece).all() and np.isnan(errors.mce).all()


def test_absent_class_has_finite_calibration() -> None:
    p = np.array([[0.1, 0.6, 0.9]], np.float32)
    stats = bin_statistics(p, np.zeros_like(p, dtype=bool), 5)
    errors = calibration_errors(stats)
    assert np.isfinite(errors.ace[0])
    assert errors.ece[0] == pytest.approx(p.astype(np.float64).mean())


def test_single_reduction_functions_agree(rng: np.random.Generator) -> None:
    stats = bin_statistics(rng.random((2, 100)), rng.random((2, 100)) < 0.5, 10)
    errors = calibration_errors(stats)
    np.testing.assert_array_equal(average_calibration_error(stats), errors.ace)
    np.testing.assert_array_equal(expected_calibration_error(stats), errors.ece)
    np.testing.assert_array_equal(maximum_calibration_error(stats), errors.mce)


def test_dice_matches_monai(rng: np.random.Generator) -> None:
    p = rng.random((4, 3, 8, 8, 8), dtype=np.float32)
    y = rng.random((4, 3, 8, 8, 8)) < 0.3
    y[0, 1] = False  # empty ground truth: NaN
    p[1, 2] = 0.0  # empty prediction, non-empty truth: 0
    predicted = p >= 0.5
    metric = DiceMetric(include_background=True, reduction="none", ignore_empty=True)
    expected = metric(
        y_pred=torch.from_numpy(predicted.astype(np.float32)),
        y=torch.from_numpy(y.astype(np.float32)),
    ).numpy()
    ours = np.stack([dice_score(predicted[b], y[b]) for b in range(4)])
    np.testing.assert_allclose(ours, expected, atol=1e-6, equal_nan=True)
    assert np.isnan(ours[0, 1]) and ours[1, 2] == 0.0


def test_overlap_counts_dice() -> None:
    counts = OverlapCounts(np.array([3, 0]), np.array([4, 2]), np.array([5, 0]))
    np.testing.assert_allclose(counts.dice, [6 / 9, np.nan])


def test_macro_summary_and_per_image_mean(rng: np.random.Generator) -> None:
    values = rng.random((10, 3))
    values[2, 1] = np.nan
    summary = macro_summary(values)
    np.testing.assert_allclose(summary.mean, np.nanmean(values, axis=0))
    np.testing.assert_allclose(summary.std, np.nanstd(values, axis=0, ddof=1))
    np.testing.assert_allclose(summary.median, np.nanmedian(values, axis=0))
    assert summary.n.tolist() == [10, 9, 10]
    np.testing.assert_allclose(per_image_mean(values), np.nanmean(values, axis=1))
    single = macro_summary(np.array([0.5]))
    assert single.mean == 0.5 and np.isnan(single.std)
