"""The paper's network (MONAI ``UNet``) and reading weights from a checkpoint or a state dict."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from calibkit.errors import CalibkitError, InputError

if TYPE_CHECKING:
    import torch

__all__ = ["PAPER_UNET", "LoadedModel", "build_model", "load_model", "read_checkpoint"]

PAPER_UNET: dict[str, Any] = {
    "spatial_dims": 3,
    "in_channels": 4,
    "out_channels": 4,
    "channels": (8, 16, 32, 64),
    "strides": (2, 2, 2),
    "num_res_units": 2,
}
"""MONAI ``UNet`` arguments of the paper (SPEC.md §7): 4 modalities in, BG/NCR/ED/ET out."""


def build_model() -> torch.nn.Module:
    """A freshly initialised MONAI ``UNet`` with :data:`PAPER_UNET` (uses torch's RNG).

    Raises:
        CalibkitError: MONAI is not installed.
    """
    require_monai()
    from monai.networks.nets.unet import UNet

    model: torch.nn.Module = UNet(**PAPER_UNET)
    return model


class LoadedModel:
    """A model read by :func:`load_model`, with the training configuration when known.

    Attributes:
        model: the network, in eval mode, on the requested device.
        config: the checkpoint's training config as a dict (None for a plain state dict).
        epoch: epochs the weights were trained for (None when unknown).
    """

    def __init__(
        self, model: torch.nn.Module, config: dict[str, Any] | None, epoch: int | None
    ) -> None:
        self.model = model
        self.config = config
        self.epoch = epoch


def read_checkpoint(path: Path | str) -> dict[str, Any]:
    """Load a ``.pt`` file safely (``weights_only``) on the CPU.

    Raises:
        InputError: missing or unreadable file, or not a dict.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise InputError(path, "checkpoint not found; give RUN_DIR/best.pt or a .pt state dict")
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises RuntimeError, UnpicklingError, EOFError ...
        reason = " ".join(str(error).split())[:200] or type(error).__name__
        raise InputError(path, f"cannot read this checkpoint ({reason})") from None
    if not isinstance(content, Mapping):
        raise InputError(path, "expected a checkpoint or a state dict (a mapping of tensors)")
    return dict(content)


def load_model(path: Path | str, device: str | torch.device = "cpu") -> LoadedModel:
    """Read weights of the paper's UNet from a calibkit checkpoint or a plain state dict.

    Accepted: ``calibkit train``'s ``best.pt`` / ``last.pt`` (key ``model``), a dict
    with ``state_dict``, or a bare state dict; a ``module.`` prefix (DDP) is removed.

    Raises:
        InputError: the file is unreadable or its weights do not fit the architecture.
    """
    import torch

    path = Path(path)
    content = read_checkpoint(path)
    config = content.get("config") if isinstance(content.get("config"), Mapping) else None
    epoch = content.get("epoch") if isinstance(content.get("epoch"), int) else None
    for key in ("model", "state_dict", "model_state_dict"):
        if isinstance(content.get(key), Mapping):
            state = dict(content[key])
            break
    else:
        state = content
    if not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InputError(path, "holds no state dict of tensors (keys model / state_dict)")
    state = {_strip_prefix(key): value for key, value in state.items()}
    model = build_model()
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        first = " ".join(str(error).split())[:300]
        raise InputError(
            path,
            "weights do not fit the paper's UNet (channels 8/16/32/64, strides 2, two "
            f"residual units, 4 inputs, 4 outputs): {first}",
        ) from None
    model.to(device).eval()
    return LoadedModel(model, dict(config) if config is not None else None, epoch)


def _strip_prefix(key: str) -> str:
    # DDP wraps the network as ``module``; UNet's own keys start with ``model.``.
    return key[len("module.") :] if key.startswith("module.") else key


def require_monai() -> None:
    """Raise a one-line :class:`CalibkitError` when MONAI is missing."""
    try:
        import monai  # noqa: F401
    except ImportError:
        raise CalibkitError(
            "training and prediction need MONAI: pip install 'calibkit[train]'"
        ) from None
