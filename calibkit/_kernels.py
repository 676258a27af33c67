"""Compiled binning kernel (numba): one read of each probability, float64 accumulators.

Imported lazily (numba costs about 0.5 s to import), where the compiled path is
taken: :func:`calibkit.binning.bin_statistics` picks it when numba is installed;
the numpy path in :mod:`calibkit.binning` stays the reference and the fallback.

Compiled once per install. The compiled code is cached on disk
(:mod:`calibkit._kernel_cache` says where); :func:`compile_all` (``calibkit
prebuild``) compiles every version the wrappers here can ask for. There are few:
the wrappers hand the kernels one kind of array whatever the caller's layout
(read-only, flat, unsigned; :func:`_flat_rows`), so only the dtype of the targets
picks a version. The kernels are plain loops that release the GIL, run on several
threads by :func:`_run_on_threads`: numba's ``parallel=True`` took twice as long
to compile, for the same speed.

How a voxel finds its bin. ``floor(p * M)`` is the bin of ``p`` except near an
inner edge, where the float32 edges (``torch.linspace(0, 1 + eps, M + 1)``) and
``k / M`` disagree, and where float32 rounding of ``x = p * M`` (eight values per
vector instruction, twice float64's four) moves ``x`` across an integer: both stay
within ``margin`` of the integer (:func:`edge_margin`). A branch-free loop, which
the compiler vectorises, turns each
block of voxels into (bin, target) keys and flags the voxels whose ``x`` lies
within ``margin`` of an integer; in a block with flags, each flagged voxel is
settled by one comparison with the true edge (right-closed bins, the rule of MONAI
and SPEC §1). A scalar loop then adds the keys into interleaved accumulators.

One-key blocks. Most voxels of a real probability map are background: the same
bin, the same side of the threshold and the same label for whole blocks. A block
whose smallest and largest value fall in one bin (well inside it), on one side of
the threshold, with one label value, has one key; its count and sum are added
at once, from one vectorised min/max/sum loop, without making any key. After a
block that is not like that, the next few blocks skip the check, so data without
such runs (uniform noise) pays almost nothing for it.

Determinism: the voxels are cut into fixed chunks whatever the thread count, each
chunk is summed in order, and the chunk sums are added in chunk order, so the
result does not depend on how many threads ran.
"""

from __future__ import annotations

import importlib.abc
import os
import queue
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numba
import numpy as np
import numpy.typing as npt

from calibkit import _kernel_cache
from calibkit.bins import bin_edges

_LAYER_CHOSEN = getattr(numba.config, "THREADING_LAYER", "default") != "default"
if "NUMBA_THREADING_LAYER" not in os.environ and not _LAYER_CHOSEN:
    # numba's own thread pool, unless the user chose a layer: the OpenMP layer resets
    # the OpenMP thread count that torch shares (torch.get_num_threads() changed
    # after binning, which broke the exact resume of training). The kernels run no
    # parallel region, but numba.get_num_threads() starts the layer.
    numba.config.THREADING_LAYER = "workqueue"  # type: ignore[attr-defined]

# Voxels per chunk: the unit of parallel work and of the summation order.
KERNEL_CHUNK = 1 << 16

# Voxels per block: keys of one block stay in L1 between the two loops.
BLOCK = 256

# Label values the bit mask of targets covers: label maps must stay below it.
TARGET_BITS = 64

# A block that fails the one-key check makes the next RECHECK_AFTER - 1 blocks skip it.
RECHECK_AFTER = 8

# Interleaved accumulators per key: consecutive voxels usually share a key
# (background), and one accumulator would serialise on its add latency.
LANES = 4


@numba.njit(inline="always")
def _bracket(  # pragma: no cover - compiled
    value: np.float32, scale: np.float32, top: np.float32, margin: np.float32
) -> tuple[np.int32, np.int32]:
    """``floor(x - margin)`` and ``floor(x + margin)`` of ``x = p * M`` clamped to [0, top].

    All in float32. Equal: ``p`` is in that bin. One apart: ``p`` is within
    ``margin`` of the edge ``above`` and one comparison with it decides.
    """
    x = value * scale
    x = x if x > np.float32(0.0) else np.float32(0.0)  # also NaN: first bin
    x = x if x < top else top
    return np.int32(x - margin), np.int32(x + margin)


@numba.njit(inline="always")
def _block_extent(  # pragma: no cover - compiled
    block_p: npt.NDArray[np.float32],
) -> tuple[np.float32, np.float32, float]:
    """Smallest and largest value of a block and its float64 sum (NaN if any is NaN).

    Four interleaved lanes each, so that the compiler uses vector instructions.
    """
    lo0 = lo1 = lo2 = lo3 = np.float32(np.inf)
    hi0 = hi1 = hi2 = hi3 = np.float32(-np.inf)
    sum0 = sum1 = sum2 = sum3 = 0.0
    whole = block_p.size - block_p.size % 4
    for j in range(0, whole, 4):
        v0, v1, v2, v3 = block_p[j], block_p[j + 1], block_p[j + 2], block_p[j + 3]
        lo0, hi0, sum0 = min(v0, lo0), max(v0, hi0), sum0 + v0
        lo1, hi1, sum1 = min(v1, lo1), max(v1, hi1), sum1 + v1
        lo2, hi2, sum2 = min(v2, lo2), max(v2, hi2), sum2 + v2
        lo3, hi3, sum3 = min(v3, lo3), max(v3, hi3), sum3 + v3
    for j in range(whole, block_p.size):
        v0 = block_p[j]
        lo0, hi0, sum0 = min(v0, lo0), max(v0, hi0), sum0 + v0
    lo = min(min(lo0, lo1), min(lo2, lo3))
    hi = max(max(hi0, hi1), max(hi2, hi3))
    return lo, hi, (sum0 + sum1) + (sum2 + sum3)


@numba.njit(inline="always")
def _one_key(  # pragma: no cover - compiled
    block_p: npt.NDArray[np.float32],
    block_codes: npt.NDArray[np.integer],
    target_bits: np.uint64,
    scale: np.float32,
    top: np.float32,
    margin: np.float32,
    threshold: np.float32,
) -> tuple[np.int32, float]:
    """The key shared by every voxel of the block and the block's sum, or key -1.

    The bracket of ``p`` and ``p >= threshold`` never decrease with ``p``: when the
    smallest and the largest value agree on both, and all label values are equal,
    every voxel has their key. A NaN anywhere makes the sum NaN and the block is
    left to the voxel loop.
    """
    lo, hi, total = _block_extent(block_p)
    below, _ = _bracket(lo, scale, top, margin)
    _, above = _bracket(hi, scale, top, margin)
    first_code = block_codes[0]
    same_code = True
    for j in range(block_codes.size):
        same_code &= block_codes[j] == first_code
    if below != above or (lo >= threshold) != (hi >= threshold) or not same_code or total != total:
        return np.int32(-1), total
    target = (target_bits >> np.uint64(first_code)) & np.uint64(1)
    return 4 * below + 2 * np.int32(lo >= threshold) + np.int32(target), total


@numba.njit(nogil=True)
def _bin_chunk(  # pragma: no cover - compiled
    p: npt.NDArray[np.float32],
    codes: npt.NDArray[np.integer],
    target_bits: np.uint64,
    edges: npt.NDArray[np.float32],
    margin: np.float32,
    threshold: np.float32,
    key_count: npt.NDArray[np.int64],
    key_sum: npt.NDArray[np.float64],
) -> None:
    """Add one chunk to ``key_count``/``key_sum``, indexed ``4 * bin + 2 * (p >= t) + y``.

    The target of voxel ``i`` is bit ``codes[i]`` of ``target_bits``: a label map
    (values in [0, 64), checked by the caller) and the bits of the class's labels,
    or a boolean mask (as uint8) and ``0b10``. A shift, unlike a table lookup,
    vectorises.
    """
    n_bins = edges.size - 1
    n_keys = 4 * n_bins
    lane_count = np.zeros(LANES * n_keys, dtype=np.int32)
    lane_sum = np.zeros(LANES * n_keys, dtype=np.float64)
    keys = np.empty(BLOCK, dtype=np.int32)
    near = np.empty(BLOCK, dtype=np.int32)
    scale = np.float32(n_bins)
    top = np.float32(n_bins - 0.5)  # above it, every value is in the last bin
    checks_skipped = 0  # blocks left before the next one-key check
    for start in range(0, p.size, BLOCK):
        block_p = p[start : start + BLOCK]
        block_codes = codes[start : start + BLOCK]
        if checks_skipped == 0:
            shared_key, total = _one_key(
                block_p, block_codes, target_bits, scale, top, margin, threshold
            )
            if shared_key >= 0:
                lane_count[shared_key] += block_p.size
                lane_sum[shared_key] += total
                continue
            checks_skipped = RECHECK_AFTER
        checks_skipped -= 1
        n_near = np.int32(0)
        for j in range(block_p.size):
            below, above = _bracket(block_p[j], scale, top, margin)
            near[j] = above - below
            n_near += above - below
            target = (target_bits >> np.uint64(block_codes[j])) & np.uint64(1)
            keys[j] = 4 * below + 2 * np.int32(block_p[j] >= threshold) + np.int32(target)
        if n_near != 0:
            for j in range(block_p.size):
                if near[j]:
                    # Near edge `below + 1`: the bin is `below + 1` if p is past it.
                    keys[j] += 4 * np.int32(block_p[j] > edges[keys[j] // 4 + 1])
        for j in range(block_p.size):
            slot = np.uint64(keys[j]) + np.uint64((j & (LANES - 1)) * n_keys)
            lane_count[slot] += 1
            lane_sum[slot] += block_p[j]
    for lane in range(LANES):
        for key in range(n_keys):
            key_count[key] += lane_count[lane * n_keys + key]
            key_sum[key] += lane_sum[lane * n_keys + key]


@numba.njit(nogil=True)
def _bin_tasks(  # pragma: no cover - compiled
    p: npt.NDArray[np.float32],
    p_rows: tuple[int, int],
    codes: npt.NDArray[np.unsignedinteger],
    code_rows: tuple[int, int],
    n: int,
    chunk: int,
    target_bits: np.uint64,
    edges: npt.NDArray[np.float32],
    margin: np.float32,
    threshold: np.float32,
    first_task: int,
    task_step: int,
    chunk_counts: npt.NDArray[np.int64],
    chunk_sums: npt.NDArray[np.float64],
) -> None:
    """Bins of tasks ``first_task``, ``first_task + task_step``, ... into their rows of the sums.

    Task ``t`` is chunk ``t % n_chunks`` of row ``t // n_chunks``; row ``r`` of ``p``
    is ``p[origin + r * step:][:n]`` with ``(origin, step) = p_rows`` (likewise
    ``codes``). Every task writes only its own row of ``chunk_counts`` and
    ``chunk_sums``.
    """
    n_chunks = (n + chunk - 1) // chunk
    for task in range(first_task, chunk_counts.shape[0], task_step):
        row = task // n_chunks
        start = (task % n_chunks) * chunk
        stop = min(start + chunk, n)
        p_at = p_rows[0] + row * p_rows[1]
        code_at = code_rows[0] + row * code_rows[1]
        _bin_chunk(
            p[p_at + start : p_at + stop],
            codes[code_at + start : code_at + stop],
            target_bits,
            edges,
            margin,
            threshold,
            chunk_counts[task],
            chunk_sums[task],
        )


@numba.njit(nogil=True)
def _bin_binary_tasks(  # pragma: no cover - compiled
    p: npt.NDArray[np.float32],
    p_rows: tuple[int, int],
    values: npt.NDArray[Any],
    value_rows: tuple[int, int],
    n: int,
    chunk: int,
    edges: npt.NDArray[np.float32],
    margin: np.float32,
    first_task: int,
    task_step: int,
    chunk_counts: npt.NDArray[np.int64],
    chunk_sums: npt.NDArray[np.float64],
    binary: npt.NDArray[np.bool_],
) -> None:
    """:func:`_bin_tasks` of targets of any number type that should hold only 0 and 1.

    Each chunk of targets is turned into 0/1 codes in a small buffer (it stays in
    the cache) and binned like a boolean mask, so the volume is read once and never
    copied. ``binary[task]`` becomes False when a target of the task is neither 0
    nor 1 (a soft target, NaN): the bins are then incomplete and must not be used.
    """
    n_chunks = (n + chunk - 1) // chunk
    codes = np.empty(chunk, dtype=np.uint8)
    for task in range(first_task, chunk_counts.shape[0], task_step):
        row = task // n_chunks
        start = (task % n_chunks) * chunk
        stop = min(start + chunk, n)
        value_at = value_rows[0] + row * value_rows[1]
        source = values[value_at + start : value_at + stop]
        n_other = 0
        for j in range(source.size):
            value = source[j]
            codes[j] = np.uint8(value == 1)
            n_other += (value != 0) & (value != 1)  # NaN too
        if n_other != 0:
            binary[task] = False
            continue
        p_at = p_rows[0] + row * p_rows[1]
        _bin_chunk(
            p[p_at + start : p_at + stop],
            codes[: stop - start],
            np.uint64(0b10),
            edges,
            margin,
            np.float32(np.inf),
            chunk_counts[task],
            chunk_sums[task],
        )


@numba.njit(nogil=True)
def _class_values(  # pragma: no cover - compiled
    codes: npt.NDArray[np.unsignedinteger],
    code_rows: tuple[int, int],
    channels: npt.NDArray[np.int64],
    code_values: npt.NDArray[np.float32],
    start: int,
    stop: int,
    out: npt.NDArray[np.float32],
) -> None:
    """A class's float32 probabilities of voxels ``start:stop`` from stored codes, into ``out``.

    As :func:`calibkit.classes.class_probability` computes them from the decoded
    map: the value of the first channel's code, plus each further channel's in
    order (float32 additions), clipped to 1 when there are several.
    """
    size = stop - start
    at = code_rows[0] + channels[0] * code_rows[1] + start
    for j in range(size):
        out[j] = code_values[codes[at + j]]
    if channels.size > 1:
        for k in range(1, channels.size):
            at = code_rows[0] + channels[k] * code_rows[1] + start
            for j in range(size):
                out[j] = out[j] + code_values[codes[at + j]]
        for j in range(size):
            out[j] = min(out[j], np.float32(1.0))


@numba.njit(nogil=True)
def _bin_coded_tasks(  # pragma: no cover - compiled
    codes: npt.NDArray[np.unsignedinteger],
    code_rows: tuple[int, int],
    channels: npt.NDArray[np.int64],
    code_values: npt.NDArray[np.float32],
    labels: npt.NDArray[np.unsignedinteger],
    n: int,
    chunk: int,
    target_bits: np.uint64,
    edges: npt.NDArray[np.float32],
    margin: np.float32,
    threshold: np.float32,
    first_task: int,
    task_step: int,
    chunk_counts: npt.NDArray[np.int64],
    chunk_sums: npt.NDArray[np.float64],
) -> None:
    """:func:`_bin_tasks` of one class whose probabilities come from stored codes.

    Each chunk of probabilities is made from the codes in a small buffer
    (:func:`_class_values`, it stays in the cache) and binned as the float map's
    chunk is: the same values in the same chunks, hence the same bins bit for bit,
    without a float32 copy of the volume.
    """
    p = np.empty(chunk, dtype=np.float32)
    for task in range(first_task, chunk_counts.shape[0], task_step):
        start = task * chunk
        stop = min(start + chunk, n)
        _class_values(codes, code_rows, channels, code_values, start, stop, p)
        _bin_chunk(
            p[: stop - start],
            labels[start:stop],
            target_bits,
            edges,
            margin,
            threshold,
            chunk_counts[task],
            chunk_sums[task],
        )


@numba.njit(nogil=True)
def _coded_sum_errors(  # pragma: no cover - compiled
    codes: npt.NDArray[np.unsignedinteger],
    code_rows: tuple[int, int],
    n_channels: int,
    code_values: npt.NDArray[np.float32],
    n: int,
    chunk: int,
    first_task: int,
    task_step: int,
    worst: npt.NDArray[np.float32],
) -> None:
    """Largest ``|sum of the channels' values - 1|`` of each chunk, summed in float32 in
    channel order (as ``numpy.sum(axis=0, dtype=float32)`` adds a channel-first map)."""
    total = np.empty(chunk, dtype=np.float32)
    for task in range(first_task, worst.size, task_step):
        start = task * chunk
        size = min(start + chunk, n) - start
        at = code_rows[0] + start
        for j in range(size):
            total[j] = code_values[codes[at + j]]
        for c in range(1, n_channels):
            at = code_rows[0] + c * code_rows[1] + start
            for j in range(size):
                total[j] = total[j] + code_values[codes[at + j]]
        largest = np.float32(0.0)
        for j in range(size):
            largest = max(largest, abs(total[j] - np.float32(1.0)))
        worst[task] = largest


@numba.njit(nogil=True)
def _row_totals(  # pragma: no cover - compiled
    chunk_counts: npt.NDArray[np.int64], chunk_sums: npt.NDArray[np.float64], n_rows: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
    """Per-row sums of the per-chunk results (``n_rows`` rows of equal chunks), in chunk order."""
    n_tasks, n_keys = chunk_counts.shape
    n_chunks = n_tasks // n_rows if n_rows else 0
    key_count = np.zeros((n_rows, n_keys), dtype=np.int64)
    key_sum = np.zeros((n_rows, n_keys), dtype=np.float64)
    for task in range(n_tasks):
        row = task // n_chunks
        for key in range(n_keys):
            key_count[row, key] += chunk_counts[task, key]
            key_sum[row, key] += chunk_sums[task, key]
    return key_count, key_sum


@numba.njit(nogil=True)
def _values_present(
    codes: npt.NDArray[np.integer], size: int
) -> npt.NDArray[np.bool_]:  # pragma: no cover
    seen = np.zeros(size, dtype=np.bool_)
    for i in range(codes.size):
        seen[codes[i]] = True
    return seen


@lru_cache(maxsize=64)
def edge_margin(n_bins: int) -> np.float32:
    """Distance from an integer within which the float32 ``floor(p * M)`` may miss the bin.

    Two things move ``x = p * M`` against the integers. The true edge ``e_k`` lies
    within ``gap = |e_k * M - k|`` of ``k`` (exact in float64). And float32 rounds
    the product ``p * M`` and each of ``x - margin`` and ``x + margin``, each by at
    most ``M * 2^-24`` (half an ulp of a value up to ``M``). When ``floor(x - m)``
    and ``floor(x + m)`` agree on ``k``, the exact product then lies between
    ``k + m - 2 M 2^-24`` and ``k + 1 - m + 2 M 2^-24``: inside bin ``k`` whenever
    ``m >= gap + 2 M 2^-24``. When they differ by one, the bin is ``k`` or
    ``k + 1`` and the comparison with ``e_(k+1)`` decides. The margin is twice that
    bound, rounded up to a float32.
    """
    edges = bin_edges(n_bins).astype(np.float64)
    inner = np.arange(1, n_bins, dtype=np.float64)
    gap = float(np.max(np.abs(edges[1:-1] * n_bins - inner))) if n_bins > 1 else 0.0
    bound = 2.0 * (gap + 2.0 * n_bins * 2.0**-24)
    margin = np.float32(bound)
    return margin if float(margin) >= bound else np.nextafter(margin, np.float32(1))


def supports(n_bins: int) -> bool:
    """Whether the compiled kernel bins exactly with ``n_bins`` (up to about 400,000).

    The brackets ``x - margin`` and ``x + margin`` must never span two integers.
    """
    return float(edge_margin(n_bins)) < 0.25


def chunk_for(n_bins: int) -> int:
    """Voxels per chunk: 2^16, more for many bins so that per-chunk sums stay small.

    Each chunk keeps ``4 * M`` counts and sums; at least 64 voxels per key bounds
    them to a few percent of the input. Depends on ``M`` only, never on the threads.
    """
    wanted = 64 * 4 * n_bins
    return max(KERNEL_CHUNK, 1 << (wanted - 1).bit_length())


@dataclass(frozen=True)
class KernelResult:
    """Bin statistics of one flat class map, and its Dice counts at the threshold."""

    count: npt.NDArray[np.int64]
    sum_p: npt.NDArray[np.float64]
    sum_y: npt.NDArray[np.float64]
    predicted: int
    intersection: int


def bin_rows(
    p: npt.NDArray[np.float32],
    codes: npt.NDArray[np.integer] | npt.NDArray[np.bool_],
    n_bins: int,
    *,
    target_labels: tuple[int, ...] | None = None,
    threshold: float = np.inf,
) -> list[KernelResult]:
    """Bins of each row of float32 ``p`` (rows, voxels) against bool targets or labels.

    ``codes`` has the shape of ``p``: boolean targets, or, with ``target_labels``, a
    label map with values in ``[0, 64)`` whose target is "the label is one of
    ``target_labels``". ``predicted`` and ``intersection`` count voxels with
    ``p >= threshold`` (and a positive target): the Dice counts, from the same pass.
    Rows may be strided views; a row that is not contiguous is copied. The bins are
    those of :func:`calibkit.bins.bin_edges`.
    """
    if not supports(n_bins):
        raise ValueError(f"the compiled kernel supports up to about 400,000 bins, got {n_bins}")
    if target_labels is None:
        bits = 0b10
    else:
        # A shift by 64 or more is undefined in the kernel: check the codes here.
        if codes.size and (codes.min() < 0 or codes.max() >= TARGET_BITS):
            raise ValueError(f"label values must lie in [0, {TARGET_BITS}) for the compiled kernel")
        bits = sum(1 << value for value in set(target_labels) if 0 <= value < TARGET_BITS)
    flat_p, p_rows = _flat_rows(p)
    flat_codes, code_rows = _flat_rows(_unsigned(codes))
    n_rows, n = p.shape
    chunk = chunk_for(n_bins)
    n_tasks = n_rows * ((n + chunk - 1) // chunk)
    chunk_counts = np.zeros((n_tasks, 4 * n_bins), dtype=np.int64)
    chunk_sums = np.zeros((n_tasks, 4 * n_bins), dtype=np.float64)
    edges, margin = bin_edges(n_bins), edge_margin(n_bins)

    def run(first_task: int, task_step: int) -> None:
        _bin_tasks(
            flat_p,
            p_rows,
            flat_codes,
            code_rows,
            n,
            chunk,
            np.uint64(bits),
            edges,
            margin,
            np.float32(threshold),
            first_task,
            task_step,
            chunk_counts,
            chunk_sums,
        )

    _run_on_threads(run, n_tasks)
    key_counts, key_sums = _row_totals(chunk_counts, chunk_sums, n_rows)
    return [
        _row_result(count, total, n_bins) for count, total in zip(key_counts, key_sums, strict=True)
    ]


def bin_binary_rows(
    p: npt.NDArray[np.float32], values: npt.NDArray[Any], n_bins: int
) -> list[KernelResult] | None:
    """:func:`bin_rows` of targets of an integer, float32 or float64 dtype, read as 0/1.

    The same bins as ``bin_rows(p, values == 1, n_bins)`` when every target is 0 or
    1, without a boolean copy of ``values``; None when any target is something else
    (a soft target, NaN), for the caller's reference path.
    """
    if not supports(n_bins):
        raise ValueError(f"the compiled kernel supports up to about 400,000 bins, got {n_bins}")
    flat_p, p_rows = _flat_rows(p)
    flat_values, value_rows = _flat_rows(_unsigned(values))
    n_rows, n = p.shape
    chunk = chunk_for(n_bins)
    n_tasks = n_rows * ((n + chunk - 1) // chunk)
    chunk_counts = np.zeros((n_tasks, 4 * n_bins), dtype=np.int64)
    chunk_sums = np.zeros((n_tasks, 4 * n_bins), dtype=np.float64)
    binary = np.ones(n_tasks, dtype=np.bool_)
    edges, margin = bin_edges(n_bins), edge_margin(n_bins)

    def run(first_task: int, task_step: int) -> None:
        _bin_binary_tasks(
            flat_p,
            p_rows,
            flat_values,
            value_rows,
            n,
            chunk,
            edges,
            margin,
            first_task,
            task_step,
            chunk_counts,
            chunk_sums,
            binary,
        )

    _run_on_threads(run, n_tasks)
    if not binary.all():
        return None
    key_counts, key_sums = _row_totals(chunk_counts, chunk_sums, n_rows)
    return [
        _row_result(count, total, n_bins) for count, total in zip(key_counts, key_sums, strict=True)
    ]


def bin_coded_class(
    codes: npt.NDArray[np.unsignedinteger],
    code_values: npt.NDArray[np.float32],
    channels: tuple[int, ...],
    labels: npt.NDArray[np.integer],
    n_bins: int,
    *,
    target_labels: tuple[int, ...],
    threshold: float = np.inf,
) -> KernelResult:
    """Bins of one class of a map stored as codes, against a label map, in one pass.

    ``codes`` is ``(channels, voxels)`` (uint8 / uint16 rows, as :func:`bin_rows`
    takes rows), ``code_values[k]`` the float32 probability of code ``k`` and
    ``labels`` the flat label map (values in ``[0, 64)``, in the rows' voxel order).
    The class's probability is the value of its one channel, or the sum of its
    channels' values clipped to 1 (:func:`calibkit.classes.class_probability`). The
    result equals :func:`bin_flat` of those float32 probabilities bit for bit.
    """
    if not supports(n_bins):
        raise ValueError(f"the compiled kernel supports up to about 400,000 bins, got {n_bins}")
    if labels.size and (labels.min() < 0 or labels.max() >= TARGET_BITS):
        raise ValueError(f"label values must lie in [0, {TARGET_BITS}) for the compiled kernel")
    if code_values.size < 1 << (8 * codes.itemsize):
        raise ValueError(f"{code_values.size} code values cannot cover {codes.dtype} codes")
    bits = sum(1 << value for value in set(target_labels) if 0 <= value < TARGET_BITS)
    flat_codes, code_rows = _flat_rows(codes)
    flat_labels, _ = _flat_rows(_unsigned(labels).reshape(1, -1))
    n = codes.shape[1]
    chunk = chunk_for(n_bins)
    n_tasks = (n + chunk - 1) // chunk
    chunk_counts = np.zeros((n_tasks, 4 * n_bins), dtype=np.int64)
    chunk_sums = np.zeros((n_tasks, 4 * n_bins), dtype=np.float64)
    edges, margin = bin_edges(n_bins), edge_margin(n_bins)
    chosen = np.asarray(channels, dtype=np.int64)
    values = np.ascontiguousarray(code_values, dtype=np.float32)

    def run(first_task: int, task_step: int) -> None:
        _bin_coded_tasks(
            flat_codes,
            code_rows,
            chosen,
            values,
            flat_labels,
            n,
            chunk,
            np.uint64(bits),
            edges,
            margin,
            np.float32(threshold),
            first_task,
            task_step,
            chunk_counts,
            chunk_sums,
        )

    _run_on_threads(run, n_tasks)
    key_counts, key_sums = _row_totals(chunk_counts, chunk_sums, 1)
    return _row_result(key_counts[0], key_sums[0], n_bins)


def coded_sum_error(
    codes: npt.NDArray[np.unsignedinteger], code_values: npt.NDArray[np.float32]
) -> float:
    """Largest ``|sum over channels - 1|`` of a map stored as codes ``(channels, voxels)``.

    The channel values are added in float32 in channel order, as numpy's float32 sum
    over the channel axis of the decoded map adds them.
    """
    n_channels, n = codes.shape
    if n_channels == 0 or n == 0:
        return 0.0
    flat_codes, code_rows = _flat_rows(codes)
    values = np.ascontiguousarray(code_values, dtype=np.float32)
    n_tasks = (n + KERNEL_CHUNK - 1) // KERNEL_CHUNK
    worst = np.zeros(n_tasks, dtype=np.float32)

    def run(first_task: int, task_step: int) -> None:
        _coded_sum_errors(
            flat_codes, code_rows, n_channels, values, n, KERNEL_CHUNK, first_task, task_step, worst
        )

    _run_on_threads(run, n_tasks)
    return float(worst.max())


def _unsigned(array: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """Signed integers and booleans as the unsigned integers of their bits (no copy).

    For values that are 0 and 1, or labels in ``[0, 64)``, the two read alike, and
    one compiled version of a kernel serves both.
    """
    if array.dtype.kind in "ib":
        return array.view(np.dtype(f"u{array.dtype.itemsize}"))
    return array


def _flat_rows(rows: npt.NDArray[Any]) -> tuple[npt.NDArray[Any], tuple[int, int]]:
    """``rows`` (rows, n) as one read-only flat view of their memory, and where each row is.

    Returns the view and ``(origin, step)``: row ``r`` is ``view[origin + r * step:]``
    (its first ``n`` items). Rows at equal distances in one buffer, in either order
    (a channel-first or channel-last volume, classes reversed, one row repeated),
    need no copy; a row that is not contiguous is copied. The kernels then see one
    kind of array, whatever the layout, the write flag or the order of the rows:
    they compile once per dtype.
    """
    n_rows, n = rows.shape
    item = rows.itemsize
    contiguous = n <= 1 or rows.strides[1] == item
    if not contiguous or (n_rows > 1 and rows.strides[0] % item):
        rows = np.ascontiguousarray(rows)
    step = rows.strides[0] // item if n_rows > 1 else n
    if n_rows == 0 or n == 0:
        empty = np.empty(0, rows.dtype)
        empty.flags.writeable = False
        return empty, (0, 0)
    first = rows[-1] if step < 0 else rows[0]  # the row at the lowest address
    origin = (n_rows - 1) * -step if step < 0 else 0
    span = abs(step) * (n_rows - 1) + n
    flat: npt.NDArray[Any] = np.lib.stride_tricks.as_strided(
        first, shape=(span,), strides=(item,), writeable=False
    )
    return flat, (origin, step)


class _Job:
    """One call on a helper thread, and how it ended."""

    def __init__(self, call: Callable[[int, int], None], index: int, n_threads: int) -> None:
        self.call, self.index, self.n_threads = call, index, n_threads
        self.done = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.call(self.index, self.n_threads)
        except BaseException as error:  # re-raised in the calling thread
            self.error = error
        finally:
            self.done.set()


class _HelperThreads:
    """Daemon threads, made once and reused, that run kernel calls beside the caller.

    Daemon threads: a command still ends as soon as its work is done (see
    :func:`calibkit.cli.main`). A forked child starts with none of them.
    """

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self._lock = threading.Lock()
        self._jobs: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self._started = 0

    def run(self, call: Callable[[int, int], None], n_threads: int) -> None:
        """``call(i, n_threads)`` for each ``i < n_threads``: 0 here, the others on helpers."""
        jobs = [_Job(call, index, n_threads) for index in range(1, n_threads)]
        with self._lock:
            while self._started < len(jobs):
                name = f"calibkit-kernel-{self._started + 1}"
                worker = threading.Thread(target=_serve, args=(self._jobs,), name=name, daemon=True)
                worker.start()
                self._started += 1
            for job in jobs:
                self._jobs.put(job)
        try:
            call(0, n_threads)
        finally:
            for job in jobs:  # they write into the caller's arrays: wait, even on an error
                job.done.wait()
        for job in jobs:
            if job.error is not None:
                raise job.error


def _serve(jobs: queue.SimpleQueue[_Job]) -> None:
    while True:
        jobs.get().run()


_HELPERS = _HelperThreads()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_HELPERS._reset)


def _run_on_threads(
    call: Callable[[int, int], None], n_tasks: int, n_threads: int | None = None
) -> None:
    """``call(first_task, task_step)`` on numba's number of threads, tasks dealt in turn.

    ``numba.get_num_threads()`` (``NUMBA_NUM_THREADS``, :func:`numba.set_num_threads`)
    sets the number, as it did for numba's parallel loops, unless ``n_threads`` is
    given (the soft loss runs on torch's thread count). Tasks are dealt like
    cards (thread ``i`` takes ``i``, ``i + T``, ...), so that a run of cheap chunks
    (background) is shared too. Each task writes only its own sums: the result does
    not depend on the number of threads.
    """
    if n_tasks == 0:
        return
    n_threads = min(numba.get_num_threads() if n_threads is None else n_threads, n_tasks)
    if n_threads == 1:
        call(0, 1)
    else:
        _HELPERS.run(call, n_threads)


def bin_flat(
    p: npt.NDArray[np.float32],
    codes: npt.NDArray[np.integer] | npt.NDArray[np.bool_],
    n_bins: int,
    *,
    target_labels: tuple[int, ...] | None = None,
    threshold: float = np.inf,
) -> KernelResult:
    """:func:`bin_rows` of one flat map."""
    rows = bin_rows(p[None], codes[None], n_bins, target_labels=target_labels, threshold=threshold)
    return rows[0]


def _row_result(
    key_count: npt.NDArray[np.int64], key_sum: npt.NDArray[np.float64], n_bins: int
) -> KernelResult:
    by_key = key_count.reshape(n_bins, 2, 2)  # (bin, p >= threshold, target)
    with np.errstate(invalid="ignore"):  # +inf and -inf in one bin: NaN, as in the kernel
        sum_p = key_sum.reshape(n_bins, 4).sum(axis=1)
    return KernelResult(
        count=by_key.sum(axis=(1, 2)),
        sum_p=sum_p,
        sum_y=by_key[:, :, 1].sum(axis=1).astype(np.float64),
        predicted=int(by_key[:, 1, :].sum()),
        intersection=int(by_key[:, 1, 1].sum()),
    )


class _Hidden(importlib.abc.MetaPathFinder):
    """Import finder that makes one package (and its submodules) not found."""

    def __init__(self, name: str) -> None:
        self.name = name

    def find_spec(self, fullname: str, path: object, target: object = None) -> None:
        if fullname == self.name or fullname.startswith(self.name + "."):
            raise ModuleNotFoundError(f"{fullname} is hidden while numba starts", name=fullname)
        return None


def start_without_blas_probe() -> None:
    """Start numba's CPU target and load a kernel, without numba's BLAS probe.

    When numba's CPU target starts it imports ``scipy.linalg`` (about 0.4 s, half of
    numba's start here) only to learn whether ``np.dot`` inside compiled code may call
    BLAS; without it numba uses a plain loop there. calibkit's kernels call no BLAS.
    For processes that run only calibkit's code (the worker processes of
    ``evaluate``): ``scipy.linalg`` is hidden while the target starts, and imports as
    usual afterwards. Where the target has already started, this only loads a kernel.
    """
    finder = _Hidden("scipy.linalg")
    sys.meta_path.insert(0, finder)
    try:
        values_present(np.zeros(1, dtype=np.uint8), 1)
    finally:
        sys.meta_path.remove(finder)


def values_present(codes: npt.NDArray[np.integer], size: int) -> npt.NDArray[np.bool_]:
    """Which of ``0 .. size - 1`` occur in ``codes`` (all of them in that range)."""
    flat, _ = _flat_rows(_unsigned(codes).reshape(1, -1))
    seen: npt.NDArray[np.bool_] = _values_present(flat, size)
    return seen


# Target dtypes the wrappers hand the kernels (signed integers and bool are read as
# these unsigned ones): the versions compile_all compiles.
CODE_DTYPES: tuple[type[np.generic], ...] = (np.uint8, np.uint16, np.uint32, np.uint64)
VALUE_DTYPES: tuple[type[np.generic], ...] = (*CODE_DTYPES, np.float32, np.float64)
# Storage of probability maps kept as codes (calibkit.io.volumes.Volume.code_values).
STORED_CODE_DTYPES: tuple[type[np.generic], ...] = (np.uint8, np.uint16)


@dataclass(frozen=True)
class KernelBuild:
    """What :func:`compile_all` did.

    Attributes:
        compiled: kernel versions compiled now (and written to the cache).
        loaded: kernel versions found in the cache.
        cache_dir: the folder of numba's cache of the kernels; None: not cached.
    """

    compiled: int
    loaded: int
    cache_dir: str | None


def compile_all() -> KernelBuild:
    """Compile every version of the kernels the wrappers can ask for, into the cache.

    Run once per install (``calibkit prebuild``); later processes load them from the
    cache instead of compiling on first use.
    """
    before = _cache_counts()
    p = np.zeros((1, 1), np.float32)
    for dtype in CODE_DTYPES:
        labels = np.zeros((1, 1), dtype)
        bin_rows(p, labels, 20, target_labels=(1,))
        values_present(labels, 1)
    for dtype in VALUE_DTYPES:
        bin_binary_rows(p, np.zeros((1, 1), dtype), 20)
    for code_dtype in STORED_CODE_DTYPES:
        codes = np.zeros((1, 1), code_dtype)
        code_values = np.zeros(1 << (8 * codes.itemsize), np.float32)
        coded_sum_error(codes, code_values)
        for dtype in CODE_DTYPES:
            bin_coded_class(codes, code_values, (0,), np.zeros(1, dtype), 20, target_labels=(1,))
    after = _cache_counts()
    cache_dir = _bin_tasks.stats.cache_path
    return KernelBuild(
        compiled=after[0] - before[0],
        loaded=after[1] - before[1],
        cache_dir=None if cache_dir is None else str(cache_dir),
    )


def _cache_counts() -> tuple[int, int]:
    """Kernel versions compiled and versions loaded from the cache so far in this process."""
    compiled = loaded = 0
    for kernel in _CACHED:
        stats = kernel.stats
        compiled += sum(stats.cache_misses.values())
        loaded += sum(stats.cache_hits.values())
    return compiled, loaded


_CACHED = (
    _bracket,
    _block_extent,
    _one_key,
    _bin_chunk,
    _bin_tasks,
    _bin_binary_tasks,
    _row_totals,
    _values_present,
    _class_values,
    _bin_coded_tasks,
    _coded_sum_errors,
)
_kernel_cache.enable_caching(_CACHED, Path(__file__))
