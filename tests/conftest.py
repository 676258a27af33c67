"""Shared fixtures: tiny seeded volumes and a helper that writes NIfTI cases."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SAMPLE_DATA = REPO / "sample_data"


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(12345)


def edge_probabilities(n_bins: int) -> np.ndarray:
    """Every edge k/M as float32, its float32 neighbours, 0 and 1."""
    grid = (np.arange(n_bins + 1) / n_bins).astype(np.float32)
    below = np.nextafter(grid, np.float32(-1))
    above = np.nextafter(grid, np.float32(2))
    values = np.concatenate([grid, below, above, [0.0, 1.0]]).astype(np.float32)
    return np.clip(values, 0, 1)
