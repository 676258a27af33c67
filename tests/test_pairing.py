"""Case discovery and pairing (calibkit.io.pairing)."""

from __future__ import annotations

import errno
import os
import unicodedata
from pathlib import Path

import pytest

from calibkit.errors import InputError, PairingError
from calibkit.io.pairing import (
    CasePair,
    case_id_from_path,
    find_labels,
    find_predictions,
    pair_cases,
)


def _touch(folder: Path, *names: str) -> None:
    """Create placeholder files (pairing only looks at names)."""
    for name in names:
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")


def _ids(pairs: tuple[CasePair, ...]) -> list[str]:
    return [pair.case_id for pair in pairs]


@pytest.mark.parametrize(
    ("name", "case"),
    [
        ("CASE_001_seg.nii.gz", "CASE_001"),
        ("CASE_001.nii.gz", "CASE_001"),
        ("CASE_001_pred.nii", "CASE_001"),
        ("CASE_001_probabilities.npz", "CASE_001"),
        ("CASE_001_probs.mha", "CASE_001"),
        ("case_0001_seg.png", "case_0001"),
        ("case_0001.TIFF", "case_0001"),
        ("case_0001_pred.tif", "case_0001"),
        ("CASE_001_0000.nii.gz", "CASE_001"),
        ("CASE_001_0000_seg.nii.gz", "CASE_001_0000"),  # one suffix only
        ("BraTS-GLI-00000-000-seg.nii.gz", "BraTS-GLI-00000-000"),
        ("BraTS-GLI-00000-000.nii.gz", "BraTS-GLI-00000-000"),
        ("BraTS-GLI-00000-000-pred.nii.gz", "BraTS-GLI-00000-000"),
        ("Case_SEG.NII.GZ", "Case"),
        ("_seg.nii.gz", "_seg"),  # never strip to an empty id
    ],
)
def test_case_id_from_path(name: str, case: str) -> None:
    assert case_id_from_path(Path("folder") / name) == case


def test_case_id_custom_suffixes() -> None:
    assert case_id_from_path(Path("a_mask.nii.gz"), ("_mask",)) == "a"
    assert case_id_from_path(Path("a-mask.nii.gz"), ("_mask",)) == "a"
    assert case_id_from_path(Path("a_seg.nii.gz"), ("_mask",)) == "a_seg"


def test_brats_layout_ignores_modalities(tmp_path: Path) -> None:
    labels = tmp_path / "brats"
    for case in ("BraTS2021_00000", "BraTS2021_00002"):
        _touch(
            labels,
            *(f"{case}/{case}_{m}.nii.gz" for m in ("t1", "t1ce", "t2", "flair", "seg")),
        )
    preds = tmp_path / "preds"
    _touch(preds, "BraTS2021_00000.nii.gz", "BraTS2021_00002.nii.gz")
    found = find_labels(labels)
    assert sorted(found) == ["BraTS2021_00000", "BraTS2021_00002"]
    assert all(path.name.endswith("_seg.nii.gz") for path in found.values())
    pairing = pair_cases(preds, labels)
    assert _ids(pairing.pairs) == ["BraTS2021_00000", "BraTS2021_00002"]
    assert pairing.pairs[0].label == labels / "BraTS2021_00000" / "BraTS2021_00000_seg.nii.gz"
    assert pairing.pairs[0].prediction == preds / "BraTS2021_00000.nii.gz"
    assert pairing.missing_label == pairing.missing_prediction == ()


def test_brats_2023_dash_names(tmp_path: Path) -> None:
    labels, preds = tmp_path / "labels", tmp_path / "preds"
    case = "BraTS-GLI-00000-000"
    _touch(labels, *(f"{case}/{case}-{m}.nii.gz" for m in ("t1n", "t1c", "t2w", "t2f", "seg")))
    _touch(preds, f"{case}.nii.gz")
    pairing = pair_cases(preds, labels)
    assert _ids(pairing.pairs) == [case]
    assert pairing.pairs[0].label.name == f"{case}-seg.nii.gz"


def test_nnunet_layout(tmp_path: Path) -> None:
    labels, preds = tmp_path / "labelsTr", tmp_path / "preds"
    _touch(labels, "la_003.nii.gz", "la_004.nii.gz", "dataset.json")
    _touch(preds, "la_004.nii.gz", "la_003.nii.gz", "la_003.pkl", "plans.json")
    pairing = pair_cases(preds, labels)
    assert _ids(pairing.pairs) == ["la_003", "la_004"]
    assert pairing.pairs[1] == CasePair("la_004", preds / "la_004.nii.gz", labels / "la_004.nii.gz")


def test_npz_preferred_over_nifti(tmp_path: Path) -> None:
    preds = tmp_path / "preds"
    _touch(preds, "a.nii.gz", "a.npz", "a.pkl", "b.nii.gz")
    found = find_predictions(preds)
    assert found == {"a": preds / "a.npz", "b": preds / "b.nii.gz"}


def test_duplicate_prediction_ids(tmp_path: Path) -> None:
    preds = tmp_path / "preds"
    _touch(preds, "a_pred.nii.gz", "a_prob.nii.gz")
    with pytest.raises(PairingError, match=r"a_pred\.nii\.gz and .*a_prob\.nii\.gz.*'a'"):
        find_predictions(preds)
    _touch(tmp_path / "other", "x.nii.gz", "x.mha")
    with pytest.raises(PairingError, match=r"x\.mha.*x\.nii\.gz|x\.nii\.gz.*x\.mha"):
        find_predictions(tmp_path / "other")
    _touch(tmp_path / "npz", "y.npz", "y_prob.npz")
    with pytest.raises(PairingError, match="'y'"):
        find_predictions(tmp_path / "npz")


def test_duplicate_label_ids(tmp_path: Path) -> None:
    labels = tmp_path / "labels"
    _touch(labels, "one/a_seg.nii.gz", "two/a_seg.nii.gz")
    with pytest.raises(PairingError, match=r"one/a_seg\.nii\.gz and .*two/a_seg\.nii\.gz"):
        find_labels(labels)


def test_missing_partners_are_an_error(tmp_path: Path) -> None:
    labels, preds = tmp_path / "labels", tmp_path / "preds"
    _touch(labels, "a.nii.gz", "b.nii.gz", "d.nii.gz")
    _touch(preds, "a.nii.gz", "b.nii.gz", "c.nii.gz")
    with pytest.raises(PairingError) as info:
        pair_cases(preds, labels)
    message = str(info.value)
    assert f"1 case(s) have no label in {labels}: c" in message
    assert f"1 case(s) have no prediction in {preds}: d" in message
    assert message.endswith("(use --allow-missing to skip them)")
    assert "\n" not in message


def test_missing_partners_allowed(tmp_path: Path) -> None:
    labels, preds = tmp_path / "labels", tmp_path / "preds"
    _touch(labels, "a.nii.gz", "b.nii.gz", "d.nii.gz")
    _touch(preds, "a.nii.gz", "b.nii.gz", "c.nii.gz", "e.npz")
    pairing = pair_cases(preds, labels, allow_missing=True)
    assert _ids(pairing.pairs) == ["a", "b"]
    assert pairing.missing_label == ("c", "e")
    assert pairing.missing_prediction == ("d",)


def test_missing_list_is_truncated(tmp_path: Path) -> None:
    labels, preds = tmp_path / "labels", tmp_path / "preds"
    _touch(labels, "common.nii.gz")
    _touch(preds, "common.nii.gz", *(f"case{i:02d}.nii.gz" for i in range(13)))
    with pytest.raises(PairingError, match=r"13 case\(s\) have no label .*case09 and 3 more \("):
        pair_cases(preds, labels)


def test_no_common_case_is_always_an_error(tmp_path: Path) -> None:
    labels, preds = tmp_path / "labels", tmp_path / "preds"
    _touch(labels, "a.nii.gz")
    _touch(preds, "b.nii.gz")
    with pytest.raises(PairingError, match="no case id is shared"):
        pair_cases(preds, labels, allow_missing=True)


def test_same_folder_predictions_and_labels(tmp_path: Path) -> None:
    folder = tmp_path / "cases"
    _touch(
        folder,
        "a/a_seg.nii.gz",
        "a/a_pred.nii.gz",
        "a/a_t1.nii.gz",
        "b/b_seg.nii.gz",
        "b/b_prob.nii.gz",
    )
    pairing = pair_cases(folder, folder)
    assert _ids(pairing.pairs) == ["a", "b"]
    assert pairing.pairs[0] == CasePair("a", folder / "a/a_pred.nii.gz", folder / "a/a_seg.nii.gz")
    assert pairing.pairs[1].prediction.name == "b_prob.nii.gz"


def test_same_folder_without_seg_markers(tmp_path: Path) -> None:
    folder = tmp_path / "cases"
    _touch(folder, "a.nii.gz", "a.npz", "b.nii.gz", "b_pred.nii.gz")
    pairing = pair_cases(folder, folder)
    assert pairing.pairs == (
        CasePair("a", folder / "a.npz", folder / "a.nii.gz"),
        CasePair("b", folder / "b_pred.nii.gz", folder / "b.nii.gz"),
    )


def test_same_folder_without_prediction_names(tmp_path: Path) -> None:
    folder = tmp_path / "cases"
    _touch(folder, "a_seg.nii.gz", "a.nii.gz")
    with pytest.raises(InputError, match="no prediction files next to the labels"):
        pair_cases(folder, folder)


def test_predictions_inside_label_folder(tmp_path: Path) -> None:
    labels = tmp_path / "labels"
    _touch(labels, "a.nii.gz", "b.nii.gz", "preds/a.nii.gz", "preds/b.nii.gz")
    pairing = pair_cases(labels / "preds", labels)
    assert [(p.prediction.parent.name, p.label.parent.name) for p in pairing.pairs] == [
        ("preds", "labels"),
        ("preds", "labels"),
    ]


def test_hidden_files_and_unknown_suffixes_skipped(tmp_path: Path) -> None:
    labels, preds = tmp_path / "labels", tmp_path / "preds"
    _touch(labels, "a.nii.gz", ".b.nii.gz", ".cache/c.nii.gz", "notes.txt", "d.jpg")
    _touch(preds, "a.nii.gz", ".a.1234.tmp.nii.gz", ".hidden/e.nii.gz")
    pairing = pair_cases(preds, labels)
    assert _ids(pairing.pairs) == ["a"]
    assert pairing.missing_label == pairing.missing_prediction == ()


def test_empty_and_missing_folders(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    _touch(tmp_path / "labels", "a.nii.gz")
    _touch(tmp_path / "texts", "readme.txt")
    with pytest.raises(
        InputError, match=r"empty: no prediction files \(\.nii\.gz, .*\.npz\) found"
    ):
        pair_cases(tmp_path / "empty", tmp_path / "labels")
    with pytest.raises(InputError, match=r"empty: no label files \(\.nii\.gz"):
        find_labels(tmp_path / "empty")
    with pytest.raises(InputError, match="no prediction files"):
        find_predictions(tmp_path / "texts")
    with pytest.raises(InputError, match="absent: folder not found"):
        pair_cases(tmp_path / "absent", tmp_path / "labels")
    with pytest.raises(InputError, match="is a file, expected a folder"):
        find_labels(tmp_path / "labels" / "a.nii.gz")


def test_npz_is_not_a_label(tmp_path: Path) -> None:
    labels = tmp_path / "labels"
    _touch(labels, "a.npz")
    with pytest.raises(InputError, match="no label files"):
        find_labels(labels)


def test_symlinked_case_folders_are_followed(tmp_path: Path) -> None:
    store, labels, preds = tmp_path / "store", tmp_path / "labels", tmp_path / "preds"
    _touch(store, "a/a_seg.nii.gz")
    labels.mkdir()
    (labels / "a").symlink_to(store / "a", target_is_directory=True)
    (labels / "loop").symlink_to(labels, target_is_directory=True)
    _touch(preds, "a.nii.gz")
    assert _ids(pair_cases(preds, labels).pairs) == ["a"]


# ------------------------------------------------------- inputs that cannot be read


def test_broken_prediction_symlink_is_an_error(tmp_path: Path) -> None:
    labels, preds = tmp_path / "labels", tmp_path / "preds"
    _touch(labels, "a.nii.gz", "b.nii.gz")
    _touch(preds, "a.nii.gz")
    (preds / "b.nii.gz").symlink_to(tmp_path / "gone" / "b.nii.gz")
    with pytest.raises(InputError) as info:
        pair_cases(preds, labels)
    assert info.value.path == preds / "b.nii.gz"
    assert f"is a broken symlink (its target {tmp_path}/gone/b.nii.gz does not exist)" in str(
        info.value
    )
    assert str(info.value).endswith("(or use --allow-missing to skip the case)")
    with pytest.raises(InputError, match=r"b\.nii\.gz: is a broken symlink"):
        find_predictions(preds)


def test_broken_symlink_skipped_with_allow_missing(tmp_path: Path) -> None:
    labels, preds = tmp_path / "labels", tmp_path / "preds"
    _touch(labels, "a.nii.gz", "b.nii.gz", "c.nii.gz")
    _touch(preds, "a.nii.gz", "c.nii.gz")
    (preds / "b.nii.gz").symlink_to(tmp_path / "gone.nii.gz")
    (labels / "c.nii.gz").unlink()
    (labels / "c.nii.gz").symlink_to("c.nii.gz")  # a loop: the link points at itself
    pairing = pair_cases(preds, labels, allow_missing=True)
    assert _ids(pairing.pairs) == ["a"]
    assert pairing.missing_prediction == ("b",)
    assert pairing.missing_label == ("c",)
    assert [(f.case_id, f.path) for f in pairing.unreadable] == [
        ("b", preds / "b.nii.gz"),
        ("c", labels / "c.nii.gz"),
    ]
    assert pairing.notes == [
        "skipped 1 case(s) without a label",
        "skipped 1 case(s) without a prediction",
        f"skipped case b: {preds}/b.nii.gz: is a broken symlink (its target "
        f"{tmp_path}/gone.nii.gz does not exist); fix or remove the link",
        f"skipped case c: {labels}/c.nii.gz: is a symlink loop (it leads back to itself); "
        "fix or remove the link",
    ]


def test_symlink_loop_among_labels_is_an_error(tmp_path: Path) -> None:
    labels, preds = tmp_path / "labels", tmp_path / "preds"
    _touch(labels, "a/a_seg.nii.gz", "b/b_t1.nii.gz")
    _touch(preds, "a.nii.gz", "b.nii.gz")
    (labels / "b" / "b_seg.nii.gz").symlink_to("b_seg2.nii.gz")
    (labels / "b" / "b_seg2.nii.gz").symlink_to("b_seg.nii.gz")
    with pytest.raises(InputError, match=r"b/b_seg\.nii\.gz: is a symlink loop"):
        pair_cases(preds, labels)
    with pytest.raises(InputError, match=r"b_seg\.nii\.gz: is a symlink loop"):
        find_labels(labels)


def test_unreadable_files_that_are_no_input_are_ignored(tmp_path: Path) -> None:
    """A broken BraTS image next to a _seg label, or a broken .pkl, is not an input."""
    labels, preds = tmp_path / "labels", tmp_path / "preds"
    _touch(labels, "a/a_seg.nii.gz")
    (labels / "a" / "a_t1.nii.gz").symlink_to(tmp_path / "gone.nii.gz")
    _touch(preds, "a.nii.gz")
    (preds / "a.pkl").symlink_to(tmp_path / "gone.pkl")
    assert _ids(pair_cases(preds, labels).pairs) == ["a"]


def test_every_unreadable_file_is_counted(tmp_path: Path) -> None:
    labels, preds = tmp_path / "labels", tmp_path / "preds"
    _touch(labels, "a.nii.gz", "b.nii.gz", "c.nii.gz")
    _touch(preds, "a.nii.gz")
    for case in ("b", "c"):
        (preds / f"{case}.nii.gz").symlink_to(tmp_path / f"gone_{case}")
    with pytest.raises(InputError, match=r"b\.nii\.gz: .*; 1 more input file\(s\) cannot be read"):
        pair_cases(preds, labels)


def test_only_unreadable_cases_left_is_an_error(tmp_path: Path) -> None:
    labels, preds = tmp_path / "labels", tmp_path / "preds"
    _touch(labels, "a.nii.gz")
    preds.mkdir()
    (preds / "a.nii.gz").symlink_to(tmp_path / "gone")
    with pytest.raises(
        InputError, match=r"a\.nii\.gz: is a broken symlink.*no other case pairs up"
    ):
        pair_cases(preds, labels, allow_missing=True)


def test_npz_that_cannot_be_read_is_not_replaced_by_the_argmax(tmp_path: Path) -> None:
    preds = tmp_path / "preds"
    _touch(preds, "a.nii.gz")
    (preds / "a.npz").symlink_to(tmp_path / "gone.npz")
    with pytest.raises(InputError, match=r"a\.npz: is a broken symlink"):
        find_predictions(preds)


def test_pipe_is_not_an_input_file(tmp_path: Path) -> None:
    labels, preds = tmp_path / "labels", tmp_path / "preds"
    _touch(labels, "a.nii.gz")
    preds.mkdir()
    os.mkfifo(preds / "a.nii.gz")
    with pytest.raises(InputError, match=r"a\.nii\.gz: is not a regular file"):
        pair_cases(preds, labels)


def test_folder_that_cannot_be_listed_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tests run as root, whom chmod does not stop: the listing itself is made to fail."""
    labels, preds = tmp_path / "labels", tmp_path / "preds"
    _touch(labels, "a/a_seg.nii.gz", "b/b_seg.nii.gz")
    _touch(preds, "a.nii.gz")
    real_scandir = os.scandir

    def scandir(path: str) -> object:
        if Path(path).name == "b":
            raise PermissionError(errno.EACCES, "Permission denied", path)
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    with pytest.raises(InputError, match=r"labels/b: folder cannot be read \(permission denied\)"):
        pair_cases(preds, labels, allow_missing=True)


# ------------------------------------------------------------------ Unicode case ids

_NFC = unicodedata.normalize("NFC", "café")
_NFD = unicodedata.normalize("NFD", "café")


def test_case_ids_are_compared_in_nfc(tmp_path: Path) -> None:
    assert _NFC != _NFD  # the two spellings are different file names
    labels, preds = tmp_path / "labels", tmp_path / "preds"
    _touch(labels, f"{_NFC}_seg.nii.gz")
    _touch(preds, f"{_NFD}_pred.nii.gz")
    pairing = pair_cases(preds, labels)
    assert _ids(pairing.pairs) == [_NFC]
    assert pairing.pairs[0].prediction == preds / f"{_NFD}_pred.nii.gz"
    assert case_id_from_path(f"{_NFD}-SEG.nii.gz") == _NFC
    assert case_id_from_path(f"{_NFD}_mask.nii.gz", ("_mask",)) == _NFC


def test_ids_differing_only_in_normalisation_are_duplicates(tmp_path: Path) -> None:
    preds, labels = tmp_path / "preds", tmp_path / "labels"
    _touch(preds, f"{_NFC}_pred.nii.gz", f"{_NFD}_pred.nii.gz")
    with pytest.raises(PairingError, match=f"both give case id '{_NFC}'; keep one prediction"):
        find_predictions(preds)
    _touch(labels, f"{_NFC}_seg.nii.gz", f"{_NFD}_seg.nii.gz")
    with pytest.raises(PairingError, match=f"both give case id '{_NFC}'; keep one label"):
        find_labels(labels)
