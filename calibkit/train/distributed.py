"""The process group of a ``torchrun`` start, and torch's per-process settings.

Started by ``torchrun``, the loop reads ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK``
(:class:`_Distributed`), joins the process group (NCCL on GPUs, gloo on the CPU) and
shares the CPU cores among the processes of one machine (:func:`_configure_torch`).
torch is imported inside the functions, so importing this module stays cheap.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from calibkit.errors import CalibkitError
from calibkit.train.config import TrainConfig
from calibkit.train.predict import resolve_device

if TYPE_CHECKING:
    import torch


class _Distributed:
    """The process group as ``torchrun`` describes it in the environment."""

    def __init__(self, world: int, rank: int, local_rank: int, local_world: int) -> None:
        self.world = world
        self.rank = rank
        self.local_rank = local_rank
        self.local_world = local_world
        self.device: torch.device = _cpu()

    @classmethod
    def from_env(cls) -> _Distributed:
        def number(name: str, default: int) -> int:
            try:
                return int(os.environ.get(name, default))
            except ValueError:
                raise CalibkitError(f"environment variable {name} must be an integer") from None

        world = number("WORLD_SIZE", 1)
        return cls(
            world,
            number("RANK", 0),
            number("LOCAL_RANK", 0),
            number("LOCAL_WORLD_SIZE", world),
        )

    @property
    def is_writer(self) -> bool:
        return self.rank == 0

    def init(self, device_name: str) -> bool:
        """Pick the device; join the process group when there are several processes."""
        import torch
        import torch.distributed as torch_dist

        self.device = resolve_device(device_name, self.local_rank)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        if self.world <= 1 or torch_dist.is_initialized():
            return False
        backend = "nccl" if self.device.type == "cuda" else "gloo"
        torch_dist.init_process_group(backend=backend, rank=self.rank, world_size=self.world)
        return True

    def destroy(self) -> None:
        import torch.distributed as torch_dist

        if torch_dist.is_initialized():
            torch_dist.destroy_process_group()

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as torch_dist

            torch_dist.barrier()

    def mean(self, values: dict[str, float]) -> dict[str, float]:
        """Average scalars over processes."""
        if self.world <= 1:
            return values
        import torch
        import torch.distributed as torch_dist

        keys = sorted(values)
        tensor = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=self.device)
        torch_dist.all_reduce(tensor)
        return {k: float(v) / self.world for k, v in zip(keys, tensor.tolist(), strict=True)}

    def gather(self, item: Any) -> list[Any]:
        if self.world <= 1:
            return [item]
        import torch.distributed as torch_dist

        items: list[Any] = [None] * self.world
        torch_dist.all_gather_object(items, item)
        return items


def _cpu() -> torch.device:
    import torch

    return torch.device("cpu")


def _configure_torch(config: TrainConfig, device: torch.device, dist: _Distributed) -> None:
    import torch

    if device.type == "cuda":
        torch.backends.cudnn.benchmark = not config.deterministic
        torch.backends.cudnn.deterministic = config.deterministic
    if config.threads > 0:
        torch.set_num_threads(config.threads)
    elif dist.world > 1 and device.type == "cpu":
        # Several CPU processes on one machine: share the cores instead of oversubscribing.
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(1, dist.local_world)))
