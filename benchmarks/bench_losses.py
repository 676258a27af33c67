"""Time the calibration losses' forward + backward against a per-pair loop and the paper's UNet.

Run: ``python benchmarks/bench_losses.py [--batch 2] [--classes 4] [--size 96] [--repeats 7]
[--threads N]``.

Contenders, on the same seeded softmax probabilities and one-hot targets of shape
``(B, C, S, S, S)``:

* calibkit ``HardL1ACELoss`` and ``SoftL1ACELoss`` (forward + backward);
* the same two as ``calibkit train`` calls them: softmax of the logits and a
  ``(B, 1, S, S, S)`` label map (``softmax=True, to_onehot_y=True``);
* a straightforward loop over (image, class) pairs of the same hard-binned maths
  (``torch.bucketize`` + ``scatter_add`` per channel, autograd for the backward),
  written here as the baseline the issue asks to beat;
* MONAI ``UNet(spatial_dims=3, in_channels=4, out_channels=4, channels=(8, 16, 32, 64),
  strides=(2, 2, 2), num_res_units=2)`` forward + backward at the same size (the
  paper's network), the step the loss is an auxiliary part of.

Every round times each contender once (after one untimed warm call), so a machine
that slows down during the run touches all of them alike. Prints the minimum and
the median over the rounds, and each loss's cost as a percentage of the UNet step
(ratio of minima and ratio of medians); the same on CUDA when available. Nothing
asserts. On a machine whose cores are busy with other work, multi-threaded CPU
timings swing wildly (every parallel region waits for a descheduled thread): the
minimum is then the figure to read, and ``--threads 1`` gives stable ones.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

UNET = "MONAI UNet forward + backward"
HARD = "calibkit HardL1ACELoss"
SOFT = "calibkit SoftL1ACELoss"
LOOP = "per-pair loop (bucketize + scatter_add)"


def loop_hard_ace(probabilities: torch.Tensor, target: torch.Tensor, n_bins: int) -> torch.Tensor:
    """Hard-binned mL1-ACE, one (image, class) pair at a time (the baseline)."""
    from calibkit.binning_torch import edges_tensor

    inner = edges_tensor(n_bins, probabilities.device)[1:-1].contiguous()
    batch, classes = probabilities.shape[:2]
    values = []
    for b in range(batch):
        for c in range(classes):
            p = probabilities[b, c].reshape(-1)
            y = target[b, c].reshape(-1).float()
            index = torch.bucketize(p.detach().float(), inner, right=False)
            zeros = torch.zeros(n_bins, dtype=p.dtype, device=p.device)
            count = zeros.scatter_add(0, index, torch.ones_like(p))
            sum_p = zeros.scatter_add(0, index, p)
            sum_y = zeros.scatter_add(0, index, y)
            kept = count > 0
            safe = count.clamp_min(1)
            gap = (sum_p / safe - sum_y / safe).abs()
            values.append(gap[kept].mean())
    return torch.stack(values).mean()


def interleaved_seconds(
    runs: dict[str, Callable[[], None]], repeats: int, sync: Callable[[], None]
) -> dict[str, list[float]]:
    """Wall times of each run over ``repeats`` rounds that time every run once, warm."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            run()  # warm: allocator, lazy imports, compiled kernels, threads
            sync()
            start = time.perf_counter()
            run()
            sync()
            times[name].append(time.perf_counter() - start)
    return times


def run_device(device: torch.device, args: argparse.Namespace) -> str:
    from monai.networks.nets.unet import UNet

    from calibkit.losses import HardL1ACELoss, SoftL1ACELoss

    generator = torch.Generator().manual_seed(0)
    shape = (args.batch, args.classes, args.size, args.size, args.size)
    logits = (torch.randn(shape, generator=generator) * 3).to(device)
    probabilities = torch.softmax(logits, dim=1)
    labels = torch.distributions.Categorical(probs=probabilities.movedim(1, -1).cpu()).sample()
    target = torch.nn.functional.one_hot(labels, args.classes).movedim(-1, 1).float().to(device)
    label_map = labels[:, None].float().to(device)  # MONAI's LoadImage gives float label maps
    images = torch.randn((args.batch, 4, args.size, args.size, args.size), generator=generator)
    images = images.to(device)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def step(
        loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        source: torch.Tensor,
        truth: torch.Tensor,
    ) -> Callable[[], None]:
        def run() -> None:
            x = source.detach().requires_grad_()
            loss_fn(x, truth).backward()

        return run

    hard = HardL1ACELoss(n_bins=args.n_bins)
    soft = SoftL1ACELoss(n_bins=args.n_bins)
    options = {"n_bins": args.n_bins, "softmax": True, "to_onehot_y": True}
    torch.manual_seed(0)
    unet = UNet(
        spatial_dims=3,
        in_channels=4,
        out_channels=args.classes,
        channels=(8, 16, 32, 64),
        strides=(2, 2, 2),
        num_res_units=2,
    ).to(device)

    def unet_step() -> None:
        unet.zero_grad(set_to_none=True)
        unet(images).sum().backward()

    contenders: dict[str, Callable[[], None]] = {
        HARD: step(hard, probabilities, target),
        SOFT: step(soft, probabilities, target),
        f"{HARD} (logits + label map)": step(HardL1ACELoss(**options), logits, label_map),
        f"{SOFT} (logits + label map)": step(SoftL1ACELoss(**options), logits, label_map),
        LOOP: step(lambda p, y: loop_hard_ace(p, y, args.n_bins), probabilities, target),
        UNET: unet_step,
    }
    times = interleaved_seconds(contenders, args.repeats, sync)
    # The loop and the hard loss share one definition: check they agree before reporting.
    with torch.no_grad():
        gap = abs(hard(probabilities, target).item() - loop_hard_ace(probabilities, target, 20))
    least = {name: min(values) for name, values in times.items()}
    middle = {name: statistics.median(values) for name, values in times.items()}
    threads = f", torch threads {torch.get_num_threads()}" if device.type == "cpu" else ""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    lines = [
        f"{device.type} ({name}{threads}): forward + backward, B={args.batch}, C={args.classes}, "
        f"{args.size}^3, {args.n_bins} bins; {args.repeats} interleaved rounds.",
        "",
        "| contender | min ms | median ms | % of UNet step (min / median) |",
        "|---|---:|---:|---:|",
    ]
    for label in contenders:
        lines.append(
            f"| {label} | {least[label] * 1e3:.1f} | {middle[label] * 1e3:.1f} | "
            f"{100 * least[label] / least[UNET]:.1f} / {100 * middle[label] / middle[UNET]:.1f} |"
        )
    lines += [
        "",
        f"hard loss vs loop: {least[LOOP] / least[HARD]:.2f}x faster (minima)",
        f"hard loss as % of the UNet step: {100 * least[HARD] / least[UNET]:.1f} % (minima), "
        f"{100 * middle[HARD] / middle[UNET]:.1f} % (medians)",
        f"soft loss as % of the UNet step: {100 * least[SOFT] / least[UNET]:.1f} % (minima), "
        f"{100 * middle[SOFT] / middle[UNET]:.1f} % (medians)",
        f"|hard - loop| loss value: {gap:.2e}",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--classes", type=int, default=4)
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--n-bins", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--cpu-only", action="store_true")
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch CPU threads (0: torch's default, as calibkit train); 1 gives stable figures "
        "on a busy machine",
    )
    args = parser.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    sections = [run_device(torch.device("cpu"), args)]
    if torch.cuda.is_available() and not args.cpu_only:
        sections.append(run_device(torch.device("cuda"), args))
    return "\n\n".join(sections)


if __name__ == "__main__":
    print(main())
