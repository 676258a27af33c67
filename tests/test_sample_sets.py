"""Tests of the generated non-BraTS sets: the AMOS-style abdomen and the KiTS-style kidneys."""

from __future__ import annotations

import json
from pathlib import Path
from typing import cast

import nibabel as nib
import numpy as np
import pytest
from conftest import run_cli
from numpy.typing import NDArray
from scipy import ndimage

from calibkit.calibrate import fit_temperature_folder
from calibkit.cases import SOFTMAX_SUM_TOLERANCE, softmax_sum_problem
from calibkit.evaluate import EvaluationOptions, evaluate_folders
from calibkit.io.volumes import check_geometry, read_label, read_prediction
from calibkit.sample_data import main
from calibkit.sample_sets import (
    ABDOMEN_ORGANS,
    KITS_LABELS,
    SET_SHAPE,
    abdomen_dataset_json,
    generate_abdomen_set,
    generate_kits_set,
    kits_dataset_json,
    set_case_ids,
)

N_CASES = 3  # case 1 of the kidney set has no cyst, cases 0 and 2 have one
ABDOMEN_IDS = set_case_ids("AMOS_S", N_CASES)
KITS_IDS = set_case_ids("KiTS_S", N_CASES)
TUMOR, CYST = KITS_LABELS["tumor"], KITS_LABELS["cyst"]


def _load(path: Path) -> nib.Nifti1Image:
    """Load a NIfTI file (typed for mypy)."""
    return cast(nib.Nifti1Image, nib.load(path))


def _stored(path: Path) -> NDArray[np.generic]:
    """The values a NIfTI file stores, before any scale factor."""
    return np.asarray(cast(nib.arrayproxy.ArrayProxy, _load(path).dataobj).get_unscaled())


def _relative_files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def abdomen(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("abdomen")
    assert generate_abdomen_set(out, n_cases=N_CASES) == ABDOMEN_IDS
    return out


@pytest.fixture(scope="module")
def kits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("kits")
    assert generate_kits_set(out, n_cases=N_CASES) == KITS_IDS
    return out


def test_abdomen_layout(abdomen: Path) -> None:
    expected = {"dataset.json"}
    for case_id in ABDOMEN_IDS:
        expected |= {
            f"imagesTr/{case_id}_0000.nii.gz",
            f"labelsTr/{case_id}.nii.gz",
            f"predictions/{case_id}.nii.gz",
        }
    assert _relative_files(abdomen) == expected  # no temporary files left behind


def test_kits_layout(kits: Path) -> None:
    expected = {"dataset.json"}
    for case_id in KITS_IDS:
        expected |= {
            f"imagesTr/{case_id}_0000.nii.gz",
            f"labelsTr/{case_id}.nii.gz",
            f"predictions_regions/{case_id}.nii.gz",
            f"predictions_softmax/{case_id}.nii.gz",
        }
    assert _relative_files(kits) == expected


def test_abdomen_dataset_json(abdomen: Path) -> None:
    written = json.loads((abdomen / "dataset.json").read_text())
    assert written == abdomen_dataset_json(N_CASES)
    assert written["channel_names"] == {"0": "CT"}
    assert written["numTraining"] == N_CASES
    assert written["file_ending"] == ".nii.gz"
    labels = written["labels"]
    assert list(labels.items())[:3] == [("background", 0), ("spleen", 1), ("right kidney", 2)]
    assert labels["liver"] == 6 and labels["prostate/uterus"] == 15
    assert list(labels.values()) == list(range(16))
    assert list(labels)[1:] == list(ABDOMEN_ORGANS)


def test_kits_dataset_json_is_nnunets_kits23(kits: Path) -> None:
    written = json.loads((kits / "dataset.json").read_text())
    assert written == kits_dataset_json(N_CASES)
    assert written["labels"] == {"background": 0, "kidney": [1, 2, 3], "masses": [2, 3], "tumor": 2}
    assert written["regions_class_order"] == [1, 3, 2]
    assert written["numTraining"] == N_CASES
    assert written["file_ending"] == ".nii.gz"
    assert written["channel_names"] == {"0": "CT"}


@pytest.mark.parametrize("case_id", ABDOMEN_IDS)
def test_abdomen_case(abdomen: Path, case_id: str) -> None:
    label_path = abdomen / "labelsTr" / f"{case_id}.nii.gz"
    label = read_label(label_path)
    assert label.array.shape == SET_SHAPE
    assert label.array.dtype == np.uint8
    assert set(np.unique(label.array)) == set(range(16)), "every organ in every case"

    image = _load(abdomen / "imagesTr" / f"{case_id}_0000.nii.gz")
    assert image.shape == SET_SHAPE and image.get_data_dtype() == np.int16
    np.testing.assert_array_equal(image.affine, label.affine)

    path = abdomen / "predictions" / f"{case_id}.nii.gz"
    pred = read_prediction(path)
    assert pred.array.shape == (16, *SET_SHAPE) and pred.array.dtype == np.float32
    assert check_geometry(pred, label) is None
    stored = _stored(path)
    assert stored.dtype == np.uint8 and stored.shape == (*SET_SHAPE, 16)
    assert _load(path).dataobj.slope == pytest.approx(1 / 255)  # type: ignore[attr-defined]
    # Stored exactly: every voxel's 16 integers sum to 255, so the read channels sum to 1
    # up to float32 rounding of 16 terms, far inside the tolerance calibkit checks.
    np.testing.assert_array_equal(stored.sum(axis=-1, dtype=np.int32), 255)
    assert np.abs(pred.array.sum(axis=0) - 1.0).max() <= SOFTMAX_SUM_TOLERANCE
    assert softmax_sum_problem(pred.array) is None


def test_abdomen_organs_where_they_belong(abdomen: Path) -> None:
    """Sizes and sides as in a patient, read through the affine (RAS: +x is the left)."""
    labels = read_label(abdomen / "labelsTr" / f"{ABDOMEN_IDS[0]}.nii.gz")
    counts = np.bincount(labels.array.ravel(), minlength=16)[1:]
    volume = dict(zip(ABDOMEN_ORGANS, counts, strict=True))
    assert max(volume, key=volume.__getitem__) == "liver"
    smallest = sorted(volume, key=volume.__getitem__)[:4]
    assert {"right adrenal gland", "left adrenal gland"} <= set(smallest)

    def centre_ras(name: str) -> NDArray[np.float64]:
        voxels = np.argwhere(labels.array == ABDOMEN_ORGANS.index(name) + 1).mean(axis=0)
        assert labels.affine is not None
        return np.asarray(labels.affine[:3, :3] @ voxels + labels.affine[:3, 3])

    assert centre_ras("liver")[0] < centre_ras("spleen")[0]  # liver right, spleen left
    assert centre_ras("right kidney")[0] < centre_ras("left kidney")[0]
    assert centre_ras("bladder")[2] < centre_ras("right kidney")[2] < centre_ras("esophagus")[2]
    assert centre_ras("aorta")[1] < centre_ras("stomach")[1]  # aorta behind the stomach


@pytest.mark.parametrize("case_id", KITS_IDS)
def test_kits_case(kits: Path, case_id: str) -> None:
    label = read_label(kits / "labelsTr" / f"{case_id}.nii.gz")
    assert label.array.shape == SET_SHAPE and label.array.dtype == np.uint8
    has_cyst = KITS_IDS.index(case_id) % 2 == 0
    assert set(np.unique(label.array)) == ({0, 1, 2, 3} if has_cyst else {0, 1, 2})
    # Tumour and cyst lie in a kidney: each connected piece of kidney tissue holds kidney.
    pieces, n_pieces = ndimage.label(label.array > 0)
    assert n_pieces >= 1
    for piece in range(1, n_pieces + 1):
        assert np.any(label.array[pieces == piece] == 1)

    regions_path = kits / "predictions_regions" / f"{case_id}.nii.gz"
    regions = read_prediction(regions_path)
    assert regions.array.shape == (3, *SET_SHAPE)
    assert check_geometry(regions, label) is None
    stored = _stored(regions_path).astype(np.int16)
    assert stored.shape == (*SET_SHAPE, 3)
    # Nested as the regions are: kidney+masses >= masses >= tumour, voxel by voxel.
    assert np.all(stored[..., 0] >= stored[..., 1]) and np.all(stored[..., 1] >= stored[..., 2])
    assert np.any(stored[..., 0] > stored[..., 1]) and np.any(stored[..., 1] > stored[..., 2])

    softmax_path = kits / "predictions_softmax" / f"{case_id}.nii.gz"
    softmax = read_prediction(softmax_path)
    assert softmax.array.shape == (4, *SET_SHAPE)
    assert softmax_sum_problem(softmax.array) is None
    channels = _stored(softmax_path).astype(np.int16)
    np.testing.assert_array_equal(channels.sum(axis=-1), 255)
    # One model, two layouts: a region's probability is the sum of its labels' softmax
    # channels. Each stored value is rounded to within half a step of 1/255, and the
    # softmax's rounding residue (at most 2 steps over 4 channels) goes to its top
    # channel, so a sum of channels is within 2 steps of the region map.
    np.testing.assert_allclose(channels[..., 1:].sum(-1), stored[..., 0], atol=2)
    np.testing.assert_allclose(channels[..., 2:].sum(-1), stored[..., 1], atol=2)
    np.testing.assert_allclose(channels[..., TUMOR], stored[..., 2], atol=2)


def test_abdomen_evaluates_as_an_over_confident_model(abdomen: Path) -> None:
    options = EvaluationOptions(classes=tuple(range(1, 16)))
    evaluation = evaluate_folders(abdomen / "predictions", abdomen / "labelsTr", options)
    means = evaluation.summary.pivot(index="class", columns="metric", values="mean")
    dice = {name: float(means.loc[str(i + 1), "dice"]) for i, name in enumerate(ABDOMEN_ORGANS)}
    assert dice["liver"] > 0.85
    for small in ("right adrenal gland", "left adrenal gland", "esophagus"):
        assert dice[small] < dice["liver"] - 0.1
    # Sharp maps with wrong borders: a per-case ACE far above that of a calibrated model,
    # and a fitted temperature well above 1 (its logits are steeper than its errors warrant).
    assert 0.1 < float(means["ace"].mean()) < 0.5
    fitted = fit_temperature_folder(abdomen / "predictions", abdomen / "labelsTr", options=options)
    assert float(fitted.fit.temperature_) > 1.3
    assert fitted.ace_pooled_after["mean"] < fitted.ace_pooled_before["mean"]


def test_cli_evaluates_the_abdomen(abdomen: Path, tmp_path: Path) -> None:
    code, _, err = run_cli(
        "evaluate", abdomen / "predictions", abdomen / "labelsTr", "--classes", "1-15",
        "--out", tmp_path / "results",
    )  # fmt: skip
    assert code == 0, err
    summary = json.loads((tmp_path / "results" / "summary.json").read_text())
    assert summary["classes"] == [str(value) for value in range(1, 16)]
    assert summary["case_ids"] == ABDOMEN_IDS
    assert "warning" not in err.lower()  # e.g. no channel sums off 1


def test_cli_evaluates_the_kits_softmax(kits: Path, tmp_path: Path) -> None:
    code, _, err = run_cli(
        "evaluate", kits / "predictions_softmax", kits / "labelsTr", "--classes", "1,2,3",
        "--out", tmp_path / "results",
    )  # fmt: skip
    assert code == 0, err
    options = EvaluationOptions(classes=(1, 2, 3))
    evaluation = evaluate_folders(kits / "predictions_softmax", kits / "labelsTr", options)
    dice = evaluation.summary.pivot(index="class", columns="metric", values="mean")["dice"]
    assert dice["1"] > 0.8
    assert dice["1"] > dice["2"] and dice["1"] > dice["3"]  # the kidney is the large one


@pytest.mark.parametrize("generate", [generate_abdomen_set, generate_kits_set])
def test_same_seed_same_bytes_other_seed_differs(generate, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    shape = (24, 24, 16)
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        generate(tmp_path / name, n_cases=2, shape=shape, seed=seed)
    files = sorted(_relative_files(tmp_path / "a"))
    assert (
        files == sorted(_relative_files(tmp_path / "b")) == sorted(_relative_files(tmp_path / "c"))
    )
    for name in files:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
        if name.startswith("labelsTr"):
            a, c = (_stored(tmp_path / x / name) for x in ("a", "c"))
            assert a.shape == shape and not np.array_equal(a, c)


@pytest.mark.parametrize("generate", [generate_abdomen_set, generate_kits_set])
def test_fewer_cases_give_a_prefix(generate, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    shape = (24, 24, 16)
    generate(tmp_path / "two", n_cases=2, shape=shape)
    generate(tmp_path / "one", n_cases=1, shape=shape)
    for name in _relative_files(tmp_path / "one") - {"dataset.json"}:
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()


def test_sets_differ_from_each_other(tmp_path: Path) -> None:
    """Each set draws from its own random stream: case 0 of one is not case 0 of another."""
    shape = (24, 24, 16)
    generate_abdomen_set(tmp_path / "abdomen", n_cases=1, shape=shape)
    generate_kits_set(tmp_path / "kits", n_cases=1, shape=shape)
    a = _stored(tmp_path / "abdomen" / "imagesTr" / "AMOS_S000_0000.nii.gz")
    k = _stored(tmp_path / "kits" / "imagesTr" / "KiTS_S000_0000.nii.gz")
    assert not np.array_equal(a, k)


@pytest.mark.parametrize(
    ("data_set", "expected"),
    [
        ("abdomen", "predictions/AMOS_S000.nii.gz"),
        ("kits", "predictions_regions/KiTS_S000.nii.gz"),
        ("brats", "synthetic/dsc/BraTS2021_S000_pred.nii.gz"),
    ],
)
def test_main_writes_each_set(
    data_set: str, expected: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    main(["--set", data_set, str(tmp_path / "out"), "--n-cases", "1", "--seed", "2"])
    assert capsys.readouterr().out == f"wrote 1 cases to {tmp_path / 'out'}\n"
    assert (tmp_path / "out" / expected).is_file()


def test_main_needs_a_folder_for_the_other_sets(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as raised:
        main(["--set", "kits"])
    assert raised.value.code == 2
    assert "--set kits needs an output folder" in capsys.readouterr().err


def test_main_refuses_no_case(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as raised:
        main(["--set", "abdomen", str(tmp_path), "--n-cases", "0"])
    assert raised.value.code == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "n_cases must be at least 1, got 0" in err
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("generate", [generate_abdomen_set, generate_kits_set])
def test_bad_sizes(generate, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match="shape"):
        generate(tmp_path, shape=(8, 64, 64))
