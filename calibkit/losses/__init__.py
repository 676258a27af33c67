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
is one gather of the per-bin gradient. On the CPU the soft loss's voxel work runs
as two compiled (numba) loops, one read of each voxel forward and one backward.
Probabilities are binned in float32 (half / bfloat16 inputs are cast) and sums
accumulate in float64 across chunks, so autocast inputs are safe. ``torch.compile``
breaks the graph around the voxel loop and compiles the rest.

:func:`build_loss` turns a spec such as ``"dsc+ce+ace"`` or
``"dsc:1+ce:1+ace:0.3"`` into a :class:`CombinedLoss` for training.

Modules, each importing only those listed after it: :mod:`~calibkit.losses.combined`
(loss specs and :func:`build_loss`), :mod:`~calibkit.losses.calibration` (the two
losses: options, inputs, reductions), :mod:`~calibkit.losses._bin_sums` (the
chunked voxel loop and its autograd functions; the chunk sizes,
:data:`COMPLEX_SCATTER_DEVICES` and :data:`COMPILED_SOFT_DEVICES` are read there,
so set them on that module) and :mod:`~calibkit.losses._soft_kernel` (the compiled
soft loops, imported on first use).
"""

from __future__ import annotations

from calibkit.losses._bin_sums import COMPILED_CHUNK_VOXELS as COMPILED_CHUNK_VOXELS
from calibkit.losses._bin_sums import COMPILED_SOFT_DEVICES as COMPILED_SOFT_DEVICES
from calibkit.losses._bin_sums import COMPLEX_SCATTER_DEVICES as COMPLEX_SCATTER_DEVICES
from calibkit.losses._bin_sums import CPU_CHUNK_VOXELS as CPU_CHUNK_VOXELS
from calibkit.losses._bin_sums import DEVICE_CHUNK_VOXELS as DEVICE_CHUNK_VOXELS
from calibkit.losses.calibration import CALIBRATION_REDUCTIONS as CALIBRATION_REDUCTIONS
from calibkit.losses.calibration import DEFAULT_EMPTY_WEIGHT as DEFAULT_EMPTY_WEIGHT
from calibkit.losses.calibration import REDUCTIONS as REDUCTIONS
from calibkit.losses.calibration import (
    CalibrationReduction,
    HardL1ACELoss,
    Reduction,
    SoftL1ACELoss,
)
from calibkit.losses.combined import CALIBRATION_TERMS as CALIBRATION_TERMS
from calibkit.losses.combined import LOSS_TERMS as LOSS_TERMS
from calibkit.losses.combined import SEGMENTATION_TERMS as SEGMENTATION_TERMS
from calibkit.losses.combined import (
    Activation,
    CombinedLoss,
    LossTerm,
    build_loss,
    parse_loss_spec,
)

__all__ = [
    "Activation",
    "CalibrationReduction",
    "CombinedLoss",
    "HardL1ACELoss",
    "LossTerm",
    "Reduction",
    "SoftL1ACELoss",
    "build_loss",
    "parse_loss_spec",
]
