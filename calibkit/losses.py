"""Differentiable calibration losses: hard- and soft-binned mL1-ACE (and ECE, MCE) for torch.

Both losses take ``(input (B, C, *spatial), target (B, C or 1, *spatial))`` like
MONAI's losses and compute one calibration error per (image, class) pair:

* :class:`HardL1ACELoss` (Barfoot et al., MICCAI 2024): voxels are binned by the
  metric's exact rule (:func:`calibkit.binning_torch.bin_index`, right-closed
  bins on ``torch.linspace(0, 1 + eps, M + 1)``), so its value equals
  :func:`calibkit.metrics.calibration_errors` on the same input. Bin membership
  and the observed frequencies are constants; the gradient flows through the
  per-bin mean prediction only: ``dL/dp_i = sign(pbar_k - ybar_k) / (n_k K B C)``
  for the mean-reduced ACE, with ``K`` the non-empty bins of that (image, class).
* :class:`SoftL1ACELoss` (Barfoot et al. 2025, arXiv:2506.03942): each voxel's
  unit mass is split linearly between the two nearest bin centres
  ``(k + 0.5)(1 + eps) / M`` (all of it to the end bin below the first / above
  the last centre); bins whose total weight is below ``empty_weight`` (0.01) are
  dropped; the gradient flows through ``p`` and through the weights.

Both are vectorised over batch and classes: every voxel gets one combined
(image, class, bin) key, and a ``bincount`` plus ``index_add_`` calls (two sums
packed as one complex tensor on the CPU) accumulate all pairs at once, chunk by
chunk. The voxel work is a hand-written :class:`torch.autograd.Function` that
returns per-bin sums; everything after them (gaps, ACE / ECE / MCE, weights,
reduction) is ordinary autograd on ``(B, C, M)`` tensors, and the hard backward
is one gather of the per-bin gradient. Probabilities are binned in float32
(half / bfloat16 inputs are cast) and sums accumulate in float64 across chunks,
so autocast inputs are safe. ``torch.compile`` breaks the graph around the voxel
loop and compiles the rest.

:func:`build_loss` turns a spec such as ``"dsc+ce+ace"`` or
``"dsc:1+ce:1+ace:0.3"`` into a :class:`CombinedLoss` for training.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, cast

import torch
import torch.nn.functional as F

from calibkit.binning import DEFAULT_N_BINS, bin_edges
from calibkit.binning_torch import bin_index_with_edges, edges_tensor
from calibkit.errors import CalibkitError

CalibrationReduction = Literal["average", "expected", "maximum"]
Reduction = Literal["mean", "sum", "none"]
Activation = Literal["softmax", "sigmoid"]

CALIBRATION_REDUCTIONS: tuple[str, ...] = ("average", "expected", "maximum")
REDUCTIONS: tuple[str, ...] = ("mean", "sum", "none")
DEFAULT_EMPTY_WEIGHT = 0.01

# Voxels (over all image/class pairs) per step. On the CPU the temporaries of one
# step stay in cache and are recycled by the allocator (whole-volume temporaries
# cost more in page faults than in arithmetic); on a GPU large steps keep the
# launch count low.
CPU_CHUNK_VOXELS = 1 << 18
DEVICE_CHUNK_VOXELS = 1 << 22


def _chunk_step(n_pairs: int, device: torch.device) -> int:
    budget = CPU_CHUNK_VOXELS if device.type == "cpu" else DEVICE_CHUNK_VOXELS
    return max(256, budget // max(n_pairs, 1))


def _chunks(n_voxels: int, n_pairs: int, device: torch.device) -> list[tuple[int, int]]:
    step = _chunk_step(n_pairs, device)
    return [(start, min(start + step, n_voxels)) for start in range(0, n_voxels, step)]


def _partial_dtype(probabilities: torch.Tensor) -> torch.dtype:
    # Per-chunk sums: float32 on the CPU, whose chunks hold at most 32768 voxels per pair
    # (hard sums add p - k/M, a bin wide at most); float64 on devices, whose chunks are
    # large; float64 inputs stay float64. Totals across chunks are float64 everywhere.
    if probabilities.dtype == torch.float64 or probabilities.device.type != "cpu":
        return torch.float64
    return torch.float32


# Devices on which two per-key sums are accumulated as one complex index_add_
# (real part, imaginary part): half the scatters. Elsewhere, two real index_add_.
COMPLEX_SCATTER_DEVICES: tuple[str, ...] = ("cpu",)


def _scatter_pair(
    totals: tuple[torch.Tensor, torch.Tensor],
    key: torch.Tensor,
    first: torch.Tensor,
    second: torch.Tensor,
) -> None:
    """Add per-key sums of ``first`` and ``second`` (same shape as the key) to ``totals``."""
    n_keys = totals[0].numel()
    device = key.device
    if device.type in COMPLEX_SCATTER_DEVICES:
        source = torch.complex(first, second).view(-1)
        acc = torch.zeros(n_keys, dtype=source.dtype, device=device)
        acc.index_add_(0, key, source)
        totals[0].add_(acc.real)
        totals[1].add_(acc.imag)
        return
    for total, values in zip(totals, (first, second), strict=True):
        acc = torch.zeros(n_keys, dtype=values.dtype, device=device)
        total.add_(acc.index_add_(0, key, values.reshape(-1)))


class _Targets:
    """Targets of a (B, C, N) probability view, chunk by chunk.

    Either a dense ``(B, C, N)`` tensor, or a ``(B, N)`` label map compared with one
    label value per channel (``to_onehot_y`` without building the one-hot tensor).
    """

    def __init__(
        self,
        dense: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        class_values: torch.Tensor | None = None,
    ) -> None:
        self.dense = dense
        self.labels = labels
        self.class_values = class_values

    def chunk(self, start: int, stop: int, dtype: torch.dtype) -> torch.Tensor:
        if self.dense is not None:
            return self.dense[:, :, start:stop].to(dtype)
        assert self.labels is not None and self.class_values is not None  # by construction
        hit = self.labels[:, None, start:stop] == self.class_values[None, :, None]
        return hit.to(dtype)


def _zero_pair(n_keys: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    return (
        torch.zeros(n_keys, dtype=torch.float64, device=device),
        torch.zeros(n_keys, dtype=torch.float64, device=device),
    )


def _pair_offsets(batch: int, classes: int, n_bins: int, device: torch.device) -> torch.Tensor:
    pairs = torch.arange(batch * classes, dtype=torch.int32, device=device)
    return (pairs * n_bins).view(batch, classes, 1)


def _bin_storage(n_bins: int) -> torch.dtype:
    if n_bins <= 256:
        return torch.uint8
    return torch.int16 if n_bins <= 32768 else torch.int32


class _HardBinSums(torch.autograd.Function):
    """Per-(image, class, bin) count, sum of p and sum of y under the metric's hard bins.

    Only ``sum_p`` is differentiable. The forward keeps each voxel's bin (one byte);
    the backward gathers the per-bin gradient back to the voxels: with bins and
    ``ybar`` fixed, ``d sum_p[k] / d p_i`` is 1 for the voxels of bin k and 0 elsewhere.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        probabilities: torch.Tensor,
        targets: _Targets,
        n_bins: int,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        batch, classes, n_voxels = probabilities.shape
        device = probabilities.device
        n_keys = batch * classes * n_bins
        inner = edges_tensor(n_bins, device)[1:-1].contiguous()
        offsets = _pair_offsets(batch, classes, n_bins, device)
        partial = _partial_dtype(probabilities)
        inverse = 1.0 / n_bins
        bins = torch.empty((batch, classes, n_voxels), dtype=_bin_storage(n_bins), device=device)
        count = torch.zeros(n_keys, dtype=torch.int64, device=device)
        sums = _zero_pair(n_keys, device)
        for start, stop in _chunks(n_voxels, batch * classes, device):
            p = probabilities[:, :, start:stop]
            index = bin_index_with_edges(p.float(), n_bins, inner)
            bins[:, :, start:stop] = index
            key = (index + offsets).view(-1)
            count += torch.bincount(key, minlength=n_keys)
            # Sum p - k/M (exact by Sterbenz's lemma, at most a bin wide) rather than p:
            # the float32 partial sums then err M times less; k/M is added back below.
            offset = p.to(partial) - index.to(partial).mul_(inverse)
            _scatter_pair(sums, key, offset, targets.chunk(start, stop, partial))
        ctx.save_for_backward(bins)
        ctx.input_dtype = probabilities.dtype
        shape = (batch, classes, n_bins)
        count_f = count.to(torch.float64).view(shape)
        base = torch.arange(n_bins, dtype=partial, device=device).mul_(inverse)
        sum_p = sums[0].view(shape) + count_f * base.to(torch.float64)
        sum_y = sums[1].view(shape)
        ctx.mark_non_differentiable(count_f, sum_y)
        return count_f, sum_p, sum_y

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: Any,
        grad_count: torch.Tensor | None,
        grad_sum_p: torch.Tensor | None,
        grad_sum_y: torch.Tensor | None,
    ) -> tuple[torch.Tensor | None, None, None]:
        if grad_sum_p is None:
            return None, None, None
        (bins,) = ctx.saved_tensors
        batch, classes, n_voxels = bins.shape
        table_dtype = torch.float64 if ctx.input_dtype == torch.float64 else torch.float32
        table = grad_sum_p.to(table_dtype)
        grad = torch.empty(bins.shape, dtype=ctx.input_dtype, device=bins.device)
        for start, stop in _chunks(n_voxels, batch * classes, bins.device):
            index = bins[:, :, start:stop].long()
            grad[:, :, start:stop] = torch.gather(table, 2, index)
        return grad, None, None


class _SoftBinSums(torch.autograd.Function):
    """Per-(image, class, bin) soft weight, weighted sum of p and weighted sum of y.

    Voxel i sits at ``t = p / delta - 0.5`` in centre units (bin centres at integer
    t, ``delta = (1 + eps) / M`` the metric's bin width); t is clamped to
    ``[0, M - 1]``, and the voxel sends ``1 - f`` of its unit mass to bin
    ``j = floor(t)`` and ``f = t - j`` to bin ``j + 1``. All three sums are
    differentiable in p, through p itself and through the weights.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        probabilities: torch.Tensor,
        targets: _Targets,
        n_bins: int,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        batch, classes, n_voxels = probabilities.shape
        device = probabilities.device
        n_keys = batch * classes * n_bins
        offsets = _pair_offsets(batch, classes, n_bins, device)
        partial = _partial_dtype(probabilities)
        # (left, right) sums keyed by the left bin; the right ones shift one bin up.
        weight, weighted_p, weighted_y = (_zero_pair(n_keys, device) for _ in range(3))
        for start, stop in _chunks(n_voxels, batch * classes, device):
            p = probabilities[:, :, start:stop].to(partial)
            y = targets.chunk(start, stop, partial)
            left, frac = _soft_position(p, n_bins)
            key = (left + offsets).view(-1)
            w_left = 1.0 - frac
            _scatter_pair(weight, key, w_left, frac)
            _scatter_pair(weighted_p, key, w_left * p, frac * p)
            _scatter_pair(weighted_y, key, w_left * y, frac * y)
        ctx.save_for_backward(probabilities)
        ctx.targets = targets
        ctx.n_bins = n_bins
        shape = (batch, classes, n_bins)
        return tuple(  # type: ignore[return-value]
            left.view(shape) + _preceding(right.view(shape))
            for left, right in (weight, weighted_p, weighted_y)
        )

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: Any,
        grad_weight: torch.Tensor,
        grad_sum_wp: torch.Tensor,
        grad_sum_wy: torch.Tensor,
    ) -> tuple[torch.Tensor, None, None]:
        (probabilities,) = ctx.saved_tensors
        targets: _Targets = ctx.targets
        n_bins: int = ctx.n_bins
        batch, classes, n_voxels = probabilities.shape
        device = probabilities.device
        partial = _partial_dtype(probabilities)
        offsets = _pair_offsets(batch, classes, n_bins, device)
        # Voxel i adds w_l h_j + w_r h_{j+1} to sum_k (gw_k S_w + gwp_k S_wp + gwy_k S_wy), with
        # h_k = gw_k + p gwp_k + y gwy_k and dw_r/dp = -dw_l/dp = dt/dp inside the centres:
        # dL/dp_i = dt/dp (dgw + p dgwp + y dgwy) + gwp_j + f dgwp, where dg = g_{j+1} - g_j.
        d_weight, d_wp, d_wy = (
            (_following(grad) - grad).to(partial)
            for grad in (grad_weight, grad_sum_wp, grad_sum_wy)
        )
        tables = (
            torch.complex(d_weight, d_wp).view(-1),
            torch.complex(d_wy, grad_sum_wp.to(partial)).view(-1),
        )
        slope = n_bins / _bin_width_scale(n_bins)
        grad = torch.empty(probabilities.shape, dtype=probabilities.dtype, device=device)
        for start, stop in _chunks(n_voxels, batch * classes, device):
            p = probabilities[:, :, start:stop].to(partial)
            y = targets.chunk(start, stop, partial)
            left, frac = _soft_position(p, n_bins)
            key = (left + offsets).view(-1)
            gw_gwp, gwy_wp = (table.index_select(0, key).view(p.shape) for table in tables)
            inside = _inside_centres(p, n_bins)
            value = torch.addcmul(gw_gwp.real, p, gw_gwp.imag)
            value.addcmul_(y, gwy_wp.real).mul_(inside).mul_(slope)
            value.add_(gwy_wp.imag).addcmul_(frac, gw_gwp.imag)
            grad[:, :, start:stop] = value
        return grad, None, None


def _following(per_bin: torch.Tensor) -> torch.Tensor:
    """Value of bin k + 1 at position k (zero after the last bin)."""
    return F.pad(per_bin[..., 1:], (0, 1))


def _preceding(per_bin: torch.Tensor) -> torch.Tensor:
    """Value of bin k - 1 at position k (zero before the first bin)."""
    return F.pad(per_bin[..., :-1], (1, 0))


def _bin_width_scale(n_bins: int) -> float:
    # The metric's last edge, 1 + eps: bins are (1 + eps) / M wide, centres at
    # (k + 0.5)(1 + eps) / M.
    return float(bin_edges(n_bins)[-1])


def _soft_position(p: torch.Tensor, n_bins: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left bin (int32) of each voxel and the fraction of its mass sent to the right bin."""
    t = p * (n_bins / _bin_width_scale(n_bins))
    t.sub_(0.5).nan_to_num_(nan=0.0).clamp_(0, n_bins - 1)
    left = t.floor()
    if n_bins > 1:
        left.clamp_(max=n_bins - 2)
    return left.to(torch.int32), t.sub_(left)


def _inside_centres(p: torch.Tensor, n_bins: int) -> torch.Tensor:
    """Where the weights depend on p: strictly between the first and the last centre."""
    t = p * (n_bins / _bin_width_scale(n_bins))
    return (t > 0.5) & (t < n_bins - 0.5)


def _apply_bin_sums(
    function: type[torch.autograd.Function],
    probabilities: torch.Tensor,
    targets: _Targets,
    n_bins: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    result = function.apply(probabilities, targets, n_bins)
    return cast(tuple[torch.Tensor, torch.Tensor, torch.Tensor], result)


# The chunked voxel loop runs eagerly: torch.compile of a model or a loss that calls it
# breaks the graph here and compiles the rest.
_bin_sums_eager = cast(
    Callable[
        [type[torch.autograd.Function], torch.Tensor, _Targets, int],
        tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    ],
    torch.compiler.disable(_apply_bin_sums),
)


# --------------------------------------------------------------------------- losses


class _BinnedCalibrationLoss(torch.nn.Module):
    """Shared options, input handling and reductions of the hard and soft losses."""

    _min_weight: float

    def __init__(
        self,
        n_bins: int = DEFAULT_N_BINS,
        include_background: bool = True,
        to_onehot_y: bool = False,
        softmax: bool = False,
        sigmoid: bool = False,
        ignore_empty_classes: bool = False,
        reduction: Reduction = "mean",
        weight: float | Sequence[float] | torch.Tensor | None = None,
        calibration_reduction: CalibrationReduction = "average",
    ) -> None:
        super().__init__()
        if isinstance(n_bins, bool) or int(n_bins) != n_bins or n_bins < 1:
            raise CalibkitError(f"n_bins must be a positive integer, got {n_bins!r}")
        if softmax and sigmoid:
            raise CalibkitError("choose at most one of softmax=True and sigmoid=True")
        if reduction not in REDUCTIONS:
            raise CalibkitError(
                f"reduction must be one of {', '.join(REDUCTIONS)}, got {reduction!r}"
            )
        if calibration_reduction not in CALIBRATION_REDUCTIONS:
            raise CalibkitError(
                "calibration_reduction must be one of "
                f"{', '.join(CALIBRATION_REDUCTIONS)}, got {calibration_reduction!r}"
            )
        self.n_bins = int(n_bins)
        self.include_background = include_background
        self.to_onehot_y = to_onehot_y
        self.softmax = softmax
        self.sigmoid = sigmoid
        self.ignore_empty_classes = ignore_empty_classes
        self.reduction: Reduction = reduction
        self.calibration_reduction: CalibrationReduction = calibration_reduction
        self.class_weight: torch.Tensor | None
        if weight is None:
            self.register_buffer("class_weight", None)
        else:
            class_weight = torch.as_tensor(weight, dtype=torch.float64).reshape(-1)
            if not bool(torch.isfinite(class_weight).all()) or bool((class_weight < 0).any()):
                raise CalibkitError(f"weight must be finite and >= 0, got {weight!r}")
            self.register_buffer("class_weight", class_weight)

    def extra_repr(self) -> str:
        return (
            f"n_bins={self.n_bins}, include_background={self.include_background}, "
            f"to_onehot_y={self.to_onehot_y}, softmax={self.softmax}, sigmoid={self.sigmoid}, "
            f"reduction={self.reduction!r}, calibration_reduction={self.calibration_reduction!r}"
        )

    def _bin_sums(
        self, probabilities: torch.Tensor, targets: _Targets
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Calibration loss of ``input`` against ``target``.

        Args:
            input: ``(B, C, *spatial)`` probabilities, or logits with ``softmax`` /
                ``sigmoid``.
            target: ``(B, C, *spatial)`` binary (or real) targets, or a
                ``(B, 1, *spatial)`` label map with values ``0 .. C-1`` when
                ``to_onehot_y``.

        Returns:
            A scalar for ``mean`` / ``sum``; a ``(B, C)`` tensor for ``none`` (NaN for
            pairs dropped by ``ignore_empty_classes``). float32 (float64 for float64
            input).
        """
        probabilities, targets = self._prepare(input, target)
        count, sum_p, sum_y = self._bin_sums(probabilities, targets)
        values = _pair_errors(count, sum_p, sum_y, self._min_weight, self.calibration_reduction)
        valid = torch.ones_like(values, dtype=torch.bool)
        if self.ignore_empty_classes:
            valid = sum_y.sum(dim=-1) > 0
        if self.class_weight is not None:
            values = values * self._weights(values.shape[1], values.device)
        out_dtype = torch.float64 if input.dtype == torch.float64 else torch.float32
        if self.reduction == "none":
            return torch.where(valid, values, torch.nan).to(out_dtype)
        total = torch.where(valid, values, 0.0).sum()
        if self.reduction == "mean":
            total = total / valid.sum().clamp_min(1)
        return total.to(out_dtype)

    def _weights(self, n_classes: int, device: torch.device) -> torch.Tensor:
        assert self.class_weight is not None
        weight = self.class_weight
        if weight.numel() == 1:
            weight = weight.expand(n_classes)
        elif weight.numel() != n_classes:
            raise CalibkitError(
                f"weight has {weight.numel()} values but the loss sees {n_classes} classes "
                "(without the background channel when include_background=False)"
            )
        return weight.to(device=device, dtype=torch.float64)

    def _prepare(self, input: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, _Targets]:
        if input.dim() < 3:
            raise CalibkitError(f"input must be (B, C, *spatial), got shape {tuple(input.shape)}")
        if target.dim() != input.dim():
            raise CalibkitError(
                f"target {tuple(target.shape)} and input {tuple(input.shape)} need the same "
                "number of dimensions; give a label map as (B, 1, *spatial)"
            )
        n_channels = input.shape[1]
        probabilities = input
        if self.sigmoid:
            probabilities = _upcast_half(input).sigmoid()
        if self.softmax:
            if n_channels == 1:
                warnings.warn("single channel prediction, softmax=True ignored", stacklevel=3)
            else:
                probabilities = torch.softmax(_upcast_half(input), dim=1)
        to_onehot = self.to_onehot_y
        if to_onehot and n_channels == 1:
            warnings.warn("single channel prediction, to_onehot_y=True ignored", stacklevel=3)
            to_onehot = False
        first = 0
        if not self.include_background:
            if n_channels == 1:
                warnings.warn(
                    "single channel prediction, include_background=False ignored", stacklevel=3
                )
            else:
                first = 1
        spatial = tuple(input.shape[2:])
        if target.shape[0] != input.shape[0] or tuple(target.shape[2:]) != spatial:
            raise CalibkitError(
                f"target {tuple(target.shape)} does not match input {tuple(input.shape)} "
                "in batch size or spatial shape"
            )
        flat_p = probabilities.flatten(2)[:, first:]
        flat_y = target.flatten(2)
        if to_onehot:
            if target.shape[1] != 1:
                raise CalibkitError(
                    f"to_onehot_y=True needs a (B, 1, *spatial) label map, got target "
                    f"{tuple(target.shape)}"
                )
            values = torch.arange(first, n_channels, device=target.device).to(target.dtype)
            return flat_p, _Targets(labels=flat_y[:, 0], class_values=values)
        if target.shape[1] != n_channels:
            raise CalibkitError(
                f"target has {target.shape[1]} channels and input {n_channels}; "
                "pass one-hot targets or a label map with to_onehot_y=True"
            )
        return flat_p, _Targets(dense=flat_y[:, first:])


def _upcast_half(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.float() if tensor.dtype in (torch.float16, torch.bfloat16) else tensor


def _pair_errors(
    count: torch.Tensor,
    sum_p: torch.Tensor,
    sum_y: torch.Tensor,
    min_weight: float,
    calibration_reduction: CalibrationReduction,
) -> torch.Tensor:
    """Per-pair calibration error (B, C) from per-bin sums (B, C, M), SPEC.md §1 formulas."""
    kept = count >= min_weight
    # n_k |pbar_k - ybar_k| = |sum_p_k - sum_y_k|: one division per bin.
    weighted_gap = torch.where(kept, (sum_p - sum_y).abs(), 0.0)
    if calibration_reduction == "expected":
        return weighted_gap.sum(dim=-1) / count.sum(dim=-1).clamp_min(min_weight)
    gap = weighted_gap / torch.where(kept, count, 1.0)
    if calibration_reduction == "maximum":
        return torch.where(kept, gap, -math.inf).amax(dim=-1).clamp_min(0.0)
    return gap.sum(dim=-1) / kept.sum(dim=-1).clamp_min(1)


class HardL1ACELoss(_BinnedCalibrationLoss):
    """Hard-binned marginal L1 average calibration error (the paper's mL1-ACE loss).

    Per (image, class): mean over non-empty bins of ``|pbar_k - ybar_k|`` with the
    metric's bins, so the value equals :func:`calibkit.metrics.calibration_errors`;
    ``calibration_reduction="expected"`` / ``"maximum"`` give mL1-ECE / mL1-MCE.

    Args:
        n_bins: number of bins ``M``.
        include_background: keep channel 0.
        to_onehot_y: ``target`` is a ``(B, 1, *spatial)`` label map (values
            ``0 .. C-1``), compared per channel without building a one-hot tensor.
        softmax: apply a softmax over channels to ``input`` (logits).
        sigmoid: apply a sigmoid to ``input`` (logits).
        ignore_empty_classes: drop (image, class) pairs whose target is empty.
        reduction: ``mean`` (over kept pairs), ``sum``, or ``none`` (a ``(B, C)`` tensor).
        weight: one non-negative weight per class (after dropping the background),
            or one for all; multiplies each pair's value before the reduction.
        calibration_reduction: ``average`` (ACE), ``expected`` (ECE), ``maximum`` (MCE).

    Example:
        >>> p = torch.tensor([[[0.7, 0.3, 0.5, 0.5]]], requires_grad=True)
        >>> y = torch.tensor([[[0.0, 1.0, 1.0, 0.0]]])
        >>> loss = HardL1ACELoss(n_bins=5)(p, y)
        >>> round(loss.item(), 4)
        0.4667
        >>> loss.backward()
        >>> [round(g, 4) for g in p.grad.flatten().tolist()]
        [0.3333, -0.3333, 0.0, 0.0]
    """

    _min_weight = 0.5  # counts are integers: a bin is kept when it holds a voxel

    def _bin_sums(
        self, probabilities: torch.Tensor, targets: _Targets
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return _bin_sums_eager(_HardBinSums, probabilities, targets, self.n_bins)


class SoftL1ACELoss(_BinnedCalibrationLoss):
    """Soft-binned marginal L1 average calibration error (Barfoot et al. 2025).

    Each voxel's unit mass is split linearly between the two nearest bin centres
    ``(k + 0.5)(1 + eps) / M`` (wholly to the end bin below the first / above the
    last centre); bins whose total weight is below ``empty_weight`` are dropped.
    The gradient flows through ``p`` and the weights. Options as
    :class:`HardL1ACELoss`.

    Args:
        n_bins: number of bins ``M``.
        include_background: keep channel 0.
        to_onehot_y: ``target`` is a ``(B, 1, *spatial)`` label map.
        softmax: apply a softmax over channels to ``input``.
        sigmoid: apply a sigmoid to ``input``.
        ignore_empty_classes: drop (image, class) pairs whose target is empty.
        reduction: ``mean``, ``sum`` or ``none``.
        weight: per-class weights, as in :class:`HardL1ACELoss`.
        calibration_reduction: ``average`` (ACE), ``expected`` (ECE), ``maximum`` (MCE).
        empty_weight: bins with less total weight are dropped.

    Example:
        >>> p = torch.tensor([[[0.3, 0.5]]])  # halfway between centres 0.25 / 0.35, at 0.45
        >>> y = torch.tensor([[[0.0, 1.0]]])
        >>> round(SoftL1ACELoss(n_bins=10)(p, y).item(), 4)
        0.4
    """

    def __init__(
        self,
        n_bins: int = DEFAULT_N_BINS,
        include_background: bool = True,
        to_onehot_y: bool = False,
        softmax: bool = False,
        sigmoid: bool = False,
        ignore_empty_classes: bool = False,
        reduction: Reduction = "mean",
        weight: float | Sequence[float] | torch.Tensor | None = None,
        calibration_reduction: CalibrationReduction = "average",
        empty_weight: float = DEFAULT_EMPTY_WEIGHT,
    ) -> None:
        super().__init__(
            n_bins=n_bins,
            include_background=include_background,
            to_onehot_y=to_onehot_y,
            softmax=softmax,
            sigmoid=sigmoid,
            ignore_empty_classes=ignore_empty_classes,
            reduction=reduction,
            weight=weight,
            calibration_reduction=calibration_reduction,
        )
        if not empty_weight > 0 or not math.isfinite(empty_weight):
            raise CalibkitError(f"empty_weight must be positive, got {empty_weight!r}")
        self._min_weight = float(empty_weight)

    def _bin_sums(
        self, probabilities: torch.Tensor, targets: _Targets
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return _bin_sums_eager(_SoftBinSums, probabilities, targets, self.n_bins)


# --------------------------------------------------------------------------- combined


SEGMENTATION_TERMS: tuple[str, ...] = ("ce", "dsc")
CALIBRATION_TERMS: Mapping[str, tuple[bool, CalibrationReduction]] = {
    "ace": (False, "average"),
    "ece": (False, "expected"),
    "mce": (False, "maximum"),
    "soft-ace": (True, "average"),
    "soft-ece": (True, "expected"),
    "soft-mce": (True, "maximum"),
}
LOSS_TERMS: tuple[str, ...] = SEGMENTATION_TERMS + tuple(CALIBRATION_TERMS)
_TERM = re.compile(r"^(?P<name>[a-z][a-z-]*)(?::(?P<weight>[^:]+))?$")


@dataclass(frozen=True)
class LossTerm:
    """One weighted term of a combined loss (``name`` is one of :data:`LOSS_TERMS`)."""

    name: str
    weight: float


def parse_loss_spec(spec: str) -> tuple[LossTerm, ...]:
    """Parse a loss spec: terms joined by ``+``, each ``name`` or ``name:weight``.

    Without weights every term gets ``1 / n`` (the paper's equal weighting); with
    weights, every term needs one.

    Args:
        spec: e.g. ``"dsc+ce+ace"``, ``"ce+soft-ace"``, ``"dsc:1+ce:1+ace:0.3"``.

    Returns:
        The terms in the order given.

    Raises:
        CalibkitError: an unknown or repeated term, a bad weight, or weights on only
            some terms; the message lists the valid terms.

    Example:
        >>> [(t.name, round(t.weight, 3)) for t in parse_loss_spec("dsc+ce+ace")]
        [('dsc', 0.333), ('ce', 0.333), ('ace', 0.333)]
        >>> parse_loss_spec("dsc:1+ace:0.3")
        (LossTerm(name='dsc', weight=1.0), LossTerm(name='ace', weight=0.3))
    """
    valid = f"valid terms: {', '.join(LOSS_TERMS)}; e.g. 'dsc+ce+ace' or 'dsc:1+ce:1+ace:0.3'"
    parts = [part.strip() for part in str(spec).strip().lower().split("+")]
    if not any(parts):
        raise CalibkitError(f"empty loss spec {spec!r}; {valid}")
    names: list[str] = []
    weights: list[float | None] = []
    for part in parts:
        match = _TERM.match(part)
        if match is None or match["name"] not in LOSS_TERMS:
            raise CalibkitError(f"loss spec {spec!r}: unknown term {part!r}; {valid}")
        name = match["name"]
        if name in names:
            raise CalibkitError(f"loss spec {spec!r}: term {name!r} appears twice; {valid}")
        names.append(name)
        weights.append(None if match["weight"] is None else _parse_weight(spec, part, match))
    given = [weight for weight in weights if weight is not None]
    if given and len(given) != len(weights):
        raise CalibkitError(
            f"loss spec {spec!r}: give a weight to every term or to none "
            "(e.g. 'dsc:1+ce:1+ace:0.3')"
        )
    if not given:
        return tuple(LossTerm(name, 1.0 / len(names)) for name in names)
    if sum(given) <= 0:
        raise CalibkitError(f"loss spec {spec!r}: the weights sum to zero")
    return tuple(LossTerm(name, float(w)) for name, w in zip(names, given, strict=True))


def _parse_weight(spec: str, part: str, match: re.Match[str]) -> float:
    try:
        weight = float(match["weight"])
    except ValueError:
        weight = math.nan
    if not math.isfinite(weight) or weight < 0:
        raise CalibkitError(f"loss spec {spec!r}: weight in {part!r} must be a non-negative number")
    return weight


class CombinedLoss(torch.nn.Module):
    """Weighted sum of segmentation and calibration terms, built by :func:`build_loss`.

    ``input`` is the network's logits ``(B, C, *spatial)``; the activation is applied
    once and shared by the Dice and calibration terms, while the cross-entropy term
    takes the logits, as in MONAI's ``DiceCELoss``.

    Attributes:
        terms: the parsed :class:`LossTerm` tuple (names and weights, for logging).
    """

    def __init__(
        self,
        terms: Sequence[LossTerm],
        modules: Mapping[str, torch.nn.Module],
        activation: Activation,
        to_onehot_y: bool,
    ) -> None:
        super().__init__()
        self.terms = tuple(terms)
        self.activation: Activation = activation
        self.to_onehot_y = to_onehot_y
        self.parts = torch.nn.ModuleDict(dict(modules))

    @property
    def spec(self) -> str:
        """Canonical spec with explicit weights, e.g. ``dsc:0.5+ace:0.5``."""
        return "+".join(f"{term.name}:{term.weight:g}" for term in self.terms)

    def extra_repr(self) -> str:
        return f"spec={self.spec!r}, activation={self.activation!r}"

    def components(self, input: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        """Unweighted value of every term, keyed by term name (differentiable)."""
        probabilities: torch.Tensor | None = None
        values: dict[str, torch.Tensor] = {}
        for term in self.terms:
            if term.name == "ce":
                values["ce"] = self._cross_entropy(input, target)
                continue
            if probabilities is None:
                probabilities = _activate(input, self.activation)
            values[term.name] = self.parts[term.name](probabilities, target)
        return values

    def combine(self, components: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Weighted sum of :meth:`components` (so a training loop can log the parts)."""
        total: torch.Tensor | None = None
        for term in self.terms:
            value = components[term.name] * term.weight
            total = value if total is None else total + value
        assert total is not None  # a spec has at least one term
        return total

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The weighted sum of all terms (a scalar)."""
        return self.combine(self.components(input, target))

    def _cross_entropy(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        n_pred, n_target = input.shape[1], target.shape[1]
        if self.activation == "sigmoid" or n_pred == 1:
            if self.to_onehot_y and n_pred > 1 and n_target == 1:
                target = _one_hot(target, n_pred)
            return F.binary_cross_entropy_with_logits(input, target.to(input.dtype))
        # MONAI DiceCELoss.ce: a (B, 1, ...) label map becomes class indices.
        if n_pred != n_target and n_target == 1:
            return F.cross_entropy(input, target[:, 0].long())
        if not torch.is_floating_point(target):
            target = target.to(input.dtype)
        return F.cross_entropy(input, target)


def _activate(input: torch.Tensor, activation: Activation) -> torch.Tensor:
    if activation == "sigmoid":
        return _upcast_half(input).sigmoid()
    if input.shape[1] == 1:
        return input
    return torch.softmax(_upcast_half(input), dim=1)


def _one_hot(labels: torch.Tensor, n_classes: int) -> torch.Tensor:
    classes = torch.arange(n_classes, device=labels.device).view(1, -1, *[1] * (labels.dim() - 2))
    return (labels == classes.to(labels.dtype)).to(torch.float32)


def build_loss(
    spec: str,
    *,
    n_bins: int = DEFAULT_N_BINS,
    include_background: bool = True,
    to_onehot_y: bool = True,
    activation: Activation = "softmax",
    ignore_empty_classes: bool = False,
    empty_weight: float = DEFAULT_EMPTY_WEIGHT,
) -> CombinedLoss:
    """A training loss from a spec such as ``"dsc+ce+ace"`` (see :func:`parse_loss_spec`).

    Terms: ``ce`` (cross-entropy on the logits, MONAI ``DiceCELoss``'s CE part;
    binary cross-entropy per channel for ``activation="sigmoid"``), ``dsc`` (MONAI
    ``DiceLoss`` defaults), and the calibration terms ``ace`` / ``ece`` / ``mce``
    (:class:`HardL1ACELoss`) and ``soft-ace`` / ``soft-ece`` / ``soft-mce``
    (:class:`SoftL1ACELoss`). Defaults follow the paper: softmax, label-map targets
    ``(B, 1, *spatial)``, background included, 20 bins, equal weights.

    Args:
        spec: the loss spec.
        n_bins: bins of the calibration terms.
        include_background: passed to the Dice and calibration terms.
        to_onehot_y: targets are ``(B, 1, *spatial)`` label maps.
        activation: ``softmax`` or ``sigmoid`` applied to the logits.
        ignore_empty_classes: calibration terms skip pairs with an empty target.
        empty_weight: bin threshold of the soft terms.

    Returns:
        A :class:`CombinedLoss` taking ``(logits, target)``.

    Raises:
        CalibkitError: a bad spec or option; ``dsc`` without MONAI installed.

    Example:
        >>> loss = build_loss("dsc:1+ace:0.3")
        >>> loss.spec
        'dsc:1+ace:0.3'
    """
    if activation not in ("softmax", "sigmoid"):
        raise CalibkitError(f"activation must be softmax or sigmoid, got {activation!r}")
    terms = parse_loss_spec(spec)
    modules: dict[str, torch.nn.Module] = {}
    for term in terms:
        if term.name == "dsc":
            try:
                from monai.losses.dice import DiceLoss
            except ImportError as error:  # pragma: no cover - MONAI is a dev dependency
                raise CalibkitError(
                    "the 'dsc' loss term needs MONAI: pip install 'calibkit[train]'"
                ) from error
            modules["dsc"] = DiceLoss(
                include_background=include_background, to_onehot_y=to_onehot_y
            )
        elif term.name in CALIBRATION_TERMS:
            soft, calibration_reduction = CALIBRATION_TERMS[term.name]
            options: dict[str, Any] = {
                "n_bins": n_bins,
                "include_background": include_background,
                "to_onehot_y": to_onehot_y,
                "ignore_empty_classes": ignore_empty_classes,
                "calibration_reduction": calibration_reduction,
            }
            modules[term.name] = (
                SoftL1ACELoss(empty_weight=empty_weight, **options)
                if soft
                else HardL1ACELoss(**options)
            )
    return CombinedLoss(terms, modules, activation, to_onehot_y)
