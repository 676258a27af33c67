"""``calibkit fit-temperature`` and ``calibkit apply-temperature``: post-hoc temperature scaling."""

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
from calibkit.formatting import format_number

if TYPE_CHECKING:
    from calibkit.calibrate import FolderTemperature


@app.command(
    "fit-temperature",
    epilog=(
        "Examples:\n\n"
        "  calibkit fit-temperature sample_data/predictions/dsc sample_data/brats --preset brats"
        " --out t.json\n\n"
        "  calibkit fit-temperature val_preds/ labelsTr/ --per-class --out t.json\n\n"
        "  calibkit fit-temperature val_logits/ labels/ --input logits --activation sigmoid"
        " --max-voxels 5000000 --seed 1 --out t.json"
    ),
)
def fit_temperature_cli(
    predictions: Annotated[
        Path, typer.Argument(help="Folder of validation probability (or logit) maps.")
    ],
    labels: Annotated[Path, typer.Argument(help="Folder of integer label maps.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="JSON file for the temperature.")],
    per_class: Annotated[
        bool, typer.Option("--per-class", help="One temperature per prediction channel.")
    ] = False,
    activation: Annotated[
        ActivationName,
        typer.Option(
            help="softmax: exclusive classes (cross-entropy); sigmoid: per channel (BCE). "
            + ACTIVATION_HELP
        ),
    ] = ActivationName.auto,
    input_kind: Annotated[
        InputKind, typer.Option("--input", help="What the prediction files hold.")
    ] = InputKind.probabilities,
    preset: PresetOption = None,
    classes: ClassValuesOption = None,
    class_names: ClassNamesOption = None,
    region: RegionOption = None,
    classes_from: ClassesFromOption = None,
    include_background: IncludeBackgroundOption = False,
    n_bins: Annotated[int, typer.Option(help="Bins of the reported ACE.")] = 20,
    max_voxels: Annotated[
        int, typer.Option(help="Voxels sampled in all, spread evenly over the cases.")
    ] = 2_000_000,
    seed: Annotated[int, typer.Option(help="Seed of the voxel sampling.")] = 0,
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
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace --out if it exists.")
    ] = False,
    scheduler: SchedulerOption = None,
    scheduler_timeout: SchedulerTimeoutOption = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing but errors.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks.")] = False,
) -> None:
    """Fit a temperature T on a validation folder: minimise the NLL of LABELS under PREDICTIONS / T.

    Writes T, the NLL and ACE before and after (on the sampled voxels), the options and
    the calibkit version to --out.
    """
    with user_errors(debug):
        # Deferred: the library loads when the command runs (a fast calibkit --help).
        from calibkit.calibrate import fit_temperature_folder
        from calibkit.io.pairing import DEFAULT_CASE_SUFFIXES
        from calibkit.io.temperature import check_output_file, save_temperature
        from calibkit.records import EvaluationOptions

        options = EvaluationOptions(
            n_bins=n_bins,
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
            backend="numpy",
        )
        check_output_file(out, overwrite=overwrite)
        executor = cluster_executor(scheduler, scheduler_timeout)
        with case_progress(show_progress(quiet)) as (on_start, advance):
            result = fit_temperature_folder(
                predictions,
                labels,
                options=options,
                per_class=per_class,
                max_voxels=max_voxels,
                seed=seed,
                activation=activation.value,
                progress=advance,
                on_start=on_start,
                executor=executor,
            )
        save_temperature(result, out)
        for note in result.warnings:
            stderr.print(f"[yellow]warning:[/] {note}", soft_wrap=True)
        if not quiet:
            _print_fit(result)
            stdout.print(f"wrote {out}", soft_wrap=True)


def _print_fit(result: "FolderTemperature") -> None:
    from rich.table import Table

    fit = result.fit
    values = ", ".join(f"{t:.4g}" for t in fit.temperatures)
    stdout.print(
        f"T = {values} ({fit.activation}, {'per channel' if fit.per_class else 'one for all'} "
        f"{result.n_channels} channels) from {fit.n_voxels:,} voxels of "
        f"{len(result.case_ids)} cases; NLL {fit.nll_before:.4f} -> {fit.nll_after:.4f}",
        soft_wrap=True,
    )
    table = Table(
        title="ACE on the sampled voxels: mean over cases, and pooled", title_justify="left"
    )
    table.add_column("class")
    for heading in ("ACE before", "ACE after", "pooled before", "pooled after"):
        table.add_column(heading, justify="right")
    for name in [*result.class_names, "mean"]:
        table.add_row(
            name,
            format_number(result.ace_before[name], 4),
            format_number(result.ace_after[name], 4),
            format_number(result.ace_pooled_before[name], 4),
            format_number(result.ace_pooled_after[name], 4),
        )
    print_table(table)


@app.command(
    "apply-temperature",
    epilog=(
        "Examples:\n\n"
        "  calibkit apply-temperature sample_data/predictions/dsc --temperature t.json"
        " --out calibrated/dsc\n\n"
        "  calibkit apply-temperature test_logits/ --input logits --temperature t.json"
        " --out calibrated/"
    ),
)
def apply_temperature_cli(
    predictions: Annotated[Path, typer.Argument(help="Folder of probability (or logit) maps.")],
    temperature: Annotated[
        Path, typer.Option("--temperature", "-t", help="JSON file from fit-temperature.")
    ],
    out: Annotated[
        Path,
        typer.Option("--out", "-o", help="Folder for the calibrated maps (outside PREDICTIONS)."),
    ],
    input_kind: Annotated[
        InputKind, typer.Option("--input", help="What the prediction files hold.")
    ] = InputKind.probabilities,
    suffix: Annotated[
        Optional[list[str]],
        typer.Option(help="Extra file-name suffix stripped to get case ids (repeatable)."),
    ] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace maps already in --out.")
    ] = False,
    scheduler: SchedulerOption = None,
    scheduler_timeout: SchedulerTimeoutOption = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing but errors.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks.")] = False,
) -> None:
    """Write calibrated probability maps of PREDICTIONS with a fitted temperature.

    Same file names, geometry, header and storage type (uint8 stays uint8) as the inputs.
    """
    with user_errors(debug):
        # Deferred: the library loads when the command runs (a fast calibkit --help).
        from calibkit.calibrate import apply_temperature_folder
        from calibkit.io.pairing import DEFAULT_CASE_SUFFIXES
        from calibkit.records import EvaluationOptions

        options = EvaluationOptions(
            input_kind=input_kind.value,  # type: ignore[arg-type]
            suffixes=tuple(DEFAULT_CASE_SUFFIXES) + tuple(suffix or ()),
            backend="numpy",
        )
        executor = cluster_executor(scheduler, scheduler_timeout)
        with case_progress(show_progress(quiet)) as (on_start, advance):
            applied = apply_temperature_folder(
                predictions,
                temperature,
                out,
                options=options,
                overwrite=overwrite,
                progress=advance,
                on_start=on_start,
                executor=executor,
            )
        if not quiet:
            stdout.print(
                f"applied {applied.model.describe()} to {len(applied.outputs)} case(s); "
                f"wrote {out}",
                soft_wrap=True,
            )
