"""Regions, presets, dataset.json class lists and multi-label ground truth.

Numbers are checked against MONAI's CalibrationErrorMetric / DiceMetric on the
binary maps built by hand (to 1e-5), and against the float64 definition of
conftest.binary_reference (to 1e-9), as the classes are in test_evaluate.py.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import (
    SAMPLE_DATA,
    assert_clear_of_edges,
    assert_user_error,
    binary_reference,
    read_csv_rows,
    run_cli,
)
from monai.metrics import CalibrationErrorMetric, DiceMetric

from calibkit.classes import PRESET_TABLE, Region, _region_plan, parse_region, resolve_classes
from calibkit.errors import CalibkitError, InputError
from calibkit.evaluate import EvaluationOptions, evaluate_folders
from calibkit.io.dataset_json import read_dataset_classes

AFFINE = np.diag([-1.0, -1.0, 1.0, 1.0])
SHAPE = (14, 13, 12)
# KiTS labels: 0 background, 1 kidney, 2 tumour, 3 cyst.
KITS_REGIONS = (("kidney+masses", (1, 2, 3)), ("masses", (2, 3)), ("tumor", (2,)))
KITS_DATASET = {
    "channel_names": {"0": "CT"},
    "labels": {"background": 0, "kidney": [1, 2, 3], "masses": [2, 3], "tumor": 2},
    "regions_class_order": [1, 3, 2],
    "numTraining": 2,
    "file_ending": ".nii.gz",
}


# --------------------------------------------------------------------------- data


def clear_probabilities(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """float32 probabilities at least 1e-5 from every inner bin edge of 20 bins.

    Near an edge float32 and float64 may bin a value apart; the float64 reference
    (conftest.binary_reference) needs them clear.
    """
    p = rng.random(shape).astype(np.float32)
    nearest = np.round(p.astype(np.float64) * 20) / 20
    close = np.abs(p - nearest) < 1e-5
    p[close] = (nearest[close] + 0.02).astype(np.float32)
    return np.clip(p, 0.001, 0.999).astype(np.float32)


def kits_label(rng: np.random.Generator) -> np.ndarray:
    """A KiTS-style label map: kidney with tumour and cyst inside it."""
    label = np.zeros(SHAPE, dtype=np.uint8)
    label[2:12, 2:11, 2:10] = 1
    label[4:8, 4:8, 3:7] = 2
    label[8:11, 7:10, 6:9] = 3
    noise = rng.random(SHAPE) < 0.05
    label[noise & (label == 1)] = 2
    return label


def write_case(folder: Path, name: str, array: np.ndarray) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, AFFINE), folder / f"{name}.nii.gz")


def kits_region_cases(root: Path) -> tuple[Path, Path, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """Region maps (3 sigmoid channels) and KiTS label maps of two cases.

    Returns the prediction and label folders and, per case, the hand-built
    probabilities and binary targets ``(3, *SHAPE)``.
    """
    rng = np.random.default_rng(7)
    built = {}
    for case in ("kits_000", "kits_001"):
        label = kits_label(rng)
        targets = np.stack([np.isin(label, values) for _, values in KITS_REGIONS])
        # Nested, as a region model's sigmoids are: p(tumor) <= p(masses) <= p(kidney+masses).
        p = clear_probabilities(rng, (3, *SHAPE))
        p.sort(axis=0)
        p = p[::-1].copy()
        write_case(root / "preds", f"{case}_pred", np.moveaxis(p, 0, -1))
        write_case(root / "labels", f"{case}_seg", label)
        built[case] = (p, targets)
    return root / "preds", root / "labels", built


def multi_label_cases(root: Path) -> tuple[Path, Path, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """Two cases of a 3-channel multi-label ground truth (overlapping binary maps)."""
    rng = np.random.default_rng(11)
    built = {}
    for case in ("ml_000", "ml_001"):
        p = clear_probabilities(rng, (3, *SHAPE))
        # Labels drawn from p (calibrated), channel 2 a superset of channel 1 (overlap).
        y = rng.random(p.shape) < p
        y[2] |= y[1]
        write_case(root / "preds", f"{case}_pred", np.moveaxis(p, 0, -1))
        write_case(root / "labels", f"{case}_seg", np.moveaxis(y, 0, -1).astype(np.uint8))
        built[case] = (p, y)
    return root / "preds", root / "labels", built


def check_against_references(
    table_rows: dict[str, list[dict[str, str]]] | None,
    evaluation_table: object,
    built: dict[str, tuple[np.ndarray, np.ndarray]],
    names: list[str],
) -> None:
    """Per-case, per-class ACE/ECE/MCE/Dice equal MONAI (1e-5) and the float64 definition (1e-9)."""
    table = evaluation_table
    for case, (p, y) in built.items():
        rows = table[table.case_id == case]  # type: ignore[attr-defined]
        assert rows["class"].tolist() == names
        y_pred = torch.from_numpy(p[None].astype(np.float32))
        y_true = torch.from_numpy(y[None].astype(np.float32))
        for column, reduction in (("ace", "average"), ("ece", "expected"), ("mce", "maximum")):
            metric = CalibrationErrorMetric(
                num_bins=20, calibration_reduction=reduction, metric_reduction="none"
            )
            expected = metric(y_pred=y_pred, y=y_true).numpy()[0]
            # MONAI sums bins in float32 (about 2,000 voxels per class here: relative error
            # <= 2,000 * 6e-8 = 1.2e-4 of a bin mean < 1, far less in practice); calibkit in
            # float64. atol 1e-5, as for the classes (test_evaluate.py).
            np.testing.assert_allclose(rows[column].to_numpy(), expected, atol=1e-5, rtol=0)
        dice = DiceMetric(include_background=True, reduction="none", ignore_empty=True)
        expected_dice = dice(y_pred=(y_pred >= 0.5).float(), y=y_true).numpy()[0]
        np.testing.assert_allclose(rows["dice"].to_numpy(), expected_dice, atol=1e-6)
        for i in range(len(names)):
            assert_clear_of_edges(p[i], margin=1e-7)
            reference = binary_reference(p[i].astype(np.float64), y[i])
            row = rows.iloc[i]
            # Same float32 values, sums in float64 in another order: ~1e-16 relative.
            for key in ("ace", "ece", "mce", "dice"):
                assert row[key] == pytest.approx(reference[key], abs=1e-9), (case, i, key)


# --------------------------------------------------------------------------- parsing


@pytest.mark.parametrize(
    ("text", "region"),
    [
        ("ET=4,3", Region("ET", (4, 3))),
        ("TC = 1,4,3", Region("TC", (1, 4, 3))),
        ("organs=1-15", Region("organs", tuple(range(1, 16)))),
        ("kidney and masses=1,2,3@0", Region("kidney and masses", (1, 2, 3), (0,))),
        ("TC=1,3,4@1,3", Region("TC", (1, 3, 4), (1, 3))),
    ],
)
def test_parse_region(text: str, region: Region) -> None:
    assert parse_region(text) == region


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("ET", "is not NAME=VALUES"),
        ("=1,2", "is not NAME=VALUES"),
        ("ET=", "--region ET is empty"),
        ("ET=a", "'a' is not a label value"),
        ("ET=1,1", "more than once"),
        ("ET=1@x", "channels (after @)"),
    ],
)
def test_parse_region_refuses(text: str, message: str) -> None:
    with pytest.raises(CalibkitError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_region(text)


# --------------------------------------------------------------------------- plans


def test_presets_are_data_read_by_one_mechanism() -> None:
    """A preset equals the same regions given with --region and its softmax channels."""
    for name, preset in PRESET_TABLE.items():
        as_preset = resolve_classes(len(preset.softmax_channels), preset=name)
        by_hand = resolve_classes(
            len(preset.softmax_channels),
            regions=[
                Region(
                    region.name,
                    region.labels,
                    tuple(
                        c
                        for c, group in enumerate(preset.softmax_channels)
                        if set(group) <= set(region.labels)
                    ),
                )
                for region in preset.regions
            ],
        )
        assert as_preset.classes == by_hand.classes and as_preset.exclusive
        region_map = resolve_classes(len(preset.regions), preset=name)
        assert [spec.channels for spec in region_map.classes] == [
            (i,) for i in range(len(preset.regions))
        ]
        assert not region_map.exclusive


def test_kits_preset() -> None:
    softmax = resolve_classes(4, preset="kits")
    assert softmax.names == ("kidney+masses", "masses", "tumor")
    assert [spec.channels for spec in softmax.classes] == [(1, 2, 3), (2, 3), (2,)]
    assert [spec.labels for spec in softmax.classes] == [(1, 2, 3), (2, 3), (2,)]
    with pytest.raises(CalibkitError, match=r"expects 3 channels .* or 4 .*, got 5"):
        resolve_classes(5, preset="kits")


def test_user_regions_on_a_softmax_map_and_on_a_region_map() -> None:
    regions = [Region("WT", (1, 2, 3)), Region("TC", (1, 3))]
    softmax = resolve_classes(4, regions=regions)
    assert [spec.channels for spec in softmax.classes] == [(1, 2, 3), (1, 3)]
    assert softmax.exclusive and softmax.known_labels == {0, 1, 2, 3}
    region_map = resolve_classes(2, regions=regions)
    assert [spec.channels for spec in region_map.classes] == [(0,), (1,)]
    assert not region_map.exclusive
    with pytest.raises(CalibkitError, match=r"expects 2 channels .* or 4"):
        resolve_classes(3, regions=regions)


def test_ambiguous_channel_count_asks_for_channels() -> None:
    # Three regions over labels 0-2: 3 channels could be either layout.
    regions = [Region("a", (1, 2)), Region("b", (2,)), Region("c", (1,))]
    with pytest.raises(CalibkitError, match=r"fit both .* --region a=1,2@0"):
        resolve_classes(3, regions=regions)
    explicit = [Region(r.name, r.labels, (i,)) for i, r in enumerate(regions)]
    plan = resolve_classes(3, regions=explicit)
    assert not plan.exclusive and [s.channels for s in plan.classes] == [(0,), (1,), (2,)]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"regions": [Region("a", (1,), (0,)), Region("b", (2,))]}, "every region or for none"),
        ({"regions": [Region("a", (1,), (5,))]}, r"reads channel\(s\) \[5\]"),
        ({"regions": [Region("a", (1,)), Region("a", (2,))]}, "distinct"),
        ({"regions": [Region("a", (1,))], "include_background": True}, "--include-background"),
        ({"regions": [Region("a", (1,))], "classes": [1]}, "give one of --classes and --region"),
        ({"preset": "brats", "classes": [1]}, "give one of --classes and --preset"),
    ],
)
def test_region_options_refused(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(CalibkitError, match=message):
        resolve_classes(4, **kwargs)  # type: ignore[arg-type]


def test_a_softmax_channel_cannot_be_split_between_regions() -> None:
    # BraTS channel 3 stands for labels 3 and 4 together: a region of label 4 alone
    # cannot be read from it.
    with pytest.raises(CalibkitError, match="softmax channel 3 also stands for"):
        _region_plan(4, (Region("four", (4,)),), PRESET_TABLE["brats"].softmax_channels, None)


def test_multi_label_plan() -> None:
    plan = resolve_classes(3, label_channels=3)
    assert plan.names == ("0", "1", "2") and not plan.exclusive
    assert [(s.channels, s.label_channel, s.labels) for s in plan.classes] == [
        ((0,), 0, (1,)),
        ((1,), 1, (1,)),
        ((2,), 2, (1,)),
    ]
    named = resolve_classes(3, label_channels=3, preset="brats")
    assert named.names == ("ET", "TC", "WT")
    with pytest.raises(CalibkitError, match=r"multi-label with 3 channels .* got 4"):
        resolve_classes(4, label_channels=3)
    with pytest.raises(CalibkitError, match="--classes picks label values"):
        resolve_classes(3, label_channels=3, classes=[1, 2, 3])


# --------------------------------------------------------------------------- numbers


def test_region_map_numbers_match_monai(tmp_path: Path) -> None:
    preds, labels, built = kits_region_cases(tmp_path)
    evaluation = evaluate_folders(preds, labels, EvaluationOptions(preset="kits"))
    check_against_references(None, evaluation.per_image, built, [n for n, _ in KITS_REGIONS])


def test_softmax_sums_into_regions_match_monai(tmp_path: Path) -> None:
    """A 4-channel KiTS softmax: each region is the clipped float32 sum of its channels."""
    rng = np.random.default_rng(3)
    built = {}
    for case in ("kits_000", "kits_001"):
        label = kits_label(rng)
        logits = rng.normal(size=(4, *SHAPE)).astype(np.float32) * 2
        softmax = np.exp(logits) / np.exp(logits).sum(axis=0, keepdims=True)
        softmax = softmax.astype(np.float32)
        write_case(tmp_path / "preds", f"{case}_pred", np.moveaxis(softmax, 0, -1))
        write_case(tmp_path / "labels", f"{case}_seg", label)
        read = nib.load(tmp_path / "preds" / f"{case}_pred.nii.gz").get_fdata(dtype=np.float32)
        read = np.moveaxis(read, -1, 0)
        # The definition: float32 sums of the softmax channels, clipped to 1.
        p = np.stack(
            [
                np.minimum(read[1] + read[2] + read[3], np.float32(1)),
                np.minimum(read[2] + read[3], np.float32(1)),
                read[2],
            ]
        )
        built[case] = (p, np.stack([np.isin(label, v) for _, v in KITS_REGIONS]))
    evaluation = evaluate_folders(
        tmp_path / "preds", tmp_path / "labels", EvaluationOptions(preset="kits")
    )
    table = evaluation.per_image
    for case, (p, y) in built.items():
        rows = table[table.case_id == case]
        for column, reduction in (("ace", "average"), ("ece", "expected"), ("mce", "maximum")):
            metric = CalibrationErrorMetric(
                num_bins=20, calibration_reduction=reduction, metric_reduction="none"
            )
            expected = metric(
                y_pred=torch.from_numpy(p[None]), y=torch.from_numpy(y[None].astype(np.float32))
            ).numpy()[0]
            # MONAI's float32 bin sums against calibkit's float64: see check_against_references.
            np.testing.assert_allclose(rows[column].to_numpy(), expected, atol=1e-5, rtol=0)


def test_user_regions_equal_the_brats_preset_on_the_sample_data() -> None:
    predictions, labels = SAMPLE_DATA / "predictions" / "dsc", SAMPLE_DATA / "brats"
    preset = evaluate_folders(predictions, labels, EvaluationOptions(preset="brats"))
    regions = tuple(parse_region(text) for text in ("ET=3,4@3", "TC=1,3,4@1,3", "WT=1,2,3,4@1,2,3"))
    by_hand = evaluate_folders(predictions, labels, EvaluationOptions(regions=regions))
    np.testing.assert_array_equal(preset.bins.count, by_hand.bins.count)
    np.testing.assert_array_equal(preset.bins.sum_p, by_hand.bins.sum_p)
    assert preset.per_image.equals(by_hand.per_image)


def test_multi_label_numbers_match_monai(tmp_path: Path) -> None:
    preds, labels, built = multi_label_cases(tmp_path)
    evaluation = evaluate_folders(preds, labels, EvaluationOptions())
    check_against_references(None, evaluation.per_image, built, ["0", "1", "2"])
    named = evaluate_folders(
        preds, labels, EvaluationOptions(class_names=("liver", "lesion", "organ"))
    )
    assert named.per_image["ace"].equals(evaluation.per_image["ace"])


def test_multi_label_refusals(tmp_path: Path) -> None:
    preds, labels, _ = multi_label_cases(tmp_path)
    bad = nib.load(labels / "ml_000_seg.nii.gz")
    data = np.asarray(bad.dataobj).copy()
    data[0, 0, 0, 1] = 2
    nib.save(nib.Nifti1Image(data, AFFINE), labels / "ml_000_seg.nii.gz")
    with pytest.raises(InputError, match="holds 0 or 1 in each of its 3 channels, but it holds 2"):
        evaluate_folders(preds, labels, EvaluationOptions())
    two = np.moveaxis(data[..., :2].clip(0, 1), -1, -1)
    nib.save(nib.Nifti1Image(two, AFFINE), labels / "ml_000_seg.nii.gz")
    with pytest.raises(InputError, match="predictions need 2 channels"):
        evaluate_folders(preds, labels, EvaluationOptions())


def test_multi_label_fit_temperature(tmp_path: Path) -> None:
    """Sigmoid temperature fitting reads each channel's target from its label channel."""
    preds, labels, built = multi_label_cases(tmp_path)
    code, _, stderr = run_cli("fit-temperature", preds, labels, "--out", tmp_path / "t.json")
    assert code == 0, stderr
    record = json.loads((tmp_path / "t.json").read_text())
    assert record["activation"] == "sigmoid"
    z = np.concatenate([np.log(p / (1 - p)).ravel() for p, _ in built.values()]).astype(np.float64)
    y = np.concatenate([y.ravel() for _, y in built.values()])

    def nll(temperature: float) -> float:
        x = z / temperature
        return float(np.mean(np.where(y, np.logaddexp(0, -x), np.logaddexp(0, x))))

    t = record["temperature"]
    # calibkit takes logits of the float32 probabilities in float32 (relative rounding
    # 6e-8 per voxel); the mean NLL of about 13,000 voxels moves by far less than 1e-6.
    assert record["nll_after"] == pytest.approx(nll(t), rel=1e-6)
    # The fitted T minimises the NLL of each channel against ITS label channel.
    assert nll(t * 1.02) > nll(t) < nll(t / 1.02)


# --------------------------------------------------------------------------- dataset.json


def test_dataset_json_layouts(tmp_path: Path) -> None:
    nnunet = tmp_path / "nnunet.json"
    nnunet.write_text(json.dumps({"labels": {"background": 0, "liver": 1, "tumour": 2}}))
    found = read_dataset_classes(nnunet)
    assert found.classes == (1, 2) and found.class_names == ("liver", "tumour")
    with_background = read_dataset_classes(nnunet, include_background=True)
    assert with_background.classes == (0, 1, 2)
    assert with_background.class_names == ("background", "liver", "tumour")
    msd = tmp_path / "msd.json"
    msd.write_text(
        json.dumps({"labels": {"0": "background", "1": "edema", "2": "non-enhancing tumor"}})
    )
    assert read_dataset_classes(msd).class_names == ("edema", "non-enhancing tumor")
    kits = tmp_path / "kits.json"
    kits.write_text(json.dumps(KITS_DATASET))
    regions = read_dataset_classes(kits).regions
    assert regions == tuple(
        Region(n, v)
        for n, v in zip(("kidney", "masses", "tumor"), ((1, 2, 3), (2, 3), (2,)), strict=True)
    )


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{", "is not valid JSON (line 1"),
        ('{"name": "x"}', 'has no "labels" object'),
        ('{"labels": {"background": 0, "liver": "one"}}', "entry 'liver' is \"one\""),
        ('{"labels": {"background": 0, "liver": 1, "spleen": 1}}', "to more than one name"),
        ('{"labels": {"background": 0}}', "only background"),
        ('{"labels": {"background": 0, "liver": 1, "ignore": 2}}', 'an "ignore" label'),
        ('{"labels": {"background": 0, "a": [1, 1]}}', "lists a value twice"),
    ],
)
def test_dataset_json_refused_with_one_line(tmp_path: Path, content: str, message: str) -> None:
    preds, labels, _ = kits_region_cases(tmp_path)
    path = tmp_path / "dataset.json"
    path.write_text(content)
    code, _, stderr = run_cli(
        "evaluate", preds, labels, "--classes-from", path, "--out", tmp_path / "out"
    )
    assert_user_error(code, stderr, str(path), message)
    assert not (tmp_path / "out").exists()


def test_classes_from_nnunet_regions_cli(tmp_path: Path) -> None:
    preds, labels, _ = kits_region_cases(tmp_path)
    dataset = tmp_path / "dataset.json"
    dataset.write_text(json.dumps(KITS_DATASET))
    code, _, stderr = run_cli(
        "evaluate", preds, labels, "--classes-from", dataset, "--out", tmp_path / "a"
    )
    assert code == 0, stderr
    code, _, stderr = run_cli(
        "evaluate",
        preds,
        labels,
        *("--region", "kidney=1,2,3", "--region", "masses=2,3", "--region", "tumor=2"),
        *("--out", tmp_path / "b"),
    )
    assert code == 0, stderr
    a = read_csv_rows(tmp_path / "a" / "per_image.csv", "kits_000")
    b = read_csv_rows(tmp_path / "b" / "per_image.csv", "kits_000")
    assert [row["class"] for row in a] == ["kidney", "masses", "tumor"] and a == b
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert summary["options"]["regions"][1] == {
        "name": "masses",
        "labels": [2, 3],
        "channels": None,
    }


def test_classes_from_labels_cli(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    label = rng.integers(0, 3, SHAPE).astype(np.uint8)
    softmax = rng.dirichlet(np.ones(3), size=SHAPE).astype(np.float32)
    write_case(tmp_path / "preds", "liver_001_pred", softmax)
    write_case(tmp_path / "labels", "liver_001_seg", label)
    dataset = tmp_path / "dataset.json"
    dataset.write_text(json.dumps({"labels": {"background": 0, "liver": 1, "tumour": 2}}))
    code, _, stderr = run_cli(
        "evaluate",
        *(tmp_path / "preds", tmp_path / "labels", "--classes-from", dataset),
        *("--out", tmp_path / "out"),
    )
    assert code == 0, stderr
    rows = read_csv_rows(tmp_path / "out" / "per_image.csv", "liver_001")
    assert [row["class"] for row in rows] == ["liver", "tumour"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (("--classes", "1,2", "--region", "a=1"), "give one of --classes and --region"),
        (
            ("--preset", "kits", "--classes-from", "x.json"),
            "give one of --preset and --classes-from",
        ),
        (("--region", "a"), "is not NAME=VALUES"),
        (("--preset", "acdc"), "unknown preset 'acdc'; choose one of: brats, kits"),
    ],
)
def test_class_option_conflicts_are_one_line(
    tmp_path: Path, extra: tuple[str, ...], message: str
) -> None:
    preds, labels, _ = kits_region_cases(tmp_path)
    code, _, stderr = run_cli("evaluate", preds, labels, *extra, "--out", tmp_path / "out")
    assert_user_error(code, stderr, message)


def test_readme_worked_example_runs_as_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The README's non-BraTS example runs from an empty folder and prints its table rows."""
    from calibkit.sample_data import main as sample_data_main

    readme = (SAMPLE_DATA.parent / "README.md").read_text(encoding="utf-8")
    section = readme.split("### A worked example beyond BraTS", 1)[1]
    block = section.split("```sh\n", 1)[1].split("```", 1)[0]
    commands = [shlex.split(line) for line in block.splitlines()]
    monkeypatch.chdir(tmp_path)
    printed = []
    for command in commands:
        if command[:3] == ["python", "-m", "calibkit.sample_data"]:
            sample_data_main(command[3:])
            continue
        assert command[0] == "calibkit", command
        code, stdout, stderr = run_cli(*command[1:])
        assert code == 0, stderr
        printed.append(stdout)
    table = section.split("| class |", 1)[1].split("\n\n", 1)[0].splitlines()[2:]
    assert len(table) == 3
    for row in table:
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        # The console table pads cells; compare the cells in order on one printed line.
        assert any(all(cell in line for cell in cells) for line in printed[0].splitlines()), cells
    regions, softmax = (
        json.loads((tmp_path / "results" / run / "summary.json").read_text())
        for run in ("kits_regions", "kits_softmax")
    )
    # Not the same stored numbers: the region maps and the softmax were each quantised
    # to uint8 (sums of softmax channels differ from the region maps by up to 2/255,
    # moving some voxels across a bin edge). Measured gap 1.5e-4; 5e-4 allows 3x.
    assert regions["summary"]["mean"]["ace"]["mean"] == pytest.approx(
        softmax["summary"]["mean"]["ace"]["mean"], abs=5e-4
    )
