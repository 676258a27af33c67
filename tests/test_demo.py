"""``calibkit demo`` runs the whole pipeline on the sample data and says where things are."""

from __future__ import annotations

from pathlib import Path

import pytest
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
