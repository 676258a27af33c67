"""Shared fixtures: tiny seeded volumes and a helper that writes NIfTI cases."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from typer.testing import CliRunner

REPO = Path(__file__).resolve().parents[1]
SAMPLE_DATA = REPO / "sample_data"

# Hypothesis's timing checks (an example's deadline, slow data generation) depend on
# how loaded the machine is, not on calibkit: off for every property test.
settings.register_profile("calibkit", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("calibkit")


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


def run_cli(*args: str | Path) -> tuple[int, str, str]:
    """Invoke ``calibkit`` in-process: (exit code, stdout, stderr)."""
    from calibkit.cli import app

    result = CliRunner().invoke(app, [str(a) for a in args])
    return result.exit_code, result.stdout, result.stderr


def modules_imported(imports: str, candidates: set[str]) -> list[str]:
    """Which of ``candidates`` a fresh Python process holds after ``import <imports>``."""
    code = f"import sys, {imports}; print(*sorted(set({sorted(candidates)!r}) & set(sys.modules)))"
    completed = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    return completed.stdout.split()


def assert_user_error(code: int, stderr: str, *fragments: str) -> None:
    """Exit 1 with exactly one ``error:`` line holding every fragment, and no traceback."""
    assert code == 1, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error:") and "Traceback" not in stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def write_binary_logits(root: Path, temperature: float = 2.0) -> tuple[Path, Path]:
    """Two cases of one-channel (binary) logit maps and labels drawn from ``sigmoid(z / T)``.

    ``case0`` is stored as a 3-D map, ``case1`` as ``(x, y, z, 1)``: both are one channel.
    Returns the prediction and label folders (``root/preds``, ``root/labels``).
    """
    rng = np.random.default_rng(15)
    preds, labels = root / "preds", root / "labels"
    preds.mkdir()
    labels.mkdir()
    affine = np.diag([-1.0, -1.0, 1.0, 1.0])
    shape = (6, 7, 8)
    for i, stored in enumerate((shape, (*shape, 1))):
        z = (rng.normal(size=shape) * 4).astype(np.float32)
        label = rng.random(shape) < 1 / (1 + np.exp(-z.astype(np.float64) / temperature))
        nib.save(nib.Nifti1Image(z.reshape(stored), affine), preds / f"case{i}_pred.nii.gz")
        nib.save(nib.Nifti1Image(label.astype(np.uint8), affine), labels / f"case{i}_seg.nii.gz")
    return preds, labels


def binary_reference(p: np.ndarray, y: np.ndarray, n_bins: int = 20) -> dict[str, float]:
    """ACE, ECE, MCE and Dice (threshold 0.5) of float64 probabilities, by hand with numpy.

    Bins are ``[k/M, (k+1)/M)``; the caller checks that no voxel lies near an inner edge
    (:func:`assert_clear_of_edges`), where float32 and float64 could bin it apart.
    """
    p, y = p.ravel(), y.ravel().astype(bool)
    index = np.minimum((p * n_bins).astype(np.int64), n_bins - 1)
    gaps = [abs(p[index == k].mean() - y[index == k].mean()) for k in np.unique(index)]
    counts = [np.count_nonzero(index == k) for k in np.unique(index)]
    predicted = p >= 0.5
    return {
        "ace": float(np.mean(gaps)),
        "ece": float(np.dot(counts, gaps) / p.size),
        "mce": float(np.max(gaps)),
        "dice": 2 * np.count_nonzero(predicted & y) / (np.count_nonzero(predicted) + y.sum()),
    }


def assert_clear_of_edges(p: np.ndarray, n_bins: int = 20, margin: float = 1e-6) -> None:
    """No probability within ``margin`` of an inner bin edge ``k/M`` (0.5 among them)."""
    scaled = np.asarray(p, dtype=np.float64) * n_bins
    nearest_edge = np.clip(np.round(scaled), 1, n_bins - 1)
    assert np.abs(scaled - nearest_edge).min() > n_bins * margin


def read_csv_rows(path: Path, case_id: str) -> list[dict[str, str]]:
    """Rows of ``per_image.csv`` of one case, as dicts."""
    lines = path.read_text().splitlines()
    header = lines[0].split(",")
    rows = [dict(zip(header, line.split(","), strict=True)) for line in lines[1:]]
    return [row for row in rows if row["case_id"] == case_id]
