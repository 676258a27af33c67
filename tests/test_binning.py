"""Bin edges and bin assignment are identical to torch / MONAI (SPEC.md §1)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import edge_probabilities
from monai.metrics.calibration import calibration_binning

from calibkit.binning import BinStats, assign_bins, bin_edges, bin_statistics


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
