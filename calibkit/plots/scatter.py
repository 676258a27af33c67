"""Dice against calibration per case (paper Fig. 3): :class:`CalibrationScatterDisplay`.

Also the per-case values it draws (:class:`CaseValues`) and how they are read
from a ``per_image.csv`` table, one value per case, which also ranks the
worst-calibrated cases (:func:`worst_calibrated_cases`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import numpy.typing as npt

from calibkit.binning import BinStats
from calibkit.errors import CalibkitError
from calibkit.io.results import load_per_image
from calibkit.metrics import OverlapCounts, calibration_errors, per_image_mean
from calibkit.plots._folders import ResultDirs, _as_dirs, _class_indices, _labels
from calibkit.plots._selection import worst_first
from calibkit.plots.style import (
    OKABE_ITO,
    PANEL_WIDTH,
    RUN_MARKERS,
    STYLE,
    _axes_grid,
    _new_figure,
)

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["CalibrationScatterDisplay", "CaseValues", "worst_calibrated_cases"]


ScatterKind = Literal["scatter", "box"]

METRIC_LABELS = {"ace": "ACE", "ece": "ECE", "mce": "MCE", "dice": "Dice"}
MEAN_CLASS = "mean"


def worst_calibrated_cases(per_image: pd.DataFrame, n: int, *, metric: str = "ace") -> list[str]:
    """Case ids of the ``n`` largest per-case means of ``metric`` (NaN-mean over classes).

    Cases whose value is NaN come last; ties keep the table's case order.
    """
    cases, values = _per_case_values(per_image, metric, MEAN_CLASS)
    return [cases[i] for i in worst_first(values)[: max(int(n), 0)]]


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
