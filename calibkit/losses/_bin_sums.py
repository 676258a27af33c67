"""The voxel work of the calibration losses: per-(image, class, bin) sums, chunk by chunk.

Every voxel gets one combined (image, class, bin) key, and a ``bincount`` plus
``index_add_`` calls (two sums packed as one complex tensor on the CPU) accumulate
all pairs at once, chunk by chunk. :class:`_HardBinSums` bins by the metric's exact
rule, :class:`_SoftBinSums` splits each voxel's unit mass between the two nearest bin
centres; both are hand-written :class:`torch.autograd.Function` classes that return
per-bin sums, called through :func:`_bin_sums_eager` so that ``torch.compile`` breaks
the graph around the voxel loop. Probabilities are binned in float32 and sums
accumulate in float64 across chunks.

On the CPU (:data:`COMPILED_SOFT_DEVICES`), when numba is installed, the soft sums
and their gradient run as compiled loops (:mod:`calibkit.losses._soft_kernel`) that
read each voxel once and make no volume-sized temporaries; the torch loop is kept
for GPUs and as their reference (the tests compare the two).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F

from calibkit.binning import bin_edges, numba_available
from calibkit.binning_torch import bin_index_with_edges, edges_tensor

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


# Voxels (over all image/class pairs) per call of the compiled soft-loss kernels: it
# bounds the targets built from a label map (float32, 4 MB) and the float copy of
# half-precision probabilities; float32 / float64 inputs and targets are read in place.
COMPILED_CHUNK_VOXELS = 1 << 20

# Devices on which the soft loss runs its compiled (numba) kernels when numba is
# installed; elsewhere, and without numba, the torch chunk loop.
COMPILED_SOFT_DEVICES: tuple[str, ...] = ("cpu",)

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
    differentiable in p, through p itself and through the weights. Only the input
    is saved; the backward recomputes each voxel's bin and fraction.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        probabilities: torch.Tensor,
        targets: _Targets,
        n_bins: int,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        batch, classes, _ = probabilities.shape
        partial = _partial_dtype(probabilities)
        # (left, right) sums keyed by the left bin; the right ones shift one bin up.
        if _compiled_soft_applies(probabilities.device):
            pairs = _soft_sums_compiled(probabilities, targets, n_bins, partial)
        else:
            pairs = _soft_sums_torch(probabilities, targets, n_bins, partial)
        ctx.save_for_backward(probabilities)
        ctx.targets = targets
        ctx.n_bins = n_bins
        shape = (batch, classes, n_bins)
        return tuple(  # type: ignore[return-value]
            left.reshape(shape) + _preceding(right.reshape(shape)) for left, right in pairs
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
        partial = _partial_dtype(probabilities)
        # Voxel i adds w_l h_j + w_r h_{j+1} to sum_k (gw_k S_w + gwp_k S_wp + gwy_k S_wy), with
        # h_k = gw_k + p gwp_k + y gwy_k and dw_r/dp = -dw_l/dp = dt/dp inside the centres:
        # dL/dp_i = dt/dp (dgw + p dgwp + y dgwy) + gwp_j + f dgwp, where dg = g_{j+1} - g_j.
        d_weight, d_wp, d_wy = (
            (_following(grad) - grad).to(partial)
            for grad in (grad_weight, grad_sum_wp, grad_sum_wy)
        )
        tables = (d_weight, d_wp, d_wy, grad_sum_wp.to(partial))
        if _compiled_soft_applies(probabilities.device):
            grad = _soft_gradient_compiled(probabilities, targets, n_bins, tables)
        else:
            grad = _soft_gradient_torch(probabilities, targets, n_bins, tables)
        return grad.to(probabilities.dtype), None, None


_SumPairs = tuple[tuple[torch.Tensor, torch.Tensor], ...]
_GradientTables = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def compile_soft_kernels() -> bool:
    """Compile the soft loss's CPU kernels into numba's cache (``calibkit prebuild``).

    Returns:
        Whether there was anything to compile (False without numba).
    """
    if not numba_available():
        return False
    # Deferred: numba costs about 0.5 s to import, and only CPU soft losses need it.
    from calibkit.losses import _soft_kernel

    _soft_kernel.compile_all()
    return True


def _compiled_soft_applies(device: torch.device) -> bool:
    return device.type in COMPILED_SOFT_DEVICES and numba_available()


def _soft_sums_torch(
    probabilities: torch.Tensor, targets: _Targets, n_bins: int, partial: torch.dtype
) -> _SumPairs:
    """(left, right) weight, weighted-p and weighted-y sums, flat (B * C * M), in torch."""
    batch, classes, n_voxels = probabilities.shape
    device = probabilities.device
    n_keys = batch * classes * n_bins
    offsets = _pair_offsets(batch, classes, n_bins, device)
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
    return weight, weighted_p, weighted_y


def _soft_gradient_torch(
    probabilities: torch.Tensor, targets: _Targets, n_bins: int, tables: _GradientTables
) -> torch.Tensor:
    """dL/dp from the per-bin tables (dgw, dgwp, dgwy, gwp), in torch."""
    batch, classes, n_voxels = probabilities.shape
    device = probabilities.device
    partial = tables[0].dtype
    offsets = _pair_offsets(batch, classes, n_bins, device)
    d_weight, d_wp, d_wy, g_wp = tables
    complex_tables = (
        torch.complex(d_weight, d_wp).view(-1),
        torch.complex(d_wy, g_wp).view(-1),
    )
    slope = n_bins / _bin_width_scale(n_bins)
    grad = torch.empty(probabilities.shape, dtype=probabilities.dtype, device=device)
    for start, stop in _chunks(n_voxels, batch * classes, device):
        p = probabilities[:, :, start:stop].to(partial)
        y = targets.chunk(start, stop, partial)
        left, frac = _soft_position(p, n_bins)
        key = (left + offsets).view(-1)
        gw_gwp, gwy_wp = (table.index_select(0, key).view(p.shape) for table in complex_tables)
        inside = _inside_centres(p, n_bins)
        value = torch.addcmul(gw_gwp.real, p, gw_gwp.imag)
        value.addcmul_(y, gwy_wp.real).mul_(inside).mul_(slope)
        value.add_(gwy_wp.imag).addcmul_(frac, gw_gwp.imag)
        grad[:, :, start:stop] = value
    return grad


def _compiled_chunks(probabilities: torch.Tensor) -> list[tuple[int, int]]:
    batch, classes, n_voxels = probabilities.shape
    step = max(256, COMPILED_CHUNK_VOXELS // max(batch * classes, 1))
    return [(start, min(start + step, n_voxels)) for start in range(0, n_voxels, step)]


def _soft_sums_compiled(
    probabilities: torch.Tensor, targets: _Targets, n_bins: int, partial: torch.dtype
) -> _SumPairs:
    """:func:`_soft_sums_torch` by the compiled kernel: one read of each voxel."""
    # Deferred: numba costs about 0.5 s to import, and only CPU soft losses need it.
    from calibkit.losses import _soft_kernel

    batch, classes, _ = probabilities.shape
    totals = np.zeros((batch * classes, 6, n_bins), dtype=np.float64)
    scale = n_bins / _bin_width_scale(n_bins)
    for start, stop in _compiled_chunks(probabilities):
        p = probabilities[:, :, start:stop].detach().to(partial)
        y = targets.chunk(start, stop, partial).detach()
        _soft_kernel.add_soft_sums(p.numpy(), y.numpy(), n_bins, scale, totals)
    sums = torch.from_numpy(totals)
    return tuple((sums[:, 2 * k], sums[:, 2 * k + 1]) for k in range(3))


def _soft_gradient_compiled(
    probabilities: torch.Tensor, targets: _Targets, n_bins: int, tables: _GradientTables
) -> torch.Tensor:
    """:func:`_soft_gradient_torch` by the compiled kernel: one pass over the voxels."""
    # Deferred: numba costs about 0.5 s to import, and only CPU soft losses need it.
    from calibkit.losses import _soft_kernel

    batch, classes, _ = probabilities.shape
    partial = tables[0].dtype
    table = torch.stack(tables, dim=2).reshape(batch * classes, 4, n_bins).numpy()
    scale = n_bins / _bin_width_scale(n_bins)
    grad = torch.empty(probabilities.shape, dtype=partial)
    for start, stop in _compiled_chunks(probabilities):
        p = probabilities[:, :, start:stop].detach().to(partial)
        y = targets.chunk(start, stop, partial).detach()
        out = grad[:, :, start:stop].numpy()
        _soft_kernel.soft_gradient(p.numpy(), y.numpy(), table, n_bins, scale, out)
    return grad


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
