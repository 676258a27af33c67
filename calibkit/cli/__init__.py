"""The ``calibkit`` command line: parse, call one library function, render.

Each command lives in its own module and registers itself on the shared Typer
``app`` (:mod:`calibkit.cli.app`); importing this package registers them all.
"""

from calibkit.cli import compare as _compare  # noqa: F401  (compare, summarize, gate)
from calibkit.cli import demo as _demo  # noqa: F401  (registers its command)
from calibkit.cli import evaluate as _evaluate  # noqa: F401  (registers its command)
from calibkit.cli import plots as _plots  # noqa: F401  (plot-diagram, -histogram, -scatter)
from calibkit.cli import temperature as _temperature  # noqa: F401  (fit-/apply-temperature)
from calibkit.cli import train as _train  # noqa: F401  (train, predict)
from calibkit.cli.app import app

__all__ = ["app", "main"]


def main() -> None:
    """Console-script entry point."""
    app(prog_name="calibkit")
