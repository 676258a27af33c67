"""``calibkit plot-diagram``, ``plot-histogram``, ``plot-scatter``: figures from result folders.

Each command reads what ``calibkit evaluate`` saved (``bins.npz``,
``per_image.csv``), draws one figure and writes it atomically; the format
follows the ``--out`` suffix (.png at 200 dpi, .pdf, .svg).
"""

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from calibkit.cli.app import app, name_list, stdout, user_errors

_RESULT_DIRS_HELP = "Result folder(s) written by calibkit evaluate; several draw a row each."
_SCATTER_DIRS_HELP = "Result folder(s) written by calibkit evaluate; a colour each."
_OUT_HELP = "Figure file; the suffix picks the format: .png (200 dpi), .pdf or .svg."
_LABELS_HELP = "One name per folder, comma-separated, e.g. 'DSC,DSC+ACE' (default: folder names)."
_CLASSES_HELP = (
    "Classes to draw, comma-separated, e.g. ET,WT; all of them are drawn "
    "(default: every class, or the --max-classes worst-calibrated)."
)
_COLUMNS_HELP = "Class panels per row; more wrap to further rows."
_MAX_CLASSES_HELP = (
    "Without --classes, draw at most this many classes, the worst-calibrated "
    "(the title says so); 0 draws every class."
)


class ScatterKind(str, Enum):
    scatter = "scatter"
    box = "box"


ResultDirsArgument = Annotated[list[Path], typer.Argument(help=_RESULT_DIRS_HELP, metavar="DIR")]
ScatterDirsArgument = Annotated[list[Path], typer.Argument(help=_SCATTER_DIRS_HELP, metavar="DIR")]
OutOption = Annotated[Path, typer.Option("--out", "-o", help=_OUT_HELP)]
LabelsOption = Annotated[Optional[str], typer.Option(help=_LABELS_HELP)]
ClassesOption = Annotated[Optional[str], typer.Option(help=_CLASSES_HELP)]
# The defaults are calibkit.plots' DEFAULT_COLUMNS and MAX_CLASSES (a test checks they agree);
# written out here so that calibkit --help does not import the library.
ColumnsOption = Annotated[int, typer.Option(help=_COLUMNS_HELP)]
MaxClassesOption = Annotated[int, typer.Option(help=_MAX_CLASSES_HELP)]
QuietOption = Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing but errors.")]
DebugOption = Annotated[bool, typer.Option("--debug", help="Show tracebacks.")]


@app.command(
    "plot-diagram",
    epilog=(
        "Examples:\n\n"
        "  calibkit plot-diagram results/dsc --case BraTS2021_S007 --out s007.png\n\n"
        "  calibkit plot-diagram results/dsc results/dsc_ace --labels 'DSC,DSC+ACE'"
        " --case BraTS2021_S007 --classes WT --out s007_wt.pdf\n\n"
        "  calibkit plot-diagram results/organs --case case_007 --max-classes 0 --columns 8"
        " --out all_organs.png"
    ),
)
def plot_diagram_cli(
    result_dirs: ResultDirsArgument,
    case: Annotated[str, typer.Option("--case", help="Case id to draw (see per_image.csv).")],
    out: OutOption,
    classes: ClassesOption = None,
    labels: LabelsOption = None,
    columns: ColumnsOption = 4,
    max_classes: MaxClassesOption = 12,
    quiet: QuietOption = False,
    debug: DebugOption = False,
) -> None:
    """Image reliability diagram of one case (paper Fig. 1): a panel per class.

    Gap bars from the mean predicted probability to the observed frequency of each
    bin, the diagonal, ACE / ECE / MCE, and the voxels per bin underneath. Without
    --classes, at most --max-classes classes: those with the case's worst ACE.
    """
    with user_errors(debug):
        # Deferred: the library loads when the command runs (a fast calibkit --help).
        from calibkit.plots import write_reliability_diagram

        path = write_reliability_diagram(
            result_dirs,
            out,
            case_id=case,
            classes=name_list(classes),
            labels=name_list(labels),
            columns=columns,
            max_classes=max_classes,
        )
        if not quiet:
            stdout.print(f"wrote {path}", soft_wrap=True)


@app.command(
    "plot-histogram",
    epilog=(
        "Examples:\n\n"
        "  calibkit plot-histogram results/dsc --out histogram.png\n\n"
        "  calibkit plot-histogram results/dsc results/dsc_ace --labels 'DSC,DSC+ACE'"
        " --out histogram.pdf"
    ),
)
def plot_histogram_cli(
    result_dirs: ResultDirsArgument,
    out: OutOption,
    labels: LabelsOption = None,
    classes: ClassesOption = None,
    columns: ColumnsOption = 4,
    max_classes: MaxClassesOption = 12,
    quiet: QuietOption = False,
    debug: DebugOption = False,
) -> None:
    """Dataset reliability histograms (paper Fig. 2): a panel per class, a row per folder.

    Column b shows, over images, where the observed frequency of confidence bin b
    falls; a calibrated model keeps to the diagonal. Same colour scale everywhere.
    Without --classes, at most --max-classes classes: those with the worst mean ACE.
    """
    with user_errors(debug):
        # Deferred: the library loads when the command runs (a fast calibkit --help).
        from calibkit.plots import write_reliability_histogram

        path = write_reliability_histogram(
            result_dirs,
            out,
            classes=name_list(classes),
            labels=name_list(labels),
            columns=columns,
            max_classes=max_classes,
        )
        if not quiet:
            stdout.print(f"wrote {path}", soft_wrap=True)


@app.command(
    "plot-scatter",
    epilog=(
        "Examples:\n\n"
        "  calibkit plot-scatter results/dsc results/dsc_ace --labels 'DSC,DSC+ACE'"
        " --metric ace,mce --out dice_vs_ace.png\n\n"
        "  calibkit plot-scatter results/dsc results/dsc_ace --kind box --class WT --out box.svg"
    ),
)
def plot_scatter_cli(
    result_dirs: ScatterDirsArgument,
    out: OutOption,
    labels: LabelsOption = None,
    metric: Annotated[
        str,
        typer.Option(help="Calibration metric(s) against Dice: ace, ece, mce, or e.g. ace,mce."),
    ] = "ace",
    kind: Annotated[
        ScatterKind, typer.Option(help="scatter: Dice vs metric; box: paired box plots.")
    ] = ScatterKind.scatter,
    class_name: Annotated[
        str, typer.Option("--class", help="A class name, or 'mean' (per-case mean over classes).")
    ] = "mean",
    quiet: QuietOption = False,
    debug: DebugOption = False,
) -> None:
    """Dice against calibration per case (paper Fig. 3), one colour per folder."""
    with user_errors(debug):
        # Deferred: the library loads when the command runs (a fast calibkit --help).
        from calibkit.plots import write_calibration_scatter

        path = write_calibration_scatter(
            result_dirs,
            out,
            labels=name_list(labels),
            class_name=class_name,
            metrics=name_list(metric.lower()) or (),
            kind=kind.value,  # type: ignore[arg-type]
        )
        if not quiet:
            stdout.print(f"wrote {path}", soft_wrap=True)
