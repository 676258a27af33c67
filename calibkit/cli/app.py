"""The Typer application and what every command shares: consoles, errors, progress.

Only typer and rich are imported at start-up; numpy, pandas, nibabel and torch
are imported inside the commands, so ``calibkit --help`` stays fast.
"""

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from enum import Enum
from typing import Annotated

import typer
from rich.console import Console, RenderableType
from rich.markup import escape

from calibkit._version import __version__
from calibkit.errors import CalibkitError

app = typer.Typer(
    name="calibkit",
    help=(
        "Measure, show and improve the calibration of medical image segmentation models "
        "(mL1-ACE / ECE / MCE, Barfoot et al., MICCAI 2024)."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)


class InputKind(str, Enum):
    """What prediction files hold (``--input``)."""

    probabilities = "probabilities"
    logits = "logits"


class ActivationName(str, Enum):
    """How logits become probabilities (``--activation``); auto: from the channels."""

    auto = "auto"
    softmax = "softmax"
    sigmoid = "sigmoid"


ACTIVATION_HELP = (
    "auto: softmax for mutually exclusive channels (a softmax map), sigmoid for one "
    "channel (a binary map) or region maps; softmax over one channel is refused."
)


# Piped output has no terminal width: keep table rows on one line in logs.
stdout = Console(highlight=False, width=None if sys.stdout.isatty() else 120)
stderr = Console(stderr=True, highlight=False)


def print_table(table: RenderableType) -> None:
    """Print a rich table whole, never with a number cut to ``0.…``.

    Cells wrap at spaces when the terminal is narrow (``0.185 ±`` over ``0.056``).
    Where rich would still have to cut a cell, the table is printed at its natural
    width instead, and the terminal folds its lines.
    """
    with stdout.capture() as trial:
        stdout.print(table)
    rendered = trial.get()
    if "…" not in rendered:
        stdout.file.write(rendered)  # the rendering above, not a second one
        return
    width = stdout.width
    # print() never renders wider than the console's own width: widen it for this table.
    stdout.width = stdout.measure(table, options=stdout.options.update_width(10_000)).maximum
    try:
        stdout.print(table, crop=False)
    finally:
        stdout.width = width


def _version(value: bool) -> None:
    if value:
        stdout.print(f"calibkit {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Show the version and exit."
        ),
    ] = False,
) -> None:
    """Measure, show and improve the calibration of segmentation models."""


@contextmanager
def user_errors(debug: bool) -> Iterator[None]:
    """Turn calibkit's errors into one line on stderr and exit code 1 (a traceback with --debug)."""
    try:
        yield
    except CalibkitError as error:
        if debug:
            raise
        # Escaped: a path such as "runs[1]" is text, not rich markup.
        message = escape(str(error))
        stderr.print(f"[bold red]error:[/] {message}", soft_wrap=True, markup=True, highlight=False)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        stderr.print("interrupted; finished cases are kept where a command supports --resume")
        raise typer.Exit(130) from None
    except BrokenPipeError:
        raise  # a closed reader of stdout (`| head`): main() ends quietly
    except OSError as error:
        # Writers report a full disk and the like as WriteError; this is the net for
        # any other operating-system error, so that none ends in a traceback.
        if debug:
            raise
        # Deferred: the library loads when the command runs (a fast calibkit --help).
        from calibkit.io.atomic import os_error_reason

        where = f"{error.filename}: " if error.filename else ""
        stderr.print(
            f"[bold red]error:[/] {escape(where)}{escape(os_error_reason(error))}",
            soft_wrap=True,
            markup=True,
            highlight=False,
        )
        raise typer.Exit(1) from None


def name_list(text: str | None) -> tuple[str, ...] | None:
    return None if text is None else tuple(part.strip() for part in text.split(","))


def show_progress(quiet: bool) -> bool:
    return not quiet and stderr.is_terminal


@contextmanager
def case_progress(
    enabled: bool,
) -> Iterator[tuple[Callable[[int], None] | None, Callable[[str], None] | None]]:
    """``(on_start, advance)`` callbacks driving a rich progress bar, or no-ops."""
    if not enabled:
        yield (None, None)
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    with Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[case]}"),
        console=stderr,
        transient=True,
    ) as bar:
        task = bar.add_task("evaluating", total=None, case="")

        def on_start(total: int) -> None:
            bar.update(task, total=total)

        def advance(case_id: str) -> None:
            bar.update(task, advance=1, case=case_id)

        yield (on_start, advance)
