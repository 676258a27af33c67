"""Image reliability diagrams (paper Fig. 1): :class:`ReliabilityDiagramDisplay`.

Also the rule that puts voxel counts on a log axis (:func:`counts_need_log_scale`,
no matplotlib needed) and the helpers that place the metric box and scale the
count panels.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from calibkit.binning import BinStats, bin_edges
from calibkit.formatting import MISSING, format_number
from calibkit.io.results import load_bins
from calibkit.metrics import calibration_errors
from calibkit.plots._folders import (
    ResultDirs,
    _as_dirs,
    _case_index,
    _check_same_bins,
    _class_indices,
    _labels,
)
from calibkit.plots._selection import (
    DEFAULT_COLUMNS,
    MAX_CLASSES,
    choose_classes,
    class_note,
    panel_rows,
    worst_over_runs,
)
from calibkit.plots.style import (
    NOTE_HEIGHT,
    PANEL_WIDTH,
    STYLE,
    _axes_grid,
    _new_figure,
    _panel_axes,
    _row_label,
)

if TYPE_CHECKING:
    from matplotlib.axes import Axes

__all__ = ["ReliabilityDiagramDisplay", "counts_need_log_scale"]


LOG_COUNT_RATIO = 100.0  # voxel counts spanning more than this use a log axis
GAP_COLOUR = "#D55E00"
COUNT_COLOUR = "0.55"


def counts_need_log_scale(counts: npt.ArrayLike) -> bool:
    """True when the non-zero counts span more than ``LOG_COUNT_RATIO`` (100×).

    Example:
        >>> counts_need_log_scale([0, 5, 400]), counts_need_log_scale([0, 5, 600])
        (False, True)
    """
    values = np.asarray(counts, dtype=np.float64)
    positive = values[values > 0]
    return bool(positive.size) and float(positive.max() / positive.min()) > LOG_COUNT_RATIO


def _format_value(value: float) -> str:
    return format_number(value, 3) if np.isfinite(value) else MISSING


class ReliabilityDiagramDisplay:
    """Image reliability diagrams (paper Fig. 1): one panel per class, a row of them per run.

    In each panel a bar at every non-empty confidence bin spans the gap from the
    mean predicted probability ``pbar_k`` to the observed frequency ``ybar_k``
    (black tick), with the diagonal of perfect calibration and the image's ACE,
    ECE and MCE. Beneath, the voxels per bin (log scale when the counts span
    more than 100×; one scale for every count panel). Panels wrap into rows of
    ``columns``; each run then has a row in every row of panels.

    The constructor draws every class it is given; ``from_bin_stats`` and
    ``from_evaluation`` keep at most ``max_classes`` (12) of them, the worst by the
    image's ACE, and ``class_note`` says so in the figure's title.

    Args:
        stats: bins of one image, shape ``(classes, M)``, or ``(runs, classes, M)``.
        class_names: names of the classes (default ``class 0`` ...).
        run_labels: names of the runs, shown left of each row when there are several.
        case_id: shown as the figure title.
        gt_empty: ``(runs, classes)`` True where the class is absent from the ground
            truth (noted in the panel title).
        class_note: a line under the title saying which classes are drawn, e.g.
            ``"12 of 110 classes, the worst by ACE"``.

    Attributes:
        errors: :class:`~calibkit.metrics.CalibrationErrors` of shape ``(runs, classes)``.
        figure_: the figure, once plotted.
        axes_: ``(2 * runs, classes)`` axes: diagram rows alternate with count rows
            (``[2 * r, c]`` is run ``r``'s diagram of class ``c``, wherever it is placed).
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
        class_note: str | None = None,
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
        self.class_note = class_note

    @classmethod
    def from_bin_stats(
        cls,
        stats: BinStats,
        *,
        class_names: Sequence[str] | None = None,
        run_labels: Sequence[str] | None = None,
        case_id: str | None = None,
        gt_empty: npt.ArrayLike | None = None,
        max_classes: int = MAX_CLASSES,
    ) -> ReliabilityDiagramDisplay:
        """Display of ``(classes, M)`` (or ``(runs, classes, M)``) bin statistics.

        Args:
            stats: bins of one image, shape ``(classes, M)``, or ``(runs, classes, M)``.
            class_names: names of the classes (default ``class 0`` ...).
            run_labels: names of the runs, shown left of each row when there are several.
            case_id: shown as the figure title.
            gt_empty: ``(runs, classes)`` True where the class is absent from the ground truth.
            max_classes: with more classes than this, draw only this many, the worst
                by the image's ACE (the largest over runs), worst first; 0 draws all.

        Example:
            >>> from calibkit.binning import bin_statistics
            >>> stats = bin_statistics([[0.7, 0.3, 0.1, 0.9]], [[1, 0, 0, 1]], n_bins=5)
            >>> display = ReliabilityDiagramDisplay.from_bin_stats(stats, class_names=["tumour"])
            >>> round(float(display.errors.ace[0, 0]), 3)
            0.2
        """
        if stats.count.ndim == 2:
            stats = stats[None]
        n_runs, n_classes = stats.shape
        names = list(class_names or [f"class {c}" for c in range(n_classes)])
        if len(names) != n_classes:
            raise ValueError("one class name per class")
        empty = (
            np.zeros((n_runs, n_classes), dtype=bool)
            if gt_empty is None
            else np.asarray(gt_empty, dtype=bool).reshape(n_runs, n_classes)
        )
        chosen = choose_classes(worst_over_runs(calibration_errors(stats).ace), max_classes)
        return cls(
            stats[:, chosen],
            class_names=[names[c] for c in chosen],
            run_labels=run_labels,
            case_id=case_id,
            gt_empty=empty[:, chosen],
            class_note=class_note(len(chosen), n_classes, "ACE", n_runs),
        )

    @classmethod
    def from_evaluation(
        cls,
        result_dirs: ResultDirs,
        case_id: str,
        *,
        classes: Sequence[str] | None = None,
        labels: Sequence[str] | None = None,
        max_classes: int = MAX_CLASSES,
    ) -> ReliabilityDiagramDisplay:
        """Display of one case from one or several ``calibkit evaluate`` folders (``bins.npz``).

        Args:
            result_dirs: a result folder, or several (one row each).
            case_id: the case to draw.
            classes: class names to draw, in this order, all of them (default: the
                first folder's classes, capped by ``max_classes``).
            labels: one name per folder (default: the folder names).
            max_classes: without ``classes``, draw at most this many classes, the
                worst by the case's ACE (the largest over folders), worst first; 0
                draws every class.

        Raises:
            InputError: a folder holds no results, or lacks the case or a class.
        """
        dirs = _as_dirs(result_dirs)
        run_labels = _labels(labels, dirs)
        rows, empty, n_bins, names = [], [], [], None
        for folder in dirs:
            saved = load_bins(folder)
            # Every folder is read by the first folder's class names, so that rows align.
            index = _class_indices(folder, saved.class_names, names or classes)
            case = _case_index(folder, saved.case_ids, case_id)
            rows.append(saved.stats[case][index])
            empty.append(saved.overlap.truth[case][index] == 0)
            n_bins.append(saved.stats.n_bins)
            names = names or [saved.class_names[i] for i in index]
        _check_same_bins(dirs, n_bins)
        return cls.from_bin_stats(
            BinStats.stack(rows),
            class_names=names,
            run_labels=run_labels if len(dirs) > 1 else None,
            case_id=case_id,
            gt_empty=np.stack(empty),
            max_classes=0 if classes is not None else max_classes,
        )

    def plot(
        self,
        axes: Any = None,
        *,
        show_counts: bool = True,
        legend: bool = True,
        columns: int = DEFAULT_COLUMNS,
    ) -> ReliabilityDiagramDisplay:
        """Draw the diagrams.

        Args:
            axes: ``(2 * runs, classes)`` axes (``(runs, classes)`` without counts) to draw
                into; a new figure when None.
            show_counts: draw the voxel-count histogram under each diagram.
            legend: add a figure legend below the panels.
            columns: class panels per row of a new figure; more wrap to further rows.

        Returns:
            The display itself, with the drawn artists set.
        """
        import matplotlib

        n_runs, n_classes = self.stats.shape
        rows_per_run = 2 if show_counts else 1
        with matplotlib.rc_context(STYLE):
            if axes is None:
                block_rows, columns = panel_rows(n_classes, columns)
                block = n_runs * (PANEL_WIDTH * 0.82 + (0.85 if show_counts else 0.0))
                height = block_rows * block + 0.75 + (NOTE_HEIGHT if self.class_note else 0.0)
                figure = _new_figure(PANEL_WIDTH * columns + 0.3, height)
                grid = _panel_axes(
                    figure,
                    n_classes,
                    columns,
                    rows_per_run * n_runs,
                    height_ratios=[1.0, 0.3][:rows_per_run] * n_runs,
                )
            else:
                grid = _axes_grid(axes, (rows_per_run * n_runs, n_classes), "the diagram")
                figure = grid[0, 0].figure
                columns = n_classes
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
                    if c % columns == 0:
                        ax.set_ylabel("Observed frequency")
                        if self.run_labels[r]:
                            _row_label(ax, self.run_labels[r])
                    if show_counts:
                        count_ax = grid[r * rows_per_run + 1, c]
                        self._draw_counts(count_ax, r, c, log_counts)
                        count_axes.append(count_ax)
                        if axes is None:
                            ax.tick_params(labelbottom=False)
                        if c % columns == 0:
                            count_ax.set_ylabel("Voxels")
                    bottom = grid[r * rows_per_run + rows_per_run - 1, c]
                    bottom.set_xlabel("Confidence" if r == n_runs - 1 else "")
            for count_ax in count_axes:
                # One scale for every count panel, so that runs and classes compare.
                _count_limits(count_ax, self.stats.count, log_counts)
            title = [line for line in (self.case_id, self.class_note) if line]
            if title and axes is None:
                figure.suptitle("\n".join(title))
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
