"""The calibration losses: :class:`HardL1ACELoss` and :class:`SoftL1ACELoss`.

Both take ``(input (B, C, *spatial), target (B, C or 1, *spatial))`` like MONAI's
losses and compute one calibration error per (image, class) pair. They share
:class:`_BinnedCalibrationLoss` (options, input handling, the per-pair errors and the
reductions) and differ in the per-bin sums of :mod:`calibkit.losses._bin_sums`;
everything after those sums is ordinary autograd on ``(B, C, M)`` tensors.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Literal

import torch

from calibkit.binning import DEFAULT_N_BINS
from calibkit.errors import CalibkitError
from calibkit.losses._bin_sums import _bin_sums_eager, _HardBinSums, _SoftBinSums, _Targets

CalibrationReduction = Literal["average", "expected", "maximum"]
Reduction = Literal["mean", "sum", "none"]

CALIBRATION_REDUCTIONS: tuple[str, ...] = ("average", "expected", "maximum")
REDUCTIONS: tuple[str, ...] = ("mean", "sum", "none")
DEFAULT_EMPTY_WEIGHT = 0.01


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
