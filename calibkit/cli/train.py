"""``calibkit train`` and ``calibkit predict``: the paper's UNet pipeline on BraTS-style data."""

import math
import time
from collections.abc import Mapping
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from calibkit.cli.app import app, case_progress, show_progress, stderr, stdout, user_errors
from calibkit.cli.cluster_options import (
    SchedulerOption,
    SchedulerTimeoutOption,
    cluster_executor,
)
from calibkit.formatting import format_number

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress

    from calibkit.train.loop import TrainProgress


class Storage(str, Enum):
    uint8 = "uint8"
    uint16 = "uint16"
    float32 = "float32"


@app.command(
    "train",
    epilog=(
        "Examples:\n\n"
        "  calibkit train --data sample_data/brats --loss dsc+ace --out runs/dsc_ace"
        " --preset cpu-small\n\n"
        "  calibkit train --data BraTS2021_Training_Data --loss dsc+soft-ace --out runs/soft"
        " --device cuda --amp\n\n"
        "  torchrun --standalone --nproc_per_node 4 -m calibkit train --data DIR --loss dsc+ace"
        " --out RUN\n\n"
        "  calibkit train --resume runs/dsc_ace"
    ),
)
def train_cli(
    data: Annotated[
        Optional[Path],
        typer.Option(help="BraTS case folders, or an MSD / nnU-Net raw folder (dataset.json)."),
    ] = None,
    loss: Annotated[
        Optional[str],
        typer.Option(help="Loss spec: dsc, ce, dsc+ce, each +ace or +soft-ace; dsc:1+ace:0.3."),
    ] = None,
    out: Annotated[
        Optional[Path], typer.Option("--out", "-o", help="Run folder (created).")
    ] = None,
    epochs: Annotated[Optional[int], typer.Option(help="Epochs (default 1000, the paper).")] = None,
    iters_per_epoch: Annotated[
        Optional[int], typer.Option(help="Optimiser steps per epoch (default 16).")
    ] = None,
    batch_size: Annotated[
        Optional[int], typer.Option(help="Patches per step, over all processes (default 8).")
    ] = None,
    patch_size: Annotated[
        Optional[str],
        typer.Option(help="Training patch and validation window X,Y,Z (default 224,224,144)."),
    ] = None,
    lr: Annotated[Optional[float], typer.Option(help="Adam learning rate (default 1e-3).")] = None,
    n_bins: Annotated[
        Optional[int],
        typer.Option(help="Bins of the ACE loss and the validation metrics (default 20)."),
    ] = None,
    val_every: Annotated[
        Optional[int], typer.Option(help="Validate every N epochs and after the last (default 1).")
    ] = None,
    val_fraction: Annotated[
        Optional[float],
        typer.Option(help="Share of cases held out for validation (default 0.049)."),
    ] = None,
    split: Annotated[
        Optional[Path],
        typer.Option(
            help="JSON file with 'train' and 'val' lists of case ids (instead of --val-fraction)."
        ),
    ] = None,
    seed: Annotated[
        Optional[int],
        typer.Option(help="Seeds the split, the weights, every augmentation (default 0)."),
    ] = None,
    device: Annotated[
        Optional[str], typer.Option(help="auto (CUDA if available), cpu, cuda, cuda:1.")
    ] = None,
    amp: Annotated[
        Optional[bool], typer.Option("--amp/--no-amp", help="Mixed precision (CUDA only).")
    ] = None,
    workers: Annotated[
        Optional[int], typer.Option(help="Data-loading worker processes (default 4).")
    ] = None,
    threads: Annotated[
        Optional[int],
        typer.Option(help="torch CPU threads per process (default 0: torch's choice)."),
    ] = None,
    label_map: Annotated[
        Optional[str],
        typer.Option(help="Label value:class (0 BG, 1 NCR, 2 ED, 3 ET), e.g. 0:0,1:2,2:1,3:3."),
    ] = None,
    preset: Annotated[
        Optional[str], typer.Option(help="paper (the defaults) or cpu-small (minutes on a CPU).")
    ] = None,
    config: Annotated[
        Optional[Path],
        typer.Option("--config", help="YAML / TOML / JSON file of these options."),
    ] = None,
    resume: Annotated[
        Optional[Path],
        typer.Option(help="Continue the run in this folder from its last.pt."),
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing but errors.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks.")] = False,
) -> None:
    """Train the paper's MONAI UNet (8/16/32/64) with a segmentation + calibration loss.

    Precedence: options > --config file > --preset > the paper's defaults. The run
    folder gets config.toml, split.json, metrics.csv, last.pt and best.pt (best mean
    validation Dice over ET/TC/WT).
    """
    with user_errors(debug):
        # Deferred: the library loads when the command runs (a fast calibkit --help).
        from calibkit.train.config import parse_patch_size
        from calibkit.train.loop import train_from_options

        options: dict[str, Any] = {
            "data": str(data) if data is not None else None,
            "out": str(out) if out is not None else None,
            "loss": loss,
            "epochs": epochs,
            "iters_per_epoch": iters_per_epoch,
            "batch_size": batch_size,
            "patch_size": parse_patch_size(patch_size) if patch_size is not None else None,
            "lr": lr,
            "n_bins": n_bins,
            "val_every": val_every,
            "val_fraction": val_fraction,
            "split": str(split) if split is not None else None,
            "seed": seed,
            "device": device,
            "amp": amp,
            "workers": workers,
            "threads": threads,
            "label_map": label_map,
        }
        reporter = _reporter(quiet)
        result = train_from_options(
            options, config_file=config, preset=preset, resume=resume, progress=reporter
        )
        if not quiet:
            best = (
                f"best.pt from epoch {result.best_epoch} (mean validation Dice "
                f"{format_number(result.best_dice)})"
                if result.best_epoch is not None
                else "no best.pt (no validation cases)"
            )
            stdout.print(
                f"trained epochs {result.start_epoch + 1}-{result.epochs_done} in "
                f"{result.seconds:.0f} s ({result.seconds_per_iteration:.3f} s per step); "
                f"{best}; run folder {result.run_dir}",
                soft_wrap=True,
            )


def _reporter(quiet: bool) -> "TrainProgress | None":
    if quiet:
        return None
    if show_progress(quiet):
        return _RichProgress(stderr)
    return _LineProgress(stdout)


def _describe(row: Mapping[str, Any]) -> str:
    parts = [f"loss {row['train_loss']:.4f}"]
    terms = [
        f"{key[len('train_') :]} {value:.4f}"
        for key, value in row.items()
        if key.startswith("train_") and key != "train_loss"
    ]
    if terms:
        parts[0] += f" ({', '.join(terms)})"
    if "val_dice_mean" in row:
        regions = " ".join(f"{r} {format_number(row[f'val_dice_{r}'])}" for r in ("ET", "TC", "WT"))
        parts.append(
            f"val Dice {format_number(row['val_dice_mean'])} [{regions}] "
            f"ACE {format_number(row['val_ace_mean'])} ECE {format_number(row['val_ece_mean'], 4)} "
            f"MCE {format_number(row['val_mce_mean'])}" + ("  *best*" if row.get("best") else "")
        )
    parts.append(f"{row['seconds']:.1f} s")
    return "  ".join(parts)


class _LineProgress:
    """Plain lines (logs, CI, pipes): one at the start and one per epoch."""

    def __init__(self, console: "Console") -> None:
        self.console = console
        self.epochs = 0

    def start(self, info: Mapping[str, Any]) -> None:
        self.epochs = int(info["epochs"])
        self.console.print(_start_line(info), soft_wrap=True)

    def epoch(self, row: Mapping[str, Any]) -> None:
        self.console.print(f"epoch {row['epoch']}/{self.epochs}  {_describe(row)}", soft_wrap=True)

    def message(self, text: str) -> None:
        self.console.print(f"note: {text}", soft_wrap=True)

    def iteration(self, epoch: int, step: int, loss: float) -> None:
        pass

    def validating(self, epoch: int, n_cases: int) -> None:
        pass

    def close(self) -> None:
        pass


def _start_line(info: Mapping[str, Any]) -> str:
    processes = f" x {info['world_size']} processes" if info["world_size"] > 1 else ""
    patch = "x".join(str(s) for s in info["patch_size"])
    return (
        f"training {info['loss']} on {info['device']}{processes}: {info['train_cases']} train / "
        f"{info['val_cases']} val cases, epochs {info['start_epoch'] + 1}-{info['epochs']} x "
        f"{info['iters_per_epoch']} steps, batch {info['batch_size']}, patch {patch}"
        + (", AMP" if info["amp"] else "")
    )


class _RichProgress:
    """A rich progress bar over all steps; epoch lines printed above it."""

    def __init__(self, console: "Console") -> None:
        self.console = console
        self.bar: Progress | None = None
        self.task: Any = None
        self.epochs = 0

    def start(self, info: Mapping[str, Any]) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.epochs = int(info["epochs"])
        self.console.print(_start_line(info), soft_wrap=True)
        total = (info["epochs"] - info["start_epoch"]) * info["iters_per_epoch"]
        self.bar = Progress(
            TextColumn("[progress.description]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[status]}"),
            console=self.console,
            transient=True,
        )
        self.bar.start()
        self.task = self.bar.add_task("training", total=total, status="")

    def iteration(self, epoch: int, step: int, loss: float) -> None:
        if self.bar is not None:
            self.bar.update(
                self.task,
                advance=1,
                description=f"epoch {epoch}/{self.epochs}",
                status=f"loss {loss:.4f}",
            )

    def validating(self, epoch: int, n_cases: int) -> None:
        if self.bar is not None:
            self.bar.update(self.task, status=f"validating {n_cases} cases")

    def epoch(self, row: Mapping[str, Any]) -> None:
        self.console.print(f"epoch {row['epoch']}/{self.epochs}  {_describe(row)}", soft_wrap=True)

    def message(self, text: str) -> None:
        self.console.print(f"note: {text}", soft_wrap=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None


@app.command(
    "predict",
    epilog=(
        "Examples:\n\n"
        "  calibkit predict --checkpoint runs/dsc_ace/best.pt --data sample_data/brats"
        " --out preds/dsc_ace\n\n"
        "  calibkit evaluate preds/dsc_ace sample_data/brats --preset brats --out results/dsc_ace"
        "\n\n"
        "  calibkit predict --checkpoint unet_state_dict.pt --data imagesTs --out preds --regions"
        " --device cuda --amp"
    ),
)
def predict_cli(
    checkpoint: Annotated[
        Path,
        typer.Option(help="RUN_DIR/best.pt (or last.pt), or a .pt with a MONAI UNet state dict."),
    ],
    data: Annotated[
        Path, typer.Option(help="Cases to predict: BraTS case folders, or MSD / nnU-Net raw.")
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for CASE_pred.nii.gz files.")],
    regions: Annotated[
        bool, typer.Option("--regions", help="Write ET, TC, WT region probabilities.")
    ] = False,
    save_logits: Annotated[
        bool, typer.Option("--save-logits", help="Also write float32 logits into OUT_logits/.")
    ] = False,
    device: Annotated[
        str, typer.Option(help="auto (CUDA if available), cpu, cuda, cuda:1.")
    ] = "auto",
    amp: Annotated[bool, typer.Option("--amp", help="float16 autocast (CUDA only).")] = False,
    storage: Annotated[
        Storage, typer.Option(help="uint8 (1/255 steps, small), uint16 or float32.")
    ] = Storage.uint8,
    patch_size: Annotated[
        Optional[str], typer.Option(help="Sliding-window size X,Y,Z (default: the training patch).")
    ] = None,
    sw_batch_size: Annotated[
        Optional[int], typer.Option(help="Windows per forward pass (default: as in training).")
    ] = None,
    overlap: Annotated[
        Optional[float],
        typer.Option(help="Sliding-window overlap (default: as in training, else 0.5)."),
    ] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace predictions already in --out.")
    ] = False,
    scheduler: SchedulerOption = None,
    scheduler_timeout: SchedulerTimeoutOption = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing but errors.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks.")] = False,
) -> None:
    """Sliding-window inference: one probability map per case (softmax BG/NCR/ED/ET).

    Files are named CASE_pred.nii.gz in the geometry of the case's images, so
    calibkit evaluate OUT DATA --preset brats pairs them with the labels.
    """
    with user_errors(debug):
        # Deferred: the library loads when the command runs (a fast calibkit --help).
        from calibkit.train.config import parse_patch_size
        from calibkit.train.predict import predict_folder

        started = time.perf_counter()
        executor = cluster_executor(scheduler, scheduler_timeout)
        with case_progress(show_progress(quiet)) as (on_start, advance):
            result = predict_folder(
                checkpoint,
                data,
                out,
                regions=regions,
                save_logits=save_logits,
                device=device,
                amp=amp,
                storage=storage.value,
                patch_size=parse_patch_size(patch_size) if patch_size is not None else None,
                sw_batch_size=sw_batch_size,
                sw_overlap=overlap,
                overwrite=overwrite,
                on_start=on_start,
                progress=advance,
                executor=executor,
            )
        if not quiet:
            seconds = time.perf_counter() - started
            per_case = seconds / len(result.case_ids) if result.case_ids else math.nan
            stdout.print(
                f"wrote {len(result.files)} predictions to {result.out} on {result.device} in "
                f"{seconds:.1f} s ({per_case:.2f} s per case)"
                + (f"; logits in {result.logits[0].parent}" if result.logits else ""),
                soft_wrap=True,
            )
