"""Calibration figures: image reliability diagrams, dataset reliability histograms, Dice vs ACE.

Displays in the scikit-learn style: a ``from_bin_stats`` / ``from_evaluation``
constructor gathers the data, ``plot()`` draws it and returns the display, and
what was drawn is kept in attributes ending in ``_`` (``figure_``, ``axes_``,
``bars_``, ``matrix_`` ...). Figures are built from saved bin statistics
(``bins.npz``) and tables (``per_image.csv``): nothing re-reads a volume or
re-bins a probability, and every number comes from :mod:`calibkit.metrics`.

* :class:`ReliabilityDiagramDisplay` — the paper's Fig. 1, per image and class;
* :class:`ReliabilityHistogramDisplay` — Fig. 2, per class over a data set;
* :class:`CalibrationScatterDisplay` — Fig. 3, Dice against ACE / MCE per case.

The pure computations (:func:`dataset_reliability_matrix`,
:func:`column_normalised`, :func:`counts_need_log_scale`) need no matplotlib.
matplotlib is imported inside the functions that draw, so importing this module
stays cheap. Figures are made with ``matplotlib.figure.Figure`` (no GUI backend,
no pyplot state) unless ``matplotlib.pyplot`` is already in use, in which case
they are made by pyplot so that they show in that session.
"""

from __future__ import annotations

import io
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Union

import numpy as np
import numpy.typing as npt

from calibkit.binning import BinStats, assign_bins, bin_edges
from calibkit.errors import CalibkitError, InputError, OutputError
from calibkit.formatting import MISSING, format_number
from calibkit.metrics import OverlapCounts, calibration_errors, per_image_mean

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = [
    "FIGURE_FORMATS",
    "CalibrationScatterDisplay",
    "CaseValues",
    "ReliabilityDiagramDisplay",
    "ReliabilityHistogramDisplay",
    "column_normalised",
    "counts_need_log_scale",
    "dataset_reliability_matrix",
    "figure_format",
    "save_evaluation_figures",
    "save_figure",
    "worst_calibrated_cases",
    "write_calibration_scatter",
    "write_evaluation_figures",
    "write_reliability_diagram",
    "write_reliability_histogram",
]

PathLike = Union[str, "os.PathLike[str]"]
ResultDirs = Union[PathLike, Sequence[PathLike]]
ScatterKind = Literal["scatter", "box"]

FIGURE_FORMATS = (".png", ".pdf", ".svg")
PNG_DPI = 200
PANEL_WIDTH = 3.0  # inches per panel column: two columns fit a 7-inch page width
POWER_NORM_GAMMA = 0.35  # the paper's colour norm for dataset histograms
HISTOGRAM_CMAP = "YlOrRd"
LOG_COUNT_RATIO = 100.0  # voxel counts spanning more than this use a log axis
# Okabe & Ito (2008): distinguishable with every common colour-vision deficiency.
OKABE_ITO = ("#0072B2", "#D55E00", "#009E73", "#E69F00", "#56B4E9", "#CC79A7", "#000000")
RUN_MARKERS = ("o", "s", "^", "D", "v", "P", "X")
GAP_COLOUR = "#D55E00"
COUNT_COLOUR = "0.55"
METRIC_LABELS = {"ace": "ACE", "ece": "ECE", "mce": "MCE", "dice": "Dice"}
MEAN_CLASS = "mean"

# Sizes in points for a figure printed at its own size (column width).
STYLE: dict[Any, Any] = {
    "font.family": "DejaVu Sans",
    "font.size": 8,
    "axes.titlesize": 9,
    "axes.labelsize": 8,
    "xtick.labelsize": 7.5,
    "ytick.labelsize": 7.5,
    "legend.fontsize": 7.5,
    "figure.titlesize": 9,
    "axes.linewidth": 0.6,
    "xtick.major.width": 0.6,
    "ytick.major.width": 0.6,
    "xtick.minor.width": 0.4,
    "ytick.minor.width": 0.4,
    "xtick.major.size": 2.5,
    "ytick.major.size": 2.5,
    "xtick.minor.size": 1.5,
    "ytick.minor.size": 1.5,
    "lines.linewidth": 1.0,
    "text.usetex": False,
    "mathtext.default": "regular",
}
# Read when saving: text as embedded TrueType (journals reject Type 3), fixed SVG
# ids, so that a regenerated figure is byte-identical.
SAVE_STYLE: dict[Any, Any] = {
    "svg.hashsalt": "calibkit",
    "svg.fonttype": "path",
    "pdf.fonttype": 42,
    "ps.fonttype": 42,
    "text.usetex": False,
}
_METADATA: dict[str, dict[str, str | None]] = {
    "png": {"Software": "calibkit"},
    "pdf": {"Creator": "calibkit", "Producer": None, "CreationDate": None, "ModDate": None},
    "svg": {"Creator": "calibkit", "Date": None},
}


# --------------------------------------------------------------------------- pure


def dataset_reliability_matrix(stats: BinStats) -> npt.NDArray[np.int64]:
    """The dataset reliability histogram of one class (SPEC.md §1): an ``(M, M)`` count matrix.

    For every image and every non-empty confidence bin ``b``, the image's observed
    frequency ``ybar_b`` is binned with the same edges and right-closed rule
    (:func:`calibkit.binning.assign_bins`) to row ``r``, and ``H[r, b]`` gains 1.
    Column ``b`` therefore sums to the number of images with voxels in bin ``b``.

    Args:
        stats: bin statistics of one class, shape ``(images, M)`` (or ``(M,)`` for one image).

    Returns:
        ``H`` with rows = observed-frequency bins, columns = confidence bins (int64).

    Example:
        >>> stats = BinStats(
        ...     count=np.array([[2, 0, 1], [1, 3, 0]]),
        ...     sum_p=np.array([[0.2, 0.0, 0.9], [0.1, 1.5, 0.0]]),
        ...     sum_y=np.array([[0.0, 0.0, 1.0], [1.0, 1.0, 0.0]]),
        ... )
        >>> # ybar per image: [0, -, 1] and [1, 1/3, -]; 1/3 is an edge: row 0 (right-closed)
        >>> dataset_reliability_matrix(stats).tolist()
        [[1, 1, 0], [0, 0, 0], [1, 0, 1]]
    """
    if stats.count.ndim not in (1, 2):
        raise ValueError(
            f"expected statistics of one class, shape (images, M), got {stats.count.shape}"
        )
    count = np.atleast_2d(stats.count)
    observed = np.atleast_2d(stats.mean_y)
    n_bins = stats.n_bins
    images, columns = np.nonzero(count > 0)
    rows = assign_bins(observed[images, columns], n_bins)
    matrix = np.zeros((n_bins, n_bins), dtype=np.int64)
    np.add.at(matrix, (rows, columns), 1)
    return matrix


def column_normalised(matrix: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """Divide every column of ``(..., M, M)`` count matrices by its sum.

    Non-empty columns sum to 1; a column without counts (no image has voxels in
    that confidence bin) is NaN throughout and is drawn blank, so that "no data"
    is never confused with "fraction 0".

    Example:
        >>> column_normalised([[1, 0, 0], [3, 0, 2]]).tolist()
        [[0.25, nan, 0.0], [0.75, nan, 1.0]]
    """
    counts = np.asarray(matrix, dtype=np.float64)
    totals = counts.sum(axis=-2, keepdims=True)
    out = np.full(counts.shape, np.nan)
    np.divide(counts, totals, out=out, where=totals > 0)
    return out


def counts_need_log_scale(counts: npt.ArrayLike) -> bool:
    """True when the non-zero counts span more than ``LOG_COUNT_RATIO`` (100×).

    Example:
        >>> counts_need_log_scale([0, 5, 400]), counts_need_log_scale([0, 5, 600])
        (False, True)
    """
    values = np.asarray(counts, dtype=np.float64)
    positive = values[values > 0]
    return bool(positive.size) and float(positive.max() / positive.min()) > LOG_COUNT_RATIO


def worst_calibrated_cases(per_image: pd.DataFrame, n: int, *, metric: str = "ace") -> list[str]:
    """Case ids of the ``n`` largest per-case means of ``metric`` (NaN-mean over classes).

    Cases whose value is NaN come last; ties keep the table's case order.
    """
    cases, values = _per_case_values(per_image, metric, MEAN_CLASS)
    order = np.argsort(np.where(np.isnan(values), -np.inf, -values), kind="stable")
    return [cases[i] for i in order[: max(int(n), 0)]]


def _per_case_values(
    per_image: pd.DataFrame, metric: str, class_name: str
) -> tuple[list[str], npt.NDArray[np.float64]]:
    """One value per case: the class's value, or the NaN-mean over classes for ``"mean"``."""
    cases = list(dict.fromkeys(per_image["case_id"].astype(str)))
    wide = per_image.pivot(index="case_id", columns="class", values=metric).reindex(cases)
    if class_name == MEAN_CLASS:
        values = per_image_mean(wide.to_numpy(dtype=np.float64))
    else:
        values = wide[class_name].to_numpy(dtype=np.float64)
    return cases, values


# --------------------------------------------------------------------------- figures


def figure_format(path: PathLike) -> str:
    """The matplotlib format for ``path`` from its suffix (``png``, ``pdf`` or ``svg``).

    Raises:
        OutputError: any other suffix, or ``path`` is a folder.

    Example:
        >>> figure_format("figures/diagram.PDF")
        'pdf'
    """
    out = Path(path)
    suffix = out.suffix.lower()
    if suffix not in FIGURE_FORMATS:
        raise OutputError(
            f"{out}: unsupported figure format {suffix or '(no suffix)'}; "
            "end the file name with .png, .pdf or .svg"
        )
    if out.is_dir():
        raise OutputError(f"{out}: is a folder; give a file name ending in .png, .pdf or .svg")
    return suffix[1:]


def save_figure(figure: Figure, path: PathLike, *, close: bool = True) -> Path:
    """Write ``figure`` atomically as PNG (200 dpi), PDF or SVG, chosen by the suffix.

    Output is deterministic: no dates, no version strings, fixed SVG ids, so a
    regenerated figure is byte-identical. Missing parent folders are created.

    Args:
        figure: the figure to save.
        path: destination ending in ``.png``, ``.pdf`` or ``.svg``.
        close: release the figure afterwards (it leaves pyplot's list of figures).

    Returns:
        The path written.
    """
    import matplotlib

    from calibkit.io.atomic import atomic_write_bytes, write_error

    out = Path(path)
    fmt = figure_format(out)
    buffer = io.BytesIO()
    with matplotlib.rc_context(SAVE_STYLE):
        figure.savefig(buffer, format=fmt, dpi=PNG_DPI, metadata=_METADATA[fmt])
    if close:
        _close(figure)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise write_error(out.parent, error) from None
    atomic_write_bytes(out, buffer.getvalue())
    return out


def _new_figure(width: float, height: float) -> Figure:
    if "matplotlib.pyplot" in sys.modules:
        # A pyplot session (notebook, script) chose its backend: the figure shows there.
        import matplotlib.pyplot as plt

        return plt.figure(figsize=(width, height), layout="constrained")
    # Otherwise no backend at all: a bare Figure renders to files with Agg, PDF or SVG
    # and leaves matplotlib's global state (backend, pyplot's figure list) untouched.
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _close(figure: Figure) -> None:
    if "matplotlib.pyplot" in sys.modules:
        import matplotlib.pyplot as plt

        plt.close(figure)


def _axes_grid(axes: Any, shape: tuple[int, int], what: str) -> npt.NDArray[np.object_]:
    grid = np.asarray(axes, dtype=object)
    if grid.size != shape[0] * shape[1]:
        raise ValueError(f"{what} needs {shape[0]} x {shape[1]} axes, got {grid.size}")
    return grid.reshape(shape)


def _format_value(value: float) -> str:
    return format_number(value, 3) if np.isfinite(value) else MISSING


# --------------------------------------------------------------------------- loading


def _as_dirs(result_dirs: ResultDirs) -> list[Path]:
    if isinstance(result_dirs, (str, os.PathLike)):
        return [Path(result_dirs)]
    dirs = [Path(folder) for folder in result_dirs]
    if not dirs:
        raise CalibkitError("no result folder given")
    return dirs


def _labels(labels: Sequence[str] | None, dirs: Sequence[Path]) -> tuple[str, ...]:
    if labels is None:
        return tuple(folder.resolve().name or str(folder) for folder in dirs)
    labels = tuple(label.strip() for label in labels)
    if len(labels) != len(dirs):
        raise CalibkitError(
            f"{len(labels)} label(s) ({', '.join(labels)}) for {len(dirs)} result folder(s); "
            "give one label per folder"
        )
    return labels


def _class_indices(
    folder: Path, available: Sequence[str], classes: Sequence[str] | None
) -> list[int]:
    if classes is None:
        return list(range(len(available)))
    indices = []
    for name in classes:
        if name not in available:
            raise InputError(
                folder, f"no class {name!r} in these results; classes here: {', '.join(available)}"
            )
        indices.append(list(available).index(name))
    if not indices:
        raise InputError(folder, "no class selected")
    return indices


def _check_same_bins(folders: Sequence[Path], n_bins: Sequence[int]) -> None:
    for folder, m in zip(folders[1:], n_bins[1:], strict=True):
        if m != n_bins[0]:
            raise InputError(
                folder,
                f"has {m} bins but {folders[0]} has {n_bins[0]}; "
                "evaluate every run with the same --n-bins",
            )


def _case_index(folder: Path, case_ids: Sequence[str], case_id: str) -> int:
    if case_id not in case_ids:
        shown = ", ".join(case_ids[:5]) + (", ..." if len(case_ids) > 5 else "")
        raise InputError(
            folder, f"no case {case_id!r} in bins.npz ({len(case_ids)} cases: {shown})"
        )
    return list(case_ids).index(case_id)


# --------------------------------------------------------------------------- Fig. 1


class ReliabilityDiagramDisplay:
    """Image reliability diagrams (paper Fig. 1): one panel per class, one row per run.

    In each panel a bar at every non-empty confidence bin spans the gap from the
    mean predicted probability ``pbar_k`` to the observed frequency ``ybar_k``
    (black tick), with the diagonal of perfect calibration and the image's ACE,
    ECE and MCE. Beneath, the voxels per bin (log scale when the counts span
    more than 100×; one scale for every count panel).

    Args:
        stats: bins of one image, shape ``(classes, M)``, or ``(runs, classes, M)``.
        class_names: names of the classes (default ``class 0`` ...).
        run_labels: names of the runs, shown left of each row when there are several.
        case_id: shown as the figure title.
        gt_empty: ``(runs, classes)`` True where the class is absent from the ground
            truth (noted in the panel title).

    Attributes:
        errors: :class:`~calibkit.metrics.CalibrationErrors` of shape ``(runs, classes)``.
        figure_: the figure, once plotted.
        axes_: ``(2 * runs, classes)`` axes: diagram rows alternate with count rows.
        bars_: ``(runs, classes)`` gap bars, one patch per non-empty bin in bin order.
        observed_: ``(runs, classes)`` line collections marking ``ybar_k``.
        count_bars_: ``(runs, classes)`` voxel-count bars, one patch per bin.
        texts_: ``(runs, classes)`` metric annotations.
    """

    def __init__(
        self,
        stats: BinStats,
        *,
        class_names: Sequence[str] | None = None,
        run_labels: Sequence[str] | None = None,
        case_id: str | None = None,
        gt_empty: npt.ArrayLike | None = None,
    ) -> None:
        if stats.count.ndim == 2:
            stats = stats[None]
        if stats.count.ndim != 3:
            raise ValueError(f"expected (classes, M) or (runs, classes, M), got {stats.shape}")
        self.stats = stats
        n_runs, n_classes = stats.shape
        self.class_names = tuple(class_names or [f"class {c}" for c in range(n_classes)])
        self.run_labels = tuple(run_labels or [""] * n_runs)
        if len(self.class_names) != n_classes or len(self.run_labels) != n_runs:
            raise ValueError("one class name per class and one run label per run")
        self.case_id = case_id
        self.gt_empty = (
            np.zeros((n_runs, n_classes), dtype=bool)
            if gt_empty is None
            else np.asarray(gt_empty, dtype=bool).reshape(n_runs, n_classes)
        )
        self.errors = calibration_errors(stats)

    @classmethod
    def from_bin_stats(
        cls,
        stats: BinStats,
        *,
        class_names: Sequence[str] | None = None,
        run_labels: Sequence[str] | None = None,
        case_id: str | None = None,
    ) -> ReliabilityDiagramDisplay:
        """Display of ``(classes, M)`` (or ``(runs, classes, M)``) bin statistics.

        Example:
            >>> from calibkit.binning import bin_statistics
            >>> stats = bin_statistics([[0.7, 0.3, 0.1, 0.9]], [[1, 0, 0, 1]], n_bins=5)
            >>> display = ReliabilityDiagramDisplay.from_bin_stats(stats, class_names=["tumour"])
            >>> round(float(display.errors.ace[0, 0]), 3)
            0.2
        """
        return cls(stats, class_names=class_names, run_labels=run_labels, case_id=case_id)

    @classmethod
    def from_evaluation(
        cls,
        result_dirs: ResultDirs,
        case_id: str,
        *,
        classes: Sequence[str] | None = None,
        labels: Sequence[str] | None = None,
    ) -> ReliabilityDiagramDisplay:
        """Display of one case from one or several ``calibkit evaluate`` folders (``bins.npz``).

        Args:
            result_dirs: a result folder, or several (one row each).
            case_id: the case to draw.
            classes: class names to draw, in this order (default: all).
            labels: one name per folder (default: the folder names).

        Raises:
            InputError: a folder holds no results, or lacks the case or a class.
        """
        from calibkit.io.results import load_bins

        dirs = _as_dirs(result_dirs)
        run_labels = _labels(labels, dirs)
        rows, empty, n_bins, names = [], [], [], None
        for folder in dirs:
            saved = load_bins(folder)
            index = _class_indices(folder, saved.class_names, classes)
            case = _case_index(folder, saved.case_ids, case_id)
            rows.append(saved.stats[case][index])
            empty.append(saved.overlap.truth[case][index] == 0)
            n_bins.append(saved.stats.n_bins)
            names = names or [saved.class_names[i] for i in index]
        _check_same_bins(dirs, n_bins)
        display = cls(
            BinStats.stack(rows),
            class_names=names,
            run_labels=run_labels if len(dirs) > 1 else None,
            case_id=case_id,
            gt_empty=np.stack(empty),
        )
        return display

    def plot(
        self, axes: Any = None, *, show_counts: bool = True, legend: bool = True
    ) -> ReliabilityDiagramDisplay:
        """Draw the diagrams.

        Args:
            axes: ``(2 * runs, classes)`` axes (``(runs, classes)`` without counts) to draw
                into; a new figure when None.
            show_counts: draw the voxel-count histogram under each diagram.
            legend: add a figure legend below the panels.

        Returns:
            The display itself, with the drawn artists set.
        """
        import matplotlib

        n_runs, n_classes = self.stats.shape
        rows_per_run = 2 if show_counts else 1
        with matplotlib.rc_context(STYLE):
            if axes is None:
                height = n_runs * (PANEL_WIDTH * 0.82 + (0.85 if show_counts else 0.0)) + 0.75
                figure = _new_figure(PANEL_WIDTH * n_classes + 0.3, height)
                ratios = [1.0, 0.3][:rows_per_run] * n_runs
                grid = figure.subplots(
                    rows_per_run * n_runs,
                    n_classes,
                    squeeze=False,
                    gridspec_kw={"height_ratios": ratios},
                )
            else:
                grid = _axes_grid(axes, (rows_per_run * n_runs, n_classes), "the diagram")
                figure = grid[0, 0].figure
            self.figure_ = figure
            self.axes_ = grid
            self.bars_ = np.empty((n_runs, n_classes), dtype=object)
            self.observed_ = np.empty((n_runs, n_classes), dtype=object)
            self.count_bars_ = np.empty((n_runs, n_classes), dtype=object)
            self.texts_ = np.empty((n_runs, n_classes), dtype=object)
            log_counts = counts_need_log_scale(self.stats.count)
            count_axes = []
            for r in range(n_runs):
                for c in range(n_classes):
                    ax = grid[r * rows_per_run, c]
                    if show_counts and axes is None:
                        ax.sharex(grid[r * rows_per_run + 1, c])
                    self._draw_diagram(ax, r, c)
                    if c == 0:
                        ax.set_ylabel("Observed frequency")
                        if self.run_labels[r]:
                            _row_label(ax, self.run_labels[r])
                    if show_counts:
                        count_ax = grid[r * rows_per_run + 1, c]
                        self._draw_counts(count_ax, r, c, log_counts)
                        count_axes.append(count_ax)
                        if axes is None:
                            ax.tick_params(labelbottom=False)
                        if c == 0:
                            count_ax.set_ylabel("Voxels")
                    bottom = grid[r * rows_per_run + rows_per_run - 1, c]
                    bottom.set_xlabel("Confidence" if r == n_runs - 1 else "")
            for count_ax in count_axes:
                # One scale for every count panel, so that runs and classes compare.
                _count_limits(count_ax, self.stats.count, log_counts)
            if self.case_id and axes is None:
                figure.suptitle(self.case_id)
            if legend:
                self.legend_ = figure.legend(
                    handles=self._legend_handles(),
                    loc="outside lower center",
                    ncols=3 if n_classes > 1 else 1,
                    frameon=False,
                )
        return self

    def _draw_diagram(self, ax: Axes, r: int, c: int) -> None:
        stats = self.stats[r, c]
        edges = bin_edges(stats.n_bins).astype(np.float64)
        centres = (edges[:-1] + edges[1:]) / 2
        widths = np.diff(edges) * 0.84
        filled = stats.count > 0
        x, w = centres[filled], widths[filled]
        p, y = stats.mean_p[filled], stats.mean_y[filled]
        ax.plot([0, 1], [0, 1], linestyle="--", color="0.45", linewidth=0.8, zorder=1)
        self.bars_[r, c] = ax.bar(
            x, y - p, bottom=p, width=w, color=GAP_COLOUR, alpha=0.55, linewidth=0, zorder=2
        )
        self.observed_[r, c] = ax.hlines(
            y, x - w / 2, x + w / 2, colors="black", linewidth=1.5, zorder=3
        )
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xticks(_UNIT_TICKS, _UNIT_LABELS)
        ax.set_yticks(_UNIT_TICKS, _UNIT_LABELS)
        if r == 0:
            ax.set_title(self.class_names[c])
        errors = [
            f"{name} {_format_value(float(getattr(self.errors, key)[r, c]))}"
            for key, name in (("ace", "ACE"), ("ece", "ECE"), ("mce", "MCE"))
        ]
        if self.gt_empty[r, c]:
            errors.append("empty ground truth")
        corner = _quiet_corner(x, np.minimum(p, y), np.maximum(p, y))
        self.texts_[r, c] = ax.text(
            *corner,
            "\n".join(errors),
            transform=ax.transAxes,
            ha="left" if corner[0] < 0.5 else "right",
            va="top" if corner[1] > 0.5 else "bottom",
            fontsize=7.5,
            linespacing=1.25,
            bbox={"boxstyle": "round,pad=0.3", "facecolor": "white", "edgecolor": "0.8", "lw": 0.5},
            zorder=4,
        )

    def _draw_counts(self, ax: Axes, r: int, c: int, log_scale: bool) -> None:
        stats = self.stats[r, c]
        edges = bin_edges(stats.n_bins).astype(np.float64)
        centres = (edges[:-1] + edges[1:]) / 2
        if log_scale:
            ax.set_yscale("log")
        self.count_bars_[r, c] = ax.bar(
            centres, stats.count, width=np.diff(edges) * 0.84, color=COUNT_COLOUR, linewidth=0
        )
        ax.set_xlim(0, 1)
        ax.set_xticks(_UNIT_TICKS, _UNIT_LABELS)

    @staticmethod
    def _legend_handles() -> list[Any]:
        from matplotlib.lines import Line2D
        from matplotlib.patches import Patch

        return [
            Patch(facecolor=GAP_COLOUR, alpha=0.55, label="Gap to mean predicted probability"),
            Line2D([], [], color="black", linewidth=1.5, label="Observed frequency"),
            Line2D(
                [], [], color="0.45", linestyle="--", linewidth=0.8, label="Perfect calibration"
            ),
        ]


_UNIT_TICKS = [0.0, 0.25, 0.5, 0.75, 1.0]
_UNIT_LABELS = ["0", "0.25", "0.5", "0.75", "1"]


def _quiet_corner(
    x: npt.NDArray[np.float64], low: npt.NDArray[np.float64], high: npt.NDArray[np.float64]
) -> tuple[float, float]:
    """The off-diagonal corner (axes fraction) whose text box covers the fewest gap bars."""
    candidates = {
        (0.96, 0.04): ((0.55, 1.0), (0.0, 0.3)),  # lower right, where the paper puts it
        (0.04, 0.96): ((0.0, 0.45), (0.7, 1.0)),  # upper left
    }
    best, best_hits = (0.96, 0.04), None
    for corner, ((x0, x1), (y0, y1)) in candidates.items():
        hits = int(np.count_nonzero((x >= x0) & (x <= x1) & (high >= y0) & (low <= y1)))
        if best_hits is None or hits < best_hits:
            best, best_hits = corner, hits
    return best


def _count_limits(ax: Axes, counts: npt.NDArray[np.int64], log_scale: bool) -> None:
    top = float(max(int(counts.max()), 1))
    if log_scale:
        from matplotlib.ticker import LogLocator

        ax.set_ylim(0.7, top * 2.5)
        ax.yaxis.set_major_locator(LogLocator(base=10, numticks=4))
    else:
        from matplotlib.ticker import MaxNLocator

        ax.set_ylim(0, top * 1.08)
        ax.yaxis.set_major_locator(MaxNLocator(nbins=3, integer=True))


def _row_label(ax: Axes, label: str) -> None:
    ax.annotate(
        label,
        xy=(0, 0.5),
        xycoords=ax.yaxis.label,  # left of the axis label, wherever layout puts it
        xytext=(-3, 0),
        textcoords="offset points",
        ha="right",
        va="center",
        rotation=90,
        fontweight="bold",
        fontsize=9,
    )


# --------------------------------------------------------------------------- Fig. 2


class ReliabilityHistogramDisplay:
    """Dataset reliability histograms (paper Fig. 2): one panel per class, one row per run.

    Each panel shows :func:`dataset_reliability_matrix` with its columns normalised
    (:func:`column_normalised`): column ``b`` is the distribution over images of the
    observed frequency in confidence bin ``b``. A calibrated model puts its mass on
    the diagonal. Colours use a power-law norm (gamma 0.35) on YlOrRd, from 0 to 1
    in every panel, with one colour bar; high observed frequency is at the top.
    Columns without any image are left blank.

    Args:
        counts: count matrices ``(classes, M, M)`` or ``(runs, classes, M, M)``.
        class_names: names of the classes.
        run_labels: names of the runs, shown left of each row.
        n_images: ``(runs,)`` images per run (information only).

    Attributes:
        figure_: the figure, once plotted.
        axes_: ``(runs, classes)`` axes.
        matrix_: ``(runs, classes, M, M)`` column-normalised matrices as drawn.
        meshes_: ``(runs, classes)`` ``QuadMesh`` artists.
        colorbar_: the shared colour bar.
    """

    def __init__(
        self,
        counts: npt.ArrayLike,
        *,
        class_names: Sequence[str] | None = None,
        run_labels: Sequence[str] | None = None,
        n_images: Sequence[int] | None = None,
    ) -> None:
        matrices = np.asarray(counts)
        if matrices.ndim == 3:
            matrices = matrices[None]
        if matrices.ndim != 4 or matrices.shape[-1] != matrices.shape[-2]:
            raise ValueError(f"expected (runs, classes, M, M) matrices, got {matrices.shape}")
        self.counts = matrices
        n_runs, n_classes = matrices.shape[:2]
        self.class_names = tuple(class_names or [f"class {c}" for c in range(n_classes)])
        self.run_labels = tuple(run_labels or [""] * n_runs)
        if len(self.class_names) != n_classes or len(self.run_labels) != n_runs:
            raise ValueError("one class name per class and one run label per run")
        self.n_images = tuple(n_images) if n_images is not None else None

    @classmethod
    def from_bin_stats(
        cls,
        stats: BinStats | Sequence[BinStats],
        *,
        class_names: Sequence[str] | None = None,
        run_labels: Sequence[str] | None = None,
    ) -> ReliabilityHistogramDisplay:
        """Display of ``(images, classes, M)`` statistics, or a sequence of them (one per run).

        Example:
            >>> stats = BinStats(np.ones((4, 1, 3), int), np.ones((4, 1, 3)), np.zeros((4, 1, 3)))
            >>> display = ReliabilityHistogramDisplay.from_bin_stats(stats)
            >>> display.counts[0, 0].tolist()  # every image observes frequency 0 in every bin
            [[4, 4, 4], [0, 0, 0], [0, 0, 0]]
        """
        runs = [stats] if isinstance(stats, BinStats) else list(stats)
        if len({run.n_bins for run in runs}) != 1 or len({run.shape[1:] for run in runs}) != 1:
            raise ValueError("every run needs the same classes and number of bins")
        counts = np.stack(
            [[dataset_reliability_matrix(run[:, c]) for c in range(run.shape[1])] for run in runs]
        )
        return cls(
            counts,
            class_names=class_names,
            run_labels=run_labels,
            n_images=[run.shape[0] for run in runs],
        )

    @classmethod
    def from_evaluation(
        cls,
        result_dirs: ResultDirs,
        *,
        classes: Sequence[str] | None = None,
        labels: Sequence[str] | None = None,
    ) -> ReliabilityHistogramDisplay:
        """Display of one or several ``calibkit evaluate`` folders (one row each).

        Raises:
            InputError: a folder holds no results or lacks a class; runs differ in bins.
        """
        from calibkit.io.results import load_bins

        dirs = _as_dirs(result_dirs)
        run_labels = _labels(labels, dirs)
        runs, names = [], None
        for folder in dirs:
            saved = load_bins(folder)
            index = _class_indices(folder, saved.class_names, classes)
            runs.append(saved.stats[:, index])
            names = names or [saved.class_names[i] for i in index]
        _check_same_bins(dirs, [run.n_bins for run in runs])
        return cls.from_bin_stats(runs, class_names=names, run_labels=run_labels)

    def plot(
        self,
        axes: Any = None,
        *,
        gamma: float = POWER_NORM_GAMMA,
        cmap: str = HISTOGRAM_CMAP,
        colorbar: bool = True,
    ) -> ReliabilityHistogramDisplay:
        """Draw the histograms.

        Args:
            axes: ``(runs, classes)`` axes to draw into; a new figure when None.
            gamma: exponent of the power-law colour norm.
            cmap: matplotlib colour map name.
            colorbar: add one colour bar for all panels.

        Returns:
            The display itself, with the drawn artists set.
        """
        import matplotlib
        from matplotlib.colors import PowerNorm

        n_runs, n_classes, n_bins = self.counts.shape[:3]
        with matplotlib.rc_context(STYLE):
            if axes is None:
                width = 2.45 * n_classes + 1.15
                figure = _new_figure(width, 2.3 * n_runs + 0.45)
                grid = figure.subplots(n_runs, n_classes, squeeze=False, sharex=True, sharey=True)
            else:
                grid = _axes_grid(axes, (n_runs, n_classes), "the histogram")
                figure = grid[0, 0].figure
            self.figure_ = figure
            self.axes_ = grid
            self.matrix_ = column_normalised(self.counts)
            self.meshes_ = np.empty((n_runs, n_classes), dtype=object)
            norm = PowerNorm(gamma=gamma, vmin=0.0, vmax=1.0)
            edges = bin_edges(n_bins).astype(np.float64)
            edges[-1] = 1.0  # the last edge is 1 + eps; draw the unit square
            for r in range(n_runs):
                for c in range(n_classes):
                    ax = grid[r, c]
                    self.meshes_[r, c] = ax.pcolormesh(
                        edges,
                        edges,
                        np.ma.masked_invalid(self.matrix_[r, c]),
                        norm=norm,
                        cmap=cmap,
                        edgecolors="face",
                        linewidth=0.2,
                    )
                    ax.plot([0, 1], [0, 1], linestyle="--", color="0.15", linewidth=0.7)
                    ax.set_xlim(0, 1)
                    ax.set_ylim(0, 1)
                    ax.set_aspect("equal")
                    ax.set_xticks([0, 0.5, 1], ["0", "0.5", "1"])
                    ax.set_yticks([0, 0.5, 1], ["0", "0.5", "1"])
                    if r == 0:
                        ax.set_title(self.class_names[c])
                    if r == n_runs - 1:
                        ax.set_xlabel("Confidence")
                    if c == 0:
                        ax.set_ylabel("Observed frequency")
                        label = self.run_labels[r]
                        if label:
                            _row_label(ax, label)
            if colorbar:
                self.colorbar_ = figure.colorbar(
                    self.meshes_[0, 0],
                    ax=list(grid.ravel()),
                    fraction=0.05,
                    aspect=18 * n_runs,
                    pad=0.03,
                )
                self.colorbar_.set_ticks([0, 0.01, 0.05, 0.2, 0.5, 1])
                self.colorbar_.set_ticklabels(["0", "0.01", "0.05", "0.2", "0.5", "1"])
                self.colorbar_.set_label("Fraction of images per confidence bin")
                self.colorbar_.outline.set_linewidth(0.5)  # type: ignore[operator]
        return self


# --------------------------------------------------------------------------- Fig. 3


@dataclass(frozen=True)
class CaseValues:
    """Per-case values of one run, for :class:`CalibrationScatterDisplay`.

    Attributes:
        label: name of the run.
        case_ids: the cases, in order.
        values: arrays aligned with ``case_ids`` keyed by metric (``dice``, ``ace`` ...).
    """

    label: str
    case_ids: tuple[str, ...]
    values: Mapping[str, npt.NDArray[np.float64]]


class CalibrationScatterDisplay:
    """Dice against calibration per case (paper Fig. 3), for one or more runs.

    ``kind="scatter"``: one panel per metric, Dice on the y axis, one colour and
    marker per run (Okabe–Ito colours). ``kind="box"``: paired box plots of Dice
    and each metric, one box per run, every case a dot, and grey lines joining a
    case's values across runs (paired by case id).

    Args:
        runs: per-case values of each run.
        metrics: calibration metrics to show (``ace``, ``ece``, ``mce``).
        kind: ``"scatter"`` or ``"box"``.
        class_name: what the values are (a class name, or ``"mean"`` over classes).

    Attributes:
        figure_: the figure, once plotted.
        axes_: one axes per panel.
        scatters_: ``(metrics, runs)`` point collections (``kind="scatter"``).
        boxes_: per panel, the dict returned by ``Axes.boxplot`` (``kind="box"``).
        points_: ``(panels, runs)`` point collections of the box plots (``kind="box"``).
        pair_lines_: per panel, the line collection joining paired cases (``kind="box"``).
    """

    def __init__(
        self,
        runs: Sequence[CaseValues],
        *,
        metrics: Sequence[str] = ("ace",),
        kind: ScatterKind = "scatter",
        class_name: str = MEAN_CLASS,
    ) -> None:
        _check_scatter_options(metrics, kind)
        if not runs:
            raise ValueError("need at least one run")
        self.runs = tuple(runs)
        self.metrics = tuple(metrics)
        self.kind = kind
        self.class_name = class_name

    @classmethod
    def from_bin_stats(
        cls,
        stats: BinStats | Sequence[BinStats],
        overlaps: OverlapCounts | Sequence[OverlapCounts],
        *,
        case_ids: Sequence[Sequence[str]] | None = None,
        labels: Sequence[str] | None = None,
        class_names: Sequence[str] | None = None,
        class_name: str = MEAN_CLASS,
        metrics: Sequence[str] = ("ace",),
        kind: ScatterKind = "scatter",
    ) -> CalibrationScatterDisplay:
        """Display of ``(cases, classes, M)`` statistics and ``(cases, classes)`` Dice counts.

        Args:
            stats: one run's statistics, or one per run.
            overlaps: the matching Dice counts.
            case_ids: per run, the case ids (default ``0, 1, ...``; pairs runs in box plots).
            labels: per run, its name.
            class_names: names of the classes (default ``class 0`` ...).
            class_name: a class name, or ``"mean"`` for the per-case NaN-mean over classes.
            metrics: calibration metrics to show.
            kind: ``"scatter"`` or ``"box"``.
        """
        all_stats = [stats] if isinstance(stats, BinStats) else list(stats)
        all_overlaps = [overlaps] if isinstance(overlaps, OverlapCounts) else list(overlaps)
        names = list(class_names or [f"class {c}" for c in range(all_stats[0].shape[1])])
        runs = []
        for i, (run, overlap) in enumerate(zip(all_stats, all_overlaps, strict=True)):
            errors = calibration_errors(run)
            per_class = {"dice": overlap.dice, "ace": errors.ace, "ece": errors.ece}
            per_class["mce"] = errors.mce
            if class_name == MEAN_CLASS:
                values = {key: per_image_mean(value) for key, value in per_class.items()}
            else:
                if class_name not in names:
                    raise ValueError(f"no class {class_name!r}; classes: {', '.join(names)}")
                index = names.index(class_name)
                values = {
                    key: value[:, index].astype(np.float64) for key, value in per_class.items()
                }
            ids = tuple(case_ids[i]) if case_ids else tuple(str(k) for k in range(run.shape[0]))
            runs.append(CaseValues(labels[i] if labels else f"run {i + 1}", ids, values))
        return cls(runs, metrics=metrics, kind=kind, class_name=class_name)

    @classmethod
    def from_evaluation(
        cls,
        result_dirs: ResultDirs,
        *,
        labels: Sequence[str] | None = None,
        class_name: str = MEAN_CLASS,
        metrics: Sequence[str] = ("ace",),
        kind: ScatterKind = "scatter",
    ) -> CalibrationScatterDisplay:
        """Display of one or several ``calibkit evaluate`` folders (``per_image.csv``).

        Raises:
            InputError: a folder holds no results or lacks the class.
        """
        from calibkit.io.results import load_per_image

        _check_scatter_options(metrics, kind)
        dirs = _as_dirs(result_dirs)
        run_labels = _labels(labels, dirs)
        runs = []
        for folder, label in zip(dirs, run_labels, strict=True):
            table = load_per_image(folder)
            available = list(dict.fromkeys(table["class"].astype(str)))
            if class_name != MEAN_CLASS:
                _class_indices(folder, available, [class_name])
            values = {}
            for metric in ("dice", *metrics):
                case_ids, values[metric] = _per_case_values(table, metric, class_name)
            runs.append(CaseValues(label, tuple(case_ids), values))
        return cls(runs, metrics=metrics, kind=kind, class_name=class_name)

    def plot(self, axes: Any = None) -> CalibrationScatterDisplay:
        """Draw the panels (one per metric; Dice first for box plots).

        Args:
            axes: axes to draw into, one per panel; a new figure when None.

        Returns:
            The display itself, with the drawn artists set.
        """
        import matplotlib

        panels = list(self.metrics) if self.kind == "scatter" else ["dice", *self.metrics]
        with matplotlib.rc_context(STYLE):
            if axes is None:
                width = (PANEL_WIDTH if self.kind == "scatter" else 2.3) * len(panels) + 0.2
                figure = _new_figure(width, PANEL_WIDTH * 0.92 + 0.3)
                grid = figure.subplots(1, len(panels), squeeze=False)[0]
            else:
                grid = _axes_grid(axes, (1, len(panels)), "the scatter plot")[0]
                figure = grid[0].figure
            self.figure_ = figure
            self.axes_ = grid
            if self.kind == "scatter":
                self._plot_scatter(grid, share=axes is None)
            else:
                self._plot_box(grid, panels)
            what = "mean over classes" if self.class_name == MEAN_CLASS else self.class_name
            if axes is None:
                figure.suptitle(f"Dice against calibration, per case ({what})")
            handles = [
                _run_handle(i, run.label, len(run.case_ids)) for i, run in enumerate(self.runs)
            ]
            self.legend_ = figure.legend(
                handles=handles,
                loc="outside lower center",
                ncols=min(len(handles), 4),
                frameon=False,
            )
        return self

    def _plot_scatter(self, grid: npt.NDArray[np.object_], *, share: bool) -> None:
        self.scatters_ = np.empty((len(self.metrics), len(self.runs)), dtype=object)
        for m, metric in enumerate(self.metrics):
            ax = grid[m]
            for r, run in enumerate(self.runs):
                self.scatters_[m, r] = ax.scatter(
                    run.values[metric],
                    run.values["dice"],
                    s=16,
                    marker=RUN_MARKERS[r % len(RUN_MARKERS)],
                    color=OKABE_ITO[r % len(OKABE_ITO)],
                    alpha=0.8,
                    edgecolors="white",
                    linewidths=0.3,
                    zorder=2 + r,
                )
            ax.set_xlabel(METRIC_LABELS[metric])
            ax.set_ylabel("Dice")
            ax.set_xlim(left=0)
            ax.set_ylim(top=1)
            ax.grid(True, linewidth=0.4, color="0.88")
            ax.set_axisbelow(True)
        if share:
            for ax in grid[1:]:
                ax.sharey(grid[0])

    def _plot_box(self, grid: npt.NDArray[np.object_], panels: Sequence[str]) -> None:
        from matplotlib.collections import LineCollection

        shared = set(self.runs[0].case_ids).intersection(*(run.case_ids for run in self.runs[1:]))
        paired = [case for case in self.runs[0].case_ids if case in shared]
        offsets = np.random.default_rng(0).uniform(-0.12, 0.12, size=len(paired))
        self.boxes_: list[dict[str, Any]] = []
        self.pair_lines_: list[Any] = []
        self.points_ = np.empty((len(panels), len(self.runs)), dtype=object)
        for k, metric in enumerate(panels):
            ax = grid[k]
            data = [run.values[metric] for run in self.runs]
            finite = [values[np.isfinite(values)] for values in data]
            boxes = ax.boxplot(
                finite,
                positions=np.arange(len(self.runs)),
                widths=0.5,
                patch_artist=True,
                showfliers=False,
                medianprops={"color": "black", "linewidth": 1.2},
                whiskerprops={"linewidth": 0.7},
                capprops={"linewidth": 0.7},
                boxprops={"linewidth": 0.7},
            )
            for r, patch in enumerate(boxes["boxes"]):
                patch.set_facecolor(OKABE_ITO[r % len(OKABE_ITO)])
                patch.set_alpha(0.3)
            self.boxes_.append(boxes)
            aligned = np.stack([_aligned(run, metric, paired) for run in self.runs])  # (R, N)
            x = np.arange(len(self.runs))[:, None] + offsets[None, :]
            segments = [
                np.column_stack([x[:, i], aligned[:, i]])
                for i in range(len(paired))
                if np.isfinite(aligned[:, i]).all()
            ]
            lines = LineCollection(segments, colors="0.6", linewidths=0.5, alpha=0.6, zorder=2)
            ax.add_collection(lines)
            self.pair_lines_.append(lines)
            for r, run in enumerate(self.runs):
                index = {case: i for i, case in enumerate(paired)}
                jitter = np.array([offsets[index[c]] if c in index else 0.0 for c in run.case_ids])
                self.points_[k, r] = ax.scatter(
                    r + jitter,
                    run.values[metric],
                    s=10,
                    marker=RUN_MARKERS[r % len(RUN_MARKERS)],
                    color=OKABE_ITO[r % len(OKABE_ITO)],
                    edgecolors="white",
                    linewidths=0.3,
                    zorder=3,
                )
            ax.set_xticks(np.arange(len(self.runs)), [run.label for run in self.runs])
            ax.set_xlim(-0.6, len(self.runs) - 0.4)
            ax.set_ylabel(METRIC_LABELS[metric])
            ax.grid(True, axis="y", linewidth=0.4, color="0.88")
            ax.set_axisbelow(True)


def _check_scatter_options(metrics: Sequence[str], kind: str) -> None:
    unknown = [m for m in metrics if m not in ("ace", "ece", "mce")]
    if unknown or not metrics:
        raise CalibkitError(
            f"unknown metric(s) {', '.join(unknown) or '(none)'}; choose from ace, ece, mce"
        )
    if kind not in ("scatter", "box"):
        raise CalibkitError(f"unknown plot kind {kind!r}; choose scatter or box")


def _aligned(run: CaseValues, metric: str, cases: Sequence[str]) -> npt.NDArray[np.float64]:
    index = {case: i for i, case in enumerate(run.case_ids)}
    return np.array([run.values[metric][index[case]] for case in cases], dtype=np.float64)


def _run_handle(r: int, label: str, n: int) -> Any:
    from matplotlib.lines import Line2D

    return Line2D(
        [],
        [],
        linestyle="none",
        marker=RUN_MARKERS[r % len(RUN_MARKERS)],
        markersize=5,
        color=OKABE_ITO[r % len(OKABE_ITO)],
        label=f"{label} ({n} cases)",
    )


# --------------------------------------------------------------------------- files


def write_reliability_diagram(
    result_dirs: ResultDirs,
    out: PathLike,
    *,
    case_id: str,
    classes: Sequence[str] | None = None,
    labels: Sequence[str] | None = None,
) -> Path:
    """Draw one case's reliability diagrams from result folders and save them to ``out``.

    Raises:
        CalibkitError: bad suffix, folder, case or class; nothing is written then.
    """
    figure_format(out)
    display = ReliabilityDiagramDisplay.from_evaluation(
        result_dirs, case_id, classes=classes, labels=labels
    ).plot()
    return save_figure(display.figure_, out)


def write_reliability_histogram(
    result_dirs: ResultDirs,
    out: PathLike,
    *,
    classes: Sequence[str] | None = None,
    labels: Sequence[str] | None = None,
) -> Path:
    """Draw the dataset reliability histograms of result folders (a row each) into ``out``.

    Raises:
        CalibkitError: bad suffix, folder or class; nothing is written then.
    """
    figure_format(out)
    display = ReliabilityHistogramDisplay.from_evaluation(
        result_dirs, classes=classes, labels=labels
    ).plot()
    return save_figure(display.figure_, out)


def write_calibration_scatter(
    result_dirs: ResultDirs,
    out: PathLike,
    *,
    labels: Sequence[str] | None = None,
    class_name: str = MEAN_CLASS,
    metrics: Sequence[str] = ("ace",),
    kind: ScatterKind = "scatter",
) -> Path:
    """Draw Dice against calibration per case for result folders into ``out``.

    Raises:
        CalibkitError: bad suffix, folder, class, metric or kind; nothing is written then.
    """
    figure_format(out)
    display = CalibrationScatterDisplay.from_evaluation(
        result_dirs, labels=labels, class_name=class_name, metrics=metrics, kind=kind
    ).plot()
    return save_figure(display.figure_, out)


def write_evaluation_figures(
    result_dir: PathLike,
    *,
    n_worst: int = 3,
    formats: Sequence[str] = ("png",),
    label: str | None = None,
) -> list[Path]:
    """Figures of one result folder, written into ``result_dir / "figures"``.

    Writes ``reliability_histogram.<fmt>`` and ``reliability_diagram_<case>.<fmt>``
    for the ``n_worst`` cases with the largest per-case mean ACE. The figures
    appear together or not at all (they are staged first), so a full disk leaves
    the earlier figures as they were.

    Args:
        result_dir: a folder written by ``calibkit evaluate``.
        n_worst: number of worst-calibrated cases to draw.
        formats: file formats, from ``png``, ``pdf``, ``svg``.
        label: the name of the run in the histogram (default: the folder's name).

    Returns:
        The paths written, the histogram first.

    Raises:
        WriteError: a figure cannot be written; nothing in the folder changed.
    """
    from calibkit.io.atomic import staged_folder

    folder = Path(result_dir)
    with staged_folder(folder) as staging:
        written = save_evaluation_figures(
            folder, staging, n_worst=n_worst, formats=formats, label=label
        )
    return [folder / path.relative_to(staging) for path in written]


def save_evaluation_figures(
    result_dir: PathLike,
    target: PathLike,
    *,
    n_worst: int = 3,
    formats: Sequence[str] = ("png",),
    label: str | None = None,
) -> list[Path]:
    """The figures of :func:`write_evaluation_figures`, saved one by one into ``target``.

    They go to ``target / "figures"``, each file atomically, for callers that stage
    them with other files (``calibkit evaluate --plots`` stages them with the tables).

    Args:
        result_dir: the folder holding the tables to draw.
        target: the folder to write ``figures/`` into.
        n_worst: number of worst-calibrated cases to draw.
        formats: file formats, from ``png``, ``pdf``, ``svg``.
        label: the name of the run in the histogram (default: ``result_dir``'s name).

    Returns:
        The paths written, the histogram first.
    """
    from calibkit.io.results import load_per_image

    folder, figures = Path(result_dir), Path(target) / "figures"
    suffixes = ["." + fmt.lower().lstrip(".") for fmt in formats]
    for suffix in suffixes:
        figure_format(figures / f"check{suffix}")
    cases = worst_calibrated_cases(load_per_image(folder), n_worst)
    labels = None if label is None else [label]
    histogram = ReliabilityHistogramDisplay.from_evaluation(folder, labels=labels).plot()
    diagrams = [ReliabilityDiagramDisplay.from_evaluation(folder, case).plot() for case in cases]
    targets = [("reliability_histogram", histogram.figure_)] + [
        (f"reliability_diagram_{case}", display.figure_)
        for case, display in zip(cases, diagrams, strict=True)
    ]
    written = []
    try:
        for name, figure in targets:
            for suffix in suffixes:
                written.append(save_figure(figure, figures / f"{name}{suffix}", close=False))
    finally:
        for _, figure in targets:
            _close(figure)
    return written
