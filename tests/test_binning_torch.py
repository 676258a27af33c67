"""The torch backend bins exactly like the numpy reference (CPU, and CUDA when present).

Counts and the positives of binary targets are integers and must be equal. Sums of
probabilities are float64 sums of the same float32 values added in another order:
each partial sum rounds by at most 2**-53 relative, so ``n`` values of one sign
differ by at most about ``n * 1.1e-16`` relative; ``rtol = 1e-12`` covers every
``n`` below 9000 in a worst-case order, and the much smaller random-walk error of
the larger inputs here. ``atol`` covers empty bins (0 on both sides).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from conftest import edge_probabilities

import calibkit.binning_torch as module
from calibkit.binning import bin_statistics, class_binner
from calibkit.binning_torch import TorchBinner, bin_index, bin_statistics_torch

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
# Both reductions run on the CPU; the GPU takes bincount (scatter there is untested).
REDUCTIONS = [("cpu", "scatter"), ("cpu", "bincount")] + (
    [("cuda", "bincount")] if torch.cuda.is_available() else []
)
SUM_RTOL = 1e-12  # see the module docstring
SUM_ATOL = 1e-9


def assert_same_bins(ours: object, reference: object) -> None:
    """Counts and positives exactly, sums to the tolerance above."""
    np.testing.assert_array_equal(ours.count, reference.count)  # type: ignore[attr-defined]
    np.testing.assert_allclose(
        ours.sum_p,  # type: ignore[attr-defined]
        reference.sum_p,  # type: ignore[attr-defined]
        rtol=SUM_RTOL,
        atol=SUM_ATOL,
    )
    np.testing.assert_allclose(
        ours.sum_y,  # type: ignore[attr-defined]
        reference.sum_y,  # type: ignore[attr-defined]
        rtol=SUM_RTOL,
        atol=SUM_ATOL,
    )


def edge_volume(rng: np.random.Generator, n_classes: int, n_bins: int) -> np.ndarray:
    """Random probabilities with every edge of ``n_bins`` and its neighbours in each class."""
    return np.concatenate(
        [
            rng.random((n_classes, 4000), dtype=np.float32),
            np.tile(edge_probabilities(n_bins), (n_classes, 1)),
        ],
        axis=1,
    )


@pytest.mark.parametrize(("device", "reduction"), REDUCTIONS)
@pytest.mark.parametrize("n_bins", [1, 5, 20, 100])
def test_parity_with_numpy(
    device: str, reduction: str, n_bins: int, rng: np.random.Generator
) -> None:
    p = edge_volume(rng, 3, n_bins)
    y = rng.random(p.shape) < 0.4
    reference = bin_statistics(p, y, n_bins, kernel="numpy")
    binner = TorchBinner(n_bins, device, reduction)  # type: ignore[arg-type]
    ours = binner(torch.from_numpy(p).to(device), torch.from_numpy(y).to(device))
    assert_same_bins(ours, reference)
    np.testing.assert_array_equal(ours.sum_y, reference.sum_y)  # positives: integers


@pytest.mark.parametrize(("device", "reduction"), REDUCTIONS)
def test_many_classes_in_one_pass(device: str, reduction: str, rng: np.random.Generator) -> None:
    p = rng.random((110, 9, 10, 11), dtype=np.float32) ** 4  # mostly bin 0, as a softmax
    y = rng.random(p.shape) < p
    reference = bin_statistics(p, y, 20, kernel="numpy")
    binner = TorchBinner(20, device, reduction)  # type: ignore[arg-type]
    assert_same_bins(
        binner(torch.from_numpy(p).to(device), torch.from_numpy(y).to(device)), reference
    )


@pytest.mark.parametrize(("device", "reduction"), REDUCTIONS)
def test_targets_of_any_dtype(device: str, reduction: str, rng: np.random.Generator) -> None:
    """0/1 targets of any dtype give the very numbers of bool ones; real ones are averaged."""
    p = torch.from_numpy(edge_volume(rng, 2, 20)).to(device)
    y = torch.from_numpy(rng.random(tuple(p.shape)) < 0.3).to(device)
    binner = TorchBinner(20, device, reduction)  # type: ignore[arg-type]
    as_bool = binner(p, y)
    for dtype in (torch.uint8, torch.int64, torch.float32, torch.float64):
        other = binner(p, y.to(dtype))
        np.testing.assert_array_equal(other.count, as_bool.count)
        np.testing.assert_array_equal(other.sum_p, as_bool.sum_p)  # same keys, same order
        np.testing.assert_array_equal(other.sum_y, as_bool.sum_y)
    soft = rng.random(tuple(p.shape))
    soft[0, 7] = np.nan  # a NaN target makes its bin's sum NaN, as in the reference
    reference = bin_statistics(p.cpu().numpy(), soft, 20, kernel="numpy")
    assert_same_bins(binner(p, torch.from_numpy(soft).to(device)), reference)


@pytest.mark.parametrize(("device", "reduction"), REDUCTIONS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.float64])
def test_probabilities_are_binned_as_float32(
    device: str, reduction: str, dtype: torch.dtype, rng: np.random.Generator
) -> None:
    p = torch.from_numpy(edge_volume(rng, 2, 20)).to(dtype)
    y = rng.random(tuple(p.shape)) < 0.5
    reference = bin_statistics(p.float().numpy(), y, 20, kernel="numpy")
    binner = TorchBinner(20, device, reduction)  # type: ignore[arg-type]
    assert_same_bins(binner(p.to(device), torch.from_numpy(y).to(device)), reference)


@pytest.mark.parametrize(("device", "reduction"), REDUCTIONS)
def test_nan_and_out_of_range_probabilities(device: str, reduction: str) -> None:
    """NaN and values below 0 land in bin 0, values above 1 (and inf) in the last bin."""
    p = np.array([[np.nan, -0.5, -np.inf, 0.3, 1.5, np.inf, 1.0]], np.float32)
    y = np.array([[1, 0, 1, 0, 1, 0, 1]], bool)
    reference = bin_statistics(p, y, 5, kernel="numpy")
    binner = TorchBinner(5, device, reduction)  # type: ignore[arg-type]
    ours = binner(torch.from_numpy(p).to(device), torch.from_numpy(y).to(device))
    assert ours.count.tolist() == reference.count.tolist() == [[3, 1, 0, 0, 3]]
    np.testing.assert_array_equal(ours.sum_y, reference.sum_y)
    np.testing.assert_array_equal(np.isnan(ours.sum_p), np.isnan(reference.sum_p))


@pytest.mark.parametrize("device", DEVICES)
def test_bin_index_matches_spec_examples(device: str) -> None:
    values = torch.tensor([0.0, 0.05, 0.0500001, 0.5, 1.0], device=device)
    assert bin_index(values, 20).cpu().tolist() == [0, 0, 1, 9, 19]


@pytest.mark.parametrize(
    ("reduction", "min_voxels_per_total"), [("scatter", 0), ("scatter", 1), ("bincount", 0)]
)
def test_chunked_equals_whole(
    reduction: str,
    min_voxels_per_total: int,
    monkeypatch: pytest.MonkeyPatch,
    rng: np.random.Generator,
) -> None:
    p = torch.from_numpy(rng.random((3, 16, 17, 19), dtype=np.float32))
    y = torch.from_numpy(rng.random((3, 16, 17, 19)) < 0.5)
    whole = TorchBinner(20, "cpu", reduction)(p, y)  # type: ignore[arg-type]
    # Chunks of 7 voxels of all 3 classes (6 for bincount), the last one of 2 or 2;
    # with a floor of 1 voxel per total (320 totals a class), blocks of one class.
    monkeypatch.setattr(module, "CPU_CHUNK_VOXELS", 21)
    monkeypatch.setattr(module, "CHUNK_VOXELS", 18)
    monkeypatch.setattr(module._ScatterTotals, "MIN_VOXELS_PER_TOTAL", min_voxels_per_total)
    chunked = TorchBinner(20, "cpu", reduction)(p, y)  # type: ignore[arg-type]
    assert_same_bins(chunked, whole)


def test_deterministic_mode_takes_index_add(rng: np.random.Generator) -> None:
    """Under torch.use_deterministic_algorithms, CUDA refuses bincount with weights."""
    p = edge_volume(rng, 3, 20)
    y = rng.random(p.shape) < 0.4
    reference = bin_statistics(p, y, 20, kernel="numpy")
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        for device, _ in REDUCTIONS:
            binner = TorchBinner(20, device, "bincount")
            assert_same_bins(binner(torch.from_numpy(p), torch.from_numpy(y)), reference)
    finally:
        torch.use_deterministic_algorithms(before)


def test_sums_do_not_depend_on_the_thread_count(rng: np.random.Generator) -> None:
    # Not rng.random(dtype=float32): its values are multiples of 2**-24, whose float64
    # sums are exact in any order. These have full mantissas at many exponents, and
    # their sums change in the last bit when the voxels are grouped differently.
    p = torch.from_numpy((rng.random((2, 300_000)) ** 4).astype(np.float32))
    y = torch.from_numpy(rng.random((2, 300_000)) < 0.5)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = bin_statistics_torch(p, y)
        torch.set_num_threads(2)
        two = bin_statistics_torch(p, y)
    finally:
        torch.set_num_threads(threads)
    np.testing.assert_array_equal(one.sum_p, two.sum_p)  # bit for bit
    np.testing.assert_array_equal(one.count, two.count)


def test_small_probabilities_are_not_lost_against_a_large_total(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each chunk is summed apart: a running float64 total would drop the small ones.

    With one total per key (no lanes: they spread the voxels over 8 totals), 40,000
    voxels at 0.049 make a total of 1960, whose half-ulp (1.1e-13) exceeds each of
    the 2,000,000 later values of 1e-14; together those add 2e-8, 1e-11 of the
    total: ten times the tolerance, so a single running sum fails this test.
    """
    monkeypatch.setattr(module._ScatterTotals, "LANES", 1)
    big, small = np.float32(0.049), np.float32(1e-14)
    p = np.concatenate([np.full(40_000, big), np.full(2_000_000, small)])[None]
    y = np.zeros(p.shape, bool)
    # n * x is exact in float64 for a float32 x and n < 2**29: one rounding in all.
    exact = 40_000 * float(big) + 2_000_000 * float(small)
    ours = bin_statistics_torch(torch.from_numpy(p), torch.from_numpy(y), 20)
    assert ours.sum_p[0, 0] == pytest.approx(exact, rel=SUM_RTOL)


@pytest.mark.parametrize("reduction", ["scatter", "bincount"])
def test_binner_reuses_its_buffers_across_shapes(reduction: str, rng: np.random.Generator) -> None:
    binner = TorchBinner(20, "cpu", reduction)  # type: ignore[arg-type]
    shapes = [(3, 40, 50), (1, 7), (3, 40, 50), (0, 5), (2, 0), (4,)]
    for shape in shapes:
        p = torch.from_numpy(rng.random(shape, dtype=np.float32))
        y = torch.from_numpy(rng.random(shape) < 0.5)
        reference = bin_statistics(p.numpy(), y.numpy(), 20, kernel="numpy")
        ours = binner(p, y)
        assert ours.count.shape == reference.count.shape
        assert_same_bins(ours, reference)


def test_numpy_layouts_are_binned_without_copies_and_alike(rng: np.random.Generator) -> None:
    """Fortran order, the class axis innermost, reversed axes, big-endian, read-only."""
    p = rng.random((3, 20, 21, 22), dtype=np.float32)
    y = rng.random(p.shape) < p
    reference = bin_statistics(p, y, 20, kernel="numpy")
    channels_last = np.ascontiguousarray(np.moveaxis(p, 0, -1))
    read_only = p.copy()
    read_only.setflags(write=False)
    layouts = {
        "fortran": (np.asfortranarray(p), np.asfortranarray(y)),
        "mixed": (np.asfortranarray(p), y),
        "class axis innermost": (np.moveaxis(channels_last, -1, 0), y),
        "reversed": (p[:, ::-1, :, ::-1], y[:, ::-1, :, ::-1]),
        "big-endian": (p.astype(">f4"), y),
        "read-only": (read_only, y),
    }
    for name, (probabilities, targets) in layouts.items():
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # torch warns about sharing a read-only array
            ours = bin_statistics(probabilities, targets, 20, backend="torch", device="cpu")
        np.testing.assert_array_equal(ours.count, reference.count, err_msg=name)
        np.testing.assert_allclose(ours.sum_p, reference.sum_p, rtol=SUM_RTOL, err_msg=name)


def test_class_binner_on_torch_equals_one_image_at_a_time(rng: np.random.Generator) -> None:
    bin_one = class_binner(20, "torch", "cpu")
    for shape in [(30, 40), (5, 6, 7), (30, 40)]:
        p = np.asfortranarray(rng.random(shape, dtype=np.float32))
        y = rng.random(shape) < p
        expected = bin_statistics(p[None], y[None], 20, kernel="numpy")[0]
        ours = bin_one(p, y)
        np.testing.assert_array_equal(ours.count, expected.count)
        np.testing.assert_allclose(ours.sum_p, expected.sum_p, rtol=SUM_RTOL)


def test_bad_arguments() -> None:
    p = torch.zeros((2, 3))
    with pytest.raises(ValueError, match="differ in shape"):
        bin_statistics_torch(p, torch.zeros((2, 4), dtype=torch.bool))
    with pytest.raises(ValueError, match="class axis"):
        bin_statistics_torch(torch.tensor(0.5), torch.tensor(True))
    with pytest.raises(ValueError, match="reduction"):
        TorchBinner(20, "cpu", "sort")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="n_bins"):
        TorchBinner(0, "cpu")
