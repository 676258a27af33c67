"""Torch backend of :mod:`calibkit.binning` (CPU and CUDA).

Same rule and edges as the numpy reference (``torch.bucketize`` with
``right=False`` on the inner edges is the right-closed rule); parity is tested.
Vectorised over classes with one ``index_add_`` on a combined (class, bin) key,
float64 accumulators, and no host synchronisation inside the loop.
"""

from __future__ import annotations

import numpy as np
import torch

from calibkit.bins import DEFAULT_N_BINS, BinStats, bin_edges

# Voxels (over all classes) per step; bounds the float64 temporaries on the device.
CHUNK_VOXELS = 1 << 22


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

    Args:
        probabilities: ``(C, *spatial)`` tensor on any device (cast to float32).
        targets: ``(C, *spatial)`` binary or real targets, same shape and device.
        n_bins: number of bins ``M``.

    Returns:
        :class:`~calibkit.binning.BinStats` (numpy arrays) of shape ``(C, M)``.
    """
    if probabilities.shape != targets.shape:
        raise ValueError(
            f"probabilities {tuple(probabilities.shape)} and targets "
            f"{tuple(targets.shape)} differ in shape"
        )
    n_classes = probabilities.shape[0]
    device = probabilities.device
    p_flat = probabilities.reshape(n_classes, -1)
    y_flat = targets.reshape(n_classes, -1)
    inner = edges_tensor(n_bins, device)[1:-1].contiguous()
    offsets = (torch.arange(n_classes, device=device) * n_bins).unsqueeze(1)
    count = torch.zeros(n_classes * n_bins, dtype=torch.float64, device=device)
    sum_p = torch.zeros_like(count)
    sum_y = torch.zeros_like(count)
    step = max(1, CHUNK_VOXELS // max(n_classes, 1))
    for start in range(0, p_flat.shape[1], step):
        p = p_flat[:, start : start + step].float().contiguous()
        key = (bin_index_with_edges(p, n_bins, inner) + offsets).reshape(-1)
        p_values = p.reshape(-1).double()
        y_values = y_flat[:, start : start + step].reshape(-1).double()
        if device.type == "cpu":
            # bincount is several times faster than index_add_ on the CPU; on CUDA it
            # would synchronise with the host (it looks up the largest key).
            size = count.numel()
            count += torch.bincount(key, minlength=size).double()
            sum_p += torch.bincount(key, weights=p_values, minlength=size)
            sum_y += torch.bincount(key, weights=y_values, minlength=size)
            continue
        count.index_add_(0, key, torch.ones(key.shape, dtype=torch.float64, device=device))
        sum_p.index_add_(0, key, p_values)
        sum_y.index_add_(0, key, y_values)
    shape = (n_classes, n_bins)
    return BinStats(
        count=count.reshape(shape).cpu().numpy().astype(np.int64),
        sum_p=sum_p.reshape(shape).cpu().numpy(),
        sum_y=sum_y.reshape(shape).cpu().numpy(),
    )
