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
matplotlib is imported inside the functions that draw, so importing this package
stays cheap. Figures are made with ``matplotlib.figure.Figure`` (no GUI backend,
no pyplot state) unless ``matplotlib.pyplot`` is already in use, in which case
they are made by pyplot so that they show in that session.

Modules, each importing only those listed after it: :mod:`~calibkit.plots.files`
(figure files from result folders), the displays :mod:`~calibkit.plots.diagram`,
:mod:`~calibkit.plots.histogram` and :mod:`~calibkit.plots.scatter`,
:mod:`~calibkit.plots._folders` (checks on the result folders a display reads) and
:mod:`~calibkit.plots.style` (look and saving).
"""

from __future__ import annotations

from calibkit.plots._folders import ResultDirs as ResultDirs
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
