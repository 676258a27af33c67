"""The command line: results on good input, one clear line and no output on bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
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

AFFINE = np.diag([-1.0, -1.0, 1.0, 1.0])


def write_case(
    preds: Path, labels: Path, case_id: str, rng: np.random.Generator, shape=(6, 7, 8)
) -> None:  # type: ignore[no-untyped-def]
    logits = rng.normal(size=(*shape, 3)) * 3
    probs = np.exp(logits) / np.exp(logits).sum(axis=-1, keepdims=True)
    label = rng.integers(0, 3, size=shape).astype(np.uint8)
    nib.save(nib.Nifti1Image(probs.astype(np.float32), AFFINE), preds / f"{case_id}_pred.nii.gz")
    nib.save(nib.Nifti1Image(label, AFFINE), labels / f"{case_id}_seg.nii.gz")


@pytest.fixture
def dataset(tmp_path: Path) -> tuple[Path, Path]:
    rng = np.random.default_rng(7)
    preds, labels = tmp_path / "preds", tmp_path / "labels"
    preds.mkdir()
    labels.mkdir()
    for i in range(3):
        write_case(preds, labels, f"case{i}", rng)
    return preds, labels


def test_evaluate_writes_the_four_files(dataset: tuple[Path, Path], tmp_path: Path) -> None:
    preds, labels = dataset
    code, stdout, stderr = run("evaluate", preds, labels, "--out", tmp_path / "out")
    assert code == 0, stderr
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert written == ["bins.npz", "per_image.csv", "summary.csv", "summary.json"]
    assert "ACE" in stdout and "mean" in stdout
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["classes"] == ["1", "2"] and summary["n_cases"] == 3
    assert summary["options"]["n_bins"] == 20 and summary["calibkit_version"]


def test_evaluate_sample_data_preset(tmp_path: Path) -> None:
    code, stdout, stderr = run(
        "evaluate",
        SAMPLE_DATA / "predictions" / "dsc",
        SAMPLE_DATA / "brats",
        "--preset",
        "brats",
        "--out",
        tmp_path / "out",
        "--quiet",
    )
    assert code == 0, stderr
    assert stdout == ""
    assert (tmp_path / "out" / "per_image.csv").read_text().count("\n") == 1 + 12 * 3


def test_missing_partner(dataset: tuple[Path, Path], tmp_path: Path) -> None:
    preds, labels = dataset
    (labels / "case1_seg.nii.gz").unlink()
    out = tmp_path / "out"
    code, _, stderr = run("evaluate", preds, labels, "--out", out)
    assert_user_error(code, stderr, "case1", "--allow-missing")
    assert not out.exists()
    code, _, stderr = run("evaluate", preds, labels, "--out", out, "--allow-missing")
    assert code == 0, stderr
    assert json.loads((out / "summary.json").read_text())["missing_label"] == ["case1"]


def test_shape_mismatch(dataset: tuple[Path, Path], tmp_path: Path) -> None:
    preds, labels = dataset
    nib.save(nib.Nifti1Image(np.zeros((6, 7, 9), np.uint8), AFFINE), labels / "case2_seg.nii.gz")
    code, _, stderr = run("evaluate", preds, labels, "--out", tmp_path / "out")
    assert_user_error(code, stderr, "case2_pred.nii.gz", "shape")
    assert not (tmp_path / "out").exists()


def test_affine_mismatch_fails_or_warns(dataset: tuple[Path, Path], tmp_path: Path) -> None:
    preds, labels = dataset
    label = nib.load(labels / "case0_seg.nii.gz")
    shifted = AFFINE.copy()
    shifted[0, 3] = 0.5
    nib.save(nib.Nifti1Image(np.asarray(label.dataobj), shifted), labels / "case0_seg.nii.gz")
    code, _, stderr = run("evaluate", preds, labels, "--out", tmp_path / "out")
    assert_user_error(code, stderr, "case0_pred.nii.gz", "affine", "--ignore-geometry")
    assert not (tmp_path / "out").exists()
    code, _, stderr = run("evaluate", preds, labels, "--out", tmp_path / "out", "--ignore-geometry")
    assert code == 0
    assert "warning" in stderr and "affine" in stderr


def test_wrong_channel_count(dataset: tuple[Path, Path], tmp_path: Path) -> None:
    preds, labels = dataset
    code, _, stderr = run(
        "evaluate", preds, labels, "--out", tmp_path / "o", "--classes", "1,2,5,7"
    )
    assert_user_error(code, stderr, "_pred.nii.gz", "channel")
    assert not (tmp_path / "o").exists()
    four_channels = nib.Nifti1Image(np.full((6, 7, 8, 4), 0.25, np.float32), AFFINE)
    nib.save(four_channels, preds / "case2_pred.nii.gz")
    code, _, stderr = run("evaluate", preds, labels, "--out", tmp_path / "o")
    assert_user_error(code, stderr, "case2_pred.nii.gz", "same channels")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    ("value", "fragment"), [(1.5, "outside [0, 1]"), (-0.2, "outside [0, 1]"), (np.nan, "NaN")]
)
def test_bad_probability_values(
    dataset: tuple[Path, Path], tmp_path: Path, value: float, fragment: str
) -> None:
    preds, labels = dataset
    path = preds / "case1_pred.nii.gz"
    data = nib.load(path).get_fdata().astype(np.float32)
    data[2, 3, 4, 1] = value
    nib.save(nib.Nifti1Image(data, AFFINE), path)
    code, _, stderr = run("evaluate", preds, labels, "--out", tmp_path / "out")
    assert_user_error(code, stderr, "case1_pred.nii.gz", fragment)
    assert not (tmp_path / "out").exists()


def test_small_overshoot_is_clipped(dataset: tuple[Path, Path], tmp_path: Path) -> None:
    preds, labels = dataset
    path = preds / "case1_pred.nii.gz"
    data = nib.load(path).get_fdata().astype(np.float32)
    data[0, 0, 0, 0] = 1.00005
    nib.save(nib.Nifti1Image(data, AFFINE), path)
    code, _, stderr = run("evaluate", preds, labels, "--out", tmp_path / "out")
    assert code == 0, stderr


def test_truncated_file(dataset: tuple[Path, Path], tmp_path: Path) -> None:
    preds, labels = dataset
    path = preds / "case0_pred.nii.gz"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    code, _, stderr = run("evaluate", preds, labels, "--out", tmp_path / "out")
    assert_user_error(code, stderr, "case0_pred.nii.gz")
    assert not (tmp_path / "out").exists()


def test_empty_folder(tmp_path: Path, dataset: tuple[Path, Path]) -> None:
    _, labels = dataset
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, stderr = run("evaluate", empty, labels, "--out", tmp_path / "out")
    assert_user_error(code, stderr, "empty")
    assert not (tmp_path / "out").exists()


def test_logits_input(dataset: tuple[Path, Path], tmp_path: Path) -> None:
    preds, labels = dataset
    for path in preds.iterdir():
        logits = np.log(nib.load(path).get_fdata()).astype(np.float32) * 3 + 1
        nib.save(nib.Nifti1Image(logits, AFFINE), path)
    code, _, stderr = run("evaluate", preds, labels, "--out", tmp_path / "o")
    assert_user_error(code, stderr, "outside [0, 1]", "--input logits")
    code, _, stderr = run(
        "evaluate", preds, labels, "--out", tmp_path / "o", "--input", "logits", "--quiet"
    )
    assert code == 0, stderr
    # softmax(3 log p + 1) = p^3 / sum p^3: check one case by hand
    from calibkit.binning import bin_statistics
    from calibkit.metrics import calibration_errors

    logits = nib.load(preds / "case0_pred.nii.gz").get_fdata()
    softmax = np.exp(logits) / np.exp(logits).sum(axis=-1, keepdims=True)
    label = np.asarray(nib.load(labels / "case0_seg.nii.gz").dataobj)
    targets = np.stack([label == 1, label == 2])
    expected = calibration_errors(
        bin_statistics(np.moveaxis(softmax[..., 1:], -1, 0), targets, 20)
    ).ace
    table = (tmp_path / "o" / "per_image.csv").read_text().splitlines()
    ours = [float(line.split(",")[2]) for line in table if line.startswith("case0,")]
    # calibkit's float32 softmax (numpy's float32 exp differs between CPUs' SIMD paths)
    # and this float64 one differ by a few float32 roundings (about 1e-7) per voxel. No
    # voxel lies within 1e-6 of an inner bin edge k/20 (checked here; 0 and 1 separate no bins),
    # so both bin every voxel alike, and ACE, a mean of per-bin mean differences of such
    # values, agrees to well within 1e-6.
    scaled = softmax[..., 1:] * 20
    nearest_edge = np.clip(np.round(scaled), 1, 19)
    assert np.abs(scaled - nearest_edge).min() > 20 * 1e-6
    np.testing.assert_allclose(ours, expected, atol=1e-6)


def test_one_channel_logits_get_a_sigmoid_by_default(tmp_path: Path) -> None:
    # Issue 15: a softmax over the one channel made p = 1 everywhere, silently.
    preds, labels = write_binary_logits(tmp_path)
    out = tmp_path / "out"
    code, _, stderr = run("evaluate", preds, labels, "--input", "logits", "--out", out, "--quiet")
    assert code == 0, stderr
    assert stderr == ""
    summary = json.loads((out / "summary.json").read_text())
    assert summary["classes"] == ["1"] and summary["options"]["activation"] == "auto"
    for case_id in ("case0", "case1"):
        z = np.asarray(nib.load(preds / f"{case_id}_pred.nii.gz").dataobj, dtype=np.float64)
        y = np.asarray(nib.load(labels / f"{case_id}_seg.nii.gz").dataobj) == 1
        p = 1 / (1 + np.exp(-z))
        # calibkit's float32 sigmoid and this float64 one differ by a few float32
        # roundings (about 1e-7) per voxel; no voxel lies within 1e-6 of an inner bin
        # edge or of the Dice threshold 0.5 (checked), so both bin and threshold every
        # voxel alike: Dice agrees exactly, and ACE / ECE / MCE (means and maxima of
        # per-bin mean differences of such values) to well within 1e-6.
        assert_clear_of_edges(p)
        expected = binary_reference(p, y)
        (row,) = read_csv_rows(out / "per_image.csv", case_id)
        for metric in ("ace", "ece", "mce"):
            assert float(row[metric]) == pytest.approx(expected[metric], abs=1e-6), metric
        assert float(row["dice"]) == expected["dice"]
    # The explicit sigmoid gives the same files, byte for byte, but for the option.
    explicit = tmp_path / "explicit"
    code, _, stderr = run(
        "evaluate", preds, labels, "--input", "logits", "--activation", "sigmoid",
        "--out", explicit, "--quiet",
    )  # fmt: skip
    assert code == 0, stderr
    for name in ("per_image.csv", "summary.csv", "bins.npz"):
        assert (explicit / name).read_bytes() == (out / name).read_bytes(), name


def test_softmax_over_one_channel_is_refused(tmp_path: Path) -> None:
    preds, labels = write_binary_logits(tmp_path)
    out = tmp_path / "out"
    code, _, stderr = run(
        "evaluate", preds, labels, "--input", "logits", "--activation", "softmax", "--out", out
    )
    assert_user_error(
        code,
        stderr,
        "case0_pred.nii.gz",
        "a softmax over one channel is 1 everywhere; a one-channel map is binary",
        "--activation sigmoid",
    )
    assert not out.exists()


def test_existing_results_are_kept(dataset: tuple[Path, Path], tmp_path: Path) -> None:
    preds, labels = dataset
    out = tmp_path / "out"
    assert run("evaluate", preds, labels, "--out", out)[0] == 0
    before = (out / "per_image.csv").read_bytes()
    (labels / "case0_seg.nii.gz").unlink()
    code, _, stderr = run("evaluate", preds, labels, "--out", out, "--allow-missing")
    assert_user_error(code, stderr, "already holds results", "--overwrite")
    assert (out / "per_image.csv").read_bytes() == before
    code, _, _ = run("evaluate", preds, labels, "--out", out, "--allow-missing", "--overwrite")
    assert code == 0
    assert (out / "per_image.csv").read_bytes() != before


def test_out_inside_an_input_folder(dataset: tuple[Path, Path]) -> None:
    preds, labels = dataset
    code, _, stderr = run("evaluate", preds, labels, "--out", preds / "results")
    assert_user_error(code, stderr, "inside the input folder")
    assert not (preds / "results").exists()


def test_bad_usage_exits_2(dataset: tuple[Path, Path], tmp_path: Path) -> None:
    preds, labels = dataset
    assert run("evaluate", preds, labels, "--out", tmp_path / "o", "--n-bins", "many")[0] == 2
    code, _, stderr = run("evaluate", preds, labels, "--out", tmp_path / "o", "--n-bins", "0")
    assert_user_error(code, stderr, "--n-bins")


def test_classes_as_ranges(dataset: tuple[Path, Path], tmp_path: Path) -> None:
    preds, labels = dataset
    assert run("evaluate", preds, labels, "--out", tmp_path / "list", "--classes", "1,2")[0] == 0
    code, _, stderr = run(
        "evaluate", preds, labels, "--out", tmp_path / "range", "--classes", "1-2"
    )
    assert code == 0, stderr
    for name in ("per_image.csv", "summary.csv", "bins.npz"):
        assert (tmp_path / "range" / name).read_bytes() == (tmp_path / "list" / name).read_bytes()


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("5-2", "'5-2' runs backwards; write 2-5"),
        ("1-", "'1-' is not a label value"),
        ("a-b", "'a-b' is not a label value"),
        ("a,b", "'a' is not a label value"),
        ("1-2,2", "lists label(s) 2 more than once"),
    ],
)
def test_bad_classes_are_one_line(
    dataset: tuple[Path, Path], tmp_path: Path, value: str, fragment: str
) -> None:
    preds, labels = dataset
    code, _, stderr = run("evaluate", preds, labels, "--out", tmp_path / "o", "--classes", value)
    assert_user_error(code, stderr, "--classes", fragment)
    assert not (tmp_path / "o").exists()


def test_help_and_module_entry_point() -> None:
    code, stdout, _ = run("evaluate", "--help")
    assert code == 0 and "Examples" in stdout and "--preset" in stdout
    completed = subprocess.run(
        [sys.executable, "-m", "calibkit", "--version"], capture_output=True, text=True, check=True
    )
    assert completed.stdout.startswith("calibkit ")


def test_command_ends_without_teardown_but_completely(tmp_path: Path) -> None:
    """main() skips the interpreter teardown yet keeps exit codes, output and atexit."""
    script = (
        "import atexit, sys; atexit.register(lambda: print('atexit ran')); "
        "sys.argv = ['calibkit', *sys.argv[1:]]; "
        "from calibkit.cli import main; main(); print('not reached')"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, "--version"], capture_output=True, text=True
    )
    assert done.returncode == 0
    assert done.stdout.startswith("calibkit ") and done.stdout.endswith("atexit ran\n")
    missing = tmp_path / "missing"
    done = subprocess.run(
        [sys.executable, "-c", script, "evaluate", missing, missing, "-o", tmp_path / "out"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 1
    assert done.stderr == f"error: {missing}: folder not found; check the path\n"
    done = subprocess.run(  # stderr closed (`2>&-`): still a success
        [sys.executable, "-c", script, "--version"],
        stdout=subprocess.DEVNULL,
        preexec_fn=lambda: os.close(2),
    )
    assert done.returncode == 0
    thread_script = (
        "import sys, threading, time; "
        "threading.Thread(target=lambda: (time.sleep(0.3), print('thread done'))).start(); "
        "sys.argv = ['calibkit', '--version']; from calibkit.cli import main; main()"
    )
    done = subprocess.run([sys.executable, "-c", thread_script], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.endswith("thread done\n")  # waited for it
    from calibkit.cli import _exit_status

    codes = (None, 0, 3, 256 + 2, True, 2**63, -1)
    assert [_exit_status(code) for code in codes] == [0, 0, 3, 2, 1, 255, 255]
    assert _exit_status("a message") == 1


def test_evaluate_parent_process_does_not_import_nibabel() -> None:
    """With --workers N, only the workers read volumes; the parent starts them sooner."""
    parent = "calibkit.evaluate, calibkit.io.results, calibkit.io.checkpoint"
    assert modules_imported(parent, {"nibabel", "torch", "numba"}) == []


def test_import_and_help_stay_light() -> None:
    heavy = {"torch", "monai", "matplotlib", "pandas", "nibabel", "scipy"}
    assert modules_imported("calibkit, calibkit.cli", heavy) == []


def test_evaluate_with_temperature_and_plots(tmp_path: Path) -> None:
    predictions, labels = SAMPLE_DATA / "predictions" / "dsc", SAMPLE_DATA / "brats"
    t_json = tmp_path / "t.json"
    t_json.write_text('{"temperature": 2.0, "activation": "softmax", "n_channels": 4}')
    common = ["--preset", "brats", "--quiet"]
    assert run("evaluate", predictions, labels, "--out", tmp_path / "raw", *common)[0] == 0
    code, _, stderr = run(
        "evaluate", predictions, labels, "--out", tmp_path / "t2", *common,
        "--temperature", t_json, "--plots", "--plot-worst", "1",
    )  # fmt: skip
    assert code == 0, stderr
    raw = (tmp_path / "raw" / "per_image.csv").read_text()
    softened = (tmp_path / "t2" / "per_image.csv").read_text()
    assert raw.splitlines()[0] == softened.splitlines()[0] and raw != softened
    assert json.loads((tmp_path / "t2" / "summary.json").read_text())["options"]["temperature"]
    figures = sorted(p.name for p in (tmp_path / "t2" / "figures").iterdir())
    assert figures[-1] == "reliability_histogram.png" and len(figures) == 2
    t_json.write_text('{"temperature": 2.0, "activation": "softmax", "n_channels": 3}')
    code, _, stderr = run(
        "evaluate", predictions, labels, "--out", tmp_path / "t3", *common, "--temperature", t_json
    )
    assert code == 1 and "t.json" in stderr
    assert not (tmp_path / "t3").exists()
