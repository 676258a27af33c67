"""Compiled (numba) voxel loops of the soft-binned loss on the CPU: sums and gradient.

Imported lazily by :mod:`calibkit.losses._bin_sums` (numba costs about 0.5 s to
import) for CPU tensors. Each voxel is read once: :func:`add_soft_sums` adds its
share of the six per-bin sums of :class:`~calibkit.losses._bin_sums._SoftBinSums`
in one pass, and :func:`soft_gradient` writes its gradient in one pass, with no
temporaries the size of the volume (the torch loop makes about a dozen).

The arithmetic mirrors the torch loop step by step in the binning dtype (float32,
or float64 for float64 input): the bin position and the fraction of each voxel
are the same numbers, and each gradient value takes the same operations from the
per-bin tables. Products of a weight and a value are formed and added in float64
(exact for float32 factors), where the torch loop rounds them to float32 and sums
chunks in float32 first.

Both kernels are compiled for float32 and float64 (any strides) when this module is
first imported, and numba caches them on disk: the first process after an install
spends some seconds compiling, later ones load them.

Determinism: each (image, class) row is cut into fixed blocks, each block is summed
in order into its own accumulators, and the blocks are added in block order, so
the sums do not depend on how many threads ran.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numba
import numpy as np
import numpy.typing as npt
import torch

# Importing it picks numba's threading layer (before any parallel kernel here is
# compiled or run); its launch lock is shared with the binning kernels.
from calibkit import _kernels

# Voxels per parallel task and per set of accumulators: a 96^3 row splits into enough
# tasks for every thread, and the accumulators (6 x M float64) cost nothing.
BLOCK = 1 << 14

# Voxels per step within a task: their bins and fractions are found in one loop that
# the compiler vectorises, then added in a second one; both stay in L1.
STEP = 256

# Indices of the binning-dtype constants passed to the kernels.
_SCALE, _HALF, _ONE, _ZERO, _TOP, _LAST_CENTRE = range(6)


def _constants(n_bins: int, scale: float, dtype: npt.DTypeLike) -> npt.NDArray[Any]:
    """The numbers the kernels compute and compare with, in the binning dtype.

    ``scale`` is ``M / (1 + eps)``: a voxel sits at ``t = p * scale - 0.5`` in
    bin-centre units, the torch loop's ``p * (n_bins / _bin_width_scale(n_bins))``.
    """
    return np.array([scale, 0.5, 1.0, 0.0, n_bins - 1, n_bins - 0.5], dtype=dtype)


@numba.njit(cache=True, nogil=True, inline="always")
def _position(  # pragma: no cover - compiled
    value: Any, constants: npt.NDArray[Any], top_left: int
) -> tuple[int, Any, bool]:
    """Left bin, fraction sent to the right bin, and whether the weights depend on p.

    Step by step as ``_soft_position`` and ``_inside_centres`` in the torch loop:
    ``t = p * scale``; inside when ``0.5 < t < M - 0.5``; ``t - 0.5`` with NaN to 0,
    clamped to ``[0, M - 1]``; the left bin is its floor, at most ``M - 2``
    (``top_left``, 0 for one bin). ``t`` is not negative there, so ``int`` is the floor.
    """
    scaled = value * constants[_SCALE]
    inside = (scaled > constants[_HALF]) & (scaled < constants[_LAST_CENTRE])
    t = scaled - constants[_HALF]
    t = t if t > constants[_ZERO] else constants[_ZERO]  # negative or NaN: 0
    t = t if t < constants[_TOP] else constants[_TOP]
    left = min(int(t), top_left)
    return left, t - constants.dtype.type(left), inside


@numba.njit(cache=True, nogil=True)
def _block_sums(  # pragma: no cover - compiled
    p: npt.NDArray[Any], y: npt.NDArray[Any], constants: npt.NDArray[Any], acc: npt.NDArray[Any]
) -> None:
    """Add the left- and right-bin sums of one block of a row's voxels to ``acc`` (6, M)."""
    top_left = max(acc.shape[1] - 2, 0)
    lefts = np.empty(STEP, dtype=np.int64)
    fractions = np.empty(STEP, dtype=constants.dtype)
    for start in range(0, p.size, STEP):
        size = min(STEP, p.size - start)
        for j in range(size):
            left, fraction, _ = _position(p[start + j], constants, top_left)
            lefts[j] = left
            fractions[j] = fraction
        for j in range(size):
            left = lefts[j]
            w_right = np.float64(fractions[j])
            w_left = np.float64(constants[_ONE] - fractions[j])
            p64 = np.float64(p[start + j])
            y64 = np.float64(y[start + j])
            acc[0, left] += w_left
            acc[1, left] += w_right
            acc[2, left] += w_left * p64
            acc[3, left] += w_right * p64
            acc[4, left] += w_left * y64
            acc[5, left] += w_right * y64


@numba.njit(cache=True, nogil=True)
def _add_in_order(  # pragma: no cover - compiled
    block_sums: npt.NDArray[np.float64], n_blocks: int, totals: npt.NDArray[np.float64]
) -> None:
    # A function of its own: array arithmetic inside a parallel=True function becomes
    # a parallel launch of its own, one per block here.
    for task in range(block_sums.shape[0]):
        totals[task // n_blocks] += block_sums[task]


@numba.njit(
    [
        "void(f4[:, :, :], f4[:, :, :], f4[:], f8[:, :, :])",
        "void(f8[:, :, :], f8[:, :, :], f8[:], f8[:, :, :])",
    ],
    cache=True,
    nogil=True,
    parallel=True,
)
def _add_soft_sums(  # pragma: no cover - compiled
    p: npt.NDArray[Any],
    y: npt.NDArray[Any],
    constants: npt.NDArray[Any],
    totals: npt.NDArray[np.float64],
) -> None:
    """Add the (B, C, S) voxels' left- and right-bin sums to ``totals`` (B * C, 6, M).

    ``totals[pair, :, k]`` holds, over the voxels whose left bin is k, the sums of
    ``w_l, w_r, w_l p, w_r p, w_l y, w_r y`` with ``w_r`` the fraction and
    ``w_l = 1 - w_r``. One parallel loop over every (row, block) pair; the block
    sums are added in block order.
    """
    batch, classes, n_voxels = p.shape
    n_blocks = (n_voxels + BLOCK - 1) // BLOCK
    n_tasks = batch * classes * n_blocks
    block_sums = np.zeros((n_tasks, 6, totals.shape[2]), dtype=np.float64)
    for task in numba.prange(n_tasks):
        pair = task // n_blocks
        b, c = pair // classes, pair % classes
        start = (task % n_blocks) * BLOCK
        stop = min(start + BLOCK, n_voxels)
        _block_sums(p[b, c, start:stop], y[b, c, start:stop], constants, block_sums[task])
    _add_in_order(block_sums, n_blocks, totals)


@numba.njit(cache=True, nogil=True)
def _block_gradient(  # pragma: no cover - compiled
    p: npt.NDArray[Any],
    y: npt.NDArray[Any],
    table: npt.NDArray[Any],
    constants: npt.NDArray[Any],
    grad: npt.NDArray[Any],
) -> None:
    """The gradient of one block of a row's voxels, with that row's ``table`` (4, M)."""
    top_left = max(table.shape[1] - 2, 0)
    for i in range(p.size):
        value = p[i]
        left, fraction, inside = _position(value, constants, top_left)
        d_wp = table[1, left]
        out = table[0, left] + value * d_wp
        out = out + y[i] * table[2, left]
        out = out * (constants[_ONE] if inside else constants[_ZERO])
        out = out * constants[_SCALE]
        out = out + table[3, left]
        grad[i] = out + fraction * d_wp


@numba.njit(
    [
        "void(f4[:, :, :], f4[:, :, :], f4[:, :, :], f4[:], f4[:, :, :])",
        "void(f8[:, :, :], f8[:, :, :], f8[:, :, :], f8[:], f8[:, :, :])",
    ],
    cache=True,
    nogil=True,
    parallel=True,
)
def _soft_gradient(  # pragma: no cover - compiled
    p: npt.NDArray[Any],
    y: npt.NDArray[Any],
    tables: npt.NDArray[Any],
    constants: npt.NDArray[Any],
    grad: npt.NDArray[Any],
) -> None:
    """Write dL/dp of the (B, C, S) voxels into ``grad``.

    ``tables[pair]`` holds per left bin j: ``g_w[j+1] - g_w[j]``, the same for
    ``g_wp`` and ``g_wy``, and ``g_wp[j]`` (the upstream gradients of the three
    sums); the value is the torch loop's
    ``inside * slope * (dgw + p dgwp + y dgwy) + gwp_j + f dgwp``, in its order.
    """
    batch, classes, n_voxels = p.shape
    n_blocks = (n_voxels + BLOCK - 1) // BLOCK
    for task in numba.prange(batch * classes * n_blocks):
        pair = task // n_blocks
        b, c = pair // classes, pair % classes
        start = (task % n_blocks) * BLOCK
        stop = min(start + BLOCK, n_voxels)
        _block_gradient(
            p[b, c, start:stop],
            y[b, c, start:stop],
            tables[pair],
            constants,
            grad[b, c, start:stop],
        )


def add_soft_sums(
    p: npt.NDArray[Any], y: npt.NDArray[Any], n_bins: int, scale: float, totals: npt.NDArray[Any]
) -> None:
    """Add the soft sums of (B, C, S) ``p`` and ``y`` to ``totals`` (B * C, 6, M).

    ``p`` and ``y`` share one dtype, float32 or float64; ``scale`` is
    ``M / (1 + eps)``.
    """
    constants = _constants(n_bins, scale, p.dtype)
    with _launch(threads_like_torch()):
        _add_soft_sums(p, y, constants, totals)


def soft_gradient(
    p: npt.NDArray[Any],
    y: npt.NDArray[Any],
    tables: npt.NDArray[Any],
    n_bins: int,
    scale: float,
    grad: npt.NDArray[Any],
) -> None:
    """Write the gradient of (B, C, S) ``p`` into ``grad``, from ``tables`` (B * C, 4, M).

    All arrays share one dtype, float32 or float64.
    """
    constants = _constants(n_bins, scale, p.dtype)
    with _launch(threads_like_torch()):
        _soft_gradient(p, y, tables, constants, grad)


def threads_like_torch() -> int:
    """torch's CPU thread count, within numba's: the loss uses the threads training has."""
    numba_threads: int = numba.config.NUMBA_NUM_THREADS  # type: ignore[attr-defined]
    return max(1, min(torch.get_num_threads(), numba_threads))


@contextmanager
def _launch(threads: int) -> Iterator[None]:
    """Hold the compiled kernels' launch lock and run on ``threads`` numba threads."""
    with _kernels._LAUNCH_LOCK:
        previous = numba.get_num_threads()
        numba.set_num_threads(threads)
        try:
            yield
        finally:
            numba.set_num_threads(previous)
