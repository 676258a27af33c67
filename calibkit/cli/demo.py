"""``calibkit demo``: the whole pipeline on the bundled sample data."""

from pathlib import Path
from typing import Annotated, Optional

import typer

from calibkit.cli.app import app, stderr, stdout, user_errors
from calibkit.formatting import format_number


@app.command(
    "demo",
    epilog="Examples:\n\n  calibkit demo\n\n  calibkit demo --out /tmp/calibkit-demo",
)
def demo_cli(
    out: Annotated[Path, typer.Option("--out", "-o", help="Results folder.")] = Path(
        "results/demo"
    ),
    data: Annotated[
        Optional[Path],
        typer.Option(
            help="Sample data folder (brats/ and predictions/ or synthetic/); default: the"
            " repository's sample_data/, or (calibkit installed without the repository) a"
            " seeded copy generated once into ~/.cache/calibkit."
        ),
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing but errors.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks.")] = False,
) -> None:
    """Run evaluate, fit-temperature, compare, summarize and the plots on the sample data.

    Prints where every table and figure went.
    """
    with user_errors(debug):
        # Deferred: the library loads when the command runs (a fast calibkit --help).
        from calibkit.demo import run_demo

        def step(text: str) -> None:
            if not quiet:
                stderr.print(f"[dim]·[/] {text}", soft_wrap=True)

        result = run_demo(out, data=data, step=step)
        if quiet:
            return
        stdout.print(
            "\nmean ACE over cases: "
            + ", ".join(
                f"{name} {format_number(value, 3)}" for name, value in result.mean_ace.items()
            )
            + f"  (fitted temperature {result.temperature:.2f})\n"
        )
        for label, path in result.outputs:
            stdout.print(f"  {label:<34} {path}", soft_wrap=True)
        stdout.print(f"\nopen {result.out / 'summary.md'} first; the figures are PNG files.")
