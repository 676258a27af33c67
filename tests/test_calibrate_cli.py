"""``calibkit fit-temperature`` and ``apply-temperature``: results, files and one-line errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import (
    SAMPLE_DATA,
    assert_clear_of_edges,
    assert_user_error,
    binary_reference,
    modules_imported,
    read_csv_rows,
    write_binary_logits,
)
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


def binary_nll(z: np.ndarray, y: np.ndarray, temperature: float) -> float:
    """Mean binary cross-entropy of ``sigmoid(z / T)`` against ``y``, in float64."""
    x = z / temperature
    return float(np.mean(np.where(y, np.logaddexp(0, -x), np.logaddexp(0, x))))


def test_one_channel_logits_fit_and_apply_a_sigmoid_temperature(tmp_path: Path) -> None:
    # Issue 15: one-channel logits are binary; by default they get the sigmoid.
    preds, labels = write_binary_logits(tmp_path)
    cases = ("case0", "case1")
    z = {c: np.asarray(nib.load(preds / f"{c}_pred.nii.gz").dataobj, np.float64) for c in cases}
    y = {c: np.asarray(nib.load(labels / f"{c}_seg.nii.gz").dataobj) == 1 for c in cases}
    t_json = tmp_path / "t.json"
    code, _, stderr = run(
        "fit-temperature", preds, labels, "--input", "logits", "--out", t_json, "--quiet"
    )
    assert code == 0, stderr
    record = json.loads(t_json.read_text())
    assert (record["activation"], record["n_channels"], record["classes"]) == ("sigmoid", 1, ["1"])
    assert record["options"]["activation"] == "auto" and record["n_voxels"] == 2 * 6 * 7 * 8
    t = record["temperature"]
    all_z = np.concatenate([z[c].ravel() for c in cases])
    all_y = np.concatenate([y[c].ravel() for c in cases])
    # Both NLLs are float64 sums over the same 672 float32 logits, in other orders:
    # they differ by about 672 * 1.1e-16 relative, far below 1e-9.
    assert record["nll_before"] == pytest.approx(binary_nll(all_z, all_y, 1.0), rel=1e-9)
    assert record["nll_after"] == pytest.approx(binary_nll(all_z, all_y, t), rel=1e-9)
    # T is the minimum: 1 % either way raises the NLL (the fit stops within 1e-7 of it).
    assert binary_nll(all_z, all_y, t * 1.01) > record["nll_after"]
    assert binary_nll(all_z, all_y, t / 1.01) > record["nll_after"]
    # ACE before scaling (every voxel is sampled): as for evaluate, no voxel lies within
    # 1e-6 of an inner bin edge (checked), so float32 and float64 bin them alike and the
    # ACE agrees to well within 1e-6.
    aces = []
    for c in cases:
        p = 1 / (1 + np.exp(-z[c]))
        assert_clear_of_edges(p)
        aces.append(binary_reference(p, y[c])["ace"])
    assert record["ace_before"]["1"] == pytest.approx(np.mean(aces), abs=1e-6)

    calibrated = tmp_path / "calibrated"
    code, _, stderr = run(
        "apply-temperature", preds, "--input", "logits", "-t", t_json, "--out", calibrated
    )
    assert code == 0, stderr
    for c in cases:
        written = np.asarray(nib.load(calibrated / f"{c}_pred.nii.gz").dataobj)
        assert written.dtype == np.float32 and written.size == z[c].size
        # float32 sigmoid(z / T): each of the division, exp, sum and reciprocal rounds
        # once (numpy's float32 exp within a few ulp), p <= 1, and |x| sigmoid'(x) <= 0.23:
        # under 8 roundings of 6e-8 in all, well within 1e-6.
        expected = 1 / (1 + np.exp(-z[c] / t))
        np.testing.assert_allclose(written.reshape(z[c].shape), expected, rtol=0, atol=1e-6)

    scaled = tmp_path / "scaled"
    code, _, stderr = run(
        "evaluate", preds, labels, "--input", "logits", "--temperature", t_json,
        "--out", scaled, "--quiet",
    )  # fmt: skip
    assert code == 0, stderr
    for c in cases:
        p = 1 / (1 + np.exp(-z[c] / t))
        assert_clear_of_edges(p)  # as above: ACE within 1e-6, Dice exact
        expected_row = binary_reference(p, y[c])
        (row,) = read_csv_rows(scaled / "per_image.csv", c)
        assert float(row["ace"]) == pytest.approx(expected_row["ace"], abs=1e-6)
        assert float(row["dice"]) == expected_row["dice"]


@pytest.mark.parametrize("input_kind", ["logits", "probabilities"])
def test_fit_temperature_refuses_a_softmax_over_one_channel(
    tmp_path: Path, input_kind: str
) -> None:
    preds, labels = write_binary_logits(tmp_path)
    if input_kind == "probabilities":
        for path in preds.iterdir():
            image = nib.load(path)
            p = 1 / (1 + np.exp(-np.asarray(image.dataobj, dtype=np.float64)))
            nib.save(nib.Nifti1Image(p.astype(np.float32), image.affine), path)
    out = tmp_path / "t.json"
    code, _, stderr = run(
        "fit-temperature", preds, labels, "--input", input_kind, "--activation", "softmax",
        "--out", out,
    )  # fmt: skip
    assert_user_error(
        code, stderr, "case0_pred.nii.gz", "a softmax over one channel is 1 everywhere"
    )
    assert not out.exists()


def test_softmax_temperature_of_one_channel_is_refused(tmp_path: Path) -> None:
    preds, _ = write_binary_logits(tmp_path)
    t_json = tmp_path / "t.json"
    t_json.write_text('{"temperature": 1.5, "activation": "softmax", "n_channels": 1}')
    out = tmp_path / "out"
    code, _, stderr = run(
        "apply-temperature", preds, "--input", "logits", "-t", t_json, "--out", out
    )
    assert_user_error(code, stderr, str(t_json), "a softmax over one channel is 1 everywhere")
    assert not out.exists()


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
