"""Every bad input of the reliability issue: exit 1, one line naming the file, nothing written.

Each scenario spoils a small, valid data set in one way. The table in
docs/bad-inputs.md lists the same behaviours for users.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import assert_user_error, run_cli
from typer.testing import CliRunner

from calibkit.cli import app

AFFINE = np.diag([-1.0, -1.0, 1.0, 1.0])
SHAPE = (6, 7, 8)


def build(root: Path) -> tuple[Path, Path]:
    rng = np.random.default_rng(11)
    preds, labels = root / "preds", root / "labels"
    preds.mkdir()
    labels.mkdir()
    for i in range(3):
        logits = rng.normal(size=(*SHAPE, 3)) * 3
        probs = np.exp(logits) / np.exp(logits).sum(axis=-1, keepdims=True)
        nib.save(nib.Nifti1Image(probs.astype(np.float32), AFFINE), preds / f"case{i}_pred.nii.gz")
        label = rng.integers(0, 3, SHAPE).astype(np.uint8)
        nib.save(nib.Nifti1Image(label, AFFINE), labels / f"case{i}_seg.nii.gz")
    return preds, labels


def set_prediction(preds: Path, data: np.ndarray, name: str = "case1_pred.nii.gz") -> None:
    nib.save(nib.Nifti1Image(data.astype(np.float32), AFFINE), preds / name)


def prediction(preds: Path) -> np.ndarray:
    return nib.load(preds / "case1_pred.nii.gz").get_fdata().astype(np.float32)


def truncated(preds: Path, labels: Path) -> list[str]:
    path = preds / "case1_pred.nii.gz"
    path.write_bytes(path.read_bytes()[:200])
    return []


def not_an_image(preds: Path, labels: Path) -> list[str]:
    (preds / "case1_pred.nii.gz").write_text("case_id,ace\nA,0.1\n")
    return []


def zero_bytes(preds: Path, labels: Path) -> list[str]:
    (preds / "case1_pred.nii.gz").write_bytes(b"")
    return []


def two_dimensional(preds: Path, labels: Path) -> list[str]:
    set_prediction(preds, np.full((6, 7), 0.5))
    return []


def wrong_channels(preds: Path, labels: Path) -> list[str]:
    return ["--classes", "1,2,3,4,5"]


def shape_mismatch(preds: Path, labels: Path) -> list[str]:
    set_prediction(preds, np.full((6, 7, 9, 3), 1 / 3))
    return []


def affine_mismatch(preds: Path, labels: Path) -> list[str]:
    moved = AFFINE.copy()
    moved[:3, 3] = [0.0, 0.0, 2.0]
    nib.save(nib.Nifti1Image(prediction(preds), moved), preds / "case1_pred.nii.gz")
    return []


def above_one(preds: Path, labels: Path) -> list[str]:
    data = prediction(preds)
    data[1, 1, 1, 1] = 1.2
    set_prediction(preds, data)
    return []


def not_summing_to_one(preds: Path, labels: Path) -> list[str]:
    set_prediction(preds, np.full((*SHAPE, 3), 0.6))
    return ["--strict"]


def with_nan(preds: Path, labels: Path) -> list[str]:
    data = prediction(preds)
    data[2, 2, 2, 0] = np.nan
    set_prediction(preds, data)
    return []


def with_inf(preds: Path, labels: Path) -> list[str]:
    data = prediction(preds)
    data[2, 2, 2, 2] = np.inf
    set_prediction(preds, data)
    return []


def unknown_label(preds: Path, labels: Path) -> list[str]:
    label = np.zeros(SHAPE, np.uint8)
    label[0, 0, 0] = 7
    nib.save(nib.Nifti1Image(label, AFFINE), labels / "case1_seg.nii.gz")
    return []


def float_label(preds: Path, labels: Path) -> list[str]:
    label = np.full(SHAPE, 0.5, np.float32)
    nib.save(nib.Nifti1Image(label, AFFINE), labels / "case1_seg.nii.gz")
    return []


def duplicate_case(preds: Path, labels: Path) -> list[str]:
    (preds / "case1_prob.nii.gz").write_bytes((preds / "case1_pred.nii.gz").read_bytes())
    return []


def missing_label(preds: Path, labels: Path) -> list[str]:
    (labels / "case1_seg.nii.gz").unlink()
    return []


def empty_folder(preds: Path, labels: Path) -> list[str]:
    for path in preds.iterdir():
        path.unlink()
    return []


def broken_symlink(preds: Path, labels: Path) -> list[str]:
    (preds / "case1_pred.nii.gz").unlink()
    (preds / "case1_pred.nii.gz").symlink_to(preds.parent / "moved" / "case1_pred.nii.gz")
    return []


def symlink_loop(preds: Path, labels: Path) -> list[str]:
    (labels / "case1_seg.nii.gz").unlink()
    (labels / "case1_seg.nii.gz").symlink_to("case1_seg.nii.gz")
    return []


def malformed_temperature(preds: Path, labels: Path) -> list[str]:
    path = preds.parent / "t.json"
    path.write_text('{"temperature": 2.0, "activation"')
    return ["--temperature", str(path)]


def temperature_of_other_channels(preds: Path, labels: Path) -> list[str]:
    path = preds.parent / "t.json"
    path.write_text('{"temperature": 2.0, "activation": "softmax", "n_channels": 4}')
    return ["--temperature", str(path)]


def softmax_over_one_channel(preds: Path, labels: Path) -> list[str]:
    rng = np.random.default_rng(15)
    for i in range(3):
        set_prediction(preds, rng.normal(size=SHAPE) * 3, f"case{i}_pred.nii.gz")
        label = rng.integers(0, 2, SHAPE).astype(np.uint8)
        nib.save(nib.Nifti1Image(label, AFFINE), labels / f"case{i}_seg.nii.gz")
    return ["--input", "logits", "--activation", "softmax"]


def softmax_over_regions(preds: Path, labels: Path) -> list[str]:
    return ["--preset", "brats", "--input", "logits", "--activation", "softmax"]


def softmax_temperature_of_one_channel(preds: Path, labels: Path) -> list[str]:
    path = preds.parent / "t.json"
    path.write_text('{"temperature": 2.0, "activation": "softmax", "n_channels": 1}')
    softmax_over_one_channel(preds, labels)  # one-channel logits and 0/1 labels
    return ["--input", "logits", "--temperature", str(path)]


def unknown_preset(preds: Path, labels: Path) -> list[str]:
    return ["--preset", "kits23"]


SCENARIOS: dict[str, tuple[Callable[[Path, Path], list[str]], str, str]] = {
    # name: (spoil, file named in the message, fragment of the problem)
    "truncated .nii.gz": (truncated, "case1_pred.nii.gz", "truncated or corrupt"),
    "text file named .nii.gz": (not_an_image, "case1_pred.nii.gz", "cannot be read"),
    "0-byte file": (zero_bytes, "case1_pred.nii.gz", "empty"),
    "2-D prediction with a 3-D label": (
        two_dimensional,
        "case1_pred.nii.gz",
        "this map is a 2-D image but the label has 8 slices",
    ),
    "channels vs --classes": (wrong_channels, "case0_pred.nii.gz", "channel"),
    "shape mismatch": (shape_mismatch, "case1_pred.nii.gz", "shape"),
    "affine mismatch": (affine_mismatch, "case1_pred.nii.gz", "--ignore-geometry"),
    "probability above 1": (above_one, "case1_pred.nii.gz", "outside [0, 1]"),
    "softmax not summing to 1 (--strict)": (not_summing_to_one, "case1_pred.nii.gz", "sum to 1"),
    "NaN": (with_nan, "case1_pred.nii.gz", "NaN"),
    "Inf": (with_inf, "case1_pred.nii.gz", "Inf"),
    "label value not in classes": (unknown_label, "case1_seg.nii.gz", "[7] have no"),
    "non-integer float labels": (float_label, "case1_seg.nii.gz", "non-integer"),
    "duplicate case id": (duplicate_case, "case1_pr", "case1"),
    "case in one folder only": (missing_label, "case1", "--allow-missing"),
    "empty folder": (empty_folder, "preds", "no prediction files"),
    "broken symlink": (broken_symlink, "case1_pred.nii.gz", "broken symlink"),
    "symlink loop among the labels": (symlink_loop, "case1_seg.nii.gz", "symlink loop"),
    "malformed temperature JSON": (malformed_temperature, "t.json", "not valid JSON"),
    "temperature of another channel count": (
        temperature_of_other_channels,
        "t.json",
        "fitted for 4",
    ),
    "--activation softmax on one-channel logits": (
        softmax_over_one_channel,
        "case0_pred.nii.gz",
        "a softmax over one channel is 1 everywhere",
    ),
    "--activation softmax on region logits": (
        softmax_over_regions,
        "case0_pred.nii.gz",
        "a softmax over the 3 region channels (ET, TC, WT)",
    ),
    "softmax temperature of one channel": (
        softmax_temperature_of_one_channel,
        "t.json",
        "a softmax over one channel is 1 everywhere",
    ),
    "unknown --preset": (unknown_preset, "kits23", "brats"),
}


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_bad_input(name: str, tmp_path: Path) -> None:
    spoil, named_file, fragment = SCENARIOS[name]
    preds, labels = build(tmp_path)
    extra = spoil(preds, labels)
    out = tmp_path / "out"
    result = CliRunner().invoke(
        app, ["evaluate", str(preds), str(labels), "--out", str(out), *extra]
    )
    assert result.exit_code == 1, (result.stdout, result.stderr, result.exception)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert named_file in lines[0], lines[0]
    assert fragment in lines[0], lines[0]
    assert not out.exists(), list(out.iterdir())


def test_softmax_sum_warns_without_strict(tmp_path: Path) -> None:
    preds, labels = build(tmp_path)
    not_summing_to_one(preds, labels)
    result = CliRunner().invoke(
        app, ["evaluate", str(preds), str(labels), "--out", str(tmp_path / "out"), "--quiet"]
    )
    assert result.exit_code == 0
    assert "warning" in result.stderr and "case1_pred.nii.gz" in result.stderr
    assert "sum 1.8000" in result.stderr


def test_broken_symlink_is_a_listed_skip_with_allow_missing(tmp_path: Path) -> None:
    preds, labels = build(tmp_path)
    broken_symlink(preds, labels)
    out = tmp_path / "out"
    result = CliRunner().invoke(
        app, ["evaluate", str(preds), str(labels), "--out", str(out), "--allow-missing", "-q"]
    )
    assert result.exit_code == 0, result.stderr
    reason = f"{preds}/case1_pred.nii.gz: is a broken symlink"
    assert reason in result.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["case_ids"] == ["case0", "case2"]
    assert summary["missing_prediction"] == ["case1"] and summary["missing_label"] == []
    assert any(reason in warning for warning in summary["warnings"])


@pytest.mark.parametrize("where", ["below a file", "inside the predictions"])
def test_unusable_out(tmp_path: Path, where: str) -> None:
    preds, labels = build(tmp_path)
    if where == "below a file":
        (tmp_path / "afile").write_text("x")
        out, fragment = tmp_path / "afile" / "out", "is a file"
    else:
        out, fragment = preds / "results", "inside the input folder"
    result = CliRunner().invoke(app, ["evaluate", str(preds), str(labels), "--out", str(out)])
    assert result.exit_code == 1
    assert fragment in result.stderr and str(out) in result.stderr
    assert not out.exists()


# --------------------------------------------------------------- messages that name the cause


def test_channel_first_prediction_says_so(tmp_path: Path) -> None:
    preds, labels = build(tmp_path)
    # Saved (C, x, y, z) = (3, 6, 7, 8): read channels-last, 8 channels on a (3, 6, 7) grid.
    set_prediction(preds, np.moveaxis(prediction(preds), -1, 0))
    code, _, stderr = run_cli("evaluate", preds, labels, "--out", tmp_path / "out")
    assert_user_error(
        code,
        stderr,
        "case1_pred.nii.gz: shape (3, 6, 7) does not match label",
        "the file's shape (3, 6, 7, 8) looks channel-first, (C, x, y, z) with 3 channel(s)",
        "move the channel axis last",
    )
    assert "resample" not in stderr
    assert not (tmp_path / "out").exists()


def test_shape_mismatch_that_is_not_channel_first_says_resample(tmp_path: Path) -> None:
    preds, labels = build(tmp_path)
    shape_mismatch(preds, labels)
    code, _, stderr = run_cli("evaluate", preds, labels, "--out", tmp_path / "out")
    assert_user_error(code, stderr, "case1_pred.nii.gz: shape (6, 7, 9)", "resample them first")
    assert "channel-first" not in stderr


# scl_slope is a float32 at byte 112 of a NIfTI-1 header.
_SCL_SLOPE_OFFSET = 112


@pytest.mark.parametrize(
    ("dtype", "scl_slope"),
    [(np.uint16, 0.0), (np.uint16, 1.0), (np.uint16, np.nan), (np.uint8, 0.0), (np.int16, 1.0)],
)
def test_unscaled_integer_prediction_says_so(
    tmp_path: Path, dtype: type[np.integer], scl_slope: float
) -> None:
    preds, labels = build(tmp_path)
    full = int(np.iinfo(dtype).max)  # the integer that should stand for probability 1
    stored = np.round(prediction(preds) * full).astype(dtype)
    (preds / "case1_pred.nii.gz").unlink()
    path = preds / "case1_pred.nii"
    nib.save(nib.Nifti1Image(stored, AFFINE), path)
    raw = bytearray(path.read_bytes())
    raw[_SCL_SLOPE_OFFSET : _SCL_SLOPE_OFFSET + 4] = np.float32(scl_slope).tobytes()
    path.write_bytes(bytes(raw))
    shown = f"{np.dtype(dtype)} values with no scale factor (scl_slope unset, 0 or 1)"
    high = int(stored.max())
    code, _, stderr = run_cli("evaluate", preds, labels, "--out", tmp_path / "out")
    assert_user_error(
        code,
        stderr,
        f"case1_pred.nii: values range from {int(stored.min())} to {high}, outside [0, 1]",
        f"they look like unscaled integer storage, {shown}",
        f"if {full} stands for probability 1, save the map with scl_slope 1/{full}",
        "if they are logits, use --input logits",
    )


def test_scaled_integer_prediction_is_read(tmp_path: Path) -> None:
    preds, labels = build(tmp_path)
    stored = np.round(prediction(preds) * 255).astype(np.uint8)
    image = nib.Nifti1Image(stored, AFFINE)
    image.header.set_slope_inter(1 / 255, 0.0)
    nib.save(image, preds / "case1_pred.nii.gz")
    code, _, stderr = run_cli("evaluate", preds, labels, "--out", tmp_path / "out", "--quiet")
    assert code == 0, stderr


def test_float_logits_say_logits_only(tmp_path: Path) -> None:
    preds, labels = build(tmp_path)
    above_one(preds, labels)
    code, _, stderr = run_cli("evaluate", preds, labels, "--out", tmp_path / "out")
    assert_user_error(code, stderr, "outside [0, 1]; if these are logits, use --input logits")
    assert "integer" not in stderr


def test_non_integer_label_value_is_shown_in_full(tmp_path: Path) -> None:
    preds, labels = build(tmp_path)
    label = np.ones(SHAPE, np.float32)
    label[3, 3, 3] = np.nextafter(np.float32(1), np.float32(2))  # 1.0000001 as float32
    nib.save(nib.Nifti1Image(label, AFFINE), labels / "case1_seg.nii.gz")
    code, _, stderr = run_cli("evaluate", preds, labels, "--out", tmp_path / "out")
    assert_user_error(
        code, stderr, "case1_seg.nii.gz: label map has non-integer values (e.g. 1.0000001);"
    )
