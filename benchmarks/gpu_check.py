"""Checks and measures calibkit on a CUDA GPU in one run of under five minutes.

Run from the repository root: ``python benchmarks/gpu_check.py``.

Without a CUDA device (or without torch) it prints a one-row table saying that
nothing was measured and exits 0. With one, it runs four steps, each with its own
time limit inside an overall budget (``--budget-s``, 270 s by default), and prints
one table at the end:

1. **bins**: torch-CUDA bins (both reductions of :class:`calibkit.binning_torch.
   TorchBinner`, and ``bincount`` under ``torch.use_deterministic_algorithms``)
   equal the CPU reference (the numpy kernel) on every bin edge and its float32
   neighbours and on the benchmark volumes of ``bench_torch_backend.py``: counts
   and positives exactly, sums to 1e-12 relative.
2. **throughput**: probability and target bytes binned per second on the GPU, as a
   share of the card's memory bandwidth, ``2 x memory_clock_rate x
   memory_bus_width / 8`` from ``torch.cuda.get_device_properties`` (said so when
   this torch does not give them).
3. **losses under AMP**: hard and soft mL1-ACE of a MONAI UNet's float16 logits
   under ``torch.autocast``, forward and backward: finite values and gradients, the
   hard loss equal to the metric on the same probabilities, time per step.
4. **train**: ``calibkit train --device cuda --amp`` for a few steps on
   ``sample_data/brats``, in a child process with a time limit.

A step that fails, raises or runs out of time says so in the table (with the
exception) and the others still run; the exit code is then 1. ``--device cpu``
runs the same steps on the CPU, as a smoke test of this script (its figures then
mean nothing).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import math
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:0] = [str(HERE), str(REPO)]  # bench_torch_backend, and this checkout's calibkit

SUM_RTOL = 1e-12  # float64 sums of the same float32 values in another order
NOTHING_MEASURED = "nothing was measured"


@dataclass
class Row:
    step: str
    result: str
    details: str
    seconds: float = 0.0


class StepTimeout(Exception):
    """A step ran past its time limit."""


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise :class:`StepTimeout` in the main thread after ``seconds`` (Unix; else none)."""
    if not hasattr(signal, "SIGALRM"):
        yield
        return

    def expire(signum: int, frame: object) -> None:
        raise StepTimeout(f"ran past its limit of {seconds:.0f} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.01))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def one_line(error: BaseException, limit: int = 300) -> str:
    text = " ".join(f"{type(error).__name__}: {error}".split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --------------------------------------------------------------------------- steps


def check_bins(device: str, quick: bool) -> tuple[bool, str]:
    """Bins on ``device`` equal the numpy kernel's, for both reductions."""
    import torch
    from bench_torch_backend import inputs

    from calibkit.binning import bin_statistics
    from calibkit.binning_torch import TorchBinner

    cases: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for n_bins in (5, 20, 100):
        cases[f"edges of {n_bins} bins"] = edges_case(n_bins)
    cases.update(inputs(quick))
    problems, worst = [], 0.0
    for name, (p, y) in cases.items():
        n_bins = int(name.split()[2]) if name.startswith("edges") else 20
        reference = bin_statistics(p, y, n_bins, kernel="numpy")
        p_device, y_device = torch.from_numpy(p).to(device), torch.from_numpy(y).to(device)
        runs: dict[str, Callable[[], Any]] = {
            reduction: TorchBinner(n_bins, device, reduction)  # type: ignore[arg-type]
            for reduction in ("bincount", "scatter")
        }
        for reduction, binner in runs.items():
            try:
                ours = binner(p_device, y_device)
            except Exception as error:
                problems.append(f"{name}, {reduction}: {one_line(error, 120)}")
                continue
            difference = compare(ours, reference)
            if isinstance(difference, str):
                problems.append(f"{name}, {reduction}: {difference}")
            else:
                worst = max(worst, difference)
    with deterministic_algorithms():
        p, y = cases["edges of 20 bins"]
        try:
            ours = TorchBinner(20, device, "bincount")(
                torch.from_numpy(p).to(device), torch.from_numpy(y).to(device)
            )
            difference = compare(ours, bin_statistics(p, y, 20, kernel="numpy"))
            if isinstance(difference, str):
                problems.append(f"deterministic bincount: {difference}")
        except Exception as error:
            problems.append(f"deterministic bincount: {one_line(error, 120)}")
    summary = (
        f"{len(cases)} inputs x 2 reductions + deterministic mode; counts and positives "
        f"equal, largest relative sum difference {worst:.1e}"
    )
    if problems:
        return False, "; ".join(problems)
    return True, summary


def edges_case(n_bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Every k / n_bins, its float32 neighbours, 0 and 1, in two classes."""
    grid = (np.arange(n_bins + 1) / n_bins).astype(np.float32)
    values = np.concatenate(
        [grid, np.nextafter(grid, np.float32(-1)), np.nextafter(grid, np.float32(2)), [0, 1]]
    )
    values = np.clip(values, 0, 1).astype(np.float32)
    p = np.stack([values, values[::-1]])
    y = (np.arange(p.size).reshape(p.shape) % 3) == 0
    return p, y


def compare(ours: Any, reference: Any) -> float | str:
    """Largest relative difference of the sums, or what differs."""
    if not np.array_equal(ours.count, reference.count):
        return f"counts differ in {int((ours.count != reference.count).sum())} bins"
    if not np.array_equal(ours.sum_y, reference.sum_y):
        return "positives differ"
    scale = np.maximum(np.abs(reference.sum_p), 1e-300)
    relative = float(np.max(np.abs(ours.sum_p - reference.sum_p) / scale, initial=0.0))
    if relative > SUM_RTOL:
        return f"sums differ by {relative:.1e} relative"
    return relative


@contextlib.contextmanager
def deterministic_algorithms() -> Iterator[None]:
    import torch

    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before)


def measure_throughput(device: str, quick: bool) -> tuple[bool, str]:
    """Bytes of probabilities and targets binned per second, against the card's bandwidth."""
    import torch
    from bench_torch_backend import inputs

    from calibkit.binning_torch import TorchBinner

    peak, peak_note = memory_bandwidth(device)
    parts = [peak_note]
    for name, (p, y) in inputs(quick).items():
        p_device, y_device = torch.from_numpy(p).to(device), torch.from_numpy(y).to(device)
        n_bytes = p.nbytes + y.nbytes
        for reduction in ("bincount", "scatter"):
            binner = TorchBinner(20, device, reduction)  # type: ignore[arg-type]
            try:
                seconds = median_seconds(partial(binner, p_device, y_device), device)
            except Exception as error:
                parts.append(f"{name} {reduction}: {one_line(error, 100)}")
                continue
            rate = n_bytes / seconds
            share = f", {100 * rate / peak:.1f} % of peak" if peak else ""
            parts.append(
                f"{name} {reduction}: {seconds * 1e3:.2f} ms, {rate / 1e9:.1f} GB/s{share}"
            )
    return True, "; ".join(parts)


def memory_bandwidth(device: str) -> tuple[float | None, str]:
    """Peak memory bandwidth (bytes/s) from the device properties, and a note."""
    import torch

    if not device.startswith("cuda"):
        return None, "bandwidth: not a CUDA device"
    props = torch.cuda.get_device_properties(device)
    clock_khz = getattr(props, "memory_clock_rate", None)
    bus_bits = getattr(props, "memory_bus_width", None)
    if not clock_khz or not bus_bits:
        return None, (
            f"{props.name}: this torch ({torch.__version__}) does not give the memory "
            "clock and bus width, so the bandwidth cannot be read"
        )
    peak = 2.0 * clock_khz * 1e3 * bus_bits / 8  # double data rate
    return peak, (
        f"{props.name}: peak {peak / 1e9:.0f} GB/s ({clock_khz / 1e6:.2f} GHz x {bus_bits} bit x 2)"
    )


def median_seconds(run: Callable[[], object], device: str, repeats: int = 7) -> float:
    import torch

    def synchronise() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize(device)

    run()
    synchronise()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        synchronise()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def check_losses_under_amp(device: str, quick: bool) -> tuple[bool, str]:
    """Hard and soft mL1-ACE of float16 logits under autocast: finite, and the hard one exact."""
    import torch
    from monai.networks.nets.unet import UNet

    from calibkit.binning import bin_statistics
    from calibkit.losses import HardL1ACELoss, SoftL1ACELoss
    from calibkit.metrics import calibration_errors

    size, n_classes, batch = (16 if quick else 96), 4, 2
    generator = torch.Generator().manual_seed(0)
    images = torch.randn((batch, 4, size, size, size), generator=generator).to(device)
    labels = torch.randint(0, n_classes, (batch, size, size, size), generator=generator)
    target = torch.nn.functional.one_hot(labels, n_classes).movedim(-1, 1).float().to(device)
    torch.manual_seed(0)
    unet = UNet(
        spatial_dims=3,
        in_channels=4,
        out_channels=n_classes,
        channels=(8, 16, 32, 64),
        strides=(2, 2, 2),
        num_res_units=2,
    ).to(device)
    autocast_type = torch.float16 if device.startswith("cuda") else torch.bfloat16
    device_type = "cuda" if device.startswith("cuda") else "cpu"
    losses = {
        "hard": HardL1ACELoss(softmax=True),
        "soft": SoftL1ACELoss(softmax=True),
        "none": None,
    }
    parts, ok = [], True
    for name, loss_fn in losses.items():

        def step(loss_fn: Any = loss_fn) -> tuple[Any, Any]:
            unet.zero_grad(set_to_none=True)
            with torch.autocast(device_type, dtype=autocast_type):
                logits = unet(images)
                value = logits.float().mean() if loss_fn is None else loss_fn(logits, target)
            value.backward()
            return logits, value

        logits, value = step()
        grads = [p.grad for p in unet.parameters() if p.grad is not None]
        finite = math.isfinite(float(value.detach())) and all(
            bool(g.isfinite().all()) for g in grads
        )
        seconds = median_seconds(step, device, repeats=5)
        if loss_fn is None:
            parts.append(f"UNet step alone {seconds * 1e3:.1f} ms")
            continue
        loss = float(value.detach())
        note = f"{name}: {logits.dtype} logits, loss {loss:.5f}, {seconds * 1e3:.1f} ms"
        if not finite:
            ok = False
            note += ", NOT FINITE"
        if name == "hard":
            with torch.no_grad():
                probabilities = torch.softmax(logits.float(), dim=1).cpu().numpy()
            truth = target.cpu().numpy() > 0.5
            metric = np.mean(
                [
                    np.nanmean(calibration_errors(bin_statistics(probabilities[b], truth[b])).ace)
                    for b in range(batch)
                ]
            )
            gap = abs(loss - float(metric))
            # The loss returns float32: its value carries about 1e-7 of relative error.
            ok = ok and gap <= 1e-5
            note += f", |loss - metric| {gap:.1e}"
        parts.append(note)
    return ok, "; ".join(parts)


def check_training(device: str, quick: bool, limit_s: float) -> tuple[bool, str]:
    """``calibkit train --device DEVICE --amp`` for a few steps, in a child process."""
    data = REPO / "sample_data" / "brats"
    if not data.is_dir():
        return False, f"{data} is missing"
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "run"
        steps = 2 if quick else 4
        patch = "32,32,32" if quick else "64,64,64"
        command = [
            *(sys.executable, "-m", "calibkit", "train", "--data", str(data)),
            *("--loss", "dsc+ace", "--out", str(out), "--device", device, "--amp"),
            *("--epochs", "1", "--iters-per-epoch", str(steps), "--batch-size", "2"),
            *("--patch-size", patch, "--workers", "0", "--val-every", "1"),
            *("--val-fraction", "0.17"),
        ]
        # The child imports the calibkit that this script checks.
        paths = [str(REPO), os.environ.get("PYTHONPATH", "")]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(path for path in paths if path)}
        try:
            done = subprocess.run(
                command, capture_output=True, text=True, timeout=limit_s, env=env, cwd=REPO
            )
        except subprocess.TimeoutExpired:
            return False, f"ran past its limit of {limit_s:.0f} s"
        if done.returncode != 0:
            tail = " ".join((done.stderr or done.stdout).split())[-300:]
            return False, f"exit {done.returncode}: {tail}"
        with open(out / "metrics.csv", newline="") as handle:
            rows = list(csv.DictReader(handle))
        last = rows[-1]
        loss = float(last["train_loss"])
        notes = [line for line in done.stdout.splitlines() if line.startswith("note:")]
        finite = math.isfinite(loss)
        text = (
            f"{steps} steps, train loss {loss:.4f}, val Dice {float(last['val_dice_mean']):.3f}, "
            f"{float(last['seconds_per_iteration']):.2f} s per step"
        )
        if notes:
            text += "; " + " ".join(notes)
        return finite, text if finite else text + ", loss NOT FINITE"


# Each step: its name in the table, its time limit (seconds) and its function of
# (device, quick, time limit).
STEPS: dict[str, tuple[str, float, Callable[[str, bool, float], tuple[bool, str]]]] = {
    "bins": ("bins equal the CPU's", 90, lambda d, q, limit: check_bins(d, q)),
    "throughput": ("binning throughput", 40, lambda d, q, limit: measure_throughput(d, q)),
    "losses": ("losses under AMP", 50, lambda d, q, limit: check_losses_under_amp(d, q)),
    "train": ("train --amp", 120, check_training),
}

# --------------------------------------------------------------------------- main


def cuda_status() -> tuple[bool, str]:
    """Whether a CUDA device can be used, and why not."""
    try:
        import torch
    except ImportError:
        return False, "torch is not installed"
    if not torch.cuda.is_available():
        return (
            False,
            f"no CUDA device (torch {torch.__version__}, built for CUDA {torch.version.cuda})",
        )
    return True, torch.cuda.get_device_name(0)


def render(rows: list[Row], title: str) -> str:
    lines = [title, "", "| step | result | details | seconds |", "|---|---|---|---:|"]
    for row in rows:
        details = row.details.replace("|", "/")
        lines.append(f"| {row.step} | {row.result} | {details} | {row.seconds:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget-s", type=float, default=270.0, help="time for all steps")
    parser.add_argument("--quick", action="store_true", help="small inputs")
    parser.add_argument(
        "--device", default="cuda", help="cuda (default); cpu runs a smoke test of the script"
    )
    parser.add_argument(
        "--steps", default=",".join(STEPS), help=f"some of {', '.join(STEPS)} (default: all)"
    )
    args = parser.parse_args(argv)
    chosen = args.steps.split(",")
    unknown = sorted(set(chosen) - set(STEPS))
    if unknown:
        parser.error(f"unknown steps {unknown}; choose from {', '.join(STEPS)}")
    started = time.perf_counter()
    if args.device.startswith("cuda"):
        usable, why = cuda_status()
        if not usable:
            print(render([Row("all", "not measured", f"{why}: {NOTHING_MEASURED}")], "GPU check"))
            return 0
        title = f"GPU check on {why}"
    else:
        title = f"GPU check run on {args.device} (a smoke test of the script: no GPU figures)"
    rows = []
    for key in (key for key in STEPS if key in chosen):
        name, limit, step = STEPS[key]
        remaining = args.budget_s - (time.perf_counter() - started)
        if remaining < 5:
            rows.append(Row(name, "skipped", "the time budget is spent"))
            continue
        limit = min(limit, remaining)
        start = time.perf_counter()
        try:
            with time_limit(limit + 5):  # the child process of train has its own limit
                ok, details = step(args.device, args.quick, limit)
            result = "ok" if ok else "FAILED"
        except StepTimeout as error:
            result, details = "timeout", str(error)
        except Exception as error:
            result, details = "error", one_line(error)
        rows.append(Row(name, result, details, time.perf_counter() - start))
        print(f"{name}: {result} ({rows[-1].seconds:.1f} s)", file=sys.stderr, flush=True)
    print(render(rows, f"{title}; {time.perf_counter() - started:.0f} s in all"))
    return 0 if all(row.result == "ok" for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
