"""``--scheduler`` and ``--scheduler-timeout``: the options that send cases to a Dask cluster."""

from typing import TYPE_CHECKING, Annotated, Optional

import typer

if TYPE_CHECKING:
    from calibkit.cluster import DaskExecutor

SchedulerOption = Annotated[
    Optional[str],
    typer.Option(
        "--scheduler",
        help="Run the cases on a Dask cluster: tcp://HOST:8786, or local:N for N worker "
        "processes here; none: here. Default: $CALIBKIT_SCHEDULER, else calibkit.scheduler "
        "in Dask's config (calibkit.yaml). Needs calibkit[distributed].",
    ),
]
SchedulerTimeoutOption = Annotated[
    Optional[float],
    typer.Option(
        "--scheduler-timeout",
        help="Seconds to wait for the scheduler and its first worker (default 30).",
    ),
]


def cluster_executor(
    scheduler: str | None, scheduler_timeout: float | None, *, workers: int = 1
) -> "DaskExecutor | None":
    """The Dask executor the options (or the environment) name; None: run here."""
    # Deferred: the library loads when the command runs (a fast calibkit --help).
    from calibkit.cluster import cluster_executor as executor_from_settings

    return executor_from_settings(scheduler, scheduler_timeout, workers=workers)
