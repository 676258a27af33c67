"""Compiled binning kernel (numba): one read of each probability, float64 accumulators.

Imported only by :func:`calibkit.binning.bin_statistics` when numba is installed;
the numpy path in :mod:`calibkit.binning` stays the reference and the fallback.
The compiled code is cached on disk (``cache=True``), so only the first process
after an install pays for compilation.

Determinism: the voxels are cut into fixed chunks whatever the thread count, each
chunk is summed in order, and the chunk sums are added in chunk order, so the
result does not depend on how many threads ran.
"""

from __future__ import annotations

import os

import numba
import numpy as np
import numpy.typing as npt

_LAYER_CHOSEN = getattr(numba.config, "THREADING_LAYER", "default") != "default"
if "NUMBA_THREADING_LAYER" not in os.environ and not _LAYER_CHOSEN:
    # numba's own thread pool, unless the user chose a layer: the OpenMP layer resets
    # the OpenMP thread count that torch shares (torch.get_num_threads() changed
    # after binning, which broke the exact resume of training).
    numba.config.THREADING_LAYER = "workqueue"  # type: ignore[attr-defined]

# Voxels per chunk: the unit of parallel work and of the summation order.
KERNEL_CHUNK = 1 << 16


# Interleaved accumulators per bin: consecutive voxels usually fall into the same bin
# (background), and one accumulator would serialise on its add latency.
LANES = 4


@numba.njit(cache=True, nogil=True, parallel=True, fastmath=False)
def _bin_flat(  # pragma: no cover - compiled
    p: npt.NDArray[np.float32],
    y: npt.NDArray[np.uint8],
    lower: npt.NDArray[np.float32],
    upper: npt.NDArray[np.float32],
    n_bins: int,
    chunk: int,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    n = p.size
    n_chunks = (n + chunk - 1) // chunk
    counts = np.zeros((n_chunks, n_bins), dtype=np.int64)
    sums_p = np.zeros((n_chunks, n_bins), dtype=np.float64)
    positives = np.zeros((n_chunks, n_bins), dtype=np.int64)
    scale = np.float32(n_bins)
    last = n_bins - 1
    for c in numba.prange(n_chunks):
        start = c * chunk
        stop = min(start + chunk, n)
        # Counts per (bin, target) pair: one increment gives both n_k and positives.
        lane_count = np.zeros((LANES, 2 * n_bins), dtype=np.int64)
        lane_sum = np.zeros((LANES, n_bins), dtype=np.float64)
        for i in range(start, stop):
            value = p[i]
            scaled = value * scale
            # floor(p * M) is at most one bin off the right-closed rule; fix it with
            # one comparison against each neighbouring edge (NaN lands in bin 0).
            if scaled >= last:
                k = last
            elif scaled > 0:
                k = int(scaled)
            else:
                k = 0
            if k < last and value > upper[k]:
                k += 1
            elif k > 0 and value <= lower[k]:
                k -= 1
            lane = i & (LANES - 1)
            lane_count[lane, 2 * k + y[i]] += 1
            lane_sum[lane, k] += value
        for lane in range(LANES):
            for k in range(n_bins):
                negatives = lane_count[lane, 2 * k]
                hits = lane_count[lane, 2 * k + 1]
                counts[c, k] += negatives + hits
                positives[c, k] += hits
                sums_p[c, k] += lane_sum[lane, k]
    count = np.zeros(n_bins, dtype=np.int64)
    sum_p = np.zeros(n_bins, dtype=np.float64)
    sum_y = np.zeros(n_bins, dtype=np.float64)
    for c in range(n_chunks):
        for k in range(n_bins):
            count[k] += counts[c, k]
            sum_p[k] += sums_p[c, k]
            sum_y[k] += positives[c, k]
    return count, sum_p, sum_y


def bin_flat(
    p: npt.NDArray[np.float32],
    y: npt.NDArray[np.bool_],
    lower: npt.NDArray[np.float32],
    upper: npt.NDArray[np.float32],
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Counts, probability sums and positives per bin of flat float32 ``p`` and bool ``y``."""
    result: tuple[npt.NDArray[np.int64], npt.NDArray[np.float64], npt.NDArray[np.float64]]
    result = _bin_flat(p, y.view(np.uint8), lower, upper, lower.size, KERNEL_CHUNK)
    return result
