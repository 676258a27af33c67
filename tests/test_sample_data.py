"""Tests of the synthetic sample data generator and of the committed ``sample_data/`` folder."""

from __future__ import annotations

from pathlib import Path
from typing import cast

import nibabel as nib
import numpy as np
import pytest

from calibkit.sample_data import (
    MODALITIES,
    MODELS,
    N_CASES,
    NO_ET_CASE,
    SAMPLE_SHAPE,
    case_ids,
    generate_sample_data,
    main,
    sample_data_dir,
)

COMMITTED = sample_data_dir()


def _load(path: Path) -> nib.Nifti1Image:
    """Load a NIfTI file (typed for mypy)."""
    return cast(nib.Nifti1Image, nib.load(path))


def _files(root: Path, case_id: str) -> list[Path]:
    """Return every file of one case, relative to ``root``'s layout."""
    case_dir = Path("brats") / case_id
    names = [case_dir / f"{case_id}_{m}.nii.gz" for m in (*MODALITIES, "seg")]
    names += [Path("synthetic") / model / f"{case_id}_pred.nii.gz" for model in MODELS]
    return [root / name for name in names]


@pytest.fixture(scope="module")
def regenerated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The full default data set, regenerated into a temporary folder."""
    out = tmp_path_factory.mktemp("sample_data")
    assert generate_sample_data(out) == case_ids(N_CASES)
    return out


def test_committed_data_is_reproduced_by_the_generator(regenerated: Path) -> None:
    assert COMMITTED.is_dir(), "sample_data/ is missing: python -m calibkit.sample_data"
    for case_id in case_ids(N_CASES):
        for fresh_path, committed_path in zip(
            _files(regenerated, case_id), _files(COMMITTED, case_id), strict=True
        ):
            if fresh_path.read_bytes() == committed_path.read_bytes():
                continue  # same bytes, same arrays; otherwise (another zlib) compare decoded
            fresh, committed = _load(fresh_path), _load(committed_path)
            np.testing.assert_array_equal(fresh.affine, committed.affine, err_msg=str(fresh_path))
            assert fresh.get_data_dtype() == committed.get_data_dtype()
            np.testing.assert_array_equal(
                np.asarray(fresh.dataobj), np.asarray(committed.dataobj), err_msg=str(fresh_path)
            )


def test_no_stray_files_in_committed_folder() -> None:
    expected = {p for case_id in case_ids(N_CASES) for p in _files(COMMITTED, case_id)}
    # trained/ and predictions/ hold the trained models' outputs (benchmarks/replicate.py).
    found = {
        p
        for p in COMMITTED.rglob("*.nii.gz")
        if p.relative_to(COMMITTED).parts[0] not in ("trained", "predictions")
    }
    assert found == expected


@pytest.mark.parametrize("case_id", case_ids(N_CASES))
def test_labels_nested_and_predictions_valid(case_id: str) -> None:
    seg_img = _load(COMMITTED / "brats" / case_id / f"{case_id}_seg.nii.gz")
    seg = np.asarray(seg_img.dataobj)
    assert seg.shape == SAMPLE_SHAPE
    assert seg.dtype == np.uint8
    assert set(np.unique(seg)) <= {0, 1, 2, 4}
    wt = seg > 0
    assert wt.any()
    # ET and NCR lie inside WT and, one voxel further in, never touch the background.
    inner = np.isin(seg, (1, 4))
    padded = np.pad(seg, 1)
    for axis in range(3):
        for shift in (-1, 1):
            neighbour = np.roll(padded, shift, axis=axis)[1:-1, 1:-1, 1:-1]
            assert not np.any(inner & (neighbour == 0)), "TC touches the background"
    if case_ids(N_CASES).index(case_id) == NO_ET_CASE:
        assert not np.any(seg == 4)
    else:
        assert np.any(seg == 4) and np.any(seg == 1)

    for modality in MODALITIES:
        img = _load(COMMITTED / "brats" / case_id / f"{case_id}_{modality}.nii.gz")
        assert img.shape == SAMPLE_SHAPE
        assert img.get_data_dtype() == np.int16
        np.testing.assert_array_equal(img.affine, seg_img.affine)
        data = np.asarray(img.dataobj)
        assert data.min() >= 0 and data[wt].min() > 0

    for model in MODELS:
        img = _load(COMMITTED / "synthetic" / model / f"{case_id}_pred.nii.gz")
        assert img.shape == (*SAMPLE_SHAPE, 4)
        assert img.get_data_dtype() == np.uint8
        proxy = cast(nib.arrayproxy.ArrayProxy, img.dataobj)
        assert proxy.slope == pytest.approx(1 / 255) and proxy.inter == 0
        assert proxy.get_unscaled().dtype == np.uint8
        assert img.header.get_intent()[2] == "probabilities"
        np.testing.assert_array_equal(img.affine, seg_img.affine)
        probs = img.get_fdata()
        assert probs.min() >= 0 and probs.max() <= 1 + 1e-6
        np.testing.assert_allclose(probs.sum(axis=-1), 1.0, atol=4 / 255)


def test_affine_is_bratslike() -> None:
    affine = _load(COMMITTED / "brats" / "BraTS2021_S000" / "BraTS2021_S000_t1.nii.gz").affine
    np.testing.assert_array_equal(np.diag(affine)[:3], [-1.0, -1.0, 1.0])
    assert np.any(affine[:3, 3] != 0)


def _region_stats(case_id: str, model: str) -> tuple[float, float]:
    """Return (WT Dice, WT ACE with 20 right-closed bins) of one case."""
    seg = np.asarray(_load(COMMITTED / "brats" / case_id / f"{case_id}_seg.nii.gz").dataobj)
    probs = _load(COMMITTED / "synthetic" / model / f"{case_id}_pred.nii.gz").get_fdata()
    p = np.clip(probs[..., 1:].sum(axis=-1), 0, 1).ravel()
    y = (seg > 0).ravel()
    dice = 2 * np.sum((p >= 0.5) & y) / (np.sum(p >= 0.5) + np.sum(y))
    bins = np.searchsorted(np.linspace(0, 1, 21)[1:-1], p, side="left")
    n = np.bincount(bins, minlength=20)
    gap = np.abs(np.bincount(bins, p, 20) - np.bincount(bins, y, 20))[n > 0] / n[n > 0]
    return float(dice), float(gap.mean())


def test_models_differ_in_calibration_not_in_dice() -> None:
    stats = {m: [_region_stats(c, m) for c in case_ids(N_CASES)] for m in MODELS}
    dice = {m: np.mean([s[0] for s in v]) for m, v in stats.items()}
    ace = {m: np.mean([s[1] for s in v]) for m, v in stats.items()}
    assert 0.75 < dice["dsc"] < 0.95
    assert dice["dsc"] == pytest.approx(dice["dsc_ace"], abs=0.02)
    assert ace["dsc"] > ace["dsc_ace"] + 0.05


def test_same_seed_same_data_other_seed_differs(tmp_path: Path) -> None:
    shape = (24, 28, 24)
    first = generate_sample_data(tmp_path / "a", n_cases=1, shape=shape, seed=3)
    generate_sample_data(tmp_path / "b", n_cases=1, shape=shape, seed=3)
    generate_sample_data(tmp_path / "c", n_cases=1, shape=shape, seed=4)
    (case_id,) = first
    for name in ("a", "b", "c"):
        assert not list((tmp_path / name).rglob(".*")), "temporary files left behind"
    for path_a, path_b, path_c in zip(
        _files(tmp_path / "a", case_id),
        _files(tmp_path / "b", case_id),
        _files(tmp_path / "c", case_id),
        strict=True,
    ):
        a, b, c = (np.asarray(_load(p).dataobj) for p in (path_a, path_b, path_c))
        assert a.shape[:3] == shape
        np.testing.assert_array_equal(a, b)
        assert not np.array_equal(a, c)


def test_fewer_cases_give_a_prefix(tmp_path: Path) -> None:
    shape = (24, 24, 24)
    generate_sample_data(tmp_path / "two", n_cases=2, shape=shape)
    generate_sample_data(tmp_path / "one", n_cases=1, shape=shape)
    for one, two in zip(
        _files(tmp_path / "one", "BraTS2021_S000"),
        _files(tmp_path / "two", "BraTS2021_S000"),
        strict=True,
    ):
        expected = np.asarray(_load(two).dataobj)
        np.testing.assert_array_equal(np.asarray(_load(one).dataobj), expected)


def test_main_writes_into_given_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main([str(tmp_path / "out"), "--seed", "1", "--n-cases", "1"])
    assert "wrote 1 cases" in capsys.readouterr().out
    assert (tmp_path / "out" / "synthetic" / "dsc_ace" / "BraTS2021_S000_pred.nii.gz").is_file()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"n_cases": 0}, "n_cases"), ({"shape": (8, 64, 64)}, "shape")],
)
def test_bad_arguments(tmp_path: Path, kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        generate_sample_data(tmp_path, **kwargs)  # type: ignore[arg-type]
