"""The torch backend bins exactly like the numpy reference (CPU, and CUDA when present)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import edge_probabilities

from calibkit.binning import bin_statistics
from calibkit.binning_torch import bin_index, bin_statistics_torch

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("n_bins", [1, 5, 20, 100])
def test_parity_with_numpy(device: str, n_bins: int, rng: np.random.Generator) -> None:
    p = np.concatenate(
        [rng.random((3, 4000), dtype=np.float32), np.tile(edge_probabilities(n_bins), (3, 1))],
        axis=1,
    )
    y = rng.random(p.shape) < 0.4
    reference = bin_statistics(p, y, n_bins)
    ours = bin_statistics_torch(
        torch.from_numpy(p).to(device), torch.from_numpy(y).to(device), n_bins
    )
    np.testing.assert_array_equal(ours.count, reference.count)
    np.testing.assert_allclose(ours.sum_p, reference.sum_p, rtol=1e-12, atol=1e-9)
    np.testing.assert_array_equal(ours.sum_y, reference.sum_y)


@pytest.mark.parametrize("device", DEVICES)
def test_bin_index_matches_spec_examples(device: str) -> None:
    values = torch.tensor([0.0, 0.05, 0.0500001, 0.5, 1.0], device=device)
    assert bin_index(values, 20).cpu().tolist() == [0, 0, 1, 9, 19]


def test_chunked_equals_whole(monkeypatch: pytest.MonkeyPatch, rng: np.random.Generator) -> None:
    import calibkit.binning_torch as module

    p = torch.from_numpy(rng.random((2, 6, 7, 8), dtype=np.float32))
    y = torch.from_numpy(rng.random((2, 6, 7, 8)) < 0.5)
    whole = bin_statistics_torch(p, y, 20)
    monkeypatch.setattr(module, "CHUNK_VOXELS", 50)
    chunked = bin_statistics_torch(p, y, 20)
    np.testing.assert_array_equal(whole.count, chunked.count)
    np.testing.assert_allclose(whole.sum_p, chunked.sum_p, rtol=1e-12)
