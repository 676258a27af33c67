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

A figure with a panel per class wraps its panels after ``columns`` (default
:data:`DEFAULT_COLUMNS`, 4) per row and, unless classes are named, draws at most
:data:`MAX_CLASSES` (12): the worst-calibrated, worst first, with a title line
that says so (:func:`choose_classes`, :func:`class_note`); ``max_classes=0``
draws every class.

The pure computations (:func:`dataset_reliability_matrix`,
:func:`column_normalised`, :func:`counts_need_log_scale`, :func:`choose_classes`)
need no matplotlib.
matplotlib is imported inside the functions that draw, so importing this package
stays cheap. Figures are made with ``matplotlib.figure.Figure`` (no GUI backend,
no pyplot state) unless ``matplotlib.pyplot`` is already in use, in which case
they are made by pyplot so that they show in that session.

Modules, each importing only those listed after it: :mod:`~calibkit.plots.files`
(figure files from result folders), the displays :mod:`~calibkit.plots.diagram`,
:mod:`~calibkit.plots.histogram` and :mod:`~calibkit.plots.scatter`,
:mod:`~calibkit.plots._folders` (checks on the result folders a display reads),
:mod:`~calibkit.plots.style` (look, saving, the grid of panels) and
:mod:`~calibkit.plots._selection` (which classes, how many columns; no matplotlib).
"""

from __future__ import annotations

from calibkit.plots._folders import ResultDirs as ResultDirs
from calibkit.plots._selection import DEFAULT_COLUMNS as DEFAULT_COLUMNS
from calibkit.plots._selection import MAX_CLASSES as MAX_CLASSES
from calibkit.plots._selection import (
    check_columns,
    check_max_classes,
    choose_classes,
    class_note,
    classes_per_case,
    worst_first,
)
from calibkit.plots.diagram import COUNT_COLOUR as COUNT_COLOUR
from calibkit.plots.diagram import GAP_COLOUR as GAP_COLOUR
from calibkit.plots.diagram import LOG_COUNT_RATIO as LOG_COUNT_RATIO
from calibkit.plots.diagram import ReliabilityDiagramDisplay, counts_need_log_scale
from calibkit.plots.files import (
    save_evaluation_figures,
    write_calibration_scatter,
    write_evaluation_figures,
    write_reliability_diagram,
    write_reliability_histogram,
)
from calibkit.plots.histogram import HISTOGRAM_CMAP as HISTOGRAM_CMAP
from calibkit.plots.histogram import POWER_NORM_GAMMA as POWER_NORM_GAMMA
from calibkit.plots.histogram import (
    ReliabilityHistogramDisplay,
    column_normalised,
    dataset_reliability_matrix,
)
from calibkit.plots.scatter import MEAN_CLASS as MEAN_CLASS
from calibkit.plots.scatter import METRIC_LABELS as METRIC_LABELS
from calibkit.plots.scatter import CalibrationScatterDisplay, CaseValues, worst_calibrated_cases
from calibkit.plots.scatter import ScatterKind as ScatterKind
from calibkit.plots.style import FIGURE_FORMATS, figure_format, save_figure
from calibkit.plots.style import NOTE_HEIGHT as NOTE_HEIGHT
from calibkit.plots.style import OKABE_ITO as OKABE_ITO
from calibkit.plots.style import PANEL_WIDTH as PANEL_WIDTH
from calibkit.plots.style import PNG_DPI as PNG_DPI
from calibkit.plots.style import RUN_MARKERS as RUN_MARKERS
from calibkit.plots.style import SAVE_STYLE as SAVE_STYLE
from calibkit.plots.style import STYLE as STYLE
from calibkit.plots.style import PathLike as PathLike

__all__ = [
    "FIGURE_FORMATS",
    "CalibrationScatterDisplay",
    "CaseValues",
    "ReliabilityDiagramDisplay",
    "ReliabilityHistogramDisplay",
    "check_columns",
    "check_max_classes",
    "choose_classes",
    "class_note",
    "classes_per_case",
    "column_normalised",
    "counts_need_log_scale",
    "dataset_reliability_matrix",
    "figure_format",
    "save_evaluation_figures",
    "save_figure",
    "worst_calibrated_cases",
    "worst_first",
    "write_calibration_scatter",
    "write_evaluation_figures",
    "write_reliability_diagram",
    "write_reliability_histogram",
]
