"""The ``calibkit`` command line: parse, call one library function, render.

Each command lives in its own module and registers itself on the shared Typer
``app`` (:mod:`calibkit.cli.app`); importing this package registers them all.
"""

import atexit
import os
import sys
import threading

from calibkit.cli import compare as _compare  # noqa: F401  (compare, summarize, gate)
from calibkit.cli import demo as _demo  # noqa: F401  (registers its command)
from calibkit.cli import evaluate as _evaluate  # noqa: F401  (registers its command)
from calibkit.cli import plots as _plots  # noqa: F401  (plot-diagram, -histogram, -scatter)
from calibkit.cli import prebuild as _prebuild  # noqa: F401  (registers its command)
from calibkit.cli import temperature as _temperature  # noqa: F401  (fit-/apply-temperature)
from calibkit.cli import train as _train  # noqa: F401  (train, predict)
from calibkit.cli.app import app

__all__ = ["app", "main"]


def main() -> None:
    """Console-script entry point (``calibkit`` and ``python -m calibkit``).

    When the command has finished, its files written and closed, the process ends
    without tearing down the interpreter: the atexit handlers run (logging,
    coverage) and the streams are flushed, then ``os._exit``. The teardown (pandas,
    numpy, rich) took about 0.3 s of every command and did nothing a user needs.
    An exception that is not an exit (a bug) still ends the usual way, with its
    traceback.
    """
    try:
        app(prog_name="calibkit")  # standalone mode: ends with SystemExit
    except SystemExit as done:
        code = _exit_status(done.code)
    else:
        code = 0
    others = [thread for thread in threading.enumerate() if thread is not threading.main_thread()]
    if any(thread.is_alive() and not thread.daemon for thread in others):
        sys.exit(code)  # the usual exit waits for them
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        if stream is None:  # started with the stream closed (`2>&-`)
            continue
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed reader (`| head`), a closed stream
            code = code or 1
    os._exit(code)


def _exit_status(code: object) -> int:
    """The process status ``sys.exit(code)`` would give; a message goes to stderr."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF if -(2**63) <= code < 2**63 else 255
    if sys.stderr is not None:
        print(code, file=sys.stderr)
    return 1
