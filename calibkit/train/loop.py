"""``calibkit train``: the training loop with validation, checkpoints, exact resume and DDP.

Run folder (``config.out``)::

    config.toml    effective configuration (options > config file > preset > defaults)
    split.json     the train / val case ids
    metrics.csv    one row per epoch: train loss and its terms, validation Dice / ACE /
                   ECE / MCE per region (ET, TC, WT) and mean, lr, seconds
    last.pt        model, optimiser, AMP scaler, epoch, RNG states, history, config
    best.pt        the same, at the epoch with the best mean validation Dice

Everything is written atomically by one process (rank 0). ``--resume RUN_DIR``
reloads ``last.pt`` and continues; because every training sample is a function of
``(seed, epoch, index)`` (:mod:`calibkit.train.data`), the resumed run reaches the
same weights as one that was never stopped (bit for bit on the CPU).

Multi-process: started by ``torchrun``, the loop reads ``WORLD_SIZE``, ``RANK`` and
``LOCAL_RANK``, joins the process group (NCCL on GPUs, gloo on the CPU), wraps the
model in ``DistributedDataParallel`` and gives each process an equal share of every
global batch and of the validation cases.
"""

from __future__ import annotations

import math
import os
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from calibkit._version import __version__
from calibkit.errors import CalibkitError, InputError, OutputError
from calibkit.io.atomic import atomic_path, atomic_write_text
from calibkit.train.config import (
    CONFIG_FILE,
    RESUME_OVERRIDABLE,
    TrainConfig,
    config_to_toml,
    load_config_file,
    parse_label_map,
    resolve_config,
)
from calibkit.train.data import (
    CLASS_NAMES,
    SampleBatches,
    TrainingSamples,
    find_cases,
    make_split,
    read_split,
)
from calibkit.train.distributed import _configure_torch, _Distributed
from calibkit.train.history import _column, _write_metrics, metric_columns
from calibkit.train.model import PAPER_UNET, build_model, require_monai
from calibkit.train.state import (
    CHECKPOINT_FORMAT,
    _load_state,
    _restore_rng,
    _rng_state,
    _save,
    _seed_everything,
)
from calibkit.train.validation import REGIONS, VAL_METRICS, ValidationResult, _merge, validate

if TYPE_CHECKING:
    import torch

    from calibkit.losses import CombinedLoss
    from calibkit.train.data import DataSet, Split

__all__ = [
    "CHECKPOINT_FORMAT",
    "REGIONS",
    "VAL_METRICS",
    "SilentProgress",
    "TrainProgress",
    "TrainResult",
    "ValidationResult",
    "metric_columns",
    "train",
    "train_from_options",
    "validate",
]

SPLIT_FILE = "split.json"


class TrainProgress(Protocol):
    """What receives the loop's reports (rank 0 only); see :class:`SilentProgress`."""

    def start(self, info: Mapping[str, Any]) -> None:
        """Before the first step: device, case counts, epochs, steps."""

    def iteration(self, epoch: int, step: int, loss: float) -> None:
        """After each optimiser step (``epoch`` 1-based, ``step`` 1-based in the epoch)."""

    def validating(self, epoch: int, n_cases: int) -> None:
        """Before a validation pass."""

    def epoch(self, row: Mapping[str, Any]) -> None:
        """After each epoch, with its ``metrics.csv`` row."""

    def message(self, text: str) -> None:
        """A remark worth showing (resumed run, AMP ignored on the CPU, ...)."""

    def close(self) -> None:
        """After the last epoch, or on an error."""


class SilentProgress:
    """A :class:`TrainProgress` that shows nothing (the default)."""

    def start(self, info: Mapping[str, Any]) -> None:
        pass

    def iteration(self, epoch: int, step: int, loss: float) -> None:
        pass

    def validating(self, epoch: int, n_cases: int) -> None:
        pass

    def epoch(self, row: Mapping[str, Any]) -> None:
        pass

    def message(self, text: str) -> None:
        pass

    def close(self) -> None:
        pass


@dataclass(frozen=True)
class TrainResult:
    """Summary of a finished (or resumed-and-finished) run.

    Attributes:
        run_dir: the run folder.
        config: the effective configuration.
        start_epoch: epochs already done when this call started (0 for a fresh run).
        epochs_done: epochs done now.
        best_epoch: epoch of ``best.pt`` (None without validation cases).
        best_dice: its mean validation Dice (NaN without validation).
        seconds: wall time of this call.
        seconds_per_iteration: mean training time per optimiser step in this call.
        world_size: number of processes.
        notes: remarks (e.g. no validation cases, so no ``best.pt``).
    """

    run_dir: Path
    config: TrainConfig
    start_epoch: int
    epochs_done: int
    best_epoch: int | None
    best_dice: float
    seconds: float
    seconds_per_iteration: float
    world_size: int
    notes: tuple[str, ...] = ()


# --------------------------------------------------------------------------- entry points


def train_from_options(
    options: Mapping[str, Any] | None = None,
    *,
    config_file: Path | str | None = None,
    preset: str | None = None,
    resume: Path | str | None = None,
    progress: TrainProgress | None = None,
) -> TrainResult:
    """Resolve the configuration (or reload a run) and train: what ``calibkit train`` calls.

    Args:
        options: command-line values; ``None`` means "not given".
        config_file: YAML / TOML / JSON options (copied into the run folder).
        preset: ``paper`` or ``cpu-small``.
        resume: a run folder to continue; only ``epochs``, ``device``, ``workers``
            and ``val_every`` may change.
        progress: receives progress reports.

    Raises:
        CalibkitError: bad options, data, or run folder (one line, naming the problem).
    """
    given = {key: value for key, value in (options or {}).items() if value is not None}
    if resume is None:
        config = resolve_config(given, config_file=config_file, preset=preset)
        if not config.data:
            raise CalibkitError("give the data folder: --data DIR (or data in the config file)")
        if not config.out:
            raise CalibkitError("give the run folder: --out RUN_DIR (or out in the config file)")
        return train(config, progress=progress, config_source=config_file)
    run_dir = Path(resume)
    if config_file is not None or preset is not None:
        raise CalibkitError("--resume continues a run as configured; drop --config / --preset")
    saved_path = run_dir / CONFIG_FILE
    if not (run_dir / "last.pt").is_file() or not saved_path.is_file():
        raise InputError(
            run_dir,
            f"no run to resume here (needs {CONFIG_FILE} and last.pt; a run writes last.pt "
            "after its first epoch)",
        )
    saved = TrainConfig.from_dict(load_config_file(saved_path), str(saved_path))
    changes = {}
    for key, value in given.items():
        current = getattr(saved, key, None)
        if key == "out":
            continue  # the run folder is --resume's
        candidate = TrainConfig.from_dict({**saved.to_dict(), key: value}).__getattribute__(key)
        if candidate == current:
            continue
        if key not in RESUME_OVERRIDABLE:
            raise CalibkitError(
                f"--resume cannot change {key} (the run has {current!r}); only "
                f"{', '.join(RESUME_OVERRIDABLE)} may change; start a new run instead"
            )
        changes[key] = candidate
    # The run folder and the data may have moved since: the split file names the cases.
    return train(replace(saved, out=str(run_dir), **changes), progress=progress, resume=True)


def train(
    config: TrainConfig,
    *,
    resume: bool = False,
    progress: TrainProgress | None = None,
    config_source: Path | str | None = None,
) -> TrainResult:
    """Train the paper's UNet as ``config`` says, writing the run folder ``config.out``.

    Args:
        config: the effective configuration (see :func:`resolve_config`).
        resume: continue the run in ``config.out`` from its ``last.pt``.
        progress: receives progress reports (rank 0 only).
        config_source: a config file to copy into the run folder (``config.input.*``).

    Returns:
        :class:`TrainResult`.

    Raises:
        CalibkitError: bad loss spec, data folder, split, or run folder.
    """
    require_monai()
    # Deferred: torch loads only when training starts.
    import torch

    from calibkit.losses import build_loss

    started = time.perf_counter()
    config = _absolute_paths(config)
    report: TrainProgress = progress or SilentProgress()
    dist = _Distributed.from_env()
    run_dir = Path(config.out)
    loss_fn = build_loss(config.loss, n_bins=config.n_bins)  # bad spec: error before any file
    dataset, split = _prepare_data(config, run_dir, resume)
    if not resume:
        _check_new_run_dir(run_dir)
    owns_group = dist.init(config.device)
    threads = torch.get_num_threads()
    try:
        device = dist.device
        _configure_torch(config, device, dist)
        dist.barrier()  # every process has checked the run folder before rank 0 fills it
        if dist.is_writer and not resume:
            _write_run_files(config, split, run_dir, config_source)
        return _run(config, dataset, split, loss_fn, dist, device, resume, report, started)
    finally:
        report.close()
        torch.set_num_threads(threads)
        if owns_group:
            dist.destroy()


# --------------------------------------------------------------------------- setup


def _absolute_paths(config: TrainConfig) -> TrainConfig:
    """Record absolute paths, so ``--resume`` works from any working folder."""
    return replace(
        config,
        data=str(Path(config.data).absolute()),
        out=str(Path(config.out).absolute()),
        split=str(Path(config.split).absolute()) if config.split else None,
    )


def _prepare_data(config: TrainConfig, run_dir: Path, resume: bool) -> tuple[DataSet, Split]:

    label_map = parse_label_map(config.label_map) if config.label_map else None
    dataset = find_cases(config.data, require_labels=True, label_map=label_map)
    if resume:
        split = read_split(run_dir / SPLIT_FILE, dataset.case_ids)
    elif config.split:
        split = read_split(config.split, dataset.case_ids)
    else:
        split = make_split(dataset.case_ids, config.val_fraction, config.seed)
    return dataset, split


def _check_new_run_dir(run_dir: Path) -> None:
    if run_dir.exists() and not run_dir.is_dir():
        raise OutputError(f"{run_dir}: exists and is not a folder")
    if (run_dir / "last.pt").exists() or (run_dir / CONFIG_FILE).exists():
        raise OutputError(
            f"{run_dir}: already holds a run; continue it with --resume {run_dir} "
            "or choose another --out"
        )


def _write_run_files(
    config: TrainConfig, split: Split, run_dir: Path, config_source: Path | str | None
) -> None:
    import json

    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OutputError(f"{run_dir}: cannot create the run folder ({error.strerror})") from None
    atomic_write_text(run_dir / CONFIG_FILE, config_to_toml(config))
    atomic_write_text(run_dir / SPLIT_FILE, json.dumps(split.to_dict(), indent=2) + "\n")
    if config_source is not None:
        source = Path(config_source)
        with atomic_path(run_dir / f"config.input{source.suffix.lower()}") as tmp:
            shutil.copyfile(source, tmp)


# --------------------------------------------------------------------------- the loop


def _run(
    config: TrainConfig,
    dataset: DataSet,
    split: Split,
    loss_fn: CombinedLoss,
    dist: _Distributed,
    device: torch.device,
    resume: bool,
    report: TrainProgress,
    started: float,
) -> TrainResult:
    import torch
    from torch.utils.data import DataLoader

    run_dir = Path(config.out)
    notes: list[str] = list(dataset.notes)
    amp = config.amp and device.type == "cuda"
    if config.amp and not amp:
        notes.append("--amp applies to CUDA only; training in float32 on the CPU")
    _seed_everything(config.seed)
    model = build_model().to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    loss_fn = loss_fn.to(device)
    history: list[dict[str, Any]] = []
    start_epoch, best_dice, best_epoch = 0, -math.inf, None
    if resume:
        state = _load_state(run_dir / "last.pt", config)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        _restore_rng(state["rng"])
        start_epoch = int(state["epoch"])
        history = [dict(row) for row in state["history"]]
        best_dice = float(state["best_dice"])
        best_epoch = state["best_epoch"]
        notes.append(f"resumed {run_dir} after epoch {start_epoch} of {config.epochs}")
        if dist.is_writer:  # rows of epochs after the checkpoint (a kill in between) go
            _write_metrics(run_dir, history, loss_fn)
    network: torch.nn.Module = model
    if dist.world > 1:
        from torch.nn.parallel import DistributedDataParallel

        ids = [device.index] if device.type == "cuda" else None
        network = DistributedDataParallel(model, device_ids=ids)

    train_cases = dataset.subset(split.train)
    val_cases = dataset.subset(split.val)
    samples = TrainingSamples(
        train_cases, dataset.label_map, config.patch_size, config.seed, config.cache_mb
    )
    batches = SampleBatches(
        start_epoch, config.epochs, config.iters_per_epoch, config.batch_size, dist.rank, dist.world
    )
    loader: DataLoader[dict[str, torch.Tensor]] = DataLoader(
        samples,  # type: ignore[arg-type]
        batch_sampler=batches,
        num_workers=min(config.workers, os.cpu_count() or 1),
        pin_memory=device.type == "cuda",
        persistent_workers=False,
        worker_init_fn=_worker_init,
    )
    if not val_cases:
        notes.append("no validation cases: best.pt is not written; use last.pt")
    if dist.is_writer:
        for note in notes:
            report.message(note)
        report.start(
            {
                "device": str(device),
                "world_size": dist.world,
                "train_cases": len(train_cases),
                "val_cases": len(val_cases),
                "start_epoch": start_epoch,
                "epochs": config.epochs,
                "iters_per_epoch": config.iters_per_epoch,
                "batch_size": config.batch_size,
                "patch_size": config.patch_size,
                "loss": loss_fn.spec,
                "amp": amp,
            }
        )
    val_cache: dict[str, Any] = {}
    train_seconds, steps = 0.0, 0
    batch_iter = iter(loader)
    for epoch in range(start_epoch, config.epochs):
        epoch_start = time.perf_counter()
        network.train()
        sums: dict[str, float] = {}
        for step in range(config.iters_per_epoch):
            batch = next(batch_iter)
            image = batch["image"].to(device, non_blocking=True)
            label = batch["label"].to(device, non_blocking=True)
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast("cuda", torch.float16, enabled=amp):
                logits = network(image)
            components = loss_fn.components(logits.float(), label)
            total = loss_fn.combine(components)
            if not torch.isfinite(total):
                raise CalibkitError(
                    f"the loss became {float(total)} at epoch {epoch + 1}, step {step + 1}; "
                    "lower --lr or check the data"
                )
            scaler.scale(total).backward()
            scaler.step(optimizer)
            scaler.update()
            values = {"train_loss": float(total.detach())}
            values.update({f"train_{_column(k)}": float(v.detach()) for k, v in components.items()})
            for key, value in values.items():
                sums[key] = sums.get(key, 0.0) + value
            if dist.is_writer:
                report.iteration(epoch + 1, step + 1, values["train_loss"])
        epoch_train = time.perf_counter() - epoch_start
        train_seconds += epoch_train
        steps += config.iters_per_epoch
        row: dict[str, Any] = {"epoch": epoch + 1}
        row.update(dist.mean({k: v / config.iters_per_epoch for k, v in sums.items()}))
        validate_now = bool(val_cases) and (
            (epoch + 1) % config.val_every == 0 or epoch + 1 == config.epochs
        )
        improved = False
        if validate_now:
            if dist.is_writer:
                report.validating(epoch + 1, len(val_cases))
            mine = val_cases[dist.rank :: dist.world]
            local = validate(model, mine, dataset.label_map, config, device, val_cache)
            result = _merge(dist.gather(local))
            row.update(result.row())
            dice = row["val_dice_mean"]
            if math.isfinite(dice) and dice > best_dice:
                best_dice, best_epoch, improved = dice, epoch + 1, True
        row["best"] = int(improved)
        row["lr"] = float(optimizer.param_groups[0]["lr"])
        row["seconds"] = time.perf_counter() - epoch_start
        row["seconds_per_iteration"] = epoch_train / config.iters_per_epoch
        history.append(row)
        if dist.is_writer:
            state = {
                "format": CHECKPOINT_FORMAT,
                "calibkit_version": __version__,
                "epoch": epoch + 1,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scaler": scaler.state_dict() if amp else None,
                "config": config.to_dict(),
                "architecture": {k: list(v) if isinstance(v, tuple) else v
                                 for k, v in PAPER_UNET.items()},
                "classes": list(CLASS_NAMES),
                "label_map": {str(k): v for k, v in dataset.label_map.items()},
                "loss_spec": loss_fn.spec,
                "rng": _rng_state(),
                "history": history,
                "best_dice": best_dice,
                "best_epoch": best_epoch,
                "world_size": dist.world,
            }  # fmt: skip
            _write_metrics(run_dir, history, loss_fn)
            _save(state, run_dir / "last.pt")
            if improved:
                _save(state, run_dir / "best.pt")
            report.epoch(row)
        dist.barrier()
    epochs_run = config.epochs - start_epoch
    return TrainResult(
        run_dir=run_dir,
        config=config,
        start_epoch=start_epoch,
        epochs_done=max(config.epochs, start_epoch),
        best_epoch=best_epoch,
        best_dice=best_dice if math.isfinite(best_dice) else math.nan,
        seconds=time.perf_counter() - started,
        seconds_per_iteration=train_seconds / steps if steps else math.nan,
        world_size=dist.world,
        notes=tuple(notes) if epochs_run > 0 else (*notes, "nothing to do: all epochs done"),
    )


def _worker_init(worker_id: int) -> None:
    import torch

    # Workers run MONAI transforms; threads inside each would oversubscribe the cores.
    torch.set_num_threads(1)
