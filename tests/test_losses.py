"""Calibration losses: values equal the metric, gradients are right and finite, options work.

References are independent of calibkit.losses: the numpy metric (bin_statistics +
calibration_errors), numpy bin assignment for the closed-form gradient, a dense
tent-kernel evaluation of the soft binning, MONAI's DiceLoss / DiceCELoss, and
torch.autograd.gradcheck.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import edge_probabilities
from hypothesis import given, settings
from hypothesis import strategies as st

import calibkit.losses._bin_sums as bin_sums
from calibkit.binning import assign_bins, bin_edges, bin_statistics
from calibkit.binning_torch import bin_index, fast_bin_index
from calibkit.errors import CalibkitError
from calibkit.losses import (
    CalibrationReduction,
    HardL1ACELoss,
    LossTerm,
    SoftL1ACELoss,
    build_loss,
    parse_loss_spec,
)
from calibkit.metrics import calibration_errors

REDUCTIONS: list[CalibrationReduction] = ["average", "expected", "maximum"]
FIELD = {"average": "ace", "expected": "ece", "maximum": "mce"}
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def metric_values(p: np.ndarray, y: np.ndarray, n_bins: int, reduction: str) -> np.ndarray:
    """(B, C) calibration errors from the numpy metric, one image at a time."""
    errors = [calibration_errors(bin_statistics(p[b], y[b], n_bins)) for b in range(p.shape[0])]
    return np.stack([getattr(e, FIELD[reduction]) for e in errors])


def random_case(
    rng: np.random.Generator, shape: tuple[int, ...], edges: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities (half of them exactly on edges k/M, 0 and 1 when ``edges``) and targets."""
    p = rng.random(shape, dtype=np.float32)
    if edges is not None:
        on_edge = rng.random(shape) < 0.5
        p = np.where(on_edge, rng.choice(edge_probabilities(edges), size=shape), p)
    y = (rng.random(shape) < p).astype(np.float32)
    return p.astype(np.float32), y


def away_from_edges(p: np.ndarray, n_bins: int, margin: float = 1e-4) -> np.ndarray:
    """Move values within ``margin`` of an edge or a bin centre (finite-difference kinks)."""
    grid = np.arange(2 * n_bins + 1) / (2 * n_bins)
    distance = np.abs(p[..., None] - grid).min(axis=-1)
    return np.where(distance < margin, p + 3 * margin, p)


# --------------------------------------------------------------------------- binning


@pytest.mark.parametrize("n_bins", [1, 2, 3, 5, 7, 10, 20, 100, 255, 1000])
def test_fast_bin_index_equals_reference_around_every_edge(n_bins: int) -> None:
    edges = torch.from_numpy(bin_edges(n_bins).astype(np.float32))
    grid = torch.from_numpy((np.arange(n_bins + 1) / n_bins).astype(np.float32))
    around = [grid, edges]
    # 64 float32 neighbours on each side of every edge and of every k/M.
    for centre in (grid, edges):
        down = up = centre
        for _ in range(64):
            down = torch.nextafter(down, torch.tensor(-1.0))
            up = torch.nextafter(up, torch.tensor(2.0))
            around += [down, up]
    values = torch.cat(
        [
            *around,
            torch.rand(20_000, generator=torch.Generator().manual_seed(n_bins)),
            torch.tensor([-0.3, -math.inf, 1.7, math.inf, 1.0000001, 0.0, -0.0, 1.0]),
        ]
    )
    np.testing.assert_array_equal(
        fast_bin_index(values, n_bins).numpy(), bin_index(values, n_bins).numpy()
    )


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.lists(st.floats(0, 1, width=32), min_size=1, max_size=50), st.integers(1, 64))
def test_fast_bin_index_property(values: list[float], n_bins: int) -> None:
    tensor = torch.tensor(values, dtype=torch.float32)
    assert fast_bin_index(tensor, n_bins).tolist() == bin_index(tensor, n_bins).tolist()


def test_fast_bin_index_nan_does_not_crash() -> None:
    assert fast_bin_index(torch.tensor([math.nan, 0.5]), 20).tolist() == [0, 9]


# --------------------------------------------------------------------------- hard: values


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("n_bins", [5, 20])
@pytest.mark.parametrize("edges", [None, "on-edges"])
def test_hard_loss_equals_metric(
    reduction: CalibrationReduction, n_bins: int, edges: str | None, rng: np.random.Generator
) -> None:
    p, y = random_case(rng, (2, 3, 7, 8, 9), edges=n_bins if edges else None)
    loss = HardL1ACELoss(n_bins=n_bins, reduction="none", calibration_reduction=reduction)
    ours = loss(torch.from_numpy(p).double(), torch.from_numpy(y))
    reference = metric_values(p, y, n_bins, reduction)
    np.testing.assert_allclose(ours.numpy(), reference, rtol=0, atol=1e-9)
    mean = HardL1ACELoss(n_bins=n_bins, calibration_reduction=reduction)(
        torch.from_numpy(p), torch.from_numpy(y)
    )
    assert mean.dtype == torch.float32
    assert abs(mean.item() - reference.mean()) < 1e-6
    total = HardL1ACELoss(n_bins=n_bins, reduction="sum", calibration_reduction=reduction)(
        torch.from_numpy(p), torch.from_numpy(y)
    )
    assert abs(total.item() - reference.sum()) < 1e-5


def test_hard_loss_equals_metric_on_a_training_sized_volume(rng: np.random.Generator) -> None:
    # 2 x 4 x 48^3 in float32: several chunks, float32 partial sums; still 1e-6.
    logits = rng.normal(size=(2, 4, 48, 48, 48)).astype(np.float32) * 3
    p = torch.softmax(torch.from_numpy(logits), dim=1).numpy()
    y = (rng.random(p.shape) < p).astype(np.float32)
    ours = HardL1ACELoss(reduction="none")(torch.from_numpy(p), torch.from_numpy(y))
    np.testing.assert_allclose(ours.numpy(), metric_values(p, y, 20, "average"), atol=1e-6)


@pytest.mark.parametrize(
    ("p", "y", "ace", "ece", "mce"),
    [
        ([0.7, 0.3, 0.1, 0.9], [1, 0, 0, 1], 0.2, 0.2, 0.3),
        ([0.65, 0.25, 0.15, 0.95], [1, 0, 0, 1], 0.2, 0.2, 0.35),
        ([0.8, 0.2, 0.4, 0.6], [1, 0, 0, 1], 0.3, 0.3, 0.4),
        ([0.7, 0.3, 0.5, 0.5], [0, 1, 1, 0], 0.4667, 0.35, 0.7),
    ],
)
def test_spec_conformance_vectors(
    p: list[float], y: list[float], ace: float, ece: float, mce: float
) -> None:
    p_tensor = torch.tensor(p).view(1, 1, -1)
    y_tensor = torch.tensor(y, dtype=torch.float32).view(1, 1, -1)
    for reduction, expected in zip(REDUCTIONS, (ace, ece, mce), strict=True):
        loss = HardL1ACELoss(n_bins=5, calibration_reduction=reduction)(p_tensor, y_tensor)
        assert loss.item() == pytest.approx(expected, abs=1e-4)


# --------------------------------------------------------------------------- hard: gradients


def closed_form_gradient(p: np.ndarray, y: np.ndarray, n_bins: int) -> np.ndarray:
    """sign(pbar_k - ybar_k) / (n_k K B C) per voxel, from numpy's bin assignment."""
    batch, classes = p.shape[:2]
    grad = np.zeros(p.shape, dtype=np.float64)
    for b in range(batch):
        for c in range(classes):
            bins = assign_bins(p[b, c], n_bins)
            present = np.unique(bins)
            for k in present:
                members = bins == k
                gap = p[b, c][members].astype(np.float64).mean() - y[b, c][members].mean()
                n_k = members.sum()
                grad[b, c][members] = np.sign(gap) / (n_k * len(present) * batch * classes)
    return grad


@pytest.mark.parametrize("edges", [None, "on-edges"])
def test_hard_gradient_equals_closed_form(edges: str | None, rng: np.random.Generator) -> None:
    p, y = random_case(rng, (2, 3, 6, 7, 5), edges=20 if edges else None)
    p_tensor = torch.from_numpy(p).requires_grad_()
    HardL1ACELoss()(p_tensor, torch.from_numpy(y)).backward()
    assert p_tensor.grad is not None
    expected = closed_form_gradient(p, y, 20)
    np.testing.assert_allclose(p_tensor.grad.numpy(), expected, rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("loss_class", [HardL1ACELoss, SoftL1ACELoss])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_gradcheck_float64(
    loss_class: type[HardL1ACELoss], reduction: CalibrationReduction, rng: np.random.Generator
) -> None:
    n_bins = 6
    p = away_from_edges(rng.random((2, 2, 40)), n_bins)
    y = torch.from_numpy((rng.random(p.shape) < p).astype(np.float64))
    loss = loss_class(n_bins=n_bins, calibration_reduction=reduction)
    p_tensor = torch.from_numpy(p).requires_grad_()
    assert torch.autograd.gradcheck(lambda x: loss(x, y), (p_tensor,), eps=1e-6)


@pytest.mark.parametrize("loss_class", [HardL1ACELoss, SoftL1ACELoss])
def test_gradcheck_through_softmax_with_label_map(
    loss_class: type[HardL1ACELoss], rng: np.random.Generator
) -> None:
    logits = torch.from_numpy(rng.normal(size=(2, 3, 30))).requires_grad_()
    labels = torch.from_numpy(rng.integers(0, 3, size=(2, 1, 30)))
    loss = loss_class(n_bins=8, softmax=True, to_onehot_y=True)
    assert torch.autograd.gradcheck(lambda x: loss(x, labels), (logits,), eps=1e-6)


DEGENERATE = {
    "all zero": (np.zeros((2, 2, 50)), np.zeros((2, 2, 50))),
    "all one": (np.ones((2, 2, 50)), np.ones((2, 2, 50))),
    "zero against one": (np.zeros((2, 2, 50)), np.ones((2, 2, 50))),
    "on edges": (
        np.tile(np.arange(21) / 20, (2, 2, 3)),
        np.tile(np.arange(21) % 2, (2, 2, 3)),
    ),
    "empty class": (np.full((2, 2, 50), 0.3), np.zeros((2, 2, 50))),
    "one voxel": (np.full((2, 2, 1), 0.5), np.ones((2, 2, 1))),
}


@pytest.mark.parametrize("case", list(DEGENERATE))
@pytest.mark.parametrize("loss_class", [HardL1ACELoss, SoftL1ACELoss])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("ignore_empty", [False, True])
def test_gradients_finite_on_degenerate_inputs(
    case: str, loss_class: type[HardL1ACELoss], reduction: CalibrationReduction, ignore_empty: bool
) -> None:
    p, y = DEGENERATE[case]
    p_tensor = torch.tensor(p, dtype=torch.float32, requires_grad=True)
    loss = loss_class(
        calibration_reduction=reduction,
        ignore_empty_classes=ignore_empty,
    )
    value = loss(p_tensor, torch.tensor(y, dtype=torch.float32))
    value.backward()
    assert torch.isfinite(value)
    assert p_tensor.grad is not None and bool(torch.isfinite(p_tensor.grad).all())


def test_softmax_logits_with_saturated_probabilities_have_finite_grads() -> None:
    logits = torch.tensor([[[60.0, -60.0, 0.0], [-60.0, 60.0, 0.0]]])  # p exactly 0 and 1
    logits = logits.repeat(1, 1, 10).requires_grad_()
    labels = torch.zeros((1, 1, 30))
    for loss_class in (HardL1ACELoss, SoftL1ACELoss):
        value = loss_class(softmax=True, to_onehot_y=True)(logits, labels)
        (grad,) = torch.autograd.grad(value, logits)
        assert torch.isfinite(value) and bool(torch.isfinite(grad).all())


# --------------------------------------------------------------------------- soft


def tent_reference(p: np.ndarray, y: np.ndarray, n_bins: int, empty_weight: float) -> np.ndarray:
    """Soft-binned ACE per (image, class) from a dense tent kernel (float64)."""
    width = float(bin_edges(n_bins)[-1]) / n_bins
    centres = (np.arange(n_bins) + 0.5) * width
    values = np.zeros(p.shape[:2])
    for index in np.ndindex(*p.shape[:2]):
        pv, yv = p[index].astype(np.float64), y[index].astype(np.float64)
        weights = np.maximum(0.0, 1.0 - np.abs(pv[:, None] - centres[None, :]) / width)
        weights[pv <= centres[0], 0] = 1.0
        weights[pv >= centres[-1], -1] = 1.0
        total = weights.sum(axis=0)
        kept = total >= empty_weight
        gap = np.abs(weights.T @ pv - weights.T @ yv)[kept] / total[kept]
        values[index] = gap.mean()
    return values


@pytest.mark.parametrize("n_bins", [1, 2, 5, 20])
def test_soft_loss_equals_tent_kernel_reference(n_bins: int, rng: np.random.Generator) -> None:
    p, y = random_case(rng, (2, 3, 300), edges=n_bins)
    p[0, 0, :5] = [0.0, 1.0, 0.01, 0.99, 0.5]
    ours = SoftL1ACELoss(n_bins=n_bins, reduction="none")(
        torch.from_numpy(p).double(), torch.from_numpy(y)
    )
    np.testing.assert_allclose(ours.numpy(), tent_reference(p, y, n_bins, 0.01), atol=1e-9)


def test_soft_loss_drops_light_bins() -> None:
    # Voxel A sends 0.005 of its mass to bin 0 (dropped at the default 0.01), the rest to
    # bin 1; voxel B sits on bin 1's centre. Keeping bin 0 (threshold 1e-4) changes the value.
    width = float(bin_edges(10)[-1]) / 10
    p = torch.tensor([[[1.495 * width, 1.5 * width]]], dtype=torch.float64)
    y = torch.tensor([[[1.0, 0.0]]], dtype=torch.float64)
    default = SoftL1ACELoss(n_bins=10)(p, y).item()
    light = SoftL1ACELoss(n_bins=10, empty_weight=1e-4)(p, y).item()
    assert default == pytest.approx(tent_reference(p.numpy(), y.numpy(), 10, 0.01)[0, 0])
    assert light == pytest.approx(tent_reference(p.numpy(), y.numpy(), 10, 1e-4)[0, 0])
    assert abs(default - light) > 0.1


def tent_loss_autograd(
    p: torch.Tensor,
    y: torch.Tensor,
    n_bins: int,
    empty_weight: float,
    calibration_reduction: CalibrationReduction,
) -> torch.Tensor:
    """Mean soft-binned calibration error, straight from its definition, for torch autograd.

    Dense (B, C, N, M) tent weights, per-bin sums by ``sum`` and the SPEC.md §1
    formulas: no chunks, no custom backward; the gradient is autograd's.
    """
    width = float(bin_edges(n_bins)[-1]) / n_bins
    centres = (torch.arange(n_bins, dtype=p.dtype) + 0.5) * width
    weights = (1.0 - (p[..., None] - centres).abs() / width).clamp_min(0.0)
    below, above = p <= centres[0], p >= centres[-1]
    weights = torch.cat(
        [
            torch.where(below, 1.0, weights[..., 0])[..., None],
            weights[..., 1:-1],
            torch.where(above, 1.0, weights[..., -1])[..., None],
        ],
        dim=-1,
    )
    total = weights.sum(dim=2)
    sum_p = (weights * p[..., None]).sum(dim=2)
    sum_y = (weights * y[..., None]).sum(dim=2)
    kept = total >= empty_weight
    weighted_gap = torch.where(kept, (sum_p - sum_y).abs(), 0.0)
    if calibration_reduction == "expected":
        values = weighted_gap.sum(-1) / total.sum(-1)
    else:
        gap = weighted_gap / torch.where(kept, total, 1.0)
        if calibration_reduction == "maximum":
            values = torch.where(kept, gap, -math.inf).amax(-1)
        else:
            values = gap.sum(-1) / kept.sum(-1)
    return values.mean()


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("label_map", [False, True])
def test_soft_gradient_equals_autograd_of_the_definition(
    reduction: CalibrationReduction, label_map: bool, rng: np.random.Generator
) -> None:
    # 17,000 voxels per pair: more than one block of the compiled kernel (BLOCK = 16,384).
    n_bins = 20
    p = away_from_edges(rng.random((2, 3, 17_000)), n_bins, margin=1e-6)
    p[:, :, :40] = rng.random((2, 3, 40)) * 0.02  # below the first centre
    p[:, :, 40:80] = 1 - rng.random((2, 3, 40)) * 0.02  # above the last one
    labels = rng.integers(0, 4, size=(2, 1, p.shape[2]))
    y = (labels == np.arange(1, 4)[None, :, None]).astype(np.float64)

    p_ours = torch.from_numpy(p).requires_grad_()
    if label_map:  # channel 0 dropped: strided channel views and targets built chunk by chunk
        loss = SoftL1ACELoss(
            calibration_reduction=reduction, to_onehot_y=True, include_background=False
        )
        padded = torch.cat([torch.zeros(2, 1, p.shape[2], dtype=torch.float64), p_ours], dim=1)
        ours = loss(padded, torch.from_numpy(labels))
    else:
        ours = SoftL1ACELoss(calibration_reduction=reduction)(p_ours, torch.from_numpy(y))
    (grad_ours,) = torch.autograd.grad(ours, p_ours)

    p_ref = torch.from_numpy(p).requires_grad_()
    reference = tent_loss_autograd(p_ref, torch.from_numpy(y), n_bins, 0.01, reduction)
    (grad_ref,) = torch.autograd.grad(reference, p_ref)

    # float64 throughout: the sums of up to 17,000 terms and the per-voxel products differ
    # only by rounding order, about sqrt(17,000) * 2^-53 ~ 1.5e-14 relative; 1e-12 leaves
    # room for the division by the bin weight. Gradients are compared to their largest
    # entry (single voxels may be near zero).
    assert ours.item() == pytest.approx(reference.item(), rel=1e-12)
    scale = grad_ref.abs().max().item()
    torch.testing.assert_close(grad_ours, grad_ref, rtol=0, atol=1e-12 * scale)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("label_map", [False, True])
def test_compiled_and_torch_soft_paths_agree(
    dtype: torch.dtype,
    label_map: bool,
    monkeypatch: pytest.MonkeyPatch,
    rng: np.random.Generator,
) -> None:
    p, y = random_case(rng, (2, 3, 17_000), edges=20)
    labels = torch.from_numpy(rng.integers(0, 3, size=(2, 1, p.shape[2])))
    logits = torch.from_numpy(np.log(p + 1e-3)).to(dtype)

    def value_and_grad() -> tuple[torch.Tensor, torch.Tensor]:
        if label_map:
            x = logits.clone().requires_grad_()
            loss = SoftL1ACELoss(reduction="none", softmax=True, to_onehot_y=True)
            value = loss(x, labels)
        else:
            x = torch.from_numpy(p).to(dtype).requires_grad_()
            value = SoftL1ACELoss(reduction="none")(x, torch.from_numpy(y))
        (grad,) = torch.autograd.grad(value.sum(), x)
        return value, grad

    compiled = value_and_grad()
    monkeypatch.setattr(bin_sums, "COMPILED_SOFT_DEVICES", ())
    torch_loop = value_and_grad()
    if dtype == torch.float64:
        # Same float64 numbers, summed in another order: ~sqrt(n) * 2^-53 relative.
        torch.testing.assert_close(compiled[0], torch_loop[0], rtol=1e-12, atol=1e-15)
        torch.testing.assert_close(compiled[1], torch_loop[1], rtol=1e-10, atol=1e-15)
    else:
        # The torch loop rounds each product to float32 and sums 32,768-voxel chunks in
        # float32 (relative error up to ~1e-7 per bin sum after cancellation); the
        # compiled loop sums exact products in float64. Same bounds as the chunk test.
        torch.testing.assert_close(compiled[0], torch_loop[0], rtol=0, atol=1e-6)
        torch.testing.assert_close(compiled[1], torch_loop[1], rtol=1e-4, atol=1e-7)


def test_compiled_soft_loss_is_the_same_on_any_thread_count_and_chunking(
    monkeypatch: pytest.MonkeyPatch, rng: np.random.Generator
) -> None:
    p, y = random_case(rng, (2, 3, 40_000), edges=20)
    threads = torch.get_num_threads()

    def value_and_grad(n_threads: int) -> tuple[torch.Tensor, torch.Tensor]:
        torch.set_num_threads(n_threads)
        try:
            x = torch.from_numpy(p).requires_grad_()
            value = SoftL1ACELoss(reduction="none")(x, torch.from_numpy(y))
            (grad,) = torch.autograd.grad(value.sum(), x)
        finally:
            torch.set_num_threads(threads)
        return value, grad

    one, two = value_and_grad(1), value_and_grad(2)
    # Fixed blocks summed in a fixed order: bit for bit, whatever the thread count.
    assert torch.equal(one[0], two[0]) and torch.equal(one[1], two[1])
    monkeypatch.setattr(bin_sums, "COMPILED_CHUNK_VOXELS", 1)  # 256 voxels per pair and call
    chunked = value_and_grad(2)
    # Other calls, other float64 summation order (~1e-16 relative): the float32 results
    # move by an ulp at most; bounds as in test_chunked_and_real_scatter_paths_agree.
    torch.testing.assert_close(chunked[0], one[0], rtol=0, atol=1e-6)
    torch.testing.assert_close(chunked[1], one[1], rtol=1e-4, atol=1e-7)


def test_soft_float32_matches_float64(rng: np.random.Generator) -> None:
    p, y = random_case(rng, (2, 3, 20, 20, 20))
    single = SoftL1ACELoss(reduction="none")(torch.from_numpy(p), torch.from_numpy(y))
    double = SoftL1ACELoss(reduction="none")(torch.from_numpy(p).double(), torch.from_numpy(y))
    np.testing.assert_allclose(single.numpy(), double.numpy(), atol=1e-6)


# --------------------------------------------------------------------------- options


@pytest.mark.parametrize("loss_class", [HardL1ACELoss, SoftL1ACELoss])
def test_label_map_equals_one_hot(
    loss_class: type[HardL1ACELoss], rng: np.random.Generator
) -> None:
    logits = torch.from_numpy(rng.normal(size=(2, 4, 6, 6, 6)).astype(np.float32))
    labels = torch.from_numpy(rng.integers(0, 4, size=(2, 1, 6, 6, 6)))
    one_hot = torch.nn.functional.one_hot(labels[:, 0], 4).movedim(-1, 1)
    for include_background in (True, False):
        with_map = loss_class(
            softmax=True, to_onehot_y=True, include_background=include_background, reduction="none"
        )(logits, labels.float())
        with_one_hot = loss_class(reduction="none")(
            torch.softmax(logits, 1)[:, 0 if include_background else 1 :],
            one_hot[:, 0 if include_background else 1 :],
        )
        torch.testing.assert_close(with_map, with_one_hot, rtol=0, atol=1e-7)
        assert with_map.shape == (2, 4 if include_background else 3)


def test_sigmoid_equals_probabilities(rng: np.random.Generator) -> None:
    logits = torch.from_numpy(rng.normal(size=(2, 2, 100)).astype(np.float32))
    y = torch.from_numpy((rng.random((2, 2, 100)) < 0.3).astype(np.float32))
    torch.testing.assert_close(
        HardL1ACELoss(sigmoid=True)(logits, y), HardL1ACELoss()(torch.sigmoid(logits), y)
    )


def test_bool_and_integer_targets_equal_float(rng: np.random.Generator) -> None:
    p, y = random_case(rng, (2, 2, 500))
    expected = HardL1ACELoss()(torch.from_numpy(p), torch.from_numpy(y))
    for dtype in (torch.bool, torch.uint8, torch.int64):
        assert HardL1ACELoss()(torch.from_numpy(p), torch.from_numpy(y).to(dtype)) == expected


def test_class_weights_and_ignore_empty_classes(rng: np.random.Generator) -> None:
    p, y = random_case(rng, (3, 3, 200))
    y[1, 2] = 0  # image 1 has no class 2
    reference = metric_values(p, y, 20, "average")
    p_tensor, y_tensor = torch.from_numpy(p), torch.from_numpy(y)
    weighted = HardL1ACELoss(weight=[1.0, 2.0, 0.5])(p_tensor, y_tensor)
    assert weighted.item() == pytest.approx((reference * [1.0, 2.0, 0.5]).mean(), abs=1e-6)
    scalar = HardL1ACELoss(weight=2.0)(p_tensor, y_tensor)
    assert scalar.item() == pytest.approx(2 * reference.mean(), abs=1e-6)
    ignored = HardL1ACELoss(ignore_empty_classes=True, reduction="none")(p_tensor, y_tensor)
    assert math.isnan(ignored[1, 2].item())
    kept = np.ones((3, 3), dtype=bool)
    kept[1, 2] = False
    np.testing.assert_allclose(ignored.numpy()[kept], reference[kept], atol=1e-6)
    mean = HardL1ACELoss(ignore_empty_classes=True)(p_tensor, y_tensor)
    assert mean.item() == pytest.approx(reference[kept].mean(), abs=1e-6)


def test_every_pair_empty_gives_zero_loss_and_zero_gradient() -> None:
    p = torch.full((1, 2, 10), 0.4, requires_grad=True)
    value = HardL1ACELoss(ignore_empty_classes=True)(p, torch.zeros((1, 2, 10)))
    value.backward()
    assert value.item() == 0.0
    assert p.grad is not None and not bool(p.grad.any())


def test_module_moves_with_its_weight_buffer() -> None:
    loss = HardL1ACELoss(weight=[1.0, 2.0])
    assert "class_weight" in dict(loss.named_buffers())
    assert "n_bins=20" in repr(loss)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_bins": 0}, "n_bins"),
        ({"n_bins": 2.5}, "n_bins"),
        ({"softmax": True, "sigmoid": True}, "at most one"),
        ({"reduction": "avg"}, "reduction must be one of mean, sum, none"),
        ({"calibration_reduction": "max"}, "average, expected, maximum"),
        ({"weight": [1.0, -1.0]}, "weight"),
    ],
)
def test_bad_options_raise(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(CalibkitError, match=message):
        HardL1ACELoss(**kwargs)  # type: ignore[arg-type]


def test_soft_rejects_bad_empty_weight() -> None:
    with pytest.raises(CalibkitError, match="empty_weight"):
        SoftL1ACELoss(empty_weight=0.0)


@pytest.mark.parametrize(
    ("loss", "input_shape", "target_shape", "message"),
    [
        (HardL1ACELoss(), (2, 3), (2, 3), "B, C, \\*spatial"),
        (HardL1ACELoss(), (2, 3, 4), (2, 3, 4, 1), "number of dimensions"),
        (HardL1ACELoss(), (2, 3, 4), (2, 3, 5), "spatial shape"),
        (HardL1ACELoss(), (2, 3, 4), (2, 2, 4), "to_onehot_y=True"),
        (HardL1ACELoss(to_onehot_y=True), (2, 3, 4), (2, 3, 4), "label map"),
        (HardL1ACELoss(weight=[1.0, 2.0]), (2, 3, 4), (2, 3, 4), "weight has 2 values"),
    ],
)
def test_bad_shapes_raise(
    loss: HardL1ACELoss,
    input_shape: tuple[int, ...],
    target_shape: tuple[int, ...],
    message: str,
) -> None:
    with pytest.raises(CalibkitError, match=message):
        loss(torch.rand(input_shape), torch.zeros(target_shape))


def test_single_channel_options_warn_and_are_ignored() -> None:
    generator = torch.Generator().manual_seed(0)  # not the global RNG: same input in any order
    p = torch.rand((2, 1, 50), generator=generator)
    y = (torch.rand((2, 1, 50), generator=generator) < 0.5).float()
    with pytest.warns(UserWarning, match="single channel"):
        value = HardL1ACELoss(softmax=True, include_background=False, to_onehot_y=True)(p, y)
    assert value == HardL1ACELoss()(p, y)


# --------------------------------------------------------------------------- numerics


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_bin_like_their_float32_values(
    dtype: torch.dtype, rng: np.random.Generator
) -> None:
    p, y = random_case(rng, (2, 3, 400), edges=20)
    half = torch.from_numpy(p).to(dtype).requires_grad_()
    value = HardL1ACELoss(reduction="none")(half, torch.from_numpy(y))
    assert value.dtype == torch.float32
    reference = metric_values(half.detach().float().numpy(), y, 20, "average")
    np.testing.assert_allclose(value.detach().numpy(), reference, atol=1e-6)
    value.mean().backward()
    assert half.grad is not None and half.grad.dtype == dtype


def test_autocast_bfloat16_training_step(rng: np.random.Generator) -> None:
    logits = torch.from_numpy(rng.normal(size=(2, 3, 8, 8, 8)).astype(np.float32))
    labels = torch.from_numpy(rng.integers(0, 3, size=(2, 1, 8, 8, 8)))
    conv = torch.nn.Conv3d(3, 3, 1)
    loss = build_loss("dsc+ce+ace")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = conv(logits)
        assert out.dtype == torch.bfloat16
        value = loss(out, labels)
    value.backward()
    assert value.dtype == torch.float32 and torch.isfinite(value)
    assert conv.weight.grad is not None and bool(torch.isfinite(conv.weight.grad).all())
    full = loss(conv(logits), labels)
    assert value.item() == pytest.approx(full.item(), abs=0.05)


@pytest.mark.parametrize("loss_class", [HardL1ACELoss, SoftL1ACELoss])
def test_chunked_and_real_scatter_paths_agree(
    loss_class: type[HardL1ACELoss], monkeypatch: pytest.MonkeyPatch, rng: np.random.Generator
) -> None:
    p, y = random_case(rng, (2, 3, 5000), edges=20)

    def value_and_grad() -> tuple[torch.Tensor, torch.Tensor]:
        p_tensor = torch.from_numpy(p).requires_grad_()
        value = loss_class(reduction="none")(p_tensor, torch.from_numpy(y))
        (grad,) = torch.autograd.grad(value.sum(), p_tensor)
        return value, grad

    whole = value_and_grad()
    monkeypatch.setattr(bin_sums, "CPU_CHUNK_VOXELS", 1)  # 256 voxels per pair and step
    monkeypatch.setattr(bin_sums, "COMPLEX_SCATTER_DEVICES", ())
    assert len(bin_sums._chunks(5000, 6, torch.device("cpu"))) == 20  # ceil(5000 / 256)
    chunked = value_and_grad()
    torch.testing.assert_close(chunked[0], whole[0], rtol=0, atol=1e-6)
    torch.testing.assert_close(chunked[1], whole[1], rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("loss_class", [HardL1ACELoss, SoftL1ACELoss])
def test_non_contiguous_input_and_channel_views(
    loss_class: type[HardL1ACELoss], rng: np.random.Generator
) -> None:
    p, y = random_case(rng, (2, 3, 6, 7, 8))
    permuted = torch.from_numpy(np.ascontiguousarray(p.transpose(0, 1, 4, 3, 2))).permute(
        0, 1, 4, 3, 2
    )
    assert not permuted.is_contiguous()
    expected = loss_class(reduction="none")(torch.from_numpy(p), torch.from_numpy(y))
    got = loss_class(reduction="none")(permuted, torch.from_numpy(y))
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("spec", ["ace", "soft-ace", "dsc+ce+ace"])
def test_torch_compile_breaks_the_graph_around_the_voxel_loop(
    spec: str, batch: tuple[torch.Tensor, torch.Tensor]
) -> None:
    logits, labels = batch
    loss = build_loss(spec)
    compiled = torch.compile(loss, backend="eager")  # dynamo tracing, no C++ toolchain
    logits.requires_grad_()
    value = compiled(logits, labels)
    (grad,) = torch.autograd.grad(value, logits)
    (expected_grad,) = torch.autograd.grad(loss(logits, labels), logits)
    torch.testing.assert_close(value, loss(logits, labels))
    torch.testing.assert_close(grad, expected_grad)


# --------------------------------------------------------------------------- training


@pytest.mark.parametrize("loss_class", [HardL1ACELoss, SoftL1ACELoss])
def test_adam_on_an_overconfident_model_lowers_ace(
    loss_class: type[HardL1ACELoss], rng: np.random.Generator
) -> None:
    # Labels drawn from softmax(z); the model predicts softmax(s * 4 z) with s learnable,
    # four times too confident. A few Adam steps on the loss alone pull s towards 1/4.
    z = rng.normal(size=(2, 3, 4000)).astype(np.float32)
    true_p = torch.softmax(torch.from_numpy(z), 1)
    labels = torch.distributions.Categorical(probs=true_p.movedim(1, -1)).sample()[:, None]
    logits = torch.from_numpy(4 * z)
    log_scale = torch.zeros((), requires_grad=True)
    optimiser = torch.optim.Adam([log_scale], lr=0.1)
    loss = loss_class(softmax=True, to_onehot_y=True)

    def metric_ace() -> float:
        p = torch.softmax(logits * log_scale.exp(), 1).detach().numpy()
        y = torch.nn.functional.one_hot(labels[:, 0], 3).movedim(-1, 1).numpy()
        return float(metric_values(p, y, 20, "average").mean())

    before = metric_ace()
    for _ in range(15):
        optimiser.zero_grad()
        loss(logits * log_scale.exp(), labels).backward()
        optimiser.step()
    after = metric_ace()
    assert after < 0.6 * before
    assert log_scale.exp().item() < 0.6


# --------------------------------------------------------------------------- CUDA


@CUDA
@pytest.mark.parametrize("loss_class", [HardL1ACELoss, SoftL1ACELoss])
def test_cuda_matches_cpu(loss_class: type[HardL1ACELoss], rng: np.random.Generator) -> None:
    p, y = random_case(rng, (2, 4, 24, 24, 24), edges=20)
    results = []
    for device in ("cpu", "cuda"):
        p_tensor = torch.from_numpy(p).to(device).requires_grad_()
        value = loss_class(reduction="none")(p_tensor, torch.from_numpy(y).to(device))
        (grad,) = torch.autograd.grad(value.sum(), p_tensor)
        results.append((value.cpu(), grad.cpu()))
    torch.testing.assert_close(results[1][0], results[0][0], rtol=0, atol=1e-6)
    torch.testing.assert_close(results[1][1], results[0][1], rtol=1e-4, atol=1e-9)
    if loss_class is HardL1ACELoss:
        reference = metric_values(p, y, 20, "average")
        np.testing.assert_allclose(results[1][0].numpy(), reference, atol=1e-6)


@CUDA
def test_cuda_combined_loss_under_autocast(rng: np.random.Generator) -> None:
    logits = torch.from_numpy(rng.normal(size=(2, 4, 16, 16, 16)).astype(np.float32)).cuda()
    labels = torch.from_numpy(rng.integers(0, 4, size=(2, 1, 16, 16, 16))).cuda()
    conv = torch.nn.Conv3d(4, 4, 1).cuda()
    for spec in ("dsc+ace", "dsc+ce+soft-ace"):
        with torch.autocast("cuda", dtype=torch.float16):
            value = build_loss(spec)(conv(logits), labels)
        value.backward()
        assert torch.isfinite(value)
        assert conv.weight.grad is not None and bool(torch.isfinite(conv.weight.grad).all())


# --------------------------------------------------------------------------- combined


def test_parse_default_and_explicit_weights() -> None:
    assert parse_loss_spec("dsc+ce") == (LossTerm("dsc", 0.5), LossTerm("ce", 0.5))
    assert [t.weight for t in parse_loss_spec("dsc+ce+ace")] == pytest.approx([1 / 3] * 3)
    assert parse_loss_spec(" DSC:1 + ce:1 + ace:0.3 ") == (
        LossTerm("dsc", 1.0),
        LossTerm("ce", 1.0),
        LossTerm("ace", 0.3),
    )
    assert [t.name for t in parse_loss_spec("ce+soft-ace")] == ["ce", "soft-ace"]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("", "empty loss spec"),
        ("dice+ce", "unknown term 'dice'"),
        ("dsc++ace", "unknown term ''"),
        ("dsc+dsc", "appears twice"),
        ("dsc:1+ace", "every term or to none"),
        ("dsc:-1+ace:1", "non-negative number"),
        ("dsc:x+ace:1", "non-negative number"),
        ("dsc:nan+ace:1", "non-negative number"),
        ("dsc:0+ace:0", "sum to zero"),
    ],
)
def test_bad_specs_name_the_valid_terms(spec: str, message: str) -> None:
    with pytest.raises(CalibkitError, match=message) as error:
        parse_loss_spec(spec)
    if "valid terms" not in str(error.value):
        assert "weight" in str(error.value)
    else:
        assert "ce, dsc, ace" in str(error.value)


def test_build_loss_rejects_bad_activation() -> None:
    with pytest.raises(CalibkitError, match="activation"):
        build_loss("dsc", activation="tanh")  # type: ignore[arg-type]


@pytest.fixture
def batch(rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    logits = torch.from_numpy(rng.normal(size=(2, 4, 8, 8, 8)).astype(np.float32) * 2)
    labels = torch.from_numpy(rng.integers(0, 4, size=(2, 1, 8, 8, 8)).astype(np.float32))
    return logits, labels


def test_dice_and_ce_terms_equal_monai(batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    from monai.losses.dice import DiceCELoss, DiceLoss

    logits, labels = batch
    dice = DiceLoss(softmax=True, to_onehot_y=True)(logits, labels)
    dice_ce = DiceCELoss(softmax=True, to_onehot_y=True)
    ce = dice_ce.ce(logits, labels)
    torch.testing.assert_close(build_loss("dsc")(logits, labels), dice)
    torch.testing.assert_close(build_loss("ce")(logits, labels), ce)
    torch.testing.assert_close(build_loss("dsc+ce")(logits, labels), 0.5 * dice_ce(logits, labels))
    ace = HardL1ACELoss(softmax=True, to_onehot_y=True)(logits, labels)
    soft = SoftL1ACELoss(softmax=True, to_onehot_y=True)(logits, labels)
    torch.testing.assert_close(
        build_loss("dsc+ce+ace")(logits, labels), (dice + ce + ace) / 3, rtol=1e-6, atol=1e-7
    )
    torch.testing.assert_close(
        build_loss("dsc:1+ce:1+soft-ace:0.3")(logits, labels),
        dice + ce + 0.3 * soft,
        rtol=1e-6,
        atol=1e-7,
    )


def test_one_hot_targets_and_sigmoid(batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    from monai.losses.dice import DiceCELoss

    logits, labels = batch
    one_hot = torch.nn.functional.one_hot(labels[:, 0].long(), 4).movedim(-1, 1).float()
    torch.testing.assert_close(
        build_loss("dsc+ce", to_onehot_y=False)(logits, one_hot),
        0.5 * DiceCELoss(softmax=True)(logits, one_hot),
    )
    sigmoid = build_loss("ce+ace", activation="sigmoid")
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, one_hot)
    ace = HardL1ACELoss(sigmoid=True)(logits, one_hot)
    torch.testing.assert_close(sigmoid(logits, labels), (bce + ace) / 2)


@pytest.mark.parametrize("spec", ["ce+ace", "dsc+ece", "dsc+ce+mce", "dsc+soft-ece+soft-mce"])
def test_components_and_spec_for_logging(
    spec: str, batch: tuple[torch.Tensor, torch.Tensor]
) -> None:
    logits, labels = batch
    logits.requires_grad_()
    loss = build_loss(spec, n_bins=10)
    parts = loss.components(logits, labels)
    assert list(parts) == [term.name for term in loss.terms]
    total = loss.combine(parts)
    torch.testing.assert_close(total, loss(logits, labels))
    total.backward()
    assert logits.grad is not None and bool(torch.isfinite(logits.grad).all())
    parsed = parse_loss_spec(loss.spec)
    assert [t.name for t in parsed] == [t.name for t in loss.terms]
    assert [t.weight for t in parsed] == pytest.approx([t.weight for t in loss.terms], rel=1e-5)
    assert loss.spec in repr(loss)
