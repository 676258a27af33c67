"""Cases on a Dask cluster (``--scheduler``): the executor and where its address comes from.

:class:`DaskExecutor` implements :class:`calibkit.execution.Executor` on
``dask.distributed``: one task per case on the workers of a running scheduler
(``tcp://host:8786``) or of a :class:`~distributed.LocalCluster` it starts
(``local:N``). The workers read the case files themselves, from the same paths as
this process (a shared file system), in this process's working folder; only the
small per-case results (bin statistics, fitting samples, output names) travel back.
Dask reruns the tasks of a worker that dies; a task's error (a bad file) comes back
as the same :class:`~calibkit.errors.CalibkitError` as in a local run.

The address comes from ``--scheduler``, else ``CALIBKIT_SCHEDULER``, else
``calibkit.scheduler`` in a ``calibkit.yaml`` in one of Dask's configuration folders
(``~/.config/dask``, ``$DASK_CONFIG``, ...; ``DASK_CALIBKIT__SCHEDULER`` too);
``none`` runs the cases here. dask is imported only when a cluster is used: it is
the optional extra ``calibkit[distributed]``.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import os
import pickle
import site
import socket
import sys
import threading
import traceback
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from calibkit.binning import numba_available
from calibkit.errors import CalibkitError, ClusterError, InputError

__all__ = [
    "DEFAULT_TIMEOUT",
    "INSTALL_HINT",
    "SCHEDULER_ENV",
    "TIMEOUT_ENV",
    "DaskExecutor",
    "SchedulerChoice",
    "cluster_executor",
    "scheduler_choice",
]

ItemT = TypeVar("ItemT")
ResultT = TypeVar("ResultT")

SCHEDULER_ENV = "CALIBKIT_SCHEDULER"
TIMEOUT_ENV = "CALIBKIT_SCHEDULER_TIMEOUT"
DEFAULT_TIMEOUT = 30.0
INSTALL_HINT = "pip install 'calibkit[distributed]'"
CONFIG_NAMES = ("calibkit.yaml", "calibkit.yml")
# Dask's own environment variables for the same settings (dask.config reads them).
_DASK_ENV_PREFIX = "DASK_CALIBKIT__"
# --scheduler none: run here, whatever the environment or the configuration says.
_HERE = ("", "none")
_LOCAL = "local:"


@dataclass(frozen=True)
class SchedulerChoice:
    """Where the cases run, and who said so.

    Attributes:
        address: ``tcp://host:port`` (any address Dask takes) or ``local:N``.
        timeout: seconds to wait for the scheduler (and for its first worker).
        origin: where the address came from, for messages (``--scheduler``,
            ``CALIBKIT_SCHEDULER`` or a configuration file).
    """

    address: str
    timeout: float
    origin: str


def scheduler_choice(
    option: str | None, timeout_option: float | None = None
) -> SchedulerChoice | None:
    """The cluster named by ``--scheduler``, ``CALIBKIT_SCHEDULER`` or ``calibkit.yaml``.

    Each setting is taken from the first of: the command line, the environment
    (``CALIBKIT_SCHEDULER``, ``CALIBKIT_SCHEDULER_TIMEOUT``), Dask's configuration
    (``calibkit.scheduler``, ``calibkit.scheduler-timeout``); the timeout defaults
    to 30 s.

    Returns:
        None when no cluster is named (or it is ``none``): the cases run here.

    Raises:
        CalibkitError: a timeout that is not a positive number of seconds, or a
            configuration file while Dask is not installed.
    """
    config: dict[str, Any] | None = None
    address: object
    if option is not None:
        address, origin = option, "--scheduler"
    elif os.environ.get(SCHEDULER_ENV) is not None:
        address, origin = os.environ[SCHEDULER_ENV], SCHEDULER_ENV
    else:
        config, origin = _dask_settings()
        address = config.get("scheduler")
    if address is None or str(address).strip().lower() in _HERE:
        return None
    timeout: object
    if timeout_option is not None:
        timeout, timeout_origin = timeout_option, "--scheduler-timeout"
    elif os.environ.get(TIMEOUT_ENV) is not None:
        timeout, timeout_origin = os.environ[TIMEOUT_ENV], TIMEOUT_ENV
    else:
        if config is None:
            config, _ = _dask_settings()
        timeout = config.get("scheduler-timeout", DEFAULT_TIMEOUT)
        timeout_origin = "calibkit.scheduler-timeout"
    return SchedulerChoice(str(address).strip(), _seconds(timeout, timeout_origin), origin)


def cluster_executor(
    option: str | None, timeout_option: float | None = None, *, workers: int = 1
) -> DaskExecutor | None:
    """The executor of ``--scheduler`` / ``CALIBKIT_SCHEDULER`` / ``calibkit.yaml``, if any.

    Args:
        option: ``--scheduler`` (None: look in the environment and the configuration).
        timeout_option: ``--scheduler-timeout`` in seconds.
        workers: ``--workers``; a local pool and a cluster exclude each other.

    Returns:
        None when the cases run here.

    Raises:
        CalibkitError: a bad address or timeout, ``--workers`` above 1 with a
            cluster, or Dask not installed.
    """
    choice = scheduler_choice(option, timeout_option)
    if choice is None:
        return None
    if workers != 1:
        raise CalibkitError(
            f"--workers {workers} runs the cases in processes here, but {choice.origin} "
            f"sends them to the cluster at {choice.address}: give one of them "
            "(--scheduler none runs here)"
        )
    return DaskExecutor(choice.address, timeout=choice.timeout, origin=choice.origin)


class DaskExecutor:
    """Cases as tasks on a Dask cluster, results reported here as they finish.

    Args:
        scheduler: the scheduler's address (``tcp://host:8786``), ``local:N`` (a
            :class:`~distributed.LocalCluster` of N single-threaded worker processes
            on this machine, started for each run), or a connected
            ``distributed.Client`` (used as it is, and left open).
        timeout: seconds to wait for the scheduler to answer, and then for its
            first worker, before giving up with a clear error.
        origin: where the address came from, named in errors.

    Raises:
        CalibkitError: Dask is not installed, or the address is malformed.
    """

    def __init__(
        self, scheduler: Any, *, timeout: float = DEFAULT_TIMEOUT, origin: str = "--scheduler"
    ) -> None:
        _require_distributed(origin)
        self.timeout = _seconds(timeout, "--scheduler-timeout")
        self.origin = origin
        self.client: Any = None
        self.address = ""
        self.local_workers = 0
        if not isinstance(scheduler, str):
            self.client = scheduler
            self.address = str(getattr(getattr(scheduler, "scheduler", None), "address", ""))
            return
        self.address = scheduler.strip()
        if self.address.lower().startswith(_LOCAL):
            count = self.address[len(_LOCAL) :]
            if not count.isdigit() or int(count) < 1:
                raise CalibkitError(
                    f"{origin} {self.address} is not local:N with a number of workers N >= 1"
                )
            self.local_workers = int(count)
        else:
            _check_address(self.address, origin)

    def run(
        self,
        task: Callable[[ItemT], ResultT],
        items: Mapping[str, ItemT],
        on_result: Callable[[str, ResultT], None],
    ) -> None:
        """Submit one task per item; report each result here as it ends, in any order.

        A failing task, a failing ``on_result`` or Ctrl-C cancels the tasks not yet
        finished (a task already running on a worker ends there; its result is
        dropped) and propagates.

        Raises:
            CalibkitError: the scheduler does not answer or has no worker within the
                timeout.
            ClusterError: a case killed every worker that ran it, or the cluster
                went away during the run.
        """
        import distributed

        folder = os.getcwd()
        run_id = uuid.uuid4().hex[:8]
        with self._connected() as client:
            pending: dict[Any, str] = {}
            for key, item in items.items():
                call = _WorkerCall(task, item, folder)
                # Unique keys: a scheduler keeps results by key, and a second run (or
                # another user's) must never receive this one's.
                future = client.submit(call, key=f"calibkit-{key}-{run_id}", pure=False)
                pending[future] = key
            try:
                for future in distributed.as_completed(list(pending), loop=client.loop):
                    case_id = pending.pop(future)
                    result = _result(future, case_id, self.address, distributed)
                    # Received: the worker may forget it (a lost worker's finished
                    # cases need no second run).
                    future.release()
                    on_result(case_id, result)
            except BaseException:
                # A bad case, a failed save or Ctrl-C: the remaining tasks never start.
                if pending:
                    client.cancel(list(pending))
                raise

    @contextmanager
    def _connected(self) -> Iterator[Any]:
        """A client of the scheduler (of a local cluster started here for ``local:N``)."""
        if self.client is not None:
            yield self.client
            return
        import distributed

        if self.local_workers:
            with (
                distributed.LocalCluster(
                    n_workers=self.local_workers,
                    threads_per_worker=1,
                    processes=True,
                    host="127.0.0.1",
                    dashboard_address=None,
                    # The scheduler serves /health and /metrics even without the
                    # dashboard, by default on port 8787 (a warning when taken).
                    scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
                    silence_logs=logging.ERROR,
                ) as cluster,
                distributed.Client(cluster, set_as_default=False) as client,
            ):
                yield client
            return
        try:
            client = distributed.Client(self.address, timeout=self.timeout, set_as_default=False)
        except (OSError, TimeoutError) as error:
            raise CalibkitError(
                f"cannot reach the Dask scheduler at {self.address} (from {self.origin}) within "
                f"{self.timeout:g} s: {_first_line(error)}; start it with `dask scheduler`, check "
                "the address, or wait longer with --scheduler-timeout"
            ) from None
        try:
            try:
                client.wait_for_workers(1, timeout=self.timeout)
            except (OSError, TimeoutError):
                raise CalibkitError(
                    f"the Dask scheduler at {self.address} has no worker after {self.timeout:g} s;"
                    f" start some (`dask worker {self.address}`) or wait longer with "
                    "--scheduler-timeout"
                ) from None
            yield client
        finally:
            client.close()


@dataclass(frozen=True)
class _WorkerCall(Generic[ItemT, ResultT]):
    """One case's task as it travels to a worker: the task, its item, the client's folder."""

    task: Callable[[ItemT], ResultT]
    item: ItemT
    folder: str

    def __call__(self) -> ResultT | _TaskFailed:
        if numba_available():
            # Deferred: numba takes about 0.5 s to import; the task imports it anyway.
            import numba

            # As in the local pool: the parallelism comes from the workers, and one
            # numba thread per task keeps them from oversubscribing the cores.
            numba.set_num_threads(1)
        try:
            with _WORKING_FOLDER.entered(self.folder):
                return self.task(self.item)
        except Exception as error:
            return _TaskFailed.of(error)


@dataclass(frozen=True)
class _TaskFailed:
    """A task's error, sent back as a result: the error itself and its traceback as text.

    Dask would send the traceback object, and a client that cannot rebuild one (a
    deep recursion, say) never hears of the task again. Text always travels.
    """

    error: Exception
    traceback: str

    @classmethod
    def of(cls, error: Exception) -> _TaskFailed:
        text = "".join(traceback.format_exception(type(error), error, error.__traceback__))
        try:
            pickle.loads(pickle.dumps(error))
        except Exception:  # an error that cannot travel: its name and message can
            error = _WorkerError(f"{type(error).__name__}: {error}")
        error.__traceback__ = None
        return cls(error, text)


class _WorkerError(Exception):
    """An error of a task that could not be sent back as itself."""


class _RemoteTraceback(Exception):
    """Where a task failed on its worker (shown as the cause of its error with --debug)."""

    def __str__(self) -> str:
        return f"\n{self.args[0]}"


class _SharedWorkingFolder:
    """The working folder of a worker process, shared by the tasks that need the same one.

    Relative paths in a task mean what they mean in the client's folder. A worker
    process has one working folder for all its threads: a task waits while tasks
    that need another folder run.
    """

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._folder: str | None = None
        self._users = 0

    @contextmanager
    def entered(self, folder: str) -> Iterator[None]:
        with self._condition:
            while self._users and self._folder != folder:
                self._condition.wait()
            if self._users == 0:
                try:
                    os.chdir(folder)
                except OSError:
                    raise InputError(
                        folder,
                        f"this working folder of calibkit is missing on the Dask worker on "
                        f"{socket.gethostname()}: the workers must see the client's files "
                        "under the same paths (a shared file system)",
                    ) from None
                self._folder = folder
            self._users += 1
        try:
            yield
        finally:
            with self._condition:
                self._users -= 1
                self._condition.notify_all()


_WORKING_FOLDER = _SharedWorkingFolder()


def _result(future: Any, case_id: str, address: str, distributed: Any) -> Any:
    """The task's result; its error (a bad file) raises here as it would locally."""
    try:
        result = future.result()
    except distributed.KilledWorker as error:
        raise ClusterError(
            f"case {case_id}: every Dask worker that ran it died ({_first_line(error)}); "
            "a worker that runs out of memory is killed: give each worker more memory "
            "(dask worker --memory-limit) or fewer threads"
        ) from None
    except distributed.client.FutureCancelledError as error:
        raise ClusterError(
            f"case {case_id}: the Dask cluster at {address} dropped it ({_first_line(error)})"
        ) from None
    if isinstance(result, _TaskFailed):
        raise result.error from _RemoteTraceback(result.traceback)
    return result


def _require_distributed(origin: str) -> None:
    if importlib.util.find_spec("distributed") is None:
        raise CalibkitError(
            f"{origin} runs the cases on a Dask cluster, but Dask is not installed: {INSTALL_HINT}"
        )


def _check_address(address: str, origin: str) -> None:
    """A malformed address fails here, in one line, before any case is read."""
    from distributed.comm.addressing import parse_address, parse_host_port
    from distributed.comm.registry import get_backend

    try:
        scheme, location = parse_address(address)
        get_backend(scheme)
        if scheme != "inproc":
            parse_host_port(location)
    except ValueError as error:
        raise CalibkitError(
            f"{origin} {address} is not a Dask scheduler address ({_first_line(error)}); "
            "give tcp://HOST:PORT, or local:N for N workers on this machine"
        ) from None


def _seconds(value: object, origin: str) -> float:
    try:
        seconds = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds > 0):
        raise CalibkitError(f"{origin} must be a positive number of seconds, got {value!r}")
    return seconds


def _dask_settings() -> tuple[dict[str, Any], str]:
    """``calibkit.*`` from Dask's configuration, and the file that holds it.

    Dask (and its configuration, about 0.1 s to import) is consulted only when one
    of its folders holds a ``calibkit.yaml`` or a ``DASK_CALIBKIT__*`` variable is
    set: a run without either does not import dask.
    """
    folders = _dask_config_folders()
    files = [folder / name for folder in folders for name in CONFIG_NAMES]
    found = [path for path in files if path.is_file()]
    variables = sorted(name for name in os.environ if name.startswith(_DASK_ENV_PREFIX))
    if not found and not variables:
        return {}, ""
    origin = str(found[-1]) if found else variables[0]
    if importlib.util.find_spec("dask") is None:
        raise CalibkitError(
            f"{origin} configures a Dask cluster for calibkit, but Dask is not installed: "
            f"{INSTALL_HINT}"
        )
    import dask.config

    collected = dask.config.collect(paths=[str(folder) for folder in folders])
    settings = dask.config.get("calibkit", default={}, config=collected)
    if not isinstance(settings, dict):
        raise CalibkitError(f"{origin}: calibkit: must hold settings such as scheduler:")
    # dask treats - and _ alike in keys; calibkit's documented spelling has dashes.
    return {key.replace("_", "-"): value for key, value in settings.items()}, origin


def _dask_config_folders() -> list[Path]:
    """The folders Dask reads configuration files from, in its order."""
    folders = [
        os.environ.get("DASK_ROOT_CONFIG", "/etc/dask"),
        os.path.join(sys.prefix, "etc", "dask"),
        *[os.path.join(prefix, "etc", "dask") for prefix in site.PREFIXES],
        os.path.join(os.path.expanduser("~"), ".config", "dask"),
    ]
    if "DASK_CONFIG" in os.environ:
        folders.append(os.environ["DASK_CONFIG"])
    return [Path(folder) for folder in dict.fromkeys(folders)]


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
