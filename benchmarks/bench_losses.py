"""Time the calibration losses' forward + backward against a per-pair loop and the paper's UNet.

Run: ``python benchmarks/bench_losses.py [--batch 2] [--classes 4] [--size 96] [--repeats 7]``.

Contenders, on the same seeded softmax probabilities and one-hot targets of shape
``(B, C, S, S, S)``:

* calibkit ``HardL1ACELoss`` and ``SoftL1ACELoss`` (forward + backward);
* a straightforward loop over (image, class) pairs of the same hard-binned maths
  (``torch.bucketize`` + ``scatter_add`` per channel, autograd for the backward),
  written here as the baseline the issue asks to beat;
* MONAI ``UNet(spatial_dims=3, in_channels=4, out_channels=4, channels=(8, 16, 32, 64),
  strides=(2, 2, 2), num_res_units=2)`` forward + backward at the same size (the
  paper's network), the step the loss is an auxiliary part of.

Prints medians, the hard loss's speed-up over the loop, and each loss's cost as a
percentage of the UNet step; the same on CUDA when available. Nothing asserts.
On a machine whose cores are busy with other work, multi-threaded CPU timings
swing wildly (every parallel region waits for a descheduled thread); ``--threads 1``
gives stable, comparable figures there.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch


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


def median_seconds(run: Callable[[], object], repeats: int, sync: Callable[[], None]) -> float:
    run()  # warm-up: allocator, lazy imports, kernels
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def run_device(device: torch.device, args: argparse.Namespace) -> None:
    from monai.networks.nets.unet import UNet

    from calibkit.losses import HardL1ACELoss, SoftL1ACELoss

    generator = torch.Generator().manual_seed(0)
    shape = (args.batch, args.classes, args.size, args.size, args.size)
    logits = torch.randn(shape, generator=generator) * 3
    probabilities = torch.softmax(logits, dim=1).to(device)
    labels = torch.distributions.Categorical(probs=probabilities.movedim(1, -1).cpu()).sample()
    target = torch.nn.functional.one_hot(labels, args.classes).movedim(-1, 1).float().to(device)
    images = torch.randn((args.batch, 4, args.size, args.size, args.size), generator=generator)
    images = images.to(device)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def step(loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> Callable[[], None]:
        def run() -> None:
            p = probabilities.detach().requires_grad_()
            loss_fn(p, target).backward()

        return run

    hard = HardL1ACELoss(n_bins=args.n_bins)
    soft = SoftL1ACELoss(n_bins=args.n_bins)
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
        "calibkit HardL1ACELoss": step(hard),
        "calibkit SoftL1ACELoss": step(soft),
        "per-pair loop (bucketize + scatter_add)": step(
            lambda p, y: loop_hard_ace(p, y, args.n_bins)
        ),
        "MONAI UNet forward + backward": unet_step,
    }
    timings = {name: median_seconds(run, args.repeats, sync) for name, run in contenders.items()}
    # The loop and the hard loss share one definition: check they agree before reporting.
    with torch.no_grad():
        gap = abs(hard(probabilities, target).item() - loop_hard_ace(probabilities, target, 20))
    unet_seconds = timings["MONAI UNet forward + backward"]
    hard_seconds = timings["calibkit HardL1ACELoss"]
    loop_seconds = timings["per-pair loop (bucketize + scatter_add)"]
    threads = f", torch threads {torch.get_num_threads()}" if device.type == "cpu" else ""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(
        f"\n{device.type} ({name}{threads}): forward + backward, B={args.batch}, "
        f"C={args.classes}, {args.size}^3, {args.n_bins} bins, median of {args.repeats}"
    )
    print()
    print("| contender | ms | % of UNet step |")
    print("|---|---:|---:|")
    for label, seconds in timings.items():
        print(f"| {label} | {seconds * 1e3:.1f} | {100 * seconds / unet_seconds:.1f} |")
    print()
    print(f"hard loss vs loop: {loop_seconds / hard_seconds:.2f}x faster")
    print(f"hard loss as % of the UNet step: {100 * hard_seconds / unet_seconds:.1f} %")
    print(f"|hard - loop| loss value: {gap:.2e}")


def main() -> None:
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
        help="torch CPU threads (0: torch's default); 1 gives stable figures on a busy machine",
    )
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    run_device(torch.device("cpu"), args)
    if torch.cuda.is_available() and not args.cpu_only:
        run_device(torch.device("cuda"), args)


if __name__ == "__main__":
    main()
