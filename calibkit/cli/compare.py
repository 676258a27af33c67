"""``calibkit compare``, ``summarize`` and ``gate``: statistics, paper tables, CI gate.

All three read run folders of either layout: ``calibkit evaluate`` results
(``per_image.csv``) or the paper authors' ``{ace,ece,mce,mean_dice}_raw.csv``.
"""

import os
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from rich.markup import escape

from calibkit.cli.app import app, name_list, print_table, stderr, stdout, user_errors
from calibkit.errors import CalibkitError, OutputError
from calibkit.formatting import format_number

if TYPE_CHECKING:
    from calibkit.gate import GateReport
    from calibkit.runs import Comparison

_METRICS = ("ace", "ece", "mce", "dice")


class PairedTest(str, Enum):
    wilcoxon = "wilcoxon"
    ttest = "ttest"


class Correction(str, Enum):
    holm = "holm"
    none = "none"


class TableFormatChoice(str, Enum):
    markdown = "markdown"
    csv = "csv"
    latex = "latex"


class StatisticChoice(str, Enum):
    mean = "mean"
    median = "median"


def metric_list(text: str | None) -> list[str] | None:
    """Parse ``--metrics ace,dice``; unknown names are a usage error (exit 2)."""
    if text is None:
        return None
    metrics = [part.strip().lower() for part in text.split(",") if part.strip()]
    unknown = [metric for metric in metrics if metric not in _METRICS]
    if unknown or not metrics:
        raise typer.BadParameter(
            f"unknown metric(s) {', '.join(unknown) or '(none)'}; use a comma-separated list "
            f"of {', '.join(_METRICS)}",
            param_hint="--metrics",
        )
    return list(dict.fromkeys(metrics))


def _names(text: str | None, count: int) -> list[str] | None:
    names = name_list(text)
    if names is None:
        return None
    if len(names) != count or not all(names):
        raise typer.BadParameter(
            f"expected {count} comma-separated names, one per folder, got {text!r}",
            param_hint="--names",
        )
    return list(names)


def _p_text(p: float) -> str:
    if p != p:  # NaN
        return "n/a"
    return f"{p:.3f}" if p >= 1e-3 else f"{p:.1e}"


def _number(value: float, spec: str) -> str:
    return "n/a" if value != value else format(value, spec)


@app.command(
    "compare",
    epilog=(
        "Examples:\n\n"
        "  calibkit compare results/dsc results/dsc_ace\n\n"
        "  calibkit compare sample_data/reference/ace-dliris/baseline_dice"
        " sample_data/reference/ace-dliris/hardl1ace_dice --metrics ace,mce --names DSC,DSC+ACE\n\n"
        "  calibkit compare results/a results/b --test ttest --correction none --out stats.csv"
    ),
)
def compare_cli(
    run_a: Annotated[Path, typer.Argument(help="Run A, the reference (result or paper folder).")],
    run_b: Annotated[Path, typer.Argument(help="Run B, compared against A (differences B - A).")],
    metrics: Annotated[
        Optional[str],
        typer.Option(help="Comma-separated metrics, e.g. ace,dice (default: all both runs hold)."),
    ] = None,
    test: Annotated[
        PairedTest, typer.Option(help="Wilcoxon signed-rank or paired t-test, two-sided.")
    ] = PairedTest.wilcoxon,
    correction: Annotated[
        Correction, typer.Option(help="Holm adjustment across all metrics and classes, or none.")
    ] = Correction.holm,
    names: Annotated[
        Optional[str], typer.Option(help="Display names of A and B, e.g. DSC,DSC+ACE.")
    ] = None,
    out: Annotated[
        Optional[Path],
        typer.Option("--out", "-o", help="Write the table to FILE.csv or FILE.json."),
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing but errors.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks.")] = False,
) -> None:
    """Paired tests of run B against run A, per class and for the per-case mean.

    Cases are paired by case id; cases missing in one run and NaN pairs are counted.

    Effect size: matched-pairs rank-biserial correlation of B - A (negative: B lower).
    """
    metric_names = metric_list(metrics)
    display = _names(names, 2)
    suffix = out.suffix.lower() if out is not None else None
    if suffix not in (None, ".csv", ".json"):
        raise typer.BadParameter("the file name must end in .csv or .json", param_hint="--out")
    with user_errors(debug):
        # Deferred: the library loads when the command runs (a fast calibkit --help).
        from calibkit.runs import compare_runs

        comparison = compare_runs(
            run_a,
            run_b,
            metrics=metric_names,
            test=test.value,  # type: ignore[arg-type]
            correction=correction.value,  # type: ignore[arg-type]
            names=display,
        )
        # The runs by their display names (--names, else the folder names), each with
        # its letter, as in the table's title "A = ..., B = ...".
        a = f"{comparison.run_a.name} (A)"
        b = f"{comparison.run_b.name} (B)"
        for ids, has, lacks in ((comparison.only_in_a, a, b), (comparison.only_in_b, b, a)):
            if ids:
                shown = ", ".join(ids[:5]) + (", ..." if len(ids) > 5 else "")
                stderr.print(
                    f"[yellow]warning:[/] {len(ids)} case(s) of {escape(has)} are missing in "
                    f"{escape(lacks)} and left out of the pairs: {escape(shown)}",
                    soft_wrap=True,
                )
        if out is not None:
            _write_comparison(comparison, out)
        if not quiet:
            _print_comparison(comparison)
            if out is not None:
                stdout.print(f"wrote {out}", soft_wrap=True)


def _write_comparison(comparison: "Comparison", out: Path) -> None:
    # Deferred: the library loads when the command runs (a fast calibkit --help).
    import json

    from calibkit.io.atomic import atomic_write_text

    if out.suffix.lower() == ".json":
        text = json.dumps(comparison.record(), indent=2, allow_nan=False) + "\n"
    else:
        table = comparison.table.assign(
            run_a=comparison.run_a.name,
            run_b=comparison.run_b.name,
            test=comparison.test,
            correction=comparison.correction,
        )
        text = table.to_csv(index=False, lineterminator="\n")
    atomic_write_text(out, text)


def _print_comparison(comparison: "Comparison") -> None:
    from rich.table import Table

    rows = comparison.table.to_dict("records")
    a, b = escape(comparison.run_a.name), escape(comparison.run_b.name)
    adjusted = "Holm-adjusted" if comparison.correction == "holm" else "not adjusted"
    table = Table(
        title=(
            f"A = {a}, B = {b}: paired {comparison.test} test, two-sided, by case id\n"
            f"means over paired cases, Δ = B − A, r = rank-biserial (< 0: B lower), "
            f"p adj: {adjusted} over {len(rows)} tests"
        ),
        title_justify="left",
    )
    headings = ["metric", "class", "n", "mean A", "mean B", "change %", "median Δ", "r", "p"]
    headings += ["p adj", "left out"]
    for i, heading in enumerate(headings):
        table.add_column(heading, justify="left" if i < 2 or i == 10 else "right")
    for row in rows:
        left_out = [
            f"{row['n_nan']} NaN" if row["n_nan"] else "",
            f"{row['n_missing_b']} only in A" if row["n_missing_b"] else "",
            f"{row['n_missing_a']} only in B" if row["n_missing_a"] else "",
        ]
        table.add_row(
            str(row["metric"]),
            escape(str(row["class"])),
            str(row["n"]),
            format_number(row["mean_a"], 4),
            format_number(row["mean_b"], 4),
            _number(row["change_pct"], "+.1f"),
            format_number(row["median_diff"], 4, sign=True),
            _number(row["effect_size"], "+.2f"),
            _p_text(row["p"]),
            _p_text(row["p_adjusted"]),
            ", ".join(part for part in left_out if part) or "-",
        )
    print_table(table)


_SUFFIX_FORMATS = {".md": "markdown", ".markdown": "markdown", ".csv": "csv", ".tex": "latex"}


@app.command(
    "summarize",
    epilog=(
        "Examples:\n\n"
        "  calibkit summarize results/dsc results/dsc_ace --names DSC,DSC+ACE\n\n"
        "  cd sample_data/reference/ace-dliris && calibkit summarize baseline_ce hardl1ace_ce"
        " baseline_dice hardl1ace_dice baseline_dice_ce hardl1ace_dice_ce --metrics ace\n\n"
        "  calibkit summarize results/* --format latex --out table.tex"
    ),
)
def summarize_cli(
    runs: Annotated[
        list[Path], typer.Argument(help="Run folders (calibkit results or paper layout).")
    ],
    names: Annotated[
        Optional[str], typer.Option(help="Row names, one per folder (default: folder names).")
    ] = None,
    metrics: Annotated[
        Optional[str],
        typer.Option(help="Comma-separated metrics, one table each (default: all runs hold)."),
    ] = None,
    table_format: Annotated[
        Optional[TableFormatChoice],
        typer.Option("--format", help="markdown (default), csv or latex; or from --out's suffix."),
    ] = None,
    decimals: Annotated[
        int,
        typer.Option(
            min=0,
            max=10,
            help="Decimals shown; a value they would erase shows 3 significant figures.",
        ),
    ] = 2,
    out: Annotated[
        Optional[Path], typer.Option("--out", "-o", help="Write the tables to this file.")
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing but errors.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks.")] = False,
) -> None:
    """Paper-style tables: mean ± std over cases per class and for the mean, runs as rows."""
    metric_names = metric_list(metrics)
    display = _names(names, len(runs))
    if table_format is not None:
        fmt = table_format.value
    elif out is not None and out.suffix.lower() in _SUFFIX_FORMATS:
        fmt = _SUFFIX_FORMATS[out.suffix.lower()]
    else:
        fmt = "markdown"
    with user_errors(debug):
        # Deferred: the library loads when the command runs (a fast calibkit --help).
        from calibkit.tables import render_summary, summarize_folders

        try:
            summary = summarize_folders(runs, names=display, metrics=metric_names)
        except ValueError as error:
            raise CalibkitError(str(error)) from None
        text = render_summary(summary, fmt, decimals)  # type: ignore[arg-type]
        if out is not None:
            # Deferred: the library loads when the command runs (a fast calibkit --help).
            from calibkit.io.atomic import atomic_write_text

            atomic_write_text(out, text)
            if not quiet:
                stdout.print(f"wrote {out}", soft_wrap=True)
        elif not quiet:
            typer.echo(text, nl=False)


@app.command(
    "gate",
    epilog=(
        "Examples:\n\n"
        "  calibkit gate results/model --max ace=0.15 --max mce=0.3 --min dice=0.8\n\n"
        "  calibkit gate results/model --per-class --max ace=0.2 --min dice:ET=0.7"
        " --junit report.xml\n\n"
        "  calibkit gate results/new --against results/released --max-increase ace=0.01"
        " --max-decrease dice=0.01"
    ),
)
def gate_cli(
    run: Annotated[Path, typer.Argument(help="Run folder to check (result or paper layout).")],
    max_bounds: Annotated[
        Optional[list[str]],
        typer.Option("--max", help="Upper bound METRIC=VALUE or METRIC:CLASS=VALUE (repeatable)."),
    ] = None,
    min_bounds: Annotated[
        Optional[list[str]],
        typer.Option("--min", help="Lower bound, e.g. dice=0.8 (repeatable)."),
    ] = None,
    per_class: Annotated[
        bool,
        typer.Option("--per-class", help="Check every class instead of the per-case mean."),
    ] = False,
    against: Annotated[
        Optional[Path], typer.Option(help="Baseline run folder for --max-increase/--max-decrease.")
    ] = None,
    max_increase: Annotated[
        Optional[list[str]],
        typer.Option("--max-increase", help="Largest allowed rise over the baseline, ace=0.01."),
    ] = None,
    max_decrease: Annotated[
        Optional[list[str]],
        typer.Option("--max-decrease", help="Largest allowed fall below the baseline, dice=0.01."),
    ] = None,
    statistic: Annotated[
        StatisticChoice, typer.Option(help="Statistic over cases compared with the bounds.")
    ] = StatisticChoice.mean,
    junit: Annotated[
        Optional[Path], typer.Option(help="Write a JUnit XML report (one test per bound, class).")
    ] = None,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="Print nothing but failures.")
    ] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks.")] = False,
) -> None:
    """Release gate: exit 0 when every bound holds, 1 when one fails, 2 on malformed bounds.

    Bounds apply to the mean (or median) over cases of the per-case mean over classes.

    --per-class checks every class instead; METRIC:CLASS=VALUE checks one class.

    With $GITHUB_STEP_SUMMARY set, a Markdown report is appended to that file.
    """
    # Deferred: the library loads when the command runs (a fast calibkit --help).
    from calibkit.gate import parse_bounds

    try:
        bounds = parse_bounds(
            max_bounds=max_bounds or (),
            min_bounds=min_bounds or (),
            max_increase=max_increase or (),
            max_decrease=max_decrease or (),
        )
    except ValueError as error:
        raise typer.BadParameter(str(error)) from None
    if not bounds:
        raise typer.BadParameter("give at least one bound: --max, --min, --max-increase")
    if against is None and any(bound.relative for bound in bounds):
        raise typer.BadParameter(
            "--max-increase / --max-decrease compare with a baseline: add --against DIR",
            param_hint="--against",
        )
    with user_errors(debug):
        # Deferred: the library loads when the command runs (a fast calibkit --help).
        from calibkit.gate import gate_folder, junit_xml, markdown_summary

        report = gate_folder(
            run,
            bounds,
            per_class=per_class,
            statistic=statistic.value,  # type: ignore[arg-type]
            against=against,
        )
        if junit is not None:
            # Deferred: the library loads when the command runs (a fast calibkit --help).
            from calibkit.io.atomic import atomic_write_text

            atomic_write_text(junit, junit_xml(report))
        summary_file = os.environ.get("GITHUB_STEP_SUMMARY")
        if summary_file:
            _append_summary(Path(summary_file), markdown_summary(report))
        for note in report.notes:
            stderr.print(f"[yellow]note:[/] {escape(note)}", soft_wrap=True)
        if not quiet:
            _print_gate(report)
        for check in report.failures:
            stderr.print(f"[bold red]FAILED[/] {escape(check.message)}", soft_wrap=True)
        if not quiet and junit is not None:
            stdout.print(f"wrote {junit}", soft_wrap=True)
    if not report.passed:
        raise typer.Exit(1)


def _append_summary(path: Path, text: str) -> None:

    try:
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(text)
    except OSError as error:
        raise OutputError(
            f"{path}: cannot append the summary ($GITHUB_STEP_SUMMARY): {error.strerror}"
        ) from None


def _print_gate(report: "GateReport") -> None:
    from rich.table import Table

    verdict = "[green]passed[/]" if report.passed else "[bold red]failed[/]"
    held = len(report.checks) - len(report.failures)
    table = Table(
        title=f"gate {verdict}: {held} of {len(report.checks)} bounds hold",
        caption=f"{escape(report.run)}, {report.statistic} over cases",
        title_justify="left",
        caption_justify="left",
    )
    for heading in ("bound", "class", "value", "baseline", "change", "limit", "n", "result"):
        table.add_column(heading, justify="left" if heading in ("bound", "class") else "right")
    relation = {"max": "<=", "min": ">=", "max_increase": "rise <=", "max_decrease": "fall <="}
    for check in report.checks:
        table.add_row(
            f"{check.bound.metric} {relation[check.bound.kind]}",
            escape(check.class_name),
            format_number(check.value, 4),
            "" if check.baseline is None else format_number(check.baseline, 4),
            "" if check.baseline is None else format_number(check.change, 4, sign=True),
            f"{check.bound.limit:g}",
            str(check.n),
            "[green]pass[/]" if check.passed else "[bold red]FAIL[/]",
        )
    print_table(table)
