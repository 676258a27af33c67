"""evaluate_folders: the tables equal MONAI on the sample data, whatever the workers or backend."""

from __future__ import annotations

import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import SAMPLE_DATA
from monai.metrics import CalibrationErrorMetric, DiceMetric

from calibkit.cases import choose_activation, to_probabilities
from calibkit.classes import resolve_classes
from calibkit.errors import CalibkitError, InputError
from calibkit.evaluate import EvaluationOptions, evaluate_folders
from calibkit.io.results import load_bins, save_evaluation

PREDICTIONS = SAMPLE_DATA / "predictions" / "dsc"
LABELS = SAMPLE_DATA / "brats"
BRATS = EvaluationOptions(preset="brats")


@pytest.fixture(scope="module")
def sample_evaluation():  # type: ignore[no-untyped-def]
    return evaluate_folders(PREDICTIONS, LABELS, BRATS)


def brats_regions_by_hand(case_id: str) -> tuple[np.ndarray, np.ndarray]:
    """ET/TC/WT probabilities and targets, (1, 3, x, y, z), read and built independently."""
    softmax = nib.load(PREDICTIONS / f"{case_id}_pred.nii.gz").get_fdata().astype(np.float32)
    label = np.asarray(nib.load(LABELS / case_id / f"{case_id}_seg.nii.gz").dataobj)
    p = np.stack(
        [softmax[..., 3], softmax[..., 1] + softmax[..., 3], softmax[..., 1:].sum(axis=-1)]
    )
    y = np.stack([label == 4, np.isin(label, [1, 4]), np.isin(label, [1, 2, 4])])
    return np.minimum(p, 1)[None].astype(np.float32), y[None].astype(np.float32)


def test_sample_data_matches_monai(sample_evaluation) -> None:  # type: ignore[no-untyped-def]
    table = sample_evaluation.per_image
    assert len(table) == 12 * 3
    assert list(table.columns[:9]) == [
        "case_id",
        "class",
        "ace",
        "ece",
        "mce",
        "dice",
        "n_voxels",
        "gt_voxels",
        "gt_empty",
    ]
    for case_id in sample_evaluation.case_ids[:4]:
        p, y = brats_regions_by_hand(case_id)
        rows = table[table.case_id == case_id]
        assert rows["class"].tolist() == ["ET", "TC", "WT"]
        for column, reduction in (("ace", "average"), ("ece", "expected"), ("mce", "maximum")):
            metric = CalibrationErrorMetric(
                num_bins=20, calibration_reduction=reduction, metric_reduction="none"
            )
            expected = metric(y_pred=torch.from_numpy(p), y=torch.from_numpy(y)).numpy()[0]
            # MONAI sums each bin in float32, voxel after voxel (scatter_add_, serial: the
            # same on any thread count); calibkit in float64. Measured gap <= 3.4e-7 over
            # these cases and metrics: atol 1e-5 leaves 30x for another torch build.
            np.testing.assert_allclose(rows[column].to_numpy(), expected, atol=1e-5, rtol=0)
        dice = DiceMetric(include_background=True, reduction="none", ignore_empty=True)
        expected_dice = dice(
            y_pred=torch.from_numpy((p >= 0.5).astype(np.float32)), y=torch.from_numpy(y)
        ).numpy()[0]
        np.testing.assert_allclose(
            rows["dice"].to_numpy(), expected_dice, atol=1e-6, equal_nan=True
        )


def test_summary_rows_and_macro_values(sample_evaluation) -> None:  # type: ignore[no-untyped-def]
    summary = sample_evaluation.summary
    assert summary["class"].unique().tolist() == ["ET", "TC", "WT", "mean"]
    assert summary["metric"].unique().tolist() == ["ace", "ece", "mce", "dice"]
    table = sample_evaluation.per_image
    wt_ace = table[table["class"] == "WT"]["ace"]
    row = summary[(summary["class"] == "WT") & (summary["metric"] == "ace")].iloc[0]
    assert row["mean"] == pytest.approx(wt_ace.mean())
    assert row["std"] == pytest.approx(wt_ace.std(ddof=1))
    per_case_mean = table.groupby("case_id")["ace"].mean()
    mean_row = summary[(summary["class"] == "mean") & (summary["metric"] == "ace")].iloc[0]
    assert mean_row["mean"] == pytest.approx(per_case_mean.mean())


def test_pooled_equals_binning_everything_at_once(sample_evaluation) -> None:  # type: ignore[no-untyped-def]
    ps, ys = zip(*(brats_regions_by_hand(c) for c in sample_evaluation.case_ids), strict=True)
    p = np.concatenate([a.reshape(3, -1) for a in ps], axis=1)[None]
    y = np.concatenate([a.reshape(3, -1) for a in ys], axis=1)[None]
    metric = CalibrationErrorMetric(
        num_bins=20, calibration_reduction="average", metric_reduction="none"
    )
    expected = metric(y_pred=torch.from_numpy(p), y=torch.from_numpy(y)).numpy()[0]
    summary = sample_evaluation.summary
    pooled = summary[summary.metric == "ace"].set_index("class")["pooled"]
    # float32 running sums over 3.1M voxels (MONAI, serial) against float64: measured gap
    # 6.9e-7, so atol 1e-5 leaves 14x.
    np.testing.assert_allclose(pooled[["ET", "TC", "WT"]].to_numpy(), expected, atol=1e-5)


@pytest.mark.slow
def test_workers_give_byte_identical_tables(tmp_path: Path, sample_evaluation) -> None:  # type: ignore[no-untyped-def]
    parallel = evaluate_folders(PREDICTIONS, LABELS, BRATS, workers=2)
    save_evaluation(sample_evaluation, tmp_path / "one")
    save_evaluation(parallel, tmp_path / "two")
    for name in ("per_image.csv", "summary.csv", "summary.json"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()


def test_parallel_cases_report_as_each_finishes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Progress (and the resume store) hear of a case when it ends, not when all end.

    A pool of threads stands in for the worker processes (the executor takes the
    pool), so that one case can wait, inside its worker, until the progress of
    another case has been reported.
    """
    import threading
    from concurrent.futures import ThreadPoolExecutor

    import calibkit.evaluate as evaluate_module
    from calibkit.execution import PoolExecutor

    real_case = evaluate_module.evaluate_case
    first_reported = threading.Event()
    held: list[bool] = []

    def case_that_waits(pair, options):  # type: ignore[no-untyped-def]
        if pair.case_id == "BraTS2021_S011":
            held.append(first_reported.wait(timeout=30))
        return real_case(pair, options)

    monkeypatch.setattr(evaluate_module, "evaluate_case", case_that_waits)
    threads = PoolExecutor(2, pool=ThreadPoolExecutor)
    evaluate_folders(
        PREDICTIONS, LABELS, BRATS, executor=threads, progress=lambda _: first_reported.set()
    )
    assert held == [True]


def test_failure_while_reporting_stops_the_remaining_cases(monkeypatch: pytest.MonkeyPatch) -> None:
    """A failed save or progress callback must not let every queued case run first."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    import calibkit.evaluate as evaluate_module
    from calibkit.execution import PoolExecutor

    real_case = evaluate_module.evaluate_case
    started: list[str] = []
    lock = threading.Lock()

    def counted_case(pair, options):  # type: ignore[no-untyped-def]
        with lock:
            started.append(pair.case_id)
        return real_case(pair, options)

    def failing_progress(case_id: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(evaluate_module, "evaluate_case", counted_case)
    threads = PoolExecutor(2, pool=ThreadPoolExecutor)
    with pytest.raises(OSError, match="disk full"):
        evaluate_folders(PREDICTIONS, LABELS, BRATS, executor=threads, progress=failing_progress)
    assert len(started) < 12


def test_big_endian_labels_give_the_same_numbers(tmp_path: Path) -> None:
    case = "BraTS2021_S000"
    label = nib.load(LABELS / case / f"{case}_seg.nii.gz")
    values = np.asarray(label.dataobj).astype(np.int16)
    for name, order in (("little", "<"), ("big", ">")):
        folder = tmp_path / name
        folder.mkdir()
        header = nib.Nifti1Header(endianness=order)
        header.set_data_dtype(np.int16)
        nib.save(nib.Nifti1Image(values, label.affine, header), folder / f"{case}_seg.nii.gz")
    assert np.asarray(nib.load(tmp_path / "big" / f"{case}_seg.nii.gz").dataobj).dtype.str == ">i2"
    preds = tmp_path / "preds"
    preds.mkdir()
    (preds / f"{case}_pred.nii.gz").write_bytes((PREDICTIONS / f"{case}_pred.nii.gz").read_bytes())
    little = evaluate_folders(preds, tmp_path / "little", BRATS)
    big = evaluate_folders(preds, tmp_path / "big", BRATS)
    np.testing.assert_array_equal(little.bins.count, big.bins.count)
    np.testing.assert_array_equal(little.overlap.intersection, big.overlap.intersection)


@pytest.mark.parametrize("threshold", [0.5, 0.3])
def test_one_pass_kernel_equals_separate_steps(
    monkeypatch: pytest.MonkeyPatch, threshold: float
) -> None:
    """Bins, targets and Dice counts from one compiled pass equal the step-by-step path."""
    pytest.importorskip("numba")
    import calibkit.cases as cases_module

    options = EvaluationOptions(preset="brats", dice_threshold=threshold)
    assert cases_module._one_pass_applies(
        np.zeros((1, 3), np.float32), np.zeros(3, np.uint8), options
    )
    fused = evaluate_folders(PREDICTIONS, LABELS, options)
    monkeypatch.setattr(cases_module, "_one_pass_applies", lambda *args: False)
    separate = evaluate_folders(PREDICTIONS, LABELS, options)
    np.testing.assert_array_equal(fused.bins.count, separate.bins.count)
    np.testing.assert_array_equal(fused.bins.sum_y, separate.bins.sum_y)
    np.testing.assert_allclose(fused.bins.sum_p, separate.bins.sum_p, rtol=1e-12)
    for name in ("intersection", "predicted", "truth"):
        np.testing.assert_array_equal(getattr(fused.overlap, name), getattr(separate.overlap, name))


def test_one_pass_kernel_on_label_values_up_to_63(rng: np.random.Generator) -> None:
    pytest.importorskip("numba")
    from calibkit._kernels import bin_flat
    from calibkit.binning import bin_statistics

    p = rng.random(300_000, dtype=np.float32)
    label = rng.integers(0, 64, p.size).astype(np.uint8)
    for labels in [(0,), (63,), (1, 2, 4), tuple(range(0, 64, 3))]:
        target = np.isin(label, labels)
        result = bin_flat(p, label, 20, target_labels=labels, threshold=0.4)
        reference = bin_statistics(p[None], target[None], 20, kernel="numpy")
        np.testing.assert_array_equal(result.count, reference.count[0])
        np.testing.assert_array_equal(result.sum_y, reference.sum_y[0])
        assert result.predicted == np.count_nonzero(p >= np.float32(0.4))
        assert result.intersection == np.count_nonzero((p >= np.float32(0.4)) & target)


def test_torch_backend_equals_numpy(sample_evaluation) -> None:  # type: ignore[no-untyped-def]
    on_torch = evaluate_folders(
        PREDICTIONS, LABELS, EvaluationOptions(preset="brats", backend="torch", device="cpu")
    )
    np.testing.assert_array_equal(on_torch.bins.count, sample_evaluation.bins.count)
    np.testing.assert_allclose(on_torch.bins.sum_p, sample_evaluation.bins.sum_p, rtol=1e-12)
    for column in ("ace", "ece", "mce", "dice"):
        np.testing.assert_allclose(
            on_torch.per_image[column],
            sample_evaluation.per_image[column],
            rtol=1e-9,
            equal_nan=True,
        )


def test_saved_bins_round_trip(tmp_path: Path, sample_evaluation) -> None:  # type: ignore[no-untyped-def]
    save_evaluation(sample_evaluation, tmp_path)
    saved = load_bins(tmp_path)
    assert saved.case_ids == sample_evaluation.case_ids
    assert saved.class_names == ("ET", "TC", "WT")
    np.testing.assert_array_equal(saved.stats.count, sample_evaluation.bins.count)
    np.testing.assert_array_equal(saved.stats.sum_p, sample_evaluation.bins.sum_p)
    assert saved.stats.count.shape == (12, 3, 20)
    assert saved.bin_edges.dtype == np.float32 and saved.bin_edges.size == 21


def test_argmax_dice_uses_exclusive_channels() -> None:
    argmax = evaluate_folders(
        PREDICTIONS, LABELS, EvaluationOptions(preset="brats", dice_mode="argmax")
    )
    threshold = evaluate_folders(PREDICTIONS, LABELS, BRATS)
    np.testing.assert_array_equal(argmax.per_image["ace"], threshold.per_image["ace"])
    first = sorted(PREDICTIONS.glob("*.nii.gz"))[0]
    label_map = nib.load(first).get_fdata().argmax(axis=-1)
    case_id = first.name.removesuffix("_pred.nii.gz")
    label = np.asarray(nib.load(LABELS / case_id / f"{case_id}_seg.nii.gz").dataobj)
    wt_pred, wt_true = label_map > 0, label > 0
    expected = 2 * (wt_pred & wt_true).sum() / (wt_pred.sum() + wt_true.sum())
    row = argmax.per_image[
        (argmax.per_image.case_id == case_id) & (argmax.per_image["class"] == "WT")
    ]
    assert row["dice"].iloc[0] == pytest.approx(expected)


# --------------------------------------------------------------------------- activation


@pytest.mark.parametrize(
    ("n_channels", "preset", "expected"),
    [(4, "brats", "softmax"), (3, None, "softmax"), (2, None, "softmax"),
     (3, "brats", "sigmoid"), (1, None, "sigmoid")],
)  # fmt: skip
def test_auto_activation_is_chosen_from_the_channels(
    n_channels: int, preset: str | None, expected: str
) -> None:
    plan = resolve_classes(n_channels, preset=preset)
    assert choose_activation("auto", plan, "a.nii.gz") == expected
    assert choose_activation("sigmoid", plan, "a.nii.gz") == "sigmoid"


@pytest.mark.parametrize(
    ("n_channels", "preset", "problem"),
    [(1, None, "a softmax over one channel is 1 everywhere; a one-channel map is binary: "
               "use --activation sigmoid (the default for one channel)"),
     (3, "brats", "a softmax over the 3 region channels (ET, TC, WT)")],
)  # fmt: skip
def test_softmax_needs_exclusive_channels(
    n_channels: int, preset: str | None, problem: str
) -> None:
    plan = resolve_classes(n_channels, preset=preset)
    with pytest.raises(InputError, match=re.escape(problem)) as raised:
        choose_activation("softmax", plan, "a.nii.gz")
    assert str(raised.value).startswith("a.nii.gz: ")
    with pytest.raises(CalibkitError, match="'auto', 'softmax' or 'sigmoid'"):
        choose_activation("tanh", plan, "a.nii.gz")


def test_options_default_to_auto_and_one_channel_logits_to_the_sigmoid() -> None:
    assert EvaluationOptions().activation == "auto"
    with pytest.raises(CalibkitError, match="'auto', 'softmax' or 'sigmoid'"):
        EvaluationOptions(activation="tanh")  # type: ignore[arg-type]
    z = np.linspace(-8, 8, 2 * 3 * 4, dtype=np.float32).reshape(1, 2, 3, 4)
    p = to_probabilities(z.copy(), EvaluationOptions(input_kind="logits"), Path("a.nii.gz"))
    # float32 sigmoid against float64: a few float32 roundings of values <= 1 (< 1e-6).
    np.testing.assert_allclose(p, 1 / (1 + np.exp(-z.astype(np.float64))), rtol=0, atol=1e-6)
    with pytest.raises(InputError, match="one channel is 1 everywhere"):
        to_probabilities(z, EvaluationOptions(input_kind="logits", activation="softmax"), Path("a"))
