"""Hard binning of probabilities into per-bin statistics (numpy reference backend).

Shapes and rules follow SPEC.md §1 and match ``monai.metrics.CalibrationErrorMetric``
bit for bit:

* ``M`` bins with edges ``torch.linspace(0, 1 + eps, M + 1)`` in float32
  (:func:`bin_edges` reproduces torch's values exactly; numpy's ``linspace`` differs);
* bins are closed on the right: voxel ``i`` goes to bin ``k`` with
  ``e_k < p_i <= e_{k+1}``; bin 0 also takes ``p <= e_1`` and bin ``M - 1``
  everything above ``e_{M-1}``;
* probabilities are cast to float32 before binning, sums accumulate in float64.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

DEFAULT_N_BINS = 20
# Voxels processed per step: temporaries stay in the L2 cache (2x faster than 1 << 18)
# and memory stays bounded whatever the volume size.
CHUNK_VOXELS = 1 << 16

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
    _check_n_bins(n_bins)
    return _bin_edges_cached(int(n_bins))


def assign_bins(probabilities: npt.ArrayLike, n_bins: int = DEFAULT_N_BINS) -> npt.NDArray[np.intp]:
    """Bin index of every probability, by the right-closed rule (reference implementation).

    Args:
        probabilities: values of any shape; cast to float32 first.
        n_bins: number of bins ``M``.

    Returns:
        Integer bin indices in ``[0, M - 1]``, same shape as the input.

    Example:
        >>> assign_bins([0.0, 0.05, 0.0500001, 0.5, 1.0], n_bins=20).tolist()
        [0, 0, 1, 9, 19]
    """
    values = np.asarray(probabilities, dtype=np.float32)
    inner_edges = bin_edges(n_bins)[1:-1]
    # side="left" counts the inner edges strictly below p: e_k < p <= e_{k+1} -> k.
    return np.searchsorted(inner_edges, values, side="left")


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


Kernel = Literal["auto", "numba", "numpy"]


def bin_statistics(
    probabilities: npt.ArrayLike,
    targets: npt.ArrayLike,
    n_bins: int = DEFAULT_N_BINS,
    *,
    kernel: Kernel = "auto",
) -> BinStats:
    """Per-class bin statistics of one image (CPU).

    Two kernels give the same bins: a compiled one (numba, one pass over the
    probabilities, parallel over chunks) and the numpy reference. Memory stays
    bounded either way: no float64 copy of the volume is made.

    Args:
        probabilities: ``(C, *spatial)`` probabilities (any float dtype, cast to
            float32; values outside [0, 1] land in the first / last bin).
        targets: ``(C, *spatial)`` targets of the same shape, binary (bool or 0/1)
            or, in general, real values whose per-bin mean is the observed frequency.
        n_bins: number of bins ``M``.
        kernel: ``"numba"``, ``"numpy"``, or ``"auto"`` (numba when installed and the
            targets are binary).

    Returns:
        :class:`BinStats` with arrays of shape ``(C, M)``.

    Example:
        >>> stats = bin_statistics([[0.7, 0.3, 0.1, 0.9]], [[1, 0, 0, 1]], n_bins=5)
        >>> stats.count.tolist()
        [[1, 1, 0, 1, 1]]
    """
    _check_n_bins(n_bins)
    probs = np.asarray(probabilities)
    truth = np.asarray(targets)
    if probs.shape != truth.shape:
        raise ValueError(f"probabilities {probs.shape} and targets {truth.shape} differ in shape")
    if probs.ndim < 1:
        raise ValueError("probabilities need a leading class axis: (C, *spatial)")
    n_classes = probs.shape[0]
    count = np.zeros((n_classes, n_bins), dtype=np.int64)
    sum_p = np.zeros((n_classes, n_bins), dtype=np.float64)
    sum_y = np.zeros((n_classes, n_bins), dtype=np.float64)
    binner = _ChunkBinner(n_bins)
    compiled = _compiled_kernel(kernel, truth.dtype, n_bins)
    flat = [flatten_alike(probs[c], truth[c]) for c in range(n_classes)]
    if compiled is not None:
        p_rows, y_rows = _as_rows([p for p, _ in flat]), _as_rows([y for _, y in flat])
        if p_rows is not None and y_rows is not None and p_rows.dtype == np.float32:
            row_results = compiled(p_rows, y_rows, n_bins)  # one launch for all classes
        else:  # one class at a time, so that at most one class is ever copied
            row_results = [
                compiled(
                    np.ascontiguousarray(p, dtype=np.float32)[None],
                    np.ascontiguousarray(y)[None],
                    n_bins,
                )[0]
                for p, y in flat
            ]
        for c, result in enumerate(row_results):
            count[c], sum_p[c], sum_y[c] = result.count, result.sum_p, result.sum_y
        return BinStats(count, sum_p, sum_y)
    for c, (flat_p, flat_y) in enumerate(flat):
        for start in range(0, flat_p.size, CHUNK_VOXELS):
            binner.add(
                flat_p[start : start + CHUNK_VOXELS],
                flat_y[start : start + CHUNK_VOXELS],
                count[c],
                sum_p[c],
                sum_y[c],
            )
    return BinStats(count, sum_p, sum_y)


def _as_rows(rows: list[npt.NDArray[Any]]) -> npt.NDArray[Any] | None:
    """Contiguous flat rows at equal distances in one buffer as one ``(rows, n)`` view.

    The classes of a C- or Fortran-ordered volume are such rows; None for anything
    else, including no rows (no copy is made).
    """
    if not rows or not all(row.flags.c_contiguous for row in rows):
        return None
    first = rows[0]
    if len(rows) == 1:
        return first[None]
    if len({id(_root(row)) for row in rows}) != 1:
        return None  # separate allocations, even if evenly spaced
    step = rows[1].ctypes.data - first.ctypes.data
    if step == 0 or any(
        row.ctypes.data - first.ctypes.data != i * step for i, row in enumerate(rows)
    ):
        return None
    view: npt.NDArray[Any] = np.lib.stride_tricks.as_strided(
        first, shape=(len(rows), first.size), strides=(step, first.itemsize), writeable=False
    )
    return view


def _root(array: npt.NDArray[Any]) -> object:
    """The object that owns an array's memory (the end of its ``base`` chain)."""
    owner: object = array
    while isinstance(owner, np.ndarray) and owner.base is not None:
        owner = owner.base
    return owner


def _compiled_kernel(kernel: Kernel, target_dtype: np.dtype[Any], n_bins: int) -> Any:
    """The numba kernel when it should and can be used, else None (numpy path)."""
    if kernel not in ("auto", "numba", "numpy"):
        raise ValueError(f"kernel must be 'auto', 'numba' or 'numpy', got {kernel!r}")
    if kernel == "numpy" or (kernel == "auto" and target_dtype != np.bool_):
        return None
    if target_dtype != np.bool_:
        raise ValueError("the numba kernel needs boolean targets; use kernel='numpy'")
    if kernel == "auto" and not numba_available():
        return None
    from calibkit._kernels import bin_rows, supports

    if not supports(n_bins):
        if kernel == "numba":
            raise ValueError(f"the numba kernel supports up to about 400,000 bins, got {n_bins}")
        return None
    return bin_rows


def dense_values(array: npt.NDArray[Any]) -> npt.NDArray[Any] | None:
    """The values of ``array`` as a flat view in memory order, or None if that needs a copy."""
    order = np.argsort(array.strides)
    expected = array.itemsize
    for axis in order:
        if array.shape[axis] > 1 and array.strides[axis] != expected:
            return None
        expected *= array.shape[axis]
    flat: npt.NDArray[Any] = array.ravel(order="K")
    return flat


@lru_cache(maxsize=1)
def numba_available() -> bool:
    """Whether the compiled kernel can be used (numba is installed)."""
    import importlib.util

    return importlib.util.find_spec("numba") is not None


class _ChunkBinner:
    """Bins one chunk at a time into accumulators; reuses its scratch buffers."""

    def __init__(self, n_bins: int) -> None:
        self.n_bins = n_bins
        edges = bin_edges(n_bins)
        self.lower = edges[:-1].copy()
        self.upper = edges[1:].copy()
        self.scale = np.float32(n_bins)

    def bin_index(self, p: npt.NDArray[np.float32]) -> npt.NDArray[np.intp]:
        # Multiply-and-correct: floor(p * M) is at most one bin off the exact rule;
        # one comparison against each neighbouring edge fixes it (the searchsorted
        # reference in assign_bins is about 3x slower).
        scaled = p * self.scale
        np.nan_to_num(scaled, copy=False, nan=0.0)
        np.clip(scaled, 0, self.n_bins - 1, out=scaled)
        index = scaled.astype(np.intp)
        index += p > self.upper[index]
        np.minimum(index, self.n_bins - 1, out=index)
        index -= p <= self.lower[index]
        np.maximum(index, 0, out=index)
        return index

    def add(
        self,
        p_chunk: npt.NDArray[np.generic],
        y_chunk: npt.NDArray[np.generic],
        count: npt.NDArray[np.int64],
        sum_p: npt.NDArray[np.float64],
        sum_y: npt.NDArray[np.float64],
    ) -> None:
        p = p_chunk.astype(np.float32, copy=False)
        index = self.bin_index(p)
        sum_p += np.bincount(index, weights=p, minlength=self.n_bins)
        if y_chunk.dtype == np.bool_:
            # One integer bincount on (bin, y) gives both counts and positives.
            pair_counts = np.bincount(index * 2 + y_chunk.view(np.uint8), minlength=2 * self.n_bins)
            positives = pair_counts[1::2]
            count += pair_counts[0::2] + positives
            sum_y += positives
        else:
            count += np.bincount(index, minlength=self.n_bins)
            sum_y += np.bincount(index, weights=y_chunk.astype(np.float64), minlength=self.n_bins)


def flatten_alike(
    p: npt.NDArray[np.generic], y: npt.NDArray[np.generic]
) -> tuple[npt.NDArray[np.generic], npt.NDArray[np.generic]]:
    """Both arrays flattened in the same voxel order, the one that avoids copies.

    NIfTI volumes arrive Fortran-ordered.
    """
    order: Literal["C", "F"] = (
        "F" if p.flags.f_contiguous and y.flags.f_contiguous and p.ndim > 1 else "C"
    )
    return p.ravel(order=order), y.ravel(order=order)


def _safe_divide(
    numerator: npt.NDArray[np.float64], count: npt.NDArray[np.int64]
) -> npt.NDArray[np.float64]:
    out = np.full(numerator.shape, np.nan, dtype=np.float64)
    np.divide(numerator, count, out=out, where=count > 0)
    return out


def _check_n_bins(n_bins: int) -> None:
    if int(n_bins) != n_bins or n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer, got {n_bins!r}")
