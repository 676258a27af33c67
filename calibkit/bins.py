"""The bins themselves: their edges, their default number, and per-bin statistics.

The lowest layer of binning, numpy only: :mod:`calibkit.binning` (which picks a
kernel), the compiled kernel :mod:`calibkit._kernels` and the torch backend
:mod:`calibkit.binning_torch` all build on it, and :mod:`calibkit.binning`
re-exports everything here.

Edges follow SPEC.md §1 and match ``monai.metrics.CalibrationErrorMetric`` bit for
bit: ``M`` bins with edges ``torch.linspace(0, 1 + eps, M + 1)`` in float32
(:func:`bin_edges` reproduces torch's values exactly; numpy's ``linspace`` differs).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import numpy.typing as npt

DEFAULT_N_BINS = 20

_FLOAT32_EPS = np.finfo(np.float32).eps


@lru_cache(maxsize=64)
def _bin_edges_cached(n_bins: int) -> npt.NDArray[np.float32]:
    # torch.linspace on the CPU: step = (end - start) / (steps - 1) in float32, then
    # start + step * i for the first half and end - step * (steps - 1 - i) for the
    # second, each rounded once to float32 (a fused multiply-add). The float64
    # products below are exact, so casting once reproduces that rounding.
    steps = n_bins + 1
    end = np.float32(1.0) + _FLOAT32_EPS
    step = np.float64(np.float32(end / np.float32(n_bins)))
    index = np.arange(steps, dtype=np.float64)
    first_half = index < steps // 2
    edges = np.where(first_half, step * index, np.float64(end) - step * (n_bins - index))
    edges = edges.astype(np.float32)
    edges.setflags(write=False)
    return edges


def bin_edges(n_bins: int = DEFAULT_N_BINS) -> npt.NDArray[np.float32]:
    """Bin edges ``e_0 .. e_M``, equal to ``torch.linspace(0, 1 + eps, M + 1)``.

    Args:
        n_bins: number of bins ``M`` (at least 1).

    Returns:
        A read-only float32 array of ``M + 1`` edges.

    Example:
        >>> bin_edges(4).tolist()  # k (1 + eps) / M in float32, not k / M
        [0.0, 0.2500000298023224, 0.5000000596046448, 0.7500001192092896, 1.0000001192092896]
    """
    check_n_bins(n_bins)
    return _bin_edges_cached(int(n_bins))


@dataclass(frozen=True)
class BinStats:
    """Per-bin sufficient statistics: everything the calibration metrics need.

    All three arrays share a shape ``(..., M)``; the leading axes are usually
    ``(classes,)`` for one image or ``(cases, classes)`` for a data set.

    Attributes:
        count: number of voxels per bin (int64).
        sum_p: sum of the float32 probabilities per bin (float64).
        sum_y: sum of the targets per bin, the positives for binary targets (float64).
    """

    count: npt.NDArray[np.int64]
    sum_p: npt.NDArray[np.float64]
    sum_y: npt.NDArray[np.float64]

    def __post_init__(self) -> None:
        if not (self.count.shape == self.sum_p.shape == self.sum_y.shape):
            raise ValueError(
                "count, sum_p and sum_y must have one shape, got "
                f"{self.count.shape}, {self.sum_p.shape}, {self.sum_y.shape}"
            )
        if self.count.ndim < 1:
            raise ValueError("BinStats arrays need a last axis of bins")

    @property
    def n_bins(self) -> int:
        """Number of bins ``M``."""
        return int(self.count.shape[-1])

    @property
    def shape(self) -> tuple[int, ...]:
        """Leading shape (without the bin axis)."""
        return tuple(self.count.shape[:-1])

    @property
    def mean_p(self) -> npt.NDArray[np.float64]:
        """Mean predicted probability per bin; NaN for empty bins."""
        return _safe_divide(self.sum_p, self.count)

    @property
    def mean_y(self) -> npt.NDArray[np.float64]:
        """Observed frequency per bin; NaN for empty bins."""
        return _safe_divide(self.sum_y, self.count)

    def __getitem__(self, index: Any) -> BinStats:
        """Select along the leading axes, e.g. ``stats[case, class_index]``."""
        return BinStats(self.count[index], self.sum_p[index], self.sum_y[index])

    def pooled(self, axis: int = 0) -> BinStats:
        """Sum the statistics over a leading axis (dataset-level, 'pooled' binning)."""
        if axis < 0:
            axis += self.count.ndim - 1
        if not 0 <= axis < self.count.ndim - 1:
            raise ValueError("pooled() sums over a leading axis, not the bin axis")
        return BinStats(
            self.count.sum(axis=axis), self.sum_p.sum(axis=axis), self.sum_y.sum(axis=axis)
        )

    @staticmethod
    def stack(items: list[BinStats]) -> BinStats:
        """Stack equally shaped statistics along a new first axis (one item per case)."""
        if not items:
            raise ValueError("stack() needs at least one BinStats")
        return BinStats(
            np.stack([item.count for item in items]),
            np.stack([item.sum_p for item in items]),
            np.stack([item.sum_y for item in items]),
        )


def _safe_divide(
    numerator: npt.NDArray[np.float64], count: npt.NDArray[np.int64]
) -> npt.NDArray[np.float64]:
    out = np.full(numerator.shape, np.nan, dtype=np.float64)
    np.divide(numerator, count, out=out, where=count > 0)
    return out


def check_n_bins(n_bins: int) -> None:
    """Raise ValueError unless ``n_bins`` is a positive integer."""
    if int(n_bins) != n_bins or n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer, got {n_bins!r}")
