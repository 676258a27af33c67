"""Torch backend of :mod:`calibkit.binning` (CPU and CUDA).

Same rule and edges as the numpy reference (``torch.bucketize`` with
``right=False`` on the inner edges is the right-closed rule; :func:`fast_bin_index`
gives the same bins with one gather); parity is tested.

One pass over all classes at once. Each chunk of voxels (of every class) becomes an
integer key per voxel and class (its bin and target bit), made by a handful of
elementwise ops into buffers reused from chunk to chunk, and the keys are reduced
in one or two calls per chunk:

* on the CPU, one ``scatter_add_`` of the complex numbers ``p + 1j`` (float64 parts)
  gives each key's sum of probabilities and its count at once (:class:`_ScatterTotals`
  says how its keys keep neighbouring voxels apart and its sums accurate);
* on CUDA, ``torch.bincount`` of ``2 * (class * M + bin) + bit`` (a histogram in
  shared memory per block, where ``index_add_`` would pile atomics onto a few
  addresses) counts the keys and sums the float64 probabilities; under
  ``torch.use_deterministic_algorithms`` both take ``index_add_``, which has a
  deterministic CUDA implementation.

Binary (``bool``) targets are the key's last bit: counts and positives come from the
same reduction. Other targets are summed as float64 per key as well (their key bit is
``target != 0``, so 0/1 targets of any dtype give the very numbers of ``bool`` ones).
Probabilities are cast to float32 before binning and summed in float64 (SPEC §1).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import numpy as np
import torch

from calibkit.bins import DEFAULT_N_BINS, BinStats, bin_edges, check_n_bins

# Voxels (classes x voxels) per chunk on a CUDA (or other non-CPU) device: few kernel
# launches and host synchronisations, temporaries of about 300 MB.
CHUNK_VOXELS = 1 << 24
# Voxels (classes x voxels) per chunk on the CPU: torch's parallel grain
# (at::internal::GRAIN_SIZE), so that every op runs on the calling thread. torch's
# OpenMP threads wait for each other at the end of every parallel op, a dozen times
# per chunk; on a machine busy with other work (or in the worker processes of
# `--workers`) each wait can last a scheduler time slice, which made binning 10 to
# 100 times slower. The buffers of a chunk (36 bytes a voxel) stay in L2.
CPU_CHUNK_VOXELS = 1 << 15

Reduction = Literal["auto", "scatter", "bincount"]


def edges_tensor(n_bins: int, device: torch.device | str | None = None) -> torch.Tensor:
    """:func:`calibkit.binning.bin_edges` as a float32 tensor on ``device``."""
    return torch.from_numpy(bin_edges(n_bins).copy()).to(device)


def bin_index(probabilities: torch.Tensor, n_bins: int = DEFAULT_N_BINS) -> torch.Tensor:
    """Bin index of every probability (float32), by the right-closed rule of SPEC.md §1."""
    p = probabilities.float()
    inner = edges_tensor(n_bins, p.device)[1:-1].contiguous()
    return torch.bucketize(p, inner, right=False)


def fast_bin_index(probabilities: torch.Tensor, n_bins: int = DEFAULT_N_BINS) -> torch.Tensor:
    """Bin index by round-and-compare, equal to :func:`bin_index` (the reference).

    ``j = round(p * M)`` names the inner edge nearest to ``p``; whatever the float32
    rounding, it is one of the two edges of ``p``'s true bin (the edges differ from
    ``k / M`` by a few ulps, far less than the half bin that separates them from the
    other candidates), so one comparison with edge ``e_j`` of
    :func:`edges_tensor` decides the bin: ``j - 1 + (p > e_j)``.
    One gather and one comparison instead of ``torch.bucketize``'s binary search;
    equality with ``bin_index`` is tested on every edge, its float32 neighbours and
    random values. NaN lands in bin 0 (``bin_index`` puts it last; a NaN probability
    makes any loss NaN either way).

    Args:
        probabilities: any shape; cast to float32.
        n_bins: number of bins ``M``.

    Returns:
        int32 bin indices in ``[0, M - 1]``, same shape.

    Example:
        >>> fast_bin_index(torch.tensor([0.0, 0.05, 0.0500001, 0.5, 1.0]), 20).tolist()
        [0, 0, 1, 9, 19]
    """
    p = probabilities.float()
    inner = edges_tensor(n_bins, p.device)[1:-1].contiguous()
    return bin_index_with_edges(p, n_bins, inner)


def bin_index_with_edges(p: torch.Tensor, n_bins: int, inner: torch.Tensor) -> torch.Tensor:
    """:func:`fast_bin_index` of float32 ``p`` given the inner edges (reused across chunks)."""
    if n_bins == 1:
        return torch.zeros(p.shape, dtype=torch.int32, device=p.device)
    # floor(p M - 0.5) = round(p M) - 1: index of the nearest inner edge, clamped to
    # the inner edges (everything below e_1 compares into bin 0, above e_{M-1} into M-1).
    nearest = p * n_bins
    nearest.sub_(0.5).nan_to_num_(nan=0.0).clamp_(0, n_bins - 2)
    index = nearest.to(torch.int32)
    index += p > inner.index_select(0, index.view(-1)).view_as(index)
    return index


@torch.no_grad()
def bin_statistics_torch(
    probabilities: torch.Tensor,
    targets: torch.Tensor,
    n_bins: int = DEFAULT_N_BINS,
) -> BinStats:
    """Per-class bin statistics of one image, computed with torch.

    All classes are binned in one pass (see the module docstring). To bin many
    images, a :class:`TorchBinner` reuses its buffers from call to call.

    Args:
        probabilities: ``(C, *spatial)`` tensor on any device (cast to float32).
        targets: ``(C, *spatial)`` binary or real targets, same shape and device.
        n_bins: number of bins ``M``.

    Returns:
        :class:`~calibkit.binning.BinStats` (numpy arrays) of shape ``(C, M)``.

    Example:
        >>> stats = bin_statistics_torch(
        ...     torch.tensor([[0.7, 0.3, 0.1, 0.9]]), torch.tensor([[True, False, False, True]]), 5
        ... )
        >>> stats.count.tolist(), stats.sum_y.tolist()
        ([[1, 1, 0, 1, 1]], [[0.0, 0.0, 0.0, 1.0, 1.0]])
    """
    return TorchBinner(n_bins, probabilities.device)(probabilities, targets)


class TorchBinner:
    """Bins images with torch on one device, reusing its buffers from image to image.

    ``binner(probabilities, targets)`` is :func:`bin_statistics_torch`; buffers made
    for one chunk shape serve every later image with that shape (such as the classes
    of one case, binned one at a time), which spares the page faults of fresh
    allocations. Not for use from several threads at once.

    Args:
        n_bins: number of bins ``M``.
        device: the torch device; inputs on another device are moved to it.
        reduction: ``"scatter"`` (the CPU's), ``"bincount"`` (the GPU's), or
            ``"auto"``: the one for ``device``. Both give the same bins.
    """

    def __init__(
        self,
        n_bins: int = DEFAULT_N_BINS,
        device: torch.device | str = "cpu",
        reduction: Reduction = "auto",
    ) -> None:
        check_n_bins(n_bins)
        self.n_bins = n_bins
        self.device = torch.device(device)
        if reduction == "auto":
            reduction = "scatter" if self.device.type == "cpu" else "bincount"
        if reduction not in ("scatter", "bincount"):
            raise ValueError(
                f"reduction must be 'auto', 'scatter' or 'bincount', got {reduction!r}"
            )
        self.reduction = reduction
        self._scratch = _Scratch(self.device)
        self._bins = _ChunkBins(n_bins, self._scratch)

    @torch.no_grad()
    def __call__(self, probabilities: torch.Tensor, targets: torch.Tensor) -> BinStats:
        """Bins of one image ``(C, *spatial)``, as :func:`bin_statistics_torch` gives them."""
        if probabilities.shape != targets.shape:
            raise ValueError(
                f"probabilities {tuple(probabilities.shape)} and targets "
                f"{tuple(targets.shape)} differ in shape"
            )
        if probabilities.ndim < 1:
            raise ValueError("probabilities need a leading class axis: (C, *spatial)")
        p_rows, y_rows = _class_rows(probabilities.to(self.device), targets.to(self.device))
        n_classes, n_voxels = p_rows.shape
        binary = y_rows.dtype == torch.bool
        totals: _ScatterTotals | _BincountTotals
        if self.reduction == "scatter":
            totals = _ScatterTotals(n_classes, self.n_bins, binary, self._scratch)
        else:
            totals = _BincountTotals(n_classes, self.n_bins, binary, self._scratch)
        block, step = totals.chunking(n_voxels)
        for first in range(0, n_classes if n_voxels else 0, block):
            classes = slice(first, min(first + block, n_classes))
            for start in range(0, n_voxels, step):
                p = self._bins.float32(p_rows[classes, start : start + step])
                totals.add(classes, self._bins.of(p), p, y_rows[classes, start : start + step])
        return totals.result()


def _class_rows(
    probabilities: torch.Tensor, targets: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Both tensors as ``(C, voxels)`` rows with the voxels in one order.

    The order is that of ``probabilities``' memory (spatial axes sorted by stride),
    so that the rows are views whenever the class maps lie in memory one after the
    other, whatever the spatial order (C or Fortran); otherwise ``reshape`` copies.
    Binning does not depend on the voxel order, only on both tensors sharing it.
    """
    n_classes = probabilities.shape[0]
    if probabilities.ndim > 2:
        spatial = sorted(
            range(1, probabilities.ndim), key=lambda axis: probabilities.stride(axis), reverse=True
        )
        order = (0, *spatial)
        probabilities, targets = probabilities.permute(order), targets.permute(order)
    n_voxels = math.prod(probabilities.shape[1:])
    return probabilities.reshape(n_classes, n_voxels), targets.reshape(n_classes, n_voxels)


class _Scratch:
    """Tensors reused from chunk to chunk and image to image, one per name and shape.

    Fresh allocations of a chunk's size cost page faults, more than the ops that
    fill them. A loop over chunks meets two shapes (full chunks and the last one).
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._tensors: dict[tuple[str, tuple[int, ...]], torch.Tensor] = {}

    def get(
        self,
        name: str,
        shape: tuple[int, ...],
        dtype: torch.dtype,
        prepare: Callable[[torch.Tensor], object] | None = None,
    ) -> torch.Tensor:
        """The tensor ``name`` of this shape; ``prepare`` runs once, on a new one."""
        key = (name, shape)
        tensor = self._tensors.get(key)
        if tensor is None:
            if len(self._tensors) > 64:  # images of many shapes: start afresh
                self._tensors.clear()
            tensor = torch.empty(shape, dtype=dtype, device=self.device)
            if prepare is not None:
                prepare(tensor)
            self._tensors[key] = tensor
        return tensor


class _ChunkBins:
    """The bin of every voxel of a chunk ``(C, n)``, by :func:`fast_bin_index`'s rule."""

    def __init__(self, n_bins: int, scratch: _Scratch) -> None:
        self.n_bins = n_bins
        self.scratch = scratch
        self.inner = edges_tensor(n_bins, scratch.device)[1:-1].contiguous()
        self.minus_half = torch.tensor(-0.5, dtype=torch.float32, device=scratch.device)

    def float32(self, p: torch.Tensor) -> torch.Tensor:
        """The chunk as float32 (itself when it is float32 already)."""
        if p.dtype == torch.float32:
            return p
        return self.scratch.get("p", tuple(p.shape), torch.float32).copy_(p)

    def of(self, p: torch.Tensor) -> torch.Tensor:
        """int32 bins of a float32 chunk: a contiguous tensor of its shape, reused."""
        shape = tuple(p.shape)
        bins = self.scratch.get("bins", shape, torch.int32)
        if self.n_bins == 1:
            return bins.zero_()
        # j = floor(p M - 0.5), clamped to the inner edges, is an inner edge of p's
        # bin (see fast_bin_index); one comparison with edge e_{j+1} decides the bin.
        scaled = self.scratch.get("scaled", shape, torch.float32)
        above = self.scratch.get("above", shape, torch.int32)
        torch.add(self.minus_half, p, alpha=self.n_bins, out=scaled)
        scaled.nan_to_num_(nan=0.0).clamp_(0, self.n_bins - 2)
        bins.copy_(scaled)
        torch.index_select(self.inner, 0, bins.view(-1), out=scaled.view(-1))
        torch.gt(p, scaled, out=above)
        return bins.add_(above)


def _target_bit(y: torch.Tensor, scratch: _Scratch) -> torch.Tensor:
    """``y != 0`` of a chunk: ``y`` itself when boolean."""
    if y.dtype == torch.bool:
        return y
    return torch.ne(y, 0, out=scratch.get("bit", tuple(y.shape), torch.bool))


class _ScatterTotals:
    """Per-key totals from one ``scatter_add_`` of ``p + 1j`` per chunk (the CPU path).

    The float64 real parts sum the probabilities, the imaginary parts count the
    voxels (exact integers below 2**53); non-binary targets add a float64 scatter.
    Keys are per class (one row of totals each, scattered along dim 1).

    * The key of a voxel is ``LANES * (2 * bin + bit) + lane``, ``lane`` cycling
      along the chunk: neighbouring voxels (mostly of one bin in a real map) add into
      different totals and do not wait for each other's sum (3 ns a voxel without).
    * Each chunk is summed into zeroed totals first, which are then added to the
      image's: a running sum over millions of voxels would drop the small
      probabilities of bin 0 against its large total. The order of the additions
      is fixed, so the sums do not depend on the thread count.
    """

    LANES = 8
    MIN_VOXELS_PER_TOTAL = 8

    def __init__(self, n_classes: int, n_bins: int, binary: bool, scratch: _Scratch) -> None:
        self.n_classes, self.n_bins = n_classes, n_bins
        self.scratch = scratch
        self.n_keys = 2 * n_bins * self.LANES
        shape = (n_classes, self.n_keys)
        device = scratch.device
        self.pairs = torch.zeros(shape, dtype=torch.complex128, device=device)
        self.sum_y = None if binary else torch.zeros(shape, dtype=torch.float64, device=device)

    def chunking(self, n_voxels: int) -> tuple[int, int]:
        """Classes per block and voxels per chunk: ``CPU_CHUNK_VOXELS`` in all.

        At least ``MIN_VOXELS_PER_TOTAL`` voxels a class per total, so that zeroing
        and adding a chunk's totals stays cheap beside the chunk itself; many classes
        are then binned a block of classes at a time.
        """
        step = max(
            CPU_CHUNK_VOXELS // max(self.n_classes, 1), self.MIN_VOXELS_PER_TOTAL * self.n_keys
        )
        step = max(1, min(step, n_voxels))
        return max(1, CPU_CHUNK_VOXELS // step), step

    def add(self, classes: slice, bins: torch.Tensor, p: torch.Tensor, y: torch.Tensor) -> None:
        shape = tuple(bins.shape)
        keys = self.scratch.get("keys", shape, torch.int64)
        lanes = self.scratch.get("lanes", (1, shape[1]), torch.int32, _cycle(self.LANES))
        torch.add(_target_bit(y, self.scratch), bins, alpha=2, out=bins)
        torch.add(lanes, bins, alpha=self.LANES, out=keys)
        values = self.scratch.get("values", (*shape, 2), torch.float64, _imaginary_one)
        values[..., 0].copy_(p)
        self._scatter(self.pairs[classes], keys, torch.view_as_complex(values))
        if self.sum_y is not None:
            y_values = self.scratch.get("y", shape, torch.float64).copy_(y)
            self._scatter(self.sum_y[classes], keys, y_values)

    def _scatter(self, total: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Add the chunk's values by key: into zeroed totals, then into ``total`` (a view)."""
        shape = tuple(total.shape)
        chunk = self.scratch.get(f"chunk {total.dtype}", shape, total.dtype).zero_()
        chunk.scatter_add_(1, keys, values)
        if total.is_complex():
            # Parts added as reals: a complex add multiplies by alpha = 1 + 0j, and
            # inf * 0 would turn the count of an infinite probability's bin into NaN.
            torch.view_as_real(total).add_(torch.view_as_real(chunk))
        else:
            total += chunk

    def result(self) -> BinStats:
        shape = (self.n_classes, self.n_bins, 2, self.LANES)
        # (class, bin, target bit, part): the real and imaginary parts as reals.
        by_target = torch.view_as_real(self.pairs).view(*shape, 2).sum(dim=3)
        if self.sum_y is None:
            sum_y = by_target[:, :, 1, 1]
        else:
            sum_y = self.sum_y.view(shape).sum(dim=(2, 3))
        return BinStats(
            count=by_target[..., 1].sum(dim=-1).cpu().numpy().astype(np.int64),
            sum_p=by_target[..., 0].sum(dim=-1).cpu().numpy(),
            sum_y=sum_y.cpu().numpy().copy(),
        )


def _imaginary_one(pairs: torch.Tensor) -> None:
    pairs[..., 1] = 1.0


def _cycle(period: int) -> Callable[[torch.Tensor], object]:
    def fill(lanes: torch.Tensor) -> None:
        torch.remainder(
            torch.arange(lanes.numel(), device=lanes.device), period, out=lanes.view(-1)
        )

    return fill


class _BincountTotals:
    """Per-key totals from ``torch.bincount`` (the CUDA path; it syncs on each call).

    The key of a voxel is ``2 * (class * M + bin) + bit``, one histogram for all
    classes.
    """

    def __init__(self, n_classes: int, n_bins: int, binary: bool, scratch: _Scratch) -> None:
        self.n_classes, self.n_bins = n_classes, n_bins
        self.scratch = scratch
        self.n_keys = 2 * n_classes * n_bins
        device = scratch.device
        self.class_offsets = (
            torch.arange(n_classes, dtype=torch.int32, device=device).mul_(n_bins).unsqueeze(1)
        )
        self.count = torch.zeros(self.n_keys, dtype=torch.int64, device=device)
        self.sum_p = torch.zeros(self.n_keys, dtype=torch.float64, device=device)
        self.sum_y = None if binary else torch.zeros_like(self.sum_p)

    def chunking(self, n_voxels: int) -> tuple[int, int]:
        """Classes per block and voxels per chunk: ``CHUNK_VOXELS`` in all."""
        step = max(1, min(n_voxels, CHUNK_VOXELS // max(self.n_classes, 1)))
        return max(1, CHUNK_VOXELS // step), step

    def add(self, classes: slice, bins: torch.Tensor, p: torch.Tensor, y: torch.Tensor) -> None:
        if self.n_classes > 1:
            bins.add_(self.class_offsets[classes])
        keys = torch.add(_target_bit(y, self.scratch), bins, alpha=2, out=bins).view(-1)
        values = self.scratch.get("values", tuple(p.shape), torch.float64)
        deterministic = torch.are_deterministic_algorithms_enabled()
        self.count += self._totals(keys, None, deterministic)
        self.sum_p += self._totals(keys, values.copy_(p).view(-1), deterministic)
        if self.sum_y is not None:
            self.sum_y += self._totals(keys, values.copy_(y).view(-1), deterministic)

    def _totals(
        self, keys: torch.Tensor, values: torch.Tensor | None, deterministic: bool
    ) -> torch.Tensor:
        """The chunk's count (``values`` None) or sum per key."""
        if not deterministic:
            return torch.bincount(keys, weights=values, minlength=self.n_keys)
        # bincount (its atomics) is refused there; index_add_ has a deterministic
        # CUDA implementation.
        if values is None:
            values = torch.ones(keys.shape, dtype=torch.int64, device=keys.device)
        totals = torch.zeros(self.n_keys, dtype=values.dtype, device=keys.device)
        return totals.index_add_(0, keys, values)

    def result(self) -> BinStats:
        shape = (self.n_classes, self.n_bins, 2)
        count = self.count.view(shape)
        if self.sum_y is None:
            sum_y = count[..., 1].to(torch.float64)
        else:
            sum_y = self.sum_y.view(shape).sum(dim=-1)
        return BinStats(
            count=count.sum(dim=-1).cpu().numpy(),
            sum_p=self.sum_p.view(shape).sum(dim=-1).cpu().numpy(),
            sum_y=sum_y.cpu().numpy(),
        )
