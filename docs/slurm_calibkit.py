"""Run a calibkit command on SLURM jobs through dask-jobqueue.

    python docs/slurm_calibkit.py --jobs 10 -- \\
        calibkit evaluate preds/ labels/ --preset brats --out results/

On the login node (in the Python environment calibkit is installed in): starts a
Dask scheduler here, submits ``--jobs`` SLURM jobs of ``WORKERS_PER_JOB``
single-threaded Dask workers each, waits for the first worker, runs the command
with ``CALIBKIT_SCHEDULER`` set to this scheduler, and cancels the jobs at the end.
Every node must see the data, the output folder and this Python environment under
the same paths (a shared file system). Needs ``pip install 'calibkit[distributed]'``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

# One core per worker: a case is read and binned in one thread (reading dominates).
WORKERS_PER_JOB = 8
# One BraTS case (a 4 x 240 x 240 x 155 float32 softmax map and its label) took a
# fresh worker to 0.37 GiB (evaluate) and 0.47 GiB (fit-temperature) of peak memory
# (benchmarks/bench_dask.py); with 1 GiB a worker stays below the 60 % at which Dask
# starts spilling and the 80 % at which it pauses the worker.
MEMORY_PER_WORKER_GIB = 1


def slurm_cluster(
    *,
    queue: str | None = None,
    account: str | None = None,
    walltime: str = "01:00:00",
    prologue: Sequence[str] = (),
    **options: Any,
) -> Any:
    """A ``SLURMCluster`` whose jobs each run ``WORKERS_PER_JOB`` calibkit workers.

    ``prologue``: shell lines each job runs first (``source /shared/venv/bin/activate``).
    """
    from dask_jobqueue import SLURMCluster

    return SLURMCluster(
        cores=WORKERS_PER_JOB,
        processes=WORKERS_PER_JOB,  # so each worker has one thread
        memory=f"{WORKERS_PER_JOB * MEMORY_PER_WORKER_GIB}GiB",
        queue=queue,
        account=account,
        walltime=walltime,
        job_script_prologue=list(prologue),
        python=sys.executable,
        **options,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=1, help="SLURM jobs to start")
    parser.add_argument("--queue", help="SLURM partition")
    parser.add_argument("--account", help="SLURM account")
    parser.add_argument("--walltime", default="01:00:00")
    parser.add_argument("--prologue", action="append", default=[], help="shell line run first")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- calibkit COMMAND ...")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the calibkit command after --")

    from distributed import Client

    with (
        slurm_cluster(
            queue=args.queue,
            account=args.account,
            walltime=args.walltime,
            prologue=args.prologue,
        ) as cluster,
        Client(cluster) as client,
    ):
        cluster.scale(jobs=args.jobs)
        print(cluster.job_script(), file=sys.stderr)
        client.wait_for_workers(1)  # as long as the queue takes
        environment = {**os.environ, "CALIBKIT_SCHEDULER": cluster.scheduler_address}
        return subprocess.run(command, env=environment).returncode


if __name__ == "__main__":
    sys.exit(main())
