"""``calibkit prebuild``: compile the kernels once, when calibkit is installed."""

import time
from typing import Annotated

import typer

from calibkit.cli.app import app, stdout, user_errors
from calibkit.errors import CalibkitError


@app.command(
    "prebuild",
    epilog=(
        "Examples:\n\n  pip install calibkit && calibkit prebuild\n\n"
        "  RUN pip install calibkit && calibkit prebuild   (a Dockerfile)"
    ),
)
def prebuild_cli(
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing but errors.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks.")] = False,
) -> None:
    """Compile the binning kernels (and the soft loss's, with torch) once per install.

    Otherwise the first command that bins compiles what it needs (a few seconds,
    once). Run it as the user who installed calibkit: on a shared, read-only
    install every user then reads the kernels from the package's own cache.
    """
    with user_errors(debug):
        # Deferred: numba loads when the command runs (a fast calibkit --help).
        from calibkit.binning import compile_kernels

        start = time.perf_counter()
        build = compile_kernels()
        losses_built = _compile_loss_kernels()
        seconds = time.perf_counter() - start
        if build is not None and build.cache_dir is None:
            raise CalibkitError(
                "no writable folder for numba's cache (calibkit's __pycache__, "
                "~/.cache/calibkit or the temporary folder): set NUMBA_CACHE_DIR"
            )
        if quiet:
            return
        if build is None:
            stdout.print("numba is not installed: the numpy kernels need no compiling")
            return
        losses = "; the soft loss's kernels too" if losses_built else ""
        stdout.print(
            f"{build.compiled} kernel versions compiled, {build.loaded} already cached,"
            f" in {seconds:.1f} s; cache: {build.cache_dir}{losses}",
            soft_wrap=True,
            markup=False,
        )


def _compile_loss_kernels() -> bool:
    """The soft loss's CPU kernels too, when torch is installed (training needs them)."""
    import importlib.util

    if importlib.util.find_spec("torch") is None:
        return False
    # Deferred: torch loads only here (and only when it is installed).
    from calibkit.losses._bin_sums import compile_soft_kernels

    return compile_soft_kernels()
