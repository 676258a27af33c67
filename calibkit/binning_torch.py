"""Torch backend of :mod:`calibkit.binning` (CPU and CUDA).

Same rule and edges as the numpy reference (``torch.bucketize`` with
``right=False`` on the inner edges is the right-closed rule); parity is tested.
Vectorised over classes with one ``index_add_`` on a combined (class, bin) key,
float64 accumulators, and no host synchronisation inside the loop.
"""

from __future__ import annotations

import numpy as np
import torch

from calibkit.binning import DEFAULT_N_BINS, BinStats, bin_edges

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
        key = (torch.bucketize(p, inner, right=False) + offsets).reshape(-1)
        count.index_add_(0, key, torch.ones(key.shape, dtype=torch.float64, device=device))
        sum_p.index_add_(0, key, p.reshape(-1).double())
        sum_y.index_add_(0, key, y_flat[:, start : start + step].reshape(-1).double())
    shape = (n_classes, n_bins)
    return BinStats(
        count=count.reshape(shape).cpu().numpy().astype(np.int64),
        sum_p=sum_p.reshape(shape).cpu().numpy(),
        sum_y=sum_y.reshape(shape).cpu().numpy(),
    )
