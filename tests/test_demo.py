"""``calibkit demo`` runs the whole pipeline on the sample data and says where things are."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO
from typer.testing import CliRunner

from calibkit.cli import app


@pytest.mark.slow
def test_demo_writes_every_table_and_figure(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    result = CliRunner().invoke(app, ["demo", "--out", str(out)])
    assert result.exit_code == 0, result.stderr
    for name in ("dsc", "dsc_ace", "dsc_ts"):
        assert (out / name / "per_image.csv").is_file()
    assert (out / "temperature.json").is_file()
    assert "DSC+ACE" in (out / "summary.md").read_text()
    assert (out / "compare_dsc_vs_dsc_ace.csv").read_text().startswith("metric,class")
    assert (out / "figures" / "reliability_histogram.png").read_bytes()[:4] == b"\x89PNG"
    assert str(out / "summary.md") in result.stdout
    # The mL1-ACE model is better calibrated than the Dice model, before and after scaling.
    line = next(line for line in result.stdout.splitlines() if line.startswith("mean ACE"))
    values = {
        part.split()[0]: float(part.split()[1]) for part in line[20:].split("(")[0].split(",")
    }
    assert values["DSC+ACE"] < values["DSC+Ts"] < values["DSC"]
    # Running it again replaces its own folder.
    assert CliRunner().invoke(app, ["demo", "--out", str(out), "--quiet"]).exit_code == 0


def test_demo_refuses_a_foreign_folder(tmp_path: Path) -> None:
    (tmp_path / "mine.txt").write_text("precious")
    result = CliRunner().invoke(app, ["demo", "--out", str(tmp_path)])
    assert result.exit_code == 1 and "not written by calibkit demo" in result.stderr
    assert (tmp_path / "mine.txt").read_text() == "precious"


@pytest.mark.slow
def test_demo_from_a_built_wheel_outside_the_repository(tmp_path: Path) -> None:
    """A user's ``pip install .`` (no editable link, no sample_data/): the demo still runs.

    The wheel is built from a copy of the sources (so the checkout gains no build/ folder)
    and installed into a folder of its own that comes first on the path; the demo then runs
    from an unrelated working directory with an empty cache, so it must generate its data.
    """
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(REPO / name, source / name)
    shutil.copytree(REPO / "calibkit", source / "calibkit", ignore=_build_clutter)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    built = subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", tmp_path / "dist", source],
        capture_output=True,
        text=True,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = (tmp_path / "dist").glob("calibkit-*.whl")
    site = tmp_path / "site"
    installed = subprocess.run(
        [*pip, "install", "--no-deps", "--no-index", "--target", site, wheel],
        capture_output=True,
        text=True,
    )
    assert installed.returncode == 0, installed.stderr

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site), "XDG_CACHE_HOME": str(tmp_path / "cache")}
    where = subprocess.run(
        [sys.executable, "-c", "import calibkit; print(calibkit.__file__)"],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert Path(where.stdout.strip()).is_relative_to(site)  # the wheel, not the checkout
    demo = subprocess.run(
        [sys.executable, "-m", "calibkit", "demo", "--out", "demo"],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert demo.returncode == 0, demo.stderr
    cache = tmp_path / "cache" / "calibkit"
    (generated,) = cache.iterdir()  # one finished folder, no temporary one left beside it
    assert f"generate the sample data (seed 0, synthetic models) into {generated}" in demo.stderr
    assert (elsewhere / "demo" / "dsc" / "per_image.csv").is_file()
    line = next(line for line in demo.stdout.splitlines() if line.startswith("mean ACE"))
    assert "DSC+ACE" in line
    # A second run finds the cached copy and does not generate again.
    again = subprocess.run(
        [sys.executable, "-m", "calibkit", "demo", "--out", "demo", "--quiet"],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert again.returncode == 0 and again.stderr == "", again.stderr


def _build_clutter(folder: str, names: list[str]) -> set[str]:
    return {name for name in names if name == "__pycache__" or name.endswith(".egg-info")}
