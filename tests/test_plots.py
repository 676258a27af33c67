"""Figures: the drawn data equal the bin statistics; commands write PNG / PDF / SVG or nothing."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from conftest import SAMPLE_DATA, modules_imported
from typer.testing import CliRunner

import calibkit.cli.plots  # noqa: F401  (registers plot-diagram, plot-histogram, plot-scatter)
from calibkit.binning import BinStats, bin_edges, bin_statistics
from calibkit.cli.app import app
from calibkit.errors import CalibkitError, InputError, OutputError
from calibkit.evaluate import EvaluationOptions, evaluate_folders
from calibkit.io.results import load_bins, load_per_image, save_evaluation
from calibkit.metrics import OverlapCounts
from calibkit.plots import (
    CalibrationScatterDisplay,
    ReliabilityDiagramDisplay,
    ReliabilityHistogramDisplay,
    column_normalised,
    counts_need_log_scale,
    dataset_reliability_matrix,
    save_figure,
    worst_calibrated_cases,
    write_evaluation_figures,
    write_reliability_histogram,
)

runner = CliRunner()
MAGIC = {".png": b"\x89PNG\r\n\x1a\n", ".pdf": b"%PDF-"}


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Sample-data results of the DSC and DSC+ACE runs (about 4 s)."""
    root = tmp_path_factory.mktemp("results")
    options = EvaluationOptions(preset="brats")
    out = []
    for run in ("dsc", "dsc_ace"):
        evaluation = evaluate_folders(
            SAMPLE_DATA / "predictions" / run, SAMPLE_DATA / "brats", options
        )
        save_evaluation(evaluation, root / run)
        out.append(root / run)
    return out[0], out[1]


def reference_matrix(count: np.ndarray, sum_y: np.ndarray) -> np.ndarray:
    """Loop-by-loop reading of SPEC §1, with the rule written out on the float32 edges."""
    n_bins = count.shape[-1]
    edges = bin_edges(n_bins)
    matrix = np.zeros((n_bins, n_bins), dtype=int)
    for image in range(count.shape[0]):
        for b in range(n_bins):
            if count[image, b] == 0:
                continue
            y = np.float32(sum_y[image, b] / count[image, b])
            row = next((k for k in range(n_bins) if edges[k] < y <= edges[k + 1]), None)
            if row is None:
                row = 0 if y <= edges[1] else n_bins - 1
            matrix[row, b] += 1
    return matrix


# ---------------------------------------------------------------- pure computation


def test_dataset_matrix_matches_a_hand_computed_example() -> None:
    # M = 4, three images; observed frequencies sit on edges 0.25 / 0.5 (right-closed).
    count = np.array([[4, 0, 2, 1], [2, 4, 0, 1], [1, 1, 1, 1]])
    sum_y = np.array([[1, 0, 1, 1], [0, 2, 0, 0], [0, 1, 1, 1]], dtype=float)
    stats = BinStats(count, np.zeros(count.shape), sum_y)
    # image 0: ybar = 0.25 -> row 0 (col 0), 0.5 -> row 1 (col 2), 1 -> row 3 (col 3)
    # image 1: ybar = 0 -> row 0 (col 0), 0.5 -> row 1 (col 1), 0 -> row 0 (col 3)
    # image 2: ybar = 0, 1, 1, 1 -> rows 0, 3, 3, 3
    expected = np.array(
        [
            [3, 0, 0, 1],
            [0, 1, 1, 0],
            [0, 0, 0, 0],
            [0, 1, 1, 2],
        ]
    )
    np.testing.assert_array_equal(dataset_reliability_matrix(stats), expected)
    np.testing.assert_array_equal(expected, reference_matrix(count, sum_y))
    normalised = column_normalised(expected)
    np.testing.assert_allclose(normalised.sum(axis=0), 1.0)
    np.testing.assert_allclose(normalised[:, 0], [1.0, 0, 0, 0])
    np.testing.assert_allclose(normalised[:, 3], [1 / 3, 0, 0, 2 / 3])


def test_dataset_matrix_agrees_with_the_loop_reference_on_random_bins() -> None:
    rng = np.random.default_rng(3)
    for n_bins in (5, 20):
        count = rng.integers(0, 6, size=(30, n_bins)) * (rng.random((30, n_bins)) < 0.7)
        sum_y = rng.binomial(count, rng.random((30, n_bins))).astype(float)
        stats = BinStats(count, np.zeros(count.shape), sum_y)
        matrix = dataset_reliability_matrix(stats)
        np.testing.assert_array_equal(matrix, reference_matrix(count, sum_y))
        np.testing.assert_array_equal(matrix.sum(axis=0), (count > 0).sum(axis=0))


def test_empty_columns_are_nan_and_others_sum_to_one() -> None:
    matrix = np.array([[2, 0, 1], [0, 0, 3], [2, 0, 0]])
    normalised = column_normalised(matrix)
    assert np.isnan(normalised[:, 1]).all()
    np.testing.assert_allclose(normalised[:, [0, 2]].sum(axis=0), 1.0)
    with pytest.raises(ValueError, match="one class"):
        dataset_reliability_matrix(BinStats(*(np.zeros((2, 2, 3)),) * 3))


def test_log_scale_rule() -> None:
    assert counts_need_log_scale([0, 1, 101])
    assert not counts_need_log_scale([0, 1, 100])
    assert not counts_need_log_scale([0, 0, 0])


# ---------------------------------------------------------------- Fig. 1


def conformance_stats() -> BinStats:
    # SPEC §1 rows 1 and 4 (M = 5) as two classes of one image.
    p = [[0.7, 0.3, 0.1, 0.9], [0.7, 0.3, 0.5, 0.5]]
    y = [[1, 0, 0, 1], [0, 1, 1, 0]]
    return bin_statistics(p, y, n_bins=5)


def bar_spans(container) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # type: ignore[no-untyped-def]
    x = np.array([bar.get_x() + bar.get_width() / 2 for bar in container])
    bottom = np.array([bar.get_y() for bar in container])
    top = bottom + np.array([bar.get_height() for bar in container])
    return x, bottom, top


def test_diagram_bars_span_from_mean_probability_to_observed_frequency() -> None:
    stats = conformance_stats()
    display = ReliabilityDiagramDisplay.from_bin_stats(stats, class_names=["a", "b"]).plot()
    assert display.axes_.shape == (2, 2)
    for c in range(2):
        filled = stats.count[c] > 0
        x, bottom, top = bar_spans(display.bars_[0, c])
        edges = bin_edges(5).astype(float)
        np.testing.assert_allclose(x, ((edges[:-1] + edges[1:]) / 2)[filled])
        np.testing.assert_allclose(bottom, stats.mean_p[c][filled])
        np.testing.assert_allclose(top, stats.mean_y[c][filled])
        segments = display.observed_[0, c].get_segments()
        np.testing.assert_allclose([s[0, 1] for s in segments], stats.mean_y[c][filled])
        heights = [bar.get_height() for bar in display.count_bars_[0, c]]
        np.testing.assert_array_equal(heights, stats.count[c])
        assert display.axes_[1, c].get_yscale() == "linear"  # counts 1..2
    # class a: 0.7 -> y 1, 0.3 -> 0, 0.1 -> 0, 0.9 -> 1: ACE 0.2, ECE 0.2, MCE 0.3
    assert display.texts_[0, 0].get_text().splitlines() == ["ACE 0.200", "ECE 0.200", "MCE 0.300"]
    assert display.texts_[0, 1].get_text().splitlines()[0] == "ACE 0.467"
    assert display.axes_[0, 0].get_title() == "a"
    assert display.axes_[0, 0].get_ylim() == (0.0, 1.0)


def test_diagram_counts_switch_to_log_beyond_100x() -> None:
    count = np.array([[5000, 0, 3, 10]])
    stats = BinStats(count, count * np.array([0.1, 0, 0.4, 0.9]), count * 0.5)
    display = ReliabilityDiagramDisplay.from_bin_stats(stats).plot()
    assert display.axes_[1, 0].get_yscale() == "log"
    assert len(display.bars_[0, 0]) == 3  # empty bins draw no gap bar


def test_diagram_from_evaluation_rows_per_run(results: tuple[Path, Path]) -> None:
    dsc, dsc_ace = results
    case = "BraTS2021_S003"
    display = ReliabilityDiagramDisplay.from_evaluation(
        [dsc, dsc_ace], case, classes=["WT", "ET"], labels=["DSC", "DSC+ACE"]
    ).plot()
    assert display.axes_.shape == (4, 2)
    for r, folder in enumerate(results):
        saved = load_bins(folder)
        stats = saved.case(case)[saved.class_names.index("WT")]
        _, bottom, top = bar_spans(display.bars_[r, 0])
        np.testing.assert_allclose(bottom, stats.mean_p[stats.count > 0])
        np.testing.assert_allclose(top, stats.mean_y[stats.count > 0])
        table = load_per_image(folder).set_index(["case_id", "class"])
        assert display.errors.ace[r, 0] == pytest.approx(table.loc[(case, "WT"), "ace"], abs=1e-12)
    assert display.gt_empty[:, 1].all()  # S003 has no ET
    assert "empty ground truth" in display.texts_[0, 1].get_text()
    assert all(ax.get_yscale() == "log" for ax in display.axes_[1::2].ravel())
    assert display.axes_[1, 0].get_ylim() == display.axes_[3, 1].get_ylim()  # one count scale


# ---------------------------------------------------------------- Fig. 2


def test_histogram_cells_equal_the_normalised_matrix() -> None:
    count = np.array([[[4, 0, 2, 1]], [[2, 4, 0, 1]], [[1, 1, 1, 1]]])  # (images, 1 class, M)
    sum_y = np.array([[[1, 0, 1, 1]], [[0, 2, 0, 0]], [[0, 1, 1, 1]]], dtype=float)
    run = BinStats(count, np.zeros(count.shape), sum_y)
    display = ReliabilityHistogramDisplay.from_bin_stats(
        [run, run[:2]], class_names=["x"], run_labels=["A", "B"]
    ).plot()
    first = np.array([[3, 0, 0, 1], [0, 1, 1, 0], [0, 0, 0, 0], [0, 1, 1, 2]]) / np.array(
        [3, 2, 2, 3]
    )
    np.testing.assert_allclose(display.matrix_[0, 0], first)
    drawn = np.ma.filled(display.meshes_[0, 0].get_array(), np.nan).reshape(4, 4)
    np.testing.assert_allclose(drawn, first)  # row r of the array is observed-frequency bin r
    np.testing.assert_allclose(np.nansum(display.matrix_, axis=-2)[1, 0], [1, 1, 1, 1])
    norms = [mesh.norm for mesh in display.meshes_.ravel()]
    assert all(n is norms[0] for n in norms)  # identical scales across rows
    assert (norms[0].vmin, norms[0].vmax, norms[0].gamma) == (0.0, 1.0, 0.35)
    assert display.meshes_[0, 0].get_cmap().name == "YlOrRd"
    ax = display.axes_[0, 0]
    assert ax.get_ylim() == (0.0, 1.0) and not ax.yaxis_inverted()  # high frequency on top
    assert len(display.figure_.axes) == 2 * 1 + 1  # panels plus one colour bar


def test_histogram_from_evaluation_counts_every_non_empty_bin(results: tuple[Path, Path]) -> None:
    display = ReliabilityHistogramDisplay.from_evaluation(results, labels=["DSC", "DSC+ACE"])
    assert display.counts.shape == (2, 3, 20, 20)
    for r, folder in enumerate(results):
        saved = load_bins(folder)
        for c in range(3):
            np.testing.assert_array_equal(
                display.counts[r, c].sum(axis=0), (saved.stats.count[:, c] > 0).sum(axis=0)
            )
            np.testing.assert_array_equal(
                display.counts[r, c],
                reference_matrix(saved.stats.count[:, c], saved.stats.sum_y[:, c]),
            )


# ---------------------------------------------------------------- Fig. 3


def test_scatter_points_are_the_per_case_values(results: tuple[Path, Path]) -> None:
    display = CalibrationScatterDisplay.from_evaluation(
        results, labels=["DSC", "DSC+ACE"], metrics=["ace", "mce"]
    ).plot()
    for r, folder in enumerate(results):
        table = load_per_image(folder)
        means = table.groupby("case_id", sort=False)[["ace", "mce", "dice"]].mean()
        for m, metric in enumerate(("ace", "mce")):
            offsets = display.scatters_[m, r].get_offsets()
            np.testing.assert_allclose(offsets[:, 0], means[metric].to_numpy())
            np.testing.assert_allclose(offsets[:, 1], means["dice"].to_numpy())
    assert display.legend_.get_texts()[0].get_text() == "DSC (12 cases)"


def test_scatter_from_bins_equals_from_tables(results: tuple[Path, Path]) -> None:
    saved = [load_bins(folder) for folder in results]
    from_bins = CalibrationScatterDisplay.from_bin_stats(
        [s.stats for s in saved],
        [s.overlap for s in saved],
        case_ids=[s.case_ids for s in saved],
        class_names=saved[0].class_names,
        class_name="WT",
        metrics=["ace"],
    )
    from_tables = CalibrationScatterDisplay.from_evaluation(results, class_name="WT")
    for a, b in zip(from_bins.runs, from_tables.runs, strict=True):
        assert a.case_ids == b.case_ids
        for key in ("ace", "dice"):
            np.testing.assert_allclose(a.values[key], b.values[key], rtol=1e-12)


def test_paired_box_plot_joins_cases_by_id() -> None:
    stats = BinStats(np.ones((3, 1, 2), int), np.full((3, 1, 2), 0.5), np.zeros((3, 1, 2)))
    overlap = OverlapCounts(np.array([[1], [2], [3]]), np.full((3, 1), 4), np.full((3, 1), 4))
    reversed_overlap = OverlapCounts(overlap.intersection[::-1], overlap.predicted, overlap.truth)
    display = CalibrationScatterDisplay.from_bin_stats(
        [stats, stats[::-1]],
        [overlap, reversed_overlap],
        case_ids=[["a", "b", "c"], ["c", "b", "a"]],
        labels=["one", "two"],
        kind="box",
    ).plot()
    assert len(display.axes_) == 2  # Dice, ACE
    lines = display.pair_lines_[0].get_segments()
    assert len(lines) == 3
    for segment in lines:  # same case on both sides: reversed order was re-paired by id
        assert segment[0, 1] == pytest.approx(segment[1, 1])
    medians = [line.get_ydata()[0] for line in display.boxes_[0]["medians"]]
    assert medians == pytest.approx([0.5, 0.5])  # Dice 2*2/8


def test_scatter_rejects_unknown_metric_and_kind() -> None:
    with pytest.raises(CalibkitError, match="unknown metric"):
        CalibrationScatterDisplay([], metrics=["brier"])
    with pytest.raises(CalibkitError, match="unknown plot kind"):
        CalibrationScatterDisplay([], kind="violin")  # type: ignore[arg-type]


def test_displays_draw_into_given_axes() -> None:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(8, 6))
    grid = figure.subplots(2, 3)
    stats = conformance_stats()
    diagram = ReliabilityDiagramDisplay.from_bin_stats(stats[:1]).plot(grid[:, 0], legend=False)
    assert diagram.figure_ is figure and diagram.axes_[0, 0] is grid[0, 0]
    histogram = ReliabilityHistogramDisplay.from_bin_stats(BinStats.stack([stats, stats]))
    histogram.plot(grid[:, 1:].T.ravel()[:2], colorbar=False)
    assert histogram.axes_[0, 1] is grid[1, 1]
    with pytest.raises(ValueError, match="2 x 1 axes"):
        ReliabilityDiagramDisplay.from_bin_stats(stats[:1]).plot(grid[0, :])


# ---------------------------------------------------------------- files


def test_saved_figures_are_deterministic(tmp_path: Path) -> None:
    stats = conformance_stats()[:1]
    for suffix in (".png", ".pdf", ".svg"):
        paths = []
        for name in ("a", "b"):
            display = ReliabilityDiagramDisplay.from_bin_stats(stats).plot()
            paths.append(save_figure(display.figure_, tmp_path / f"{name}{suffix}"))
        assert paths[0].read_bytes() == paths[1].read_bytes(), suffix
    assert b"CreationDate" not in (tmp_path / "a.pdf").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "a.pdf", "a.png", "a.svg", "b.pdf", "b.png", "b.svg"
    ]  # fmt: skip


def test_write_evaluation_figures(results: tuple[Path, Path], tmp_path: Path) -> None:
    import shutil

    folder = tmp_path / "dsc"
    shutil.copytree(results[0], folder)
    table = load_per_image(folder)
    worst = worst_calibrated_cases(table, 3)
    means = table.groupby("case_id")["ace"].mean().sort_values(ascending=False)
    assert worst == list(means.index[:3])
    paths = write_evaluation_figures(folder, n_worst=1, formats=("png", "svg"))
    names = [p.name for p in paths]
    assert names == [
        "reliability_histogram.png",
        "reliability_histogram.svg",
        f"reliability_diagram_{worst[0]}.png",
        f"reliability_diagram_{worst[0]}.svg",
    ]
    assert all(p.parent == folder / "figures" and p.stat().st_size > 1000 for p in paths)
    with pytest.raises(OutputError, match="unsupported"):
        write_evaluation_figures(folder, formats=("jpg",))


def test_library_errors_name_the_problem(results: tuple[Path, Path], tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no case 'nope'"):
        ReliabilityDiagramDisplay.from_evaluation(results[0], "nope")
    with pytest.raises(CalibkitError, match="one label per folder"):
        write_reliability_histogram(results, tmp_path / "h.png", labels=["only one"])
    assert not (tmp_path / "h.png").exists()


# ---------------------------------------------------------------- command line


def invoke(*args: str | Path) -> tuple[int, str, str]:
    result = runner.invoke(app, [str(a) for a in args])
    return result.exit_code, result.stdout, result.stderr


def check_figure(path: Path) -> None:
    data = path.read_bytes()
    if path.suffix == ".svg":
        root = ET.fromstring(data)
        assert root.tag.endswith("svg")
    else:
        assert data.startswith(MAGIC[path.suffix])


@pytest.mark.parametrize("suffix", [".png", ".pdf", ".svg"])
def test_every_command_writes_every_format(
    results: tuple[Path, Path], tmp_path: Path, suffix: str
) -> None:
    dsc, dsc_ace = results
    commands = {
        "diagram": ["plot-diagram", dsc, dsc_ace, "--case", "BraTS2021_S001", "--classes", "WT"],
        "histogram": ["plot-histogram", dsc, dsc_ace, "--labels", "DSC,DSC+ACE", "--classes", "ET"],
        "scatter": ["plot-scatter", dsc, dsc_ace, "--labels", "DSC,DSC+ACE", "--metric", "ace,mce"],
        "box": ["plot-scatter", dsc, dsc_ace, "--kind", "box", "--class", "TC"],
    }
    for name, args in commands.items():
        out = tmp_path / f"{name}{suffix}"
        code, stdout, stderr = invoke(*args, "--out", out)
        assert code == 0, stderr
        assert f"wrote {out}" in stdout.replace("\n", "")
        check_figure(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        f"{name}{suffix}" for name in commands
    )  # no temporary files left


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["plot-diagram", "{dsc}", "--case", "nope"], "no case 'nope'"),
        (["plot-diagram", "{dsc}", "--case", "BraTS2021_S001", "--classes", "XX"], "no class 'XX'"),
        (["plot-histogram", "{dsc}", "--classes", "ET,NCR"], "classes here: ET, TC, WT"),
        (["plot-histogram", "{empty}"], "no bins.npz"),
        (["plot-scatter", "{empty}"], "no per_image.csv"),
        (["plot-scatter", "{dsc}", "--metric", "brier"], "unknown metric"),
        (["plot-scatter", "{dsc}", "{dsc}", "--labels", "a"], "one label per folder"),
    ],
)
def test_errors_exit_1_with_one_line_and_no_file(
    results: tuple[Path, Path], tmp_path: Path, args: list[str], fragment: str
) -> None:
    (tmp_path / "empty").mkdir()
    values = {"dsc": results[0], "empty": tmp_path / "empty"}
    out = tmp_path / "figure.png"
    code, _, stderr = invoke(*[a.format(**values) for a in args], "--out", out)
    assert code == 1, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and fragment in lines[0], stderr
    assert not out.exists()


def test_unsupported_suffix_is_refused_before_drawing(
    results: tuple[Path, Path], tmp_path: Path
) -> None:
    for command in (["plot-histogram", results[0]], ["plot-scatter", results[0]]):
        code, _, stderr = invoke(*command, "--out", tmp_path / "figure.jpg")
        assert code == 1 and "unsupported figure format .jpg" in stderr
    assert list(tmp_path.iterdir()) == []


def test_plot_help_and_import_stay_light() -> None:
    code, stdout, _ = invoke("plot-histogram", "--help")
    assert code == 0 and "Examples" in stdout and "--labels" in stdout
    heavy = {"matplotlib", "pandas", "torch"}
    assert modules_imported("calibkit.cli.plots, calibkit.plots", heavy) == []
