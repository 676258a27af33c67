"""Dataset reliability histograms (paper Fig. 2): :class:`ReliabilityHistogramDisplay`.

Also the counts it draws, which need no matplotlib: :func:`dataset_reliability_matrix`
(SPEC.md §1) and :func:`column_normalised`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from calibkit.binning import BinStats, assign_bins, bin_edges
from calibkit.io.results import load_bins
from calibkit.metrics import calibration_errors, macro_summary
from calibkit.plots._folders import (
    ResultDirs,
    _as_dirs,
    _check_same_bins,
    _class_indices,
    _labels,
)
from calibkit.plots._selection import (
    DEFAULT_COLUMNS,
    MAX_CLASSES,
    check_max_classes,
    choose_classes,
    class_note,
    panel_rows,
    worst_over_runs,
)
from calibkit.plots.style import (
    NOTE_HEIGHT,
    STYLE,
    _axes_grid,
    _new_figure,
    _panel_axes,
    _row_label,
)

__all__ = ["ReliabilityHistogramDisplay", "column_normalised", "dataset_reliability_matrix"]


POWER_NORM_GAMMA = 0.35  # the paper's colour norm for dataset histograms
HISTOGRAM_CMAP = "YlOrRd"


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


class ReliabilityHistogramDisplay:
    """Dataset reliability histograms (paper Fig. 2): one panel per class, a row of them per run.

    Each panel shows :func:`dataset_reliability_matrix` with its columns normalised
    (:func:`column_normalised`): column ``b`` is the distribution over images of the
    observed frequency in confidence bin ``b``. A calibrated model puts its mass on
    the diagonal. Colours use a power-law norm (gamma 0.35) on YlOrRd, from 0 to 1
    in every panel, with one colour bar; high observed frequency is at the top.
    Columns without any image are left blank. Panels wrap into rows of ``columns``;
    each run then has a row in every row of panels.

    The constructor draws every class it is given; ``from_bin_stats`` and
    ``from_evaluation`` keep at most ``max_classes`` (12) of them, the worst by mean
    ACE over the images, and ``class_note`` says so in the figure's title.

    Args:
        counts: count matrices ``(classes, M, M)`` or ``(runs, classes, M, M)``.
        class_names: names of the classes.
        run_labels: names of the runs, shown left of each row.
        n_images: ``(runs,)`` images per run (information only).
        class_note: a title line saying which classes are drawn, e.g.
            ``"12 of 110 classes, the worst by mean ACE over cases"``.

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
        class_note: str | None = None,
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
        self.class_note = class_note

    @classmethod
    def from_bin_stats(
        cls,
        stats: BinStats | Sequence[BinStats],
        *,
        class_names: Sequence[str] | None = None,
        run_labels: Sequence[str] | None = None,
        max_classes: int = MAX_CLASSES,
    ) -> ReliabilityHistogramDisplay:
        """Display of ``(images, classes, M)`` statistics, or a sequence of them (one per run).

        Args:
            stats: one run's statistics, or one per run (same classes and bins).
            class_names: names of the classes (default ``class 0`` ...).
            run_labels: names of the runs, shown left of each row.
            max_classes: with more classes than this, draw only this many, the worst
                by mean ACE over images (the largest over runs), worst first; 0 draws all.

        Example:
            >>> stats = BinStats(np.ones((4, 1, 3), int), np.ones((4, 1, 3)), np.zeros((4, 1, 3)))
            >>> display = ReliabilityHistogramDisplay.from_bin_stats(stats)
            >>> display.counts[0, 0].tolist()  # every image observes frequency 0 in every bin
            [[4, 4, 4], [0, 0, 0], [0, 0, 0]]
        """
        runs = [stats] if isinstance(stats, BinStats) else list(stats)
        if len({run.n_bins for run in runs}) != 1 or len({run.shape[1:] for run in runs}) != 1:
            raise ValueError("every run needs the same classes and number of bins")
        n_classes = runs[0].shape[1]
        names = list(class_names or [f"class {c}" for c in range(n_classes)])
        if len(names) != n_classes:
            raise ValueError("one class name per class")
        chosen = list(range(n_classes))
        if 0 < check_max_classes(max_classes) < n_classes:
            # Mean over images as in summary.csv; a class is bad when any run is.
            mean_ace = [macro_summary(calibration_errors(run).ace).mean for run in runs]
            chosen = choose_classes(worst_over_runs(mean_ace), max_classes)
        counts = np.stack([[dataset_reliability_matrix(run[:, c]) for c in chosen] for run in runs])
        return cls(
            counts,
            class_names=[names[c] for c in chosen],
            run_labels=run_labels,
            n_images=[run.shape[0] for run in runs],
            class_note=class_note(len(chosen), n_classes, "mean ACE over cases", len(runs)),
        )

    @classmethod
    def from_evaluation(
        cls,
        result_dirs: ResultDirs,
        *,
        classes: Sequence[str] | None = None,
        labels: Sequence[str] | None = None,
        max_classes: int = MAX_CLASSES,
    ) -> ReliabilityHistogramDisplay:
        """Display of one or several ``calibkit evaluate`` folders (one row each).

        Args:
            result_dirs: a result folder, or several (one row each).
            classes: class names to draw, in this order, all of them (default: the
                first folder's classes, capped by ``max_classes``).
            labels: one name per folder (default: the folder names).
            max_classes: without ``classes``, draw at most this many classes, the
                worst by mean ACE over cases (the largest over folders), worst first;
                0 draws every class.

        Raises:
            InputError: a folder holds no results or lacks a class; runs differ in bins.
        """
        dirs = _as_dirs(result_dirs)
        run_labels = _labels(labels, dirs)
        runs, names = [], None
        for folder in dirs:
            saved = load_bins(folder)
            # Every folder is read by the first folder's class names, so that rows align.
            index = _class_indices(folder, saved.class_names, names or classes)
            runs.append(saved.stats[:, index])
            names = names or [saved.class_names[i] for i in index]
        _check_same_bins(dirs, [run.n_bins for run in runs])
        return cls.from_bin_stats(
            runs,
            class_names=names,
            run_labels=run_labels,
            max_classes=0 if classes is not None else max_classes,
        )

    def plot(
        self,
        axes: Any = None,
        *,
        gamma: float = POWER_NORM_GAMMA,
        cmap: str = HISTOGRAM_CMAP,
        colorbar: bool = True,
        columns: int = DEFAULT_COLUMNS,
    ) -> ReliabilityHistogramDisplay:
        """Draw the histograms.

        Args:
            axes: ``(runs, classes)`` axes to draw into; a new figure when None.
            gamma: exponent of the power-law colour norm.
            cmap: matplotlib colour map name.
            colorbar: add one colour bar for all panels.
            columns: class panels per row of a new figure; more wrap to further rows.

        Returns:
            The display itself, with the drawn artists set.
        """
        import matplotlib
        from matplotlib.colors import PowerNorm

        n_runs, n_classes, n_bins = self.counts.shape[:3]
        block_rows = 1
        with matplotlib.rc_context(STYLE):
            if axes is None:
                block_rows, columns = panel_rows(n_classes, columns)
                note = NOTE_HEIGHT if self.class_note else 0.0
                figure = _new_figure(2.45 * columns + 1.15, 2.3 * n_runs * block_rows + 0.45 + note)
                grid = _panel_axes(figure, n_classes, columns, n_runs, share=True)
                for r in range(n_runs):
                    for c in range(n_classes):
                        # Tick labels at the bottom of each row of panels and on the left.
                        _hide_inner_tick_labels(grid[r, c], r < n_runs - 1, c % columns > 0)
            else:
                grid = _axes_grid(axes, (n_runs, n_classes), "the histogram")
                figure = grid[0, 0].figure
                columns = n_classes
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
                    if c % columns == 0:
                        ax.set_ylabel("Observed frequency")
                        label = self.run_labels[r]
                        if label:
                            _row_label(ax, label)
            if colorbar:
                self.colorbar_ = figure.colorbar(
                    self.meshes_[0, 0],
                    ax=list(grid.ravel()),
                    fraction=0.05,
                    aspect=18 * n_runs * block_rows,
                    pad=0.03,
                )
                self.colorbar_.set_ticks([0, 0.01, 0.05, 0.2, 0.5, 1])
                self.colorbar_.set_ticklabels(["0", "0.01", "0.05", "0.2", "0.5", "1"])
                self.colorbar_.set_label("Fraction of images per confidence bin")
                self.colorbar_.outline.set_linewidth(0.5)  # type: ignore[operator]
            if self.class_note and axes is None:
                figure.suptitle(self.class_note)
        return self


def _hide_inner_tick_labels(ax: Any, inner_x: bool, inner_y: bool) -> None:
    """What ``Figure.subplots(sharex=True, sharey=True)`` does to an inner panel."""
    if inner_x:
        ax.xaxis.set_tick_params(which="both", labelbottom=False)
        ax.xaxis.offsetText.set_visible(False)
    if inner_y:
        ax.yaxis.set_tick_params(which="both", labelleft=False)
        ax.yaxis.offsetText.set_visible(False)
