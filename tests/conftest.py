"""Shared fixtures: tiny seeded volumes and a helper that writes NIfTI cases."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

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
