"""``calibkit evaluate``: per-case calibration and Dice tables of a prediction folder."""

from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from calibkit.cli.app import (
    ACTIVATION_HELP,
    ActivationName,
    InputKind,
    app,
    case_progress,
    print_table,
    show_progress,
    stderr,
    stdout,
    user_errors,
)
from calibkit.cli.class_options import (
    ClassesFromOption,
    ClassNamesOption,
    ClassValuesOption,
    IncludeBackgroundOption,
    PresetOption,
    RegionOption,
    class_choice,
)
from calibkit.cli.cluster_options import (
    SchedulerOption,
    SchedulerTimeoutOption,
    cluster_executor,
)
from calibkit.formatting import format_mean_std, format_number

if TYPE_CHECKING:
    from calibkit.records import Evaluation


class Backend(str, Enum):
    auto = "auto"
    numpy = "numpy"
    torch = "torch"


class DiceMode(str, Enum):
    threshold = "threshold"
    argmax = "argmax"


@app.command(
    "evaluate",
    epilog=(
        "Examples:\n\n"
        "  calibkit evaluate sample_data/predictions/dsc sample_data/brats --preset brats"
        " --out results/dsc\n\n"
        "  calibkit evaluate preds/ labelsTr/ --classes 1,2 --class-names liver,tumour"
        " --out results/\n\n"
        "  calibkit evaluate logits/ labels/ --input logits --activation sigmoid --out results/"
    ),
)
def evaluate_cli(
    predictions: Annotated[
        Path,
        typer.Argument(
            help="Folder of probability maps (.nii.gz, .nii, .mha, .nrrd, 2-D .png / .tif, "
            "nnU-Net .npz)."
        ),
    ],
    labels: Annotated[
        Path, typer.Argument(help="Folder of integer label maps (BraTS case folders are searched).")
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the result tables.")],
    n_bins: Annotated[int, typer.Option(help="Number of equal-width probability bins.")] = 20,
    dice_threshold: Annotated[
        float, typer.Option(help="Dice counts a voxel positive when p >= this.")
    ] = 0.5,
    dice_mode: Annotated[
        DiceMode, typer.Option(help="threshold: per class (paper); argmax: exclusive classes.")
    ] = DiceMode.threshold,
    classes: ClassValuesOption = None,
    class_names: ClassNamesOption = None,
    region: RegionOption = None,
    classes_from: ClassesFromOption = None,
    include_background: IncludeBackgroundOption = False,
    preset: PresetOption = None,
    input_kind: Annotated[
        InputKind, typer.Option("--input", help="What the prediction files hold.")
    ] = InputKind.probabilities,
    activation: Annotated[
        ActivationName,
        typer.Option(
            help="Turns logits into probabilities (with --input logits). " + ACTIVATION_HELP
        ),
    ] = ActivationName.auto,
    suffix: Annotated[
        Optional[list[str]],
        typer.Option(help="Extra file-name suffix stripped to get case ids (repeatable)."),
    ] = None,
    allow_missing: Annotated[
        bool,
        typer.Option("--allow-missing", help="Skip cases without a partner (they are listed)."),
    ] = False,
    ignore_geometry: Annotated[
        bool,
        typer.Option("--ignore-geometry", help="Warn instead of failing on affine mismatches."),
    ] = False,
    workers: Annotated[int, typer.Option(help="Cases processed in parallel processes.")] = 1,
    scheduler: SchedulerOption = None,
    scheduler_timeout: SchedulerTimeoutOption = None,
    backend: Annotated[
        Backend,
        typer.Option(
            help="auto picks torch when a GPU is usable. On a CPU numpy (the compiled "
            "kernel) is 3-5x faster; torch there only cross-checks, or stands in without numba."
        ),
    ] = Backend.auto,
    device: Annotated[Optional[str], typer.Option(help="Torch device: cpu, cuda, cuda:1.")] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace results already in --out.")
    ] = False,
    strict: Annotated[
        bool,
        typer.Option("--strict", help="Fail when a softmax map's channels do not sum to 1."),
    ] = False,
    plots: Annotated[
        bool,
        typer.Option(
            "--plots", help="Also draw the dataset histogram and the worst cases' diagrams."
        ),
    ] = False,
    plot_worst: Annotated[
        int, typer.Option(help="With --plots: diagrams of this many worst-calibrated cases.")
    ] = 3,
    plot_columns: Annotated[
        int, typer.Option(help="With --plots: class panels per row; more wrap.")
    ] = 4,
    plot_max_classes: Annotated[
        int,
        typer.Option(
            help="With --plots: the histogram's most classes, the worst-calibrated; the "
            "worst cases' diagrams share as many panels (12 over 3 cases: 4 each); 0: all."
        ),
    ] = 12,
    temperature: Annotated[
        Optional[Path],
        typer.Option(help="Apply a fitted temperature (t.json from fit-temperature) first."),
    ] = None,
    resume: Annotated[
        bool,
        typer.Option("--resume", help="Continue an interrupted run in --out (same command)."),
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing but errors.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks.")] = False,
) -> None:
    """Per-case, per-class ACE / ECE / MCE / Dice of PREDICTIONS against LABELS.

    Writes per_image.csv, summary.csv, summary.json and bins.npz into --out.
    """
    with user_errors(debug):
        # Deferred: the library loads when the command runs (a fast calibkit --help).
        from calibkit.evaluate import EvaluationOptions, evaluate_to_folder
        from calibkit.io.pairing import DEFAULT_CASE_SUFFIXES
        from calibkit.plots import check_columns, check_max_classes, save_evaluation_figures

        executor = cluster_executor(scheduler, scheduler_timeout, workers=workers)
        options = EvaluationOptions(
            n_bins=n_bins,
            dice_threshold=dice_threshold,
            dice_mode=dice_mode.value,
            **class_choice(
                classes=classes,
                class_names=class_names,
                regions=region,
                preset=preset,
                classes_from=classes_from,
                include_background=include_background,
            ),
            input_kind=input_kind.value,  # type: ignore[arg-type]
            activation=activation.value,  # type: ignore[arg-type]
            ignore_geometry=ignore_geometry,
            allow_missing=allow_missing,
            suffixes=tuple(DEFAULT_CASE_SUFFIXES) + tuple(suffix or ()),
            backend=backend.value,  # type: ignore[arg-type]
            device=device,
            strict=strict,
            temperature=str(temperature) if temperature is not None else None,
        )

        # Checked before any case is read, not after the evaluation when figures are drawn.
        check_columns(plot_columns)
        check_max_classes(plot_max_classes)

        def figures(staging: Path) -> list[Path]:
            """The histogram and the worst cases' diagrams, staged with the tables."""
            return save_evaluation_figures(
                staging,
                staging,
                n_worst=plot_worst,
                label=out.resolve().name,
                columns=plot_columns,
                max_classes=plot_max_classes,
            )

        with case_progress(show_progress(quiet)) as (on_start, advance):
            evaluation, paths = evaluate_to_folder(
                predictions,
                labels,
                out,
                options,
                workers=workers,
                executor=executor,
                resume=resume,
                overwrite=overwrite,
                extra_files=[figures] if plots else [],
                progress=advance,
                on_start=on_start,
            )
        for note in evaluation.warnings:
            stderr.print(f"[yellow]warning:[/] {note}", soft_wrap=True)
        if not quiet:
            _print_summary(evaluation)
            stdout.print(f"wrote {', '.join(str(path) for path in paths)}", soft_wrap=True)


def _print_summary(evaluation: "Evaluation") -> None:
    from rich.table import Table

    table = Table(
        title=f"{len(evaluation.case_ids)} cases, {evaluation.options.n_bins} bins: "
        "mean ± std over cases, and pooled",
        title_justify="left",
    )
    table.add_column("class")
    for heading in ("ACE", "ECE", "MCE", "Dice", "pooled ACE"):
        table.add_column(heading, justify="right")
    rows = {(row["class"], row["metric"]): row for row in evaluation.summary.to_dict("records")}
    for name in [*evaluation.class_names, "mean"]:
        cells = [
            format_mean_std(rows[name, metric]["mean"], rows[name, metric]["std"], 3)
            for metric in ("ace", "ece", "mce", "dice")
        ]
        cells.append(format_number(rows[name, "ace"]["pooled"], 3))
        table.add_row(name, *cells)
    print_table(table)
