"""Training and inference: the paper's UNet pipeline (``calibkit train`` / ``calibkit predict``).

Needs torch and MONAI (``pip install 'calibkit[train]'``); both are imported only
when a function here runs. Modules:

- :mod:`calibkit.train.config`: :class:`TrainConfig`, presets, config files.
- :mod:`calibkit.train.data`: BraTS / MSD / nnU-Net case discovery, split, augmentations.
- :mod:`calibkit.train.model`: the MONAI ``UNet`` of the paper, checkpoint reading.
- :mod:`calibkit.train.loop`: :func:`train`, the epoch loop and the run folder, built on
  :mod:`~calibkit.train.validation` (Dice / ACE / ECE / MCE of the validation cases),
  :mod:`~calibkit.train.history` (``metrics.csv``), :mod:`~calibkit.train.state`
  (checkpoints, random state, exact resume) and :mod:`~calibkit.train.distributed`
  (the ``torchrun`` process group).
- :mod:`calibkit.train.predict`: :func:`predict_folder` (sliding-window inference).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from calibkit.train.model import require_monai

__all__ = [
    "PredictResult",
    "TrainConfig",
    "TrainResult",
    "predict_folder",
    "require_monai",
    "resolve_config",
    "train",
    "train_from_options",
]

_LAZY = {
    "TrainConfig": "calibkit.train.config",
    "resolve_config": "calibkit.train.config",
    "TrainResult": "calibkit.train.loop",
    "train": "calibkit.train.loop",
    "train_from_options": "calibkit.train.loop",
    "PredictResult": "calibkit.train.predict",
    "predict_folder": "calibkit.train.predict",
}

if TYPE_CHECKING:
    from calibkit.train.config import TrainConfig, resolve_config
    from calibkit.train.loop import TrainResult, train, train_from_options
    from calibkit.train.predict import PredictResult, predict_folder


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'calibkit.train' has no attribute {name!r}")
