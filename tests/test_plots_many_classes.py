"""Figures of many classes: panels wrap after ``columns``, and at most ``max_classes`` are drawn.

Checked on what is drawn (axes, their grid positions, titles), not on pixels. The
classes a figure should pick are worked out here from ``per_image.csv`` (written by
the evaluation), not from the bins the figures read.
"""

from __future__ import annotations

import inspect
import struct
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_user_error, run_cli

import calibkit.cli.evaluate
import calibkit.cli.plots
from calibkit.binning import BinStats, bin_statistics
from calibkit.errors import CalibkitError
from calibkit.evaluate import EvaluationOptions, evaluate_folders
from calibkit.io.results import load_per_image, save_evaluation
from calibkit.plots import (
    DEFAULT_COLUMNS,
    MAX_CLASSES,
    NOTE_HEIGHT,
    PANEL_WIDTH,
    PNG_DPI,
    ReliabilityDiagramDisplay,
    ReliabilityHistogramDisplay,
    choose_classes,
    class_note,
    classes_per_case,
    worst_calibrated_cases,
    write_evaluation_figures,
)

N_CLASSES = 24  # more than MAX_CLASSES, and more than an error message lists (20)
SHAPE = (10, 10, 6)


def write_many_class_cases(root: Path, n_cases: int, seed: int) -> tuple[Path, Path]:
    """Softmax maps over background + ``N_CLASSES`` and uint16 label maps (NIfTI).

    Each class owns the voxels nearest its seed point; its probability falls off with
    distance at a rate drawn per class, so classes differ in calibration.
    """
    import nibabel as nib

    rng = np.random.default_rng(seed)
    preds, labels = root / "preds", root / "labels"
    preds.mkdir(parents=True)
    labels.mkdir(parents=True)
    grid = np.stack(np.meshgrid(*(np.arange(n, dtype=np.float64) for n in SHAPE), indexing="ij"))
    for i in range(n_cases):
        centres = rng.uniform(0, 1, (N_CLASSES + 1, 3)) * np.array(SHAPE)
        distance = np.sqrt(((grid[..., None] - centres.T[:, None, None, None]) ** 2).sum(axis=0))
        logits = -distance * rng.uniform(0.2, 3.0, N_CLASSES + 1)
        probabilities = np.exp(logits - logits.max(axis=-1, keepdims=True))
        probabilities /= probabilities.sum(axis=-1, keepdims=True)
        affine = np.eye(4)
        nib.save(nib.Nifti1Image(probabilities.astype(np.float32), affine), preds / f"c{i}.nii")
        label = distance.argmin(axis=-1).astype(np.uint16)
        nib.save(nib.Nifti1Image(label, affine), labels / f"c{i}.nii")
    return preds, labels


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two result folders of 24 classes over the same three cases (about 2 s)."""
    root = tmp_path_factory.mktemp("many")
    folders = []
    for name, seed in (("one", 1), ("two", 2)):
        preds, labels = write_many_class_cases(root / f"data_{name}", 3, seed)
        evaluation = evaluate_folders(preds, labels, EvaluationOptions())
        save_evaluation(evaluation, root / name)
        folders.append(root / name)
    return folders[0], folders[1]


def case_ace(folder: Path, case_id: str) -> dict[str, float]:
    table = load_per_image(folder)
    rows = table[table["case_id"].astype(str) == case_id]
    return dict(zip(rows["class"].astype(str), rows["ace"], strict=True))


def mean_ace(folder: Path) -> dict[str, float]:
    table = load_per_image(folder)
    means = table.groupby(table["class"].astype(str), sort=False)["ace"].mean()
    return {str(name): float(value) for name, value in means.items()}


def worst(values: dict[str, float], n: int) -> list[str]:
    ranked = sorted(values, key=lambda name: -values[name])
    assert len({values[name] for name in ranked[: n + 1]}) == n + 1  # no tie decides
    return ranked[:n]


def grid_place(ax) -> tuple[int, int, int, int]:  # type: ignore[no-untyped-def]
    """(row, column, rows, columns) of an axes in its figure's grid."""
    spec = ax.get_subplotspec()
    rows, columns = spec.get_geometry()[:2]
    return spec.rowspan.start, spec.colspan.start, rows, columns


def panel_stats(n_classes: int, n_runs: int = 1) -> BinStats:
    """Bins of one image where class c predicts 0.5 + c / (2 * n_classes) and is never right."""
    p = 0.5 + np.arange(n_classes)[:, None] / (2 * n_classes) * np.ones((1, 8))
    stats = bin_statistics(p, np.zeros_like(p), n_bins=10)  # ACE of class c is its p
    return BinStats.stack([stats] * n_runs) if n_runs > 1 else stats


# ---------------------------------------------------------------- choosing classes


def test_choose_classes_keeps_all_in_order_up_to_the_cap_then_the_worst_first() -> None:
    assert choose_classes([0.3, 0.1, 0.2], max_classes=3) == [0, 1, 2]
    assert choose_classes([0.3, 0.1, 0.2], max_classes=0) == [0, 1, 2]
    assert choose_classes([0.1, np.nan, 0.3, 0.2, 0.3], max_classes=3) == [2, 4, 3]
    assert choose_classes([np.nan, 0.0, np.nan], max_classes=2) == [1, 0]  # NaN ranks last
    assert choose_classes(np.arange(30.0)) == list(range(29, 17, -1))  # MAX_CLASSES = 12
    with pytest.raises(CalibkitError, match="max classes must be 0"):
        choose_classes([0.1], max_classes=-1)


def test_worst_cases_put_a_case_without_any_value_last() -> None:
    import pandas as pd

    # Regression: NaN used to sort first, so a case without a value counted as the worst.
    table = pd.DataFrame(
        {
            "case_id": ["a", "a", "b", "b", "c", "c"],
            "class": ["x", "y"] * 3,
            "ace": [0.1, 0.3, np.nan, np.nan, 0.4, np.nan],
        }
    )
    assert worst_calibrated_cases(table, 3) == ["c", "a", "b"]


def test_class_note_names_the_share_and_the_rule() -> None:
    assert class_note(12, 110, "ACE") == "12 of 110 classes, the worst by ACE"
    assert class_note(5, 9, "mean ACE over cases", 2) == (
        "5 of 9 classes, the worst by mean ACE over cases in any run"
    )
    assert class_note(3, 3, "ACE") is None


def test_diagram_from_bins_draws_the_worst_dozen_worst_first() -> None:
    display = ReliabilityDiagramDisplay.from_bin_stats(panel_stats(20), case_id="x").plot()
    names = [f"class {c}" for c in range(19, 7, -1)]  # ACE grows with c
    assert display.class_names == tuple(names)
    assert [display.axes_[0, c].get_title() for c in range(12)] == names
    assert display.axes_.shape == (2, 12) and len(display.figure_.axes) == 24
    assert display.figure_.get_suptitle() == "x\n12 of 20 classes, the worst by ACE"
    everything = ReliabilityDiagramDisplay.from_bin_stats(panel_stats(20), max_classes=0)
    assert everything.class_names == tuple(f"class {c}" for c in range(20))
    assert everything.class_note is None


def test_the_worst_over_runs_decides_with_several_runs() -> None:
    stats = panel_stats(6, n_runs=2)
    # Run 2 makes class 0 its worst (p 0.95, never right); run 1 keeps the ramp.
    count, sum_p = stats.count.copy(), stats.sum_p.copy()
    sum_p[1, 0] = 0.95 * count[1, 0]
    display = ReliabilityDiagramDisplay.from_bin_stats(
        BinStats(count, sum_p, stats.sum_y), run_labels=["a", "b"], max_classes=2
    )
    assert display.class_names == ("class 0", "class 5")
    assert display.class_note == "2 of 6 classes, the worst by ACE in any run"


# ---------------------------------------------------------------- grid layout


def test_default_layout_keeps_a_few_classes_on_one_row() -> None:
    assert DEFAULT_COLUMNS >= 3  # BraTS's and KiTS's three regions: the golden figures
    display = ReliabilityDiagramDisplay.from_bin_stats(panel_stats(3)).plot()
    assert [grid_place(ax) for ax in display.axes_[0]] == [(0, c, 2, 3) for c in range(3)]
    assert [grid_place(ax) for ax in display.axes_[1]] == [(1, c, 2, 3) for c in range(3)]
    assert display.figure_.get_suptitle() == ""


@pytest.mark.parametrize(("n_classes", "columns", "rows"), [(7, 3, 3), (12, 4, 3), (5, 8, 1)])
def test_diagram_panels_wrap_after_the_given_columns(
    n_classes: int, columns: int, rows: int
) -> None:
    display = ReliabilityDiagramDisplay.from_bin_stats(
        panel_stats(n_classes, n_runs=2), run_labels=["a", "b"]
    ).plot(columns=columns)
    used = min(columns, n_classes)
    assert len(display.figure_.axes) == 4 * n_classes  # no axes in empty slots
    for c in range(n_classes):
        block, column = divmod(c, used)
        for k in range(4):  # run a's diagram and counts, then run b's
            assert grid_place(display.axes_[k, c]) == (4 * block + k, column, 4 * rows, used)
        assert display.axes_[0, c].get_title() == display.class_names[c]
        left = column == 0
        assert (display.axes_[0, c].get_ylabel() == "Observed frequency") == left
        assert (display.axes_[2, c].get_ylabel() == "Observed frequency") == left
        assert display.axes_[3, c].get_xlabel() == "Confidence"
    assert display.figure_.get_size_inches()[0] == pytest.approx(PANEL_WIDTH * used + 0.3)


def test_histogram_panels_wrap_and_label_each_row_of_panels() -> None:
    stats = BinStats.stack([panel_stats(5)] * 4)  # 4 images, 5 classes
    display = ReliabilityHistogramDisplay.from_bin_stats(
        [stats, stats], run_labels=["a", "b"]
    ).plot(columns=2)
    assert len(display.figure_.axes) == 2 * 5 + 1  # panels and one colour bar
    for c in range(5):
        block, column = divmod(c, 2)
        for r in range(2):
            ax = display.axes_[r, c]
            assert grid_place(ax) == (2 * block + r, column, 6, 2)
            bottom = r == 1  # the last run of each row of panels carries the x tick labels
            assert any(t.get_visible() for t in ax.get_xticklabels()) is bottom
            assert any(t.get_visible() for t in ax.get_yticklabels()) is (column == 0)
            assert ax.get_xlabel() == ("Confidence" if bottom else "")
    assert display.axes_[0, 4].get_title() == display.class_names[4]
    assert display.figure_.get_suptitle() == ""  # five of five: nothing left out


def test_columns_must_be_positive() -> None:
    with pytest.raises(CalibkitError, match="columns must be 1 or more, got 0"):
        ReliabilityDiagramDisplay.from_bin_stats(panel_stats(2)).plot(columns=0)


# ---------------------------------------------------------------- result folders


def test_diagram_from_evaluation_draws_the_case_s_worst_classes(runs: tuple[Path, Path]) -> None:
    one, _ = runs
    display = ReliabilityDiagramDisplay.from_evaluation(one, "c1").plot()
    expected = worst(case_ace(one, "c1"), MAX_CLASSES)
    assert list(display.class_names) == expected
    assert [display.axes_[0, c].get_title() for c in range(MAX_CLASSES)] == expected
    table = case_ace(one, "c1")
    np.testing.assert_allclose(display.errors.ace[0], [table[n] for n in expected], rtol=1e-12)
    assert display.figure_.get_suptitle() == f"c1\n12 of {N_CLASSES} classes, the worst by ACE"


def test_histogram_from_evaluation_draws_the_worst_by_mean_ace(runs: tuple[Path, Path]) -> None:
    display = ReliabilityHistogramDisplay.from_evaluation(runs, max_classes=5).plot()
    per_run = [mean_ace(folder) for folder in runs]
    largest = {name: max(run[name] for run in per_run) for name in per_run[0]}
    assert list(display.class_names) == worst(largest, 5)
    assert display.counts.shape == (2, 5, 20, 20)
    assert display.figure_.get_suptitle() == (
        f"5 of {N_CLASSES} classes, the worst by mean ACE over cases in any run"
    )


def test_named_classes_are_all_drawn_in_order_without_a_note(runs: tuple[Path, Path]) -> None:
    named = [str(c) for c in range(N_CLASSES, 9, -1)]  # 15 classes, more than the cap
    diagram = ReliabilityDiagramDisplay.from_evaluation(runs, "c0", classes=named).plot()
    assert list(diagram.class_names) == named and diagram.class_note is None
    assert diagram.figure_.get_suptitle() == "c0"
    histogram = ReliabilityHistogramDisplay.from_evaluation(runs[0], classes=named, max_classes=2)
    assert list(histogram.class_names) == named and histogram.class_note is None


def copy_with_classes(source: Path, target: Path, classes: np.ndarray) -> None:
    """A copy of a result folder whose ``bins.npz`` holds ``classes`` (indices), in that order."""
    import shutil

    shutil.copytree(source, target)
    with np.load(source / "bins.npz") as data:
        saved = dict(data)
    for key in ("count", "sum_p", "sum_y", "intersection", "pred_voxels", "gt_voxels"):
        saved[key] = saved[key][:, classes]
    saved["class_names"] = saved["class_names"][classes]
    np.savez_compressed(target / "bins.npz", **saved)


def test_folders_are_matched_by_class_name(runs: tuple[Path, Path], tmp_path: Path) -> None:
    one, shuffled, short = runs[0], tmp_path / "shuffled", tmp_path / "short"
    copy_with_classes(one, shuffled, np.random.default_rng(0).permutation(N_CLASSES))
    display = ReliabilityDiagramDisplay.from_evaluation([one, shuffled], "c0", max_classes=0)
    assert list(display.class_names) == [str(c) for c in range(1, N_CLASSES + 1)]
    np.testing.assert_array_equal(display.stats.count[1], display.stats.count[0])
    histogram = ReliabilityHistogramDisplay.from_evaluation([one, shuffled])
    np.testing.assert_array_equal(histogram.counts[1], histogram.counts[0])
    copy_with_classes(one, short, np.arange(N_CLASSES - 1))  # without the last class
    with pytest.raises(CalibkitError, match=f"{short}: no class '{N_CLASSES}'"):
        ReliabilityHistogramDisplay.from_evaluation([shuffled, short])


def test_max_classes_zero_draws_every_class_in_order(runs: tuple[Path, Path]) -> None:
    display = ReliabilityHistogramDisplay.from_evaluation(runs[0], max_classes=0).plot(columns=6)
    assert list(display.class_names) == [str(c) for c in range(1, N_CLASSES + 1)]
    assert len(display.figure_.axes) == N_CLASSES + 1
    assert grid_place(display.axes_[0, N_CLASSES - 1]) == (3, 5, 4, 6)
    assert display.figure_.get_suptitle() == ""


def test_evaluation_figures_follow_columns_and_max_classes(
    runs: tuple[Path, Path], tmp_path: Path
) -> None:
    import shutil

    folder = tmp_path / "one"
    shutil.copytree(runs[0], folder)
    paths = write_evaluation_figures(folder, n_worst=1, columns=3, max_classes=5)
    assert paths[0].name == "reliability_histogram.png"
    diagram = paths[1]
    # The PNG header's width: three panel columns (the figure's size is fixed, 200 dpi).
    assert png_size(diagram)[0] == round((PANEL_WIDTH * 3 + 0.3) * PNG_DPI)


def png_size(path: Path) -> tuple[int, int]:
    """Width and height in pixels, from the PNG header."""
    width, height = struct.unpack(">II", path.read_bytes()[16:24])
    return int(width), int(height)


def test_case_diagrams_share_the_class_budget(runs: tuple[Path, Path], tmp_path: Path) -> None:
    import shutil

    assert classes_per_case(12, 3) == 4 and classes_per_case(12, 5) == 2
    assert classes_per_case(2, 3) == 1 and classes_per_case(0, 3) == 0
    folder = tmp_path / "one"
    shutil.copytree(runs[0], folder)
    paths = write_evaluation_figures(folder, n_worst=3)  # 12 panels over 3 cases: 4 each
    one_row = (PANEL_WIDTH * 0.82 + 0.85) + 0.75 + NOTE_HEIGHT  # inches, see the diagram
    for path in paths[1:]:
        assert png_size(path) == (
            round((PANEL_WIDTH * 4 + 0.3) * PNG_DPI),
            round(one_row * PNG_DPI),
        )
    three_rows = 3 * 2.3 + 0.45 + NOTE_HEIGHT  # the histogram keeps 12 classes, 4 a row
    assert png_size(paths[0])[1] == round(three_rows * PNG_DPI)


# ---------------------------------------------------------------- command line


def test_cli_defaults_are_the_library_s() -> None:
    for command in (calibkit.cli.plots.plot_diagram_cli, calibkit.cli.plots.plot_histogram_cli):
        parameters = inspect.signature(command).parameters
        assert parameters["columns"].default == DEFAULT_COLUMNS
        assert parameters["max_classes"].default == MAX_CLASSES
    parameters = inspect.signature(calibkit.cli.evaluate.evaluate_cli).parameters
    assert parameters["plot_columns"].default == DEFAULT_COLUMNS
    assert parameters["plot_max_classes"].default == MAX_CLASSES


def test_plot_commands_take_columns_and_max_classes(
    runs: tuple[Path, Path], tmp_path: Path
) -> None:
    one, two = runs
    for command, columns, expected_width in (
        # Five panels: the diagram's 3-inch panels, the histogram's 2.45-inch panels and bar.
        (["plot-diagram", one, two, "--case", "c2"], "5", PANEL_WIDTH * 5 + 0.3),
        (["plot-histogram", one, two], "5", 2.45 * 5 + 1.15),
    ):
        out = tmp_path / f"{command[0]}.png"
        code, _, stderr = run_cli(
            *command, "--columns", columns, "--max-classes", "7", "--out", out
        )
        assert code == 0, stderr
        assert png_size(out)[0] == round(expected_width * PNG_DPI)
    out = tmp_path / "all.png"
    code, _, stderr = run_cli("plot-histogram", one, "--max-classes", "0", "--out", out)
    assert code == 0, stderr
    assert png_size(out)[0] == round((2.45 * DEFAULT_COLUMNS + 1.15) * PNG_DPI)


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["plot-diagram", "{one}", "--case", "c0", "--columns", "0"], "columns must be 1 or more"),
        (["plot-histogram", "{one}", "--max-classes", "-1"], "max classes must be 0"),
        (["plot-histogram", "{one}", "--classes", "99"], f"({N_CLASSES} in all)"),
    ],
)
def test_bad_options_exit_1_with_one_line(
    runs: tuple[Path, Path], tmp_path: Path, args: list[str], fragment: str
) -> None:
    out = tmp_path / "figure.png"
    code, _, stderr = run_cli(*[a.format(one=runs[0]) for a in args], "--out", out)
    assert_user_error(code, stderr, fragment)
    assert not out.exists()


def test_evaluate_refuses_bad_plot_options_before_any_work(tmp_path: Path) -> None:
    preds, labels = write_many_class_cases(tmp_path / "data", 1, seed=3)
    for option, value, fragment in (
        ("--plot-columns", "0", "columns must be 1 or more"),
        ("--plot-max-classes", "-2", "max classes must be 0"),
    ):
        out = tmp_path / "out"
        code, _, stderr = run_cli("evaluate", preds, labels, "--out", out, "--plots", option, value)
        assert_user_error(code, stderr, fragment)
        assert not out.exists()


def test_evaluate_plots_draw_the_chosen_classes(tmp_path: Path) -> None:
    preds, labels = write_many_class_cases(tmp_path / "data", 2, seed=4)
    out = tmp_path / "out"
    code, _, stderr = run_cli(
        "evaluate", preds, labels, "--out", out, "--plots", "--plot-worst", "1",
        "--plot-columns", "2", "--plot-max-classes", "3", "--quiet",
    )  # fmt: skip
    assert code == 0, stderr
    figures = sorted(p.name for p in (out / "figures").iterdir())
    assert len(figures) == 2 and "reliability_histogram.png" in figures
    diagram = out / "figures" / figures[0]
    assert png_size(diagram)[0] == round((PANEL_WIDTH * 2 + 0.3) * PNG_DPI)  # two columns
