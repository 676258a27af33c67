"""Bin edges and bin assignment are identical to torch / MONAI (SPEC.md §1)."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from conftest import edge_probabilities, modules_imported
from monai.metrics.calibration import calibration_binning

from calibkit import binning
from calibkit.binning import BinStats, assign_bins, bin_edges, bin_statistics
from calibkit.errors import CalibkitError


@pytest.mark.parametrize("n_bins", [*range(1, 301), 500, 1000, 1023, 4096])
def test_edges_equal_torch_linspace(n_bins: int) -> None:
    expected = torch.linspace(0.0, 1.0 + torch.finfo(torch.float32).eps, n_bins + 1).numpy()
    np.testing.assert_array_equal(bin_edges(n_bins), expected)


def test_numpy_linspace_would_differ() -> None:
    # The reason bin_edges exists: numpy's float32 linspace is not torch's.
    eps = np.finfo(np.float32).eps
    numpy_edges = np.linspace(0, 1 + eps, 21, dtype=np.float32)
    assert not np.array_equal(numpy_edges, bin_edges(20))


def test_spec_examples() -> None:
    values = np.array([0.0, 0.05, 0.0500001, 0.5, 1.0], dtype=np.float32)
    assert assign_bins(values, 20).tolist() == [0, 0, 1, 9, 19]
    stats = bin_statistics(values[None], np.zeros((1, 5), bool), 20)
    assert np.flatnonzero(stats.count[0]).tolist() == [0, 1, 9, 19]
    assert stats.count[0, 0] == 2


def test_row_three_edges_spec() -> None:
    # 0.2 -> 0, 0.4 -> 1, 0.6 -> 2, 0.8 -> 3 with M = 5.
    assert assign_bins([0.2, 0.4, 0.6, 0.8], 5).tolist() == [0, 1, 2, 3]


@pytest.mark.parametrize("n_bins", [1, 2, 3, 5, 7, 10, 20, 33, 100, 255])
def test_fast_index_equals_reference_and_monai(n_bins: int, rng: np.random.Generator) -> None:
    values = np.concatenate(
        [edge_probabilities(n_bins), rng.random(5000, dtype=np.float32), [-0.3, 1.7, 1.0000001]]
    ).astype(np.float32)
    stats = bin_statistics(values[None], np.zeros((1, values.size), bool), n_bins)
    reference = np.bincount(assign_bins(values, n_bins), minlength=n_bins)
    np.testing.assert_array_equal(stats.count[0], reference)
    # MONAI bins the same values (one per image so each assignment is visible).
    monai_counts = calibration_binning(
        torch.from_numpy(values).reshape(-1, 1, 1), torch.zeros(values.size, 1, 1), n_bins
    )[2].numpy()
    monai_index = monai_counts.argmax(axis=-1)[:, 0]
    np.testing.assert_array_equal(assign_bins(values, n_bins), monai_index)


def test_every_float32_near_edges_matches_reference() -> None:
    # Walk 200 float32 steps either side of each edge for M = 20.
    edges = bin_edges(20)
    values = []
    for edge in edges:
        up, down = edge, edge
        for _ in range(200):
            up = np.nextafter(up, np.float32(2))
            down = np.nextafter(down, np.float32(-1))
            values += [up, down]
    values_array = np.clip(np.array(values, dtype=np.float32), 0, 1)
    stats = bin_statistics(values_array[None], np.zeros((1, values_array.size), bool), 20)
    np.testing.assert_array_equal(
        stats.count[0], np.bincount(assign_bins(values_array, 20), minlength=20)
    )


def test_sums_are_float64_of_float32_values(rng: np.random.Generator) -> None:
    p = rng.random((2, 1000))  # float64 input is cast to float32 first
    y = rng.random((2, 1000)) < 0.3
    stats = bin_statistics(p, y, 10)
    p32 = p.astype(np.float32)
    for c in range(2):
        index = assign_bins(p32[c], 10)
        for k in range(10):
            members = index == k
            assert stats.count[c, k] == members.sum()
            assert stats.sum_p[c, k] == pytest.approx(
                float(np.sum(p32[c][members], dtype=np.float64)), abs=1e-12
            )
            assert stats.sum_y[c, k] == y[c][members].sum()
    assert stats.sum_p.dtype == np.float64


def test_chunking_and_memory_order_do_not_change_results(
    rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch
) -> None:
    p = rng.random((3, 17, 19, 23), dtype=np.float32)
    y = rng.random((3, 17, 19, 23)) < 0.4
    whole = bin_statistics(p, y, 20)
    import calibkit.binning as binning

    monkeypatch.setattr(binning, "CHUNK_VOXELS", 1000)
    chunked = bin_statistics(np.asfortranarray(p), np.asfortranarray(y), 20)
    mixed = bin_statistics(np.asfortranarray(p), y, 20)
    for other in (chunked, mixed):
        np.testing.assert_array_equal(whole.count, other.count)
        np.testing.assert_allclose(whole.sum_p, other.sum_p, rtol=1e-12)
        np.testing.assert_array_equal(whole.sum_y, other.sum_y)


def test_non_binary_targets_average(rng: np.random.Generator) -> None:
    p = rng.random((1, 500), dtype=np.float32)
    y = rng.random((1, 500))
    stats = bin_statistics(p, y, 5)
    index = assign_bins(p[0], 5)
    expected = np.bincount(index, weights=y[0], minlength=5)
    np.testing.assert_allclose(stats.sum_y[0], expected, rtol=1e-12)


def test_binstats_helpers() -> None:
    stats = bin_statistics([[0.1, 0.9], [0.2, 0.4]], [[0, 1], [1, 1]], 2)
    assert stats.shape == (2,) and stats.n_bins == 2
    both = BinStats.stack([stats, stats])
    assert both.shape == (2, 2)
    pooled = both.pooled(axis=0)
    np.testing.assert_array_equal(pooled.count, 2 * stats.count)
    assert np.isnan(stats.mean_p[1, 1])  # empty bin
    with pytest.raises(ValueError):
        bin_statistics([[0.1]], [[0, 1]], 2)
    with pytest.raises(ValueError):
        bin_edges(0)


@pytest.mark.parametrize("n_bins", [1, 2, 5, 20, 33, 100])
def test_compiled_kernel_equals_numpy_reference(n_bins: int, rng: np.random.Generator) -> None:
    pytest.importorskip("numba")
    values = np.concatenate(
        [
            np.tile(edge_probabilities(n_bins), 50),
            rng.random(200_000, dtype=np.float32),
            np.zeros(70_000, np.float32),  # long runs in one bin (background)
            [-0.5, 1.5, np.float32(1.0000001)],
        ]
    ).astype(np.float32)
    targets = rng.random(values.size) < 0.5
    compiled = bin_statistics(values[None], targets[None], n_bins, kernel="numba")
    reference = bin_statistics(values[None], targets[None], n_bins, kernel="numpy")
    np.testing.assert_array_equal(compiled.count, reference.count)
    np.testing.assert_array_equal(compiled.sum_y, reference.sum_y)
    np.testing.assert_allclose(compiled.sum_p, reference.sum_p, rtol=1e-12)
    np.testing.assert_array_equal(
        compiled.count[0], np.bincount(assign_bins(values, n_bins), minlength=n_bins)
    )


@pytest.mark.parametrize(
    "n_bins", [1, 2, 3, 7, 10, 20, 33, 50, 255, 256, 1000, 4096, 65536, 400_000]
)
def test_compiled_kernel_is_exact_around_every_edge(n_bins: int) -> None:
    """Every float32 within 16 ulps of each true edge and of each k/M, and the odd values."""
    pytest.importorskip("numba")
    anchors = np.concatenate(
        [bin_edges(n_bins), (np.arange(n_bins + 1) / n_bins).astype(np.float32)]
    )
    bits = anchors.astype(np.float32).view(np.int32)[:, None] + np.arange(-16, 17, dtype=np.int32)
    near = bits.astype(np.int32).view(np.float32).ravel()
    odd = np.array([np.inf, -np.inf, -0.0, -1e-30, 1e-45, 2.0, 1.0], np.float32)
    values = np.concatenate([near[(near >= 0) & (near <= 1.5)], odd]).astype(np.float32)
    targets = np.arange(values.size) % 3 == 0
    compiled = bin_statistics(values[None], targets[None], n_bins, kernel="numba")
    expected = assign_bins(values, n_bins)
    nan = bin_statistics([[np.nan]], [[True]], n_bins, kernel="numba")
    assert nan.count[0, 0] == 1  # NaN: first bin, as in the numpy and torch fast paths
    np.testing.assert_array_equal(compiled.count[0], np.bincount(expected, minlength=n_bins))
    np.testing.assert_array_equal(
        compiled.sum_y[0], np.bincount(expected, weights=targets, minlength=n_bins)
    )


def test_compiled_kernel_takes_any_class_layout(rng: np.random.Generator) -> None:
    """Classes as one strided launch (C or Fortran order) or one at a time: same bins."""
    pytest.importorskip("numba")
    channel_last = np.asfortranarray(rng.random((20, 30, 40, 3), dtype=np.float32))
    layouts = {
        "C": np.ascontiguousarray(np.moveaxis(channel_last, -1, 0)),
        "F, channel-first view": np.moveaxis(channel_last, -1, 0),
        "every other voxel": np.moveaxis(channel_last, -1, 0)[:, ::2],
        "reversed classes": np.ascontiguousarray(np.moveaxis(channel_last, -1, 0))[::-1],
    }
    for name, p in layouts.items():
        y = p > 0.5
        compiled = bin_statistics(p, y, 20, kernel="numba")
        reference = bin_statistics(p, y, 20, kernel="numpy")
        np.testing.assert_array_equal(compiled.count, reference.count, err_msg=name)
        np.testing.assert_allclose(compiled.sum_p, reference.sum_p, rtol=1e-12, err_msg=name)


def test_compiled_kernel_edge_cases(rng: np.random.Generator) -> None:
    pytest.importorskip("numba")
    from calibkit._kernels import bin_rows
    from calibkit.binning import _as_rows

    # no classes
    assert bin_statistics(np.zeros((0, 5), np.float32), np.zeros((0, 5), bool), 20).shape == (0,)
    # more bins than the kernel handles exactly: "auto" takes the numpy path
    huge = bin_statistics([[0.25, 0.75]], [[True, False]], 1_700_000)
    assert huge.count.sum() == 2
    with pytest.raises(ValueError, match="bins"):
        bin_statistics([[0.25]], [[True]], 1_700_000, kernel="numba")
    # per-chunk sums stay small next to the voxels of a chunk, whatever M
    from calibkit._kernels import chunk_for

    assert chunk_for(20) == 1 << 16
    assert all(chunk_for(m) >= 64 * 4 * m for m in (1000, 4096, 65536))
    # label codes outside [0, 64) are refused (a shift by 64 or more is undefined)
    for n in (1, 9, 257):
        p = rng.random(n, dtype=np.float32)
        for code in (64, 65, 255, -1):
            codes = np.full(n, code, dtype=np.int16)
            with pytest.raises(ValueError, match="label values"):
                bin_rows(p[None], codes[None], 20, target_labels=(1, 2))
    # evenly spaced rows from separate allocations are not one view
    pool = [np.empty(4096, np.float32) for _ in range(3)]
    assert _as_rows(pool) is None
    same = np.zeros((3, 100), np.float32)
    view = _as_rows(list(same))
    assert view is not None and np.shares_memory(view, same)


def _runs(rng: np.random.Generator, n_bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Probability runs made for the one-key blocks, with labels 0..4 in runs too.

    Runs inside one bin, constant runs on and next to the edges, runs across the
    threshold, a NaN or an infinity inside a run, and lengths that do not fill blocks.
    """
    edges = bin_edges(n_bins)
    runs, labels = [], []
    for _ in range(400):
        length = int(rng.choice([256, 512, 777, 1000, 3, 255]))
        kind = rng.integers(7)
        k = int(rng.integers(n_bins))
        if kind == 0:  # well inside bin k
            low, high = edges[k], edges[k + 1]
            run = rng.uniform(low + (high - low) / 4, high - (high - low) / 4, length)
        elif kind == 1:  # an edge itself, constant
            run = np.full(length, edges[k])
        elif kind == 2:  # one ulp either side of an edge, constant
            run = np.full(length, np.nextafter(edges[k], np.float32(2 * (length % 2) - 1)))
        elif kind == 3:  # around the threshold 0.5
            run = rng.uniform(0.49, 0.51, length)
        elif kind == 4:  # inside bin k, or background, with one NaN or infinity
            low, high = (edges[k], edges[k + 1]) if rng.random() < 0.5 else (0.0, 1e-4)
            run = rng.uniform(low + (high - low) / 4, high - (high - low) / 4, length)
            run[rng.integers(length)] = rng.choice([np.nan, np.inf, -np.inf])
        elif kind == 5:  # exactly the threshold
            run = np.full(length, 0.5)
        else:  # background
            run = np.zeros(length)
        runs.append(run.astype(np.float32))
        label_run = np.full(length, rng.integers(5), dtype=np.uint8)
        if rng.random() < 0.2:
            label_run[rng.integers(length)] = rng.integers(5)
        labels.append(label_run)
    return np.concatenate(runs), np.concatenate(labels)


@pytest.mark.parametrize("n_bins", [1, 2, 20, 33])
def test_compiled_kernel_one_key_blocks(n_bins: int, rng: np.random.Generator) -> None:
    """Whole blocks of one key (background) are added at once: same bins and Dice counts."""
    pytest.importorskip("numba")
    from calibkit._kernels import bin_flat

    values, labels = _runs(rng, n_bins)
    finite = np.where(np.isnan(values), -1.0, values)  # NaN goes to the first bin
    expected_bins = assign_bins(np.clip(finite, 0.0, 1.0), n_bins)
    for target_labels in [(1,), (1, 2, 4), (0, 3)]:
        targets = np.isin(labels, target_labels)
        result = bin_flat(values, labels, n_bins, target_labels=target_labels, threshold=0.5)
        reference = bin_statistics(values[None], targets[None], n_bins, kernel="numpy")
        np.testing.assert_array_equal(result.count, reference.count[0])
        np.testing.assert_array_equal(result.count, np.bincount(expected_bins, minlength=n_bins))
        np.testing.assert_array_equal(result.sum_y, reference.sum_y[0])
        np.testing.assert_allclose(result.sum_p, reference.sum_p[0], rtol=1e-12)
        predicted = values >= 0.5
        assert result.predicted == np.count_nonzero(predicted)
        assert result.intersection == np.count_nonzero(predicted & targets)


def test_kernel_start_skips_numba_blas_probe() -> None:
    """Worker processes start numba without importing scipy.linalg; it imports later."""
    pytest.importorskip("numba")
    import subprocess
    import sys

    script = """
import sys
import numpy as np
import calibkit.evaluate
from calibkit import _kernels
assert "scipy.linalg" not in sys.modules
_kernels.start_without_blas_probe()
assert "scipy.linalg" not in sys.modules
assert not any(isinstance(f, _kernels._Hidden) for f in sys.meta_path)
import scipy.linalg
assert scipy.linalg.cholesky(np.eye(2)).sum() == 2
r = _kernels.bin_flat(np.array([0.1, 0.7], np.float32), np.array([0, 1], np.uint8), 20,
                      target_labels=(1,), threshold=0.5)
assert r.count.sum() == 2 and r.intersection == 1
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_compiled_kernel_does_not_depend_on_thread_count(rng: np.random.Generator) -> None:
    numba = pytest.importorskip("numba")
    values = rng.random((2, 300_001), dtype=np.float32)
    targets = rng.random(values.shape) < values
    threads = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = bin_statistics(values, targets, 20, kernel="numba")
    finally:
        numba.set_num_threads(threads)
    many = bin_statistics(values, targets, 20, kernel="numba")
    np.testing.assert_array_equal(one.sum_p, many.sum_p)  # bit for bit
    np.testing.assert_array_equal(one.count, many.count)


def test_compiled_kernel_is_safe_from_many_threads(rng: np.random.Generator) -> None:
    """numba's workqueue layer aborts on concurrent launches; calibkit must not."""
    pytest.importorskip("numba")
    from concurrent.futures import ThreadPoolExecutor

    values = rng.random((4, 2, 200_000), dtype=np.float32)
    targets = rng.random(values.shape) < values
    serial = [
        bin_statistics(v, t, 20, kernel="numba") for v, t in zip(values, targets, strict=True)
    ]
    with ThreadPoolExecutor(4) as pool:
        threaded = list(pool.map(lambda i: bin_statistics(values[i], targets[i], 20), range(4)))
    for one, other in zip(serial, threaded, strict=True):
        np.testing.assert_array_equal(one.count, other.count)
        np.testing.assert_array_equal(one.sum_p, other.sum_p)


def test_kernel_choice() -> None:
    with pytest.raises(ValueError, match="kernel"):
        bin_statistics([[0.5]], [[True]], 5, kernel="fortran")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="boolean"):
        bin_statistics([[0.5]], [[0.3]], 5, kernel="numba")
    # real-valued targets take the numpy path under "auto"
    assert bin_statistics([[0.5]], [[0.3]], 5).sum_y[0, 2] == pytest.approx(0.3)


def _no_reference_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the numpy reference path fail, so that only the compiled kernel can answer."""

    def refuse(*args: object) -> None:
        raise AssertionError("the numpy reference path was taken")

    monkeypatch.setattr(binning._ChunkBinner, "add", refuse)


def _one_hot_case(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities (3, 40, 50, 60) and a label map (40, 50, 60) with values 0..2.

    Over 2^16 voxels per class, so the compiled kernel cuts each class into chunks.
    """
    p = rng.random((3, 40, 50, 60), dtype=np.float32)
    labels = rng.integers(0, 3, size=(40, 50, 60))
    return p, labels


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int64, np.float32, np.float64])
def test_binary_targets_of_every_dtype_take_the_kernel(
    dtype: type, rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """0/1 targets of any integer or float dtype: the bool path's bins, from the kernel."""
    pytest.importorskip("numba")
    p, labels = _one_hot_case(rng)
    mask = labels[None] == np.arange(3).reshape(3, 1, 1, 1)
    reference = bin_statistics(p, mask, 20, kernel="numpy")
    expected = bin_statistics(p, mask, 20)  # bool: the compiled kernel
    _no_reference_path(monkeypatch)
    ours = bin_statistics(p, mask.astype(dtype), 20)
    np.testing.assert_array_equal(ours.count, expected.count)
    np.testing.assert_array_equal(ours.sum_y, expected.sum_y)
    # Same kernel, same chunks and summation order as bool targets: bit for bit.
    np.testing.assert_array_equal(ours.sum_p, expected.sum_p)
    np.testing.assert_array_equal(ours.count, reference.count)
    np.testing.assert_array_equal(ours.sum_y, reference.sum_y)
    # Kernel and reference add the same float32 values in another order: float64
    # sums of up to 10^5 terms agree to far better than 1e-12 relative.
    np.testing.assert_allclose(ours.sum_p, reference.sum_p, rtol=1e-12)


def test_one_hot_layouts_take_the_kernel(
    rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``np.eye(C, dtype=uint8)[labels]`` and torch's ``one_hot``, channel axis moved first."""
    pytest.importorskip("numba")
    p, labels = _one_hot_case(rng)
    expected = bin_statistics(p, labels[None] == np.arange(3).reshape(3, 1, 1, 1), 20)
    eye = np.moveaxis(np.eye(3, dtype=np.uint8)[labels], -1, 0)  # a strided view
    one_hot = torch.nn.functional.one_hot(torch.from_numpy(labels), 3)  # int64 (..., C)
    from_torch = one_hot.permute(3, 0, 1, 2).numpy()
    assert eye.dtype == np.uint8 and from_torch.dtype == np.int64
    _no_reference_path(monkeypatch)
    for name, targets in {"np.eye": eye, "torch one_hot": from_torch}.items():
        ours = bin_statistics(p, targets, 20)
        np.testing.assert_array_equal(ours.count, expected.count, err_msg=name)
        np.testing.assert_array_equal(ours.sum_y, expected.sum_y, err_msg=name)
        np.testing.assert_allclose(ours.sum_p, expected.sum_p, rtol=1e-12, err_msg=name)


@pytest.mark.parametrize("layout", ["rows", "one class at a time"])
@pytest.mark.parametrize("other", [0.3, 2.0, -1.0, np.nan])
def test_soft_targets_take_the_reference_path(
    layout: str, other: float, rng: np.random.Generator
) -> None:
    """One target that is not 0 or 1, in the last chunk: the whole image is binned as today."""
    p = rng.random((2, 200_001), dtype=np.float32)
    y = (rng.random(p.shape) < p).astype(np.float64)
    y[0, -1] = other
    if layout == "one class at a time":  # not one strided buffer; the soft class second
        p, y = p[::-1], y[::-1]
    reference = bin_statistics(p, y, 20, kernel="numpy")
    ours = bin_statistics(p, y, 20)
    # The same path: equal bit for bit, a NaN target making its bin's sum NaN.
    np.testing.assert_array_equal(ours.count, reference.count)
    np.testing.assert_array_equal(ours.sum_p, reference.sum_p)
    np.testing.assert_array_equal(ours.sum_y, reference.sum_y)
    assert np.isnan(ours.sum_y).any() == np.isnan(other)
    if binning.numba_available():
        with pytest.raises(ValueError, match="boolean"):
            bin_statistics(p, y, 20, kernel="numba")
    small = np.array([[0, 1, 2]], np.uint8)  # an integer label, not a target
    stats = bin_statistics([[0.1, 0.5, 0.9]], small, 2)
    assert stats.sum_y.tolist() == [[1.0, 2.0]]  # 0.5 is in bin 0 (right-closed)


def test_torch_inputs_and_devices_take_torch(rng: np.random.Generator) -> None:
    from calibkit.binning_torch import bin_statistics_torch

    p = rng.random((2, 3000), dtype=np.float32)
    y = rng.random(p.shape) < p
    on_torch = bin_statistics_torch(torch.from_numpy(p), torch.from_numpy(y), 20)
    for stats in (
        bin_statistics(torch.from_numpy(p), torch.from_numpy(y), 20),  # tensors
        bin_statistics(p, y, 20, backend="torch", device="cpu"),
        bin_statistics(p, torch.from_numpy(y.astype(np.uint8)), 20, device="cpu"),
    ):
        np.testing.assert_array_equal(stats.count, on_torch.count)
        np.testing.assert_array_equal(stats.sum_y, on_torch.sum_y)
        np.testing.assert_array_equal(stats.sum_p, on_torch.sum_p)  # the same function
    numpy_path = bin_statistics(torch.from_numpy(p), torch.from_numpy(y), 20, backend="numpy")
    np.testing.assert_array_equal(numpy_path.count, bin_statistics(p, y, 20).count)
    with pytest.raises(ValueError, match="backend"):
        bin_statistics(p, y, 20, backend="jax")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="CPU kernel"):
        bin_statistics(p, y, 20, backend="torch", kernel="numba")
    with pytest.raises(ValueError, match="shape"):
        bin_statistics(p, y[:, :10], 20, backend="torch", device="cpu")


def test_resolve_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    assert binning.resolve_backend("numpy", None) == "numpy"
    assert binning.resolve_backend("numpy", "cuda") == "numpy"
    assert binning.resolve_backend("torch", None) == "torch"
    assert binning.resolve_backend("auto", "cuda:1") == "torch"  # a device names torch
    assert binning.resolve_backend("auto", "cpu") == "numpy"
    monkeypatch.setattr(binning, "_cuda_may_exist", lambda: False)
    assert binning.resolve_backend("auto", None) == "numpy"
    with pytest.raises(ValueError, match="backend"):
        binning.resolve_backend("jax", None)
    monkeypatch.setitem(sys.modules, "torch", None)  # torch not installed
    for backend, device in [("torch", None), ("auto", "cuda")]:
        with pytest.raises(CalibkitError, match=r"needs PyTorch: pip install torch"):
            binning.resolve_backend(backend, device)


def test_class_binner_and_kernel_check(rng: np.random.Generator) -> None:
    from calibkit.binning_torch import bin_statistics_torch

    p = rng.random((30, 40), dtype=np.float32)
    y = rng.random(p.shape) < p
    on_numpy = binning.class_binner(20, "numpy")(p, y)
    expected = bin_statistics(p[None], y[None], 20)[0]
    assert on_numpy.shape == ()
    np.testing.assert_array_equal(on_numpy.count, expected.count)
    np.testing.assert_array_equal(on_numpy.sum_p, expected.sum_p)
    on_torch = binning.class_binner(20, "torch", "cpu")(p, y)
    expected = bin_statistics_torch(torch.from_numpy(p[None]), torch.from_numpy(y[None]), 20)[0]
    np.testing.assert_array_equal(on_torch.count, expected.count)
    np.testing.assert_array_equal(on_torch.sum_p, expected.sum_p)
    assert not binning.compiled_kernel_applies(20, "torch")
    assert not binning.compiled_kernel_applies(1_700_000, "numpy")
    assert binning.compiled_kernel_applies(20, "numpy") == binning.numba_available()


def test_binning_layers_import_without_circles() -> None:
    """bins below binning, _kernels and binning_torch; binning imports neither heavy one."""
    import calibkit.bins

    for name in ("DEFAULT_N_BINS", "BinStats", "bin_edges"):
        assert getattr(binning, name) is getattr(calibkit.bins, name)
    assert modules_imported("calibkit.binning, calibkit.classes", {"numba", "torch"}) == []
    pytest.importorskip("numba")
    assert modules_imported("calibkit._kernels", {"calibkit.binning"}) == []
    assert modules_imported("calibkit.binning_torch", {"calibkit.binning"}) == []
