"""Property tests (hypothesis) of the binning and the calibration metrics."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from calibkit.binning import bin_statistics
from calibkit.binning_torch import bin_statistics_torch
from calibkit.metrics import calibration_errors

probabilities = st.one_of(
    st.floats(0, 1, width=32),
    st.sampled_from([0.0, 0.05, 0.1, 0.25, 0.5, 0.75, 0.95, 1.0]),  # edges for many M
)


# Every @settings below has derandomize=True: the examples are a function of the test's
# source, so a run is the same on every machine and does not read or write the
# .hypothesis example database of the working directory.


@st.composite
def images(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray, int]:
    n_voxels = draw(st.integers(1, 300))
    p = draw(arrays(np.float32, (2, n_voxels), elements=probabilities))
    y = draw(arrays(np.bool_, (2, n_voxels)))
    n_bins = draw(st.sampled_from([1, 2, 5, 10, 20, 100]))
    return p, y, n_bins


def errors_of(p: np.ndarray, y: np.ndarray, n_bins: int) -> np.ndarray:
    errors = calibration_errors(bin_statistics(p, y, n_bins))
    return np.stack([errors.ace, errors.ece, errors.mce])


@settings(max_examples=150, deadline=None, derandomize=True)
@given(images())
def test_errors_lie_in_unit_interval_and_are_ordered(
    case: tuple[np.ndarray, np.ndarray, int],
) -> None:
    ace, ece, mce = errors_of(*case)
    for values in (ace, ece, mce):
        assert np.all((values >= 0) & (values <= 1))
    assert np.all(ece <= mce + 1e-12)
    assert np.all(ace <= mce + 1e-12)


@settings(max_examples=100, deadline=None, derandomize=True)
@given(images(), st.randoms(use_true_random=False))
def test_invariant_to_voxel_permutation(case, random) -> None:  # type: ignore[no-untyped-def]
    p, y, n_bins = case
    order = np.arange(p.shape[1])
    random.shuffle(order)
    np.testing.assert_allclose(
        errors_of(p[:, order], y[:, order], n_bins), errors_of(p, y, n_bins), atol=1e-12
    )


@settings(max_examples=100, deadline=None, derandomize=True)
@given(images(), st.integers(2, 4))
def test_invariant_to_duplicating_every_voxel(case, copies: int) -> None:  # type: ignore[no-untyped-def]
    p, y, n_bins = case
    repeated = errors_of(np.tile(p, copies), np.tile(y, copies), n_bins)
    np.testing.assert_allclose(repeated, errors_of(p, y, n_bins), atol=1e-12)


@settings(max_examples=60, deadline=None, derandomize=True)
@given(images())
def test_numpy_kernels_and_torch_agree(case: tuple[np.ndarray, np.ndarray, int]) -> None:
    p, y, n_bins = case
    reference = bin_statistics(p, y, n_bins, kernel="numpy")
    compiled = bin_statistics(p, y, n_bins)
    on_torch = bin_statistics_torch(torch.from_numpy(p), torch.from_numpy(y), n_bins)
    for other in (compiled, on_torch):
        np.testing.assert_array_equal(other.count, reference.count)
        np.testing.assert_array_equal(other.sum_y, reference.sum_y)
        np.testing.assert_allclose(other.sum_p, reference.sum_p, rtol=1e-12, atol=1e-12)


def test_perfectly_calibrated_data_tends_to_zero_ace() -> None:
    rng = np.random.default_rng(2024)
    aces = []
    for n_voxels in (1_000, 30_000, 1_000_000):
        p = rng.random((1, n_voxels), dtype=np.float32)
        y = rng.random((1, n_voxels)) < p  # y ~ Bernoulli(p): calibrated by construction
        aces.append(float(calibration_errors(bin_statistics(p, y, 20)).ace[0]))
    assert aces[0] > aces[1] > aces[2]
    assert aces[2] < 0.005


@settings(max_examples=60, deadline=None, derandomize=True)
@given(images())
def test_hard_loss_equals_the_metric(case: tuple[np.ndarray, np.ndarray, int]) -> None:
    from calibkit.losses import HardL1ACELoss

    p, y, n_bins = case
    loss = HardL1ACELoss(n_bins=n_bins, reduction="none")
    value = loss(torch.from_numpy(p)[None].double(), torch.from_numpy(y)[None].double())
    np.testing.assert_allclose(value[0].numpy(), errors_of(p, y, n_bins)[0], atol=1e-9)
