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

Both kernels are compiled for float32 and float64 (any strides) on first use
(:func:`compile_all`, which ``calibkit prebuild`` runs at install time) and cached
on disk where :mod:`calibkit._kernel_cache` says (a read-only install included):
only the first process after an install compiles them. They run on
:func:`calibkit._kernels._run_on_threads` (calibkit's helper threads, as the
binning kernels do; no numba parallel launch), on torch's thread count.

Determinism: each (image, class) row is cut into fixed blocks, each block is summed
in order into its own accumulators, and the blocks are added in block order, so
the sums do not depend on how many threads ran.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numba
import numpy as np
import numpy.typing as npt
import torch

# The helper threads and the cache of the binning kernels, shared.
from calibkit import _kernel_cache, _kernels

# Voxels per task and per set of accumulators: a 96^3 row splits into enough
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


@numba.njit(cache=False, nogil=True, inline="always")
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


@numba.njit(cache=False, nogil=True)
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


@numba.njit(cache=False, nogil=True)
def _add_in_order(  # pragma: no cover - compiled
    block_sums: npt.NDArray[np.float64], n_blocks: int, totals: npt.NDArray[np.float64]
) -> None:
    """Add the block sums to their rows' totals, in block order (any thread count)."""
    for task in range(block_sums.shape[0]):
        totals[task // n_blocks] += block_sums[task]


@numba.njit(cache=False, nogil=True)
def _soft_sum_tasks(  # pragma: no cover - compiled
    p: npt.NDArray[Any],
    y: npt.NDArray[Any],
    constants: npt.NDArray[Any],
    block_sums: npt.NDArray[np.float64],
    first: int,
    step: int,
) -> None:
    """Sum the (row, block) tasks ``first, first + step, ...`` of (B, C, S) ``p`` and ``y``.

    Task ``t`` adds, over the voxels of its block whose left bin is k, the sums of
    ``w_l, w_r, w_l p, w_r p, w_l y, w_r y`` (``w_r`` the fraction, ``w_l = 1 - w_r``)
    into ``block_sums[t, :, k]``; each task writes only its own accumulators.
    """
    _, classes, n_voxels = p.shape
    n_blocks = (n_voxels + BLOCK - 1) // BLOCK
    for task in range(first, block_sums.shape[0], step):
        pair = task // n_blocks
        b, c = pair // classes, pair % classes
        start = (task % n_blocks) * BLOCK
        stop = min(start + BLOCK, n_voxels)
        _block_sums(p[b, c, start:stop], y[b, c, start:stop], constants, block_sums[task])


@numba.njit(cache=False, nogil=True)
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


@numba.njit(cache=False, nogil=True)
def _soft_gradient_tasks(  # pragma: no cover - compiled
    p: npt.NDArray[Any],
    y: npt.NDArray[Any],
    tables: npt.NDArray[Any],
    constants: npt.NDArray[Any],
    grad: npt.NDArray[Any],
    first: int,
    step: int,
) -> None:
    """Write dL/dp of the (row, block) tasks ``first, first + step, ...`` into ``grad``.

    ``tables[pair]`` holds per left bin j: ``g_w[j+1] - g_w[j]``, the same for
    ``g_wp`` and ``g_wy``, and ``g_wp[j]`` (the upstream gradients of the three
    sums); the value is the torch loop's
    ``inside * slope * (dgw + p dgwp + y dgwy) + gwp_j + f dgwp``, in its order.
    """
    batch, classes, n_voxels = p.shape
    n_blocks = (n_voxels + BLOCK - 1) // BLOCK
    for task in range(first, batch * classes * n_blocks, step):
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
    compile_all()
    constants = _constants(n_bins, scale, p.dtype)
    batch, classes, n_voxels = p.shape
    n_blocks = (n_voxels + BLOCK - 1) // BLOCK
    block_sums = np.zeros((batch * classes * n_blocks, 6, totals.shape[2]), dtype=np.float64)
    _kernels._run_on_threads(
        lambda first, step: _soft_sum_tasks(p, y, constants, block_sums, first, step),
        block_sums.shape[0],
        n_threads=threads_like_torch(),
    )
    _add_in_order(block_sums, n_blocks, totals)


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
    compile_all()
    constants = _constants(n_bins, scale, p.dtype)
    batch, classes, n_voxels = p.shape
    n_tasks = batch * classes * ((n_voxels + BLOCK - 1) // BLOCK)
    _kernels._run_on_threads(
        lambda first, step: _soft_gradient_tasks(p, y, tables, constants, grad, first, step),
        n_tasks,
        n_threads=threads_like_torch(),
    )


def threads_like_torch() -> int:
    """torch's CPU thread count, within numba's: the loss uses the threads training has."""
    numba_threads: int = numba.config.NUMBA_NUM_THREADS  # type: ignore[attr-defined]
    return max(1, min(torch.get_num_threads(), numba_threads))


# The versions the wrappers call: float32 or float64, any strides (torch slices).
_SIGNATURES: dict[Any, tuple[str, ...]] = {
    _soft_sum_tasks: (
        "void(f4[:, :, :], f4[:, :, :], f4[:], f8[:, :, :], i8, i8)",
        "void(f8[:, :, :], f8[:, :, :], f8[:], f8[:, :, :], i8, i8)",
    ),
    _soft_gradient_tasks: (
        "void(f4[:, :, :], f4[:, :, :], f4[:, :, :], f4[:], f4[:, :, :], i8, i8)",
        "void(f8[:, :, :], f8[:, :, :], f8[:, :, :], f8[:], f8[:, :, :], i8, i8)",
    ),
    _add_in_order: ("void(f8[:, :, :], i8, f8[:, :, :])",),
}


def compile_all() -> None:
    """Compile (or load from the cache) every version the wrappers call, once per process.

    ``calibkit prebuild`` calls it at install time, so that the first training
    step does not compile. Afterwards the kernels take what they were compiled for
    (a C-ordered array goes to the any-strides version): no new versions.
    """
    for kernel, signatures in _SIGNATURES.items():
        if kernel.signatures:
            continue
        for signature in signatures:
            kernel.compile(signature)
        kernel.disable_compile()


_kernel_cache.enable_caching(tuple(_SIGNATURES), Path(__file__))
