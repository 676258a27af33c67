"""Shared look and saving of the figures: rc parameters, palette, panel sizes, file formats.

:data:`STYLE` sizes the text and lines of every display, :data:`OKABE_ITO` and
:data:`RUN_MARKERS` tell runs apart, and :func:`save_figure` writes a figure as
PNG, PDF or SVG, byte for byte the same each time. The small helpers that make a
figure, check given axes and label a row serve every display. matplotlib is
imported inside the functions that need it.
"""

from __future__ import annotations

import io
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

import numpy as np
import numpy.typing as npt

from calibkit.errors import OutputError
from calibkit.io.atomic import atomic_write_bytes, write_error
from calibkit.plots._selection import panel_rows

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["FIGURE_FORMATS", "figure_format", "save_figure"]


PathLike = Union[str, "os.PathLike[str]"]

FIGURE_FORMATS = (".png", ".pdf", ".svg")
PNG_DPI = 200
PANEL_WIDTH = 3.0  # inches per panel column: two columns fit a 7-inch page width
NOTE_HEIGHT = 0.2  # inches for a title line that says which classes a figure draws
# Okabe & Ito (2008): distinguishable with every common colour-vision deficiency.
OKABE_ITO = ("#0072B2", "#D55E00", "#009E73", "#E69F00", "#56B4E9", "#CC79A7", "#000000")
RUN_MARKERS = ("o", "s", "^", "D", "v", "P", "X")

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


def _panel_axes(
    figure: Figure,
    n_panels: int,
    columns: int,
    rows_per_panel: int,
    *,
    height_ratios: list[float] | None = None,
    share: bool = False,
) -> npt.NDArray[np.object_]:
    """Axes for ``n_panels`` panels that wrap after ``columns`` per row.

    A panel is a stack of ``rows_per_panel`` axes (a row per run, or a diagram above
    its counts). Slots past the last panel stay empty.

    Args:
        figure: the figure to add the axes to.
        n_panels: how many panels (classes).
        columns: panels per row, at most.
        rows_per_panel: axes stacked in each panel.
        height_ratios: relative heights of the axes in a panel's stack.
        share: every axes shares x and y with the first.

    Returns:
        ``(rows_per_panel, n_panels)`` axes: ``[k, p]`` is axes ``k`` of panel ``p``,
        wherever the panel sits.
    """
    block_rows, used = panel_rows(n_panels, columns)
    grid = figure.add_gridspec(
        block_rows * rows_per_panel,
        used,
        height_ratios=None if height_ratios is None else list(height_ratios) * block_rows,
    )
    axes = np.empty((rows_per_panel, n_panels), dtype=object)
    # Added row by row across the figure, as Figure.subplots does, so that a figure
    # of one row is the same, to the byte, as before panels wrapped.
    for row in range(block_rows * rows_per_panel):
        block, k = divmod(row, rows_per_panel)
        for column in range(used):
            panel = block * used + column
            if panel < n_panels:
                first = axes[0, 0] if share else None
                axes[k, panel] = figure.add_subplot(grid[row, column], sharex=first, sharey=first)
    return axes


def _axes_grid(axes: Any, shape: tuple[int, int], what: str) -> npt.NDArray[np.object_]:
    grid = np.asarray(axes, dtype=object)
    if grid.size != shape[0] * shape[1]:
        raise ValueError(f"{what} needs {shape[0]} x {shape[1]} axes, got {grid.size}")
    return grid.reshape(shape)


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
