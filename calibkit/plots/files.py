"""Figure files drawn from saved ``calibkit evaluate`` folders.

One writer per display (the ``plot-diagram``, ``plot-histogram`` and
``plot-scatter`` commands), and the figures ``calibkit evaluate --plots`` adds to
a result folder: the dataset histogram and the diagrams of the worst-calibrated
cases. Every writer checks the file name before drawing and writes atomically.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from calibkit.io.atomic import staged_folder
from calibkit.io.results import load_per_image
from calibkit.plots._folders import ResultDirs
from calibkit.plots._selection import (
    DEFAULT_COLUMNS,
    MAX_CLASSES,
    check_columns,
    check_max_classes,
    classes_per_case,
)
from calibkit.plots.diagram import ReliabilityDiagramDisplay
from calibkit.plots.histogram import ReliabilityHistogramDisplay
from calibkit.plots.scatter import (
    MEAN_CLASS,
    CalibrationScatterDisplay,
    ScatterKind,
    worst_calibrated_cases,
)
from calibkit.plots.style import PathLike, _close, figure_format, save_figure

__all__ = [
    "save_evaluation_figures",
    "write_calibration_scatter",
    "write_evaluation_figures",
    "write_reliability_diagram",
    "write_reliability_histogram",
]


def write_reliability_diagram(
    result_dirs: ResultDirs,
    out: PathLike,
    *,
    case_id: str,
    classes: Sequence[str] | None = None,
    labels: Sequence[str] | None = None,
    columns: int = DEFAULT_COLUMNS,
    max_classes: int = MAX_CLASSES,
) -> Path:
    """Draw one case's reliability diagrams from result folders and save them to ``out``.

    Without ``classes``, at most ``max_classes`` classes are drawn (0: all), the worst
    by the case's ACE; panels wrap after ``columns`` per row.

    Raises:
        CalibkitError: bad suffix, folder, case, class or option; nothing is written then.
    """
    figure_format(out)
    check_columns(columns)
    check_max_classes(max_classes)
    display = ReliabilityDiagramDisplay.from_evaluation(
        result_dirs, case_id, classes=classes, labels=labels, max_classes=max_classes
    ).plot(columns=columns)
    return save_figure(display.figure_, out)


def write_reliability_histogram(
    result_dirs: ResultDirs,
    out: PathLike,
    *,
    classes: Sequence[str] | None = None,
    labels: Sequence[str] | None = None,
    columns: int = DEFAULT_COLUMNS,
    max_classes: int = MAX_CLASSES,
) -> Path:
    """Draw the dataset reliability histograms of result folders (a row each) into ``out``.

    Without ``classes``, at most ``max_classes`` classes are drawn (0: all), the worst
    by mean ACE over cases; panels wrap after ``columns`` per row.

    Raises:
        CalibkitError: bad suffix, folder, class or option; nothing is written then.
    """
    figure_format(out)
    check_columns(columns)
    check_max_classes(max_classes)
    display = ReliabilityHistogramDisplay.from_evaluation(
        result_dirs, classes=classes, labels=labels, max_classes=max_classes
    ).plot(columns=columns)
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
    columns: int = DEFAULT_COLUMNS,
    max_classes: int = MAX_CLASSES,
) -> list[Path]:
    """Figures of one result folder, written into ``result_dir / "figures"``.

    Writes ``reliability_histogram.<fmt>`` and ``reliability_diagram_<case>.<fmt>``
    for the ``n_worst`` cases with the largest per-case mean ACE. The histogram
    draws at most ``max_classes`` classes (the worst by mean ACE over cases); the
    case diagrams share ``max_classes`` panels (each the case's worst classes: 12
    over 3 cases is 4 each), so that many classes cost a bounded number of panels.
    The figures appear together or not at all (they are staged first), so a full
    disk leaves the earlier figures as they were.

    Args:
        result_dir: a folder written by ``calibkit evaluate``.
        n_worst: number of worst-calibrated cases to draw.
        formats: file formats, from ``png``, ``pdf``, ``svg``.
        label: the name of the run in the histogram (default: the folder's name).
        columns: class panels per row.
        max_classes: the most classes in the histogram, and the class panels the
            case diagrams share (:func:`~calibkit.plots.classes_per_case`); 0 draws
            every class in every figure.

    Returns:
        The paths written, the histogram first.

    Raises:
        WriteError: a figure cannot be written; nothing in the folder changed.
    """
    folder = Path(result_dir)
    with staged_folder(folder) as staging:
        written = save_evaluation_figures(
            folder,
            staging,
            n_worst=n_worst,
            formats=formats,
            label=label,
            columns=columns,
            max_classes=max_classes,
        )
    return [folder / path.relative_to(staging) for path in written]


def save_evaluation_figures(
    result_dir: PathLike,
    target: PathLike,
    *,
    n_worst: int = 3,
    formats: Sequence[str] = ("png",),
    label: str | None = None,
    columns: int = DEFAULT_COLUMNS,
    max_classes: int = MAX_CLASSES,
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
        columns: class panels per row.
        max_classes: the most classes in the histogram (by mean ACE over cases), and
            the class panels the case diagrams share (each the case's worst by ACE);
            0 draws every class in every figure.

    Returns:
        The paths written, the histogram first.
    """
    folder, figures = Path(result_dir), Path(target) / "figures"
    suffixes = ["." + fmt.lower().lstrip(".") for fmt in formats]
    for suffix in suffixes:
        figure_format(figures / f"check{suffix}")
    check_columns(columns)
    check_max_classes(max_classes)
    cases = worst_calibrated_cases(load_per_image(folder), n_worst)
    labels = None if label is None else [label]
    histogram = ReliabilityHistogramDisplay.from_evaluation(
        folder, labels=labels, max_classes=max_classes
    ).plot(columns=columns)
    per_case = classes_per_case(max_classes, len(cases))
    diagrams = [
        ReliabilityDiagramDisplay.from_evaluation(folder, case, max_classes=per_case).plot(
            columns=columns
        )
        for case in cases
    ]
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
