"""``calibkit fit-temperature`` and ``apply-temperature``: results, files and one-line errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import SAMPLE_DATA, assert_user_error, modules_imported
from conftest import run_cli as run

import calibkit.cli.temperature  # noqa: F401  (registers the commands)
from calibkit.io.temperature import load_temperature
from calibkit.io.volumes import read_prediction
from calibkit.temperature import calibrate_probabilities

DSC = SAMPLE_DATA / "synthetic" / "dsc"  # the over-confident synthetic model
LABELS = SAMPLE_DATA / "brats"


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("fit") / "nested" / "t.json"
    code, stdout, stderr = run(
        "fit-temperature", DSC, LABELS, "--preset", "brats", "--max-voxels", "300000", "--out", out
    )
    assert code == 0, stderr
    return out, stdout


def test_fit_temperature_on_sample_data(fitted: tuple[Path, str]) -> None:
    out, stdout = fitted
    record = json.loads(out.read_text())
    assert record["activation"] == "softmax" and record["n_channels"] == 4
    assert record["classes"] == ["ET", "TC", "WT"] and record["per_class"] is False
    assert record["temperature"] > 1.5  # over-confident DSC model: T > 1 softens it
    assert record["nll_after"] < record["nll_before"]
    assert record["ace_after"]["mean"] < record["ace_before"]["mean"]
    assert record["n_voxels"] == 12 * (300_000 // 12) and record["seed"] == 0
    assert record["options"]["preset"] == "brats" and record["calibkit_version"]
    assert "T = " in stdout and "NLL" in stdout and "ACE" in stdout and "wrote" in stdout


def test_fit_temperature_refuses_to_overwrite(fitted: tuple[Path, str]) -> None:
    out, _ = fitted
    before = out.read_text()
    code, _, stderr = run("fit-temperature", DSC, LABELS, "--preset", "brats", "--out", out)
    assert_user_error(code, stderr, str(out), "--overwrite")
    assert out.read_text() == before


def test_fit_temperature_per_class_quiet(tmp_path: Path) -> None:
    preds = tmp_path / "preds"
    preds.mkdir()
    for case in ("BraTS2021_S000", "BraTS2021_S001"):
        shutil.copy(DSC / f"{case}_pred.nii.gz", preds)
    out = tmp_path / "t.json"
    args = ["--preset", "brats", "--per-class", "--max-voxels", "50000", "--seed", "7", "--quiet"]
    code, stdout, stderr = run(
        "fit-temperature", preds, LABELS, *args, "--allow-missing", "--out", out
    )
    assert code == 0, stderr
    assert stdout == ""
    record = json.loads(out.read_text())
    assert len(record["temperature"]) == 4 and record["per_class"] and record["seed"] == 7
    assert record["n_cases"] == 2


def test_fit_temperature_softmax_on_regions_fails(tmp_path: Path) -> None:
    preds = tmp_path / "regions"
    preds.mkdir()
    volume = read_prediction(DSC / "BraTS2021_S000_pred.nii.gz")
    p = volume.array
    regions = np.stack([p[3], p[1] + p[3], p[1] + p[2] + p[3]], axis=-1).clip(0, 1)
    nib.save(nib.Nifti1Image(regions, volume.affine), preds / "BraTS2021_S000_pred.nii.gz")
    out = tmp_path / "t.json"
    code, _, stderr = run(
        "fit-temperature", preds, LABELS, "--preset", "brats", "--allow-missing",
        "--activation", "softmax", "--out", out,
    )  # fmt: skip
    assert_user_error(code, stderr, "BraTS2021_S000_pred.nii.gz", "--activation sigmoid")
    assert not out.exists()


def test_apply_temperature_round_trip(fitted: tuple[Path, str], tmp_path: Path) -> None:
    temperature, _ = fitted
    preds = tmp_path / "preds"
    preds.mkdir()
    shutil.copy(DSC / "BraTS2021_S003_pred.nii.gz", preds)
    out = tmp_path / "calibrated"
    code, stdout, stderr = run(
        "apply-temperature", preds, "--temperature", temperature, "--out", out
    )
    assert code == 0, stderr
    assert "1 case" in stdout
    source, written = preds / "BraTS2021_S003_pred.nii.gz", out / "BraTS2021_S003_pred.nii.gz"
    original, image = nib.load(source), nib.load(written)
    assert image.get_data_dtype() == np.uint8 and image.dataobj.slope == pytest.approx(1 / 255)
    assert image.shape == original.shape
    np.testing.assert_array_equal(image.affine, original.affine)
    expected = calibrate_probabilities(read_prediction(source).array, load_temperature(temperature))
    np.testing.assert_allclose(read_prediction(written).array, expected, atol=0.5 / 255 + 1e-6)
    code, _, stderr = run("apply-temperature", preds, "--temperature", temperature, "--out", out)
    assert_user_error(code, stderr, "--overwrite")
    code, _, stderr = run(
        "apply-temperature", preds, "-t", temperature, "--out", out, "--overwrite", "--quiet"
    )
    assert code == 0, stderr


def test_apply_temperature_bad_json(tmp_path: Path) -> None:
    bad = tmp_path / "t.json"
    bad.write_text('{"temperature": 1.5, "activation": "softmax"')
    out = tmp_path / "out"
    code, _, stderr = run("apply-temperature", DSC, "--temperature", bad, "--out", out)
    assert_user_error(code, stderr, str(bad), "JSON")
    assert not out.exists()


def test_apply_temperature_wrong_channel_count(tmp_path: Path) -> None:
    three = tmp_path / "t.json"
    three.write_text('{"temperature": 1.5, "activation": "sigmoid", "n_channels": 3}')
    code, _, stderr = run("apply-temperature", DSC, "--temperature", three, "--out", tmp_path / "o")
    assert_user_error(code, stderr, "_pred.nii.gz", "4 channel", str(three))


def test_apply_temperature_inside_inputs_fails(tmp_path: Path) -> None:
    t = tmp_path / "t.json"
    t.write_text('{"temperature": 1.5, "activation": "softmax", "n_channels": 4}')
    code, _, stderr = run("apply-temperature", DSC, "--temperature", t, "--out", DSC / "calibrated")
    assert_user_error(code, stderr, "outside")
    assert not (DSC / "calibrated").exists()


@pytest.mark.parametrize("command", ["fit-temperature", "apply-temperature"])
def test_help_has_examples(command: str) -> None:
    code, stdout, _ = run(command, "--help")
    assert code == 0
    assert "Examples" in stdout and "--out" in stdout and "--quiet" in stdout


def test_command_module_stays_light() -> None:
    heavy = {"torch", "matplotlib", "pandas", "scipy", "nibabel", "monai"}
    assert modules_imported("calibkit.cli.temperature", heavy) == []


def test_fit_temperature_bad_classes(tmp_path: Path) -> None:
    out = tmp_path / "t.json"
    code, _, stderr = run("fit-temperature", DSC, LABELS, "--classes", "3-1", "--out", out)
    assert_user_error(code, stderr, "--classes: the range '3-1' runs backwards; write 1-3")
    assert not out.exists()
