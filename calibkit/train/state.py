"""Checkpoints and random state: what ``last.pt`` / ``best.pt`` need for an exact resume.

:func:`_seed_everything` seeds Python, numpy and torch; :func:`_rng_state` and
:func:`_restore_rng` carry their states through a checkpoint; :func:`_load_state`
reads ``last.pt`` and checks it against the run's configuration, and :func:`_save`
writes a checkpoint atomically. torch is imported inside the functions.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from calibkit.errors import CalibkitError, InputError
from calibkit.io.atomic import atomic_path
from calibkit.train.config import RESUME_OVERRIDABLE, TrainConfig
from calibkit.train.model import read_checkpoint

__all__ = ["CHECKPOINT_FORMAT"]

CHECKPOINT_FORMAT = "calibkit-train-1"


def _seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002  (the global state is what is saved)
    torch.manual_seed(seed)


def _rng_state() -> dict[str, Any]:
    import torch

    bit_generator = np.random.get_state(legacy=False)  # noqa: NPY002
    assert isinstance(bit_generator, dict)
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "key": torch.from_numpy(bit_generator["state"]["key"].astype(np.int64)),
            "pos": int(bit_generator["state"]["pos"]),
            "has_gauss": int(bit_generator["has_gauss"]),
            "gauss": float(bit_generator["gauss"]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _restore_rng(state: Mapping[str, Any]) -> None:
    import torch

    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    numpy_state = state["numpy"]
    np.random.set_state(  # noqa: NPY002
        {
            "bit_generator": "MT19937",
            "state": {
                "key": numpy_state["key"].numpy().astype(np.uint32),
                "pos": int(numpy_state["pos"]),
            },
            "has_gauss": int(numpy_state["has_gauss"]),
            "gauss": float(numpy_state["gauss"]),
        }
    )
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


def _load_state(path: Path, config: TrainConfig) -> dict[str, Any]:

    state = read_checkpoint(path)
    if state.get("format") != CHECKPOINT_FORMAT:
        raise InputError(path, "is not a checkpoint of calibkit train; cannot resume from it")
    saved = TrainConfig.from_dict(state["config"], str(path))
    for key in saved.to_dict():
        if key in (*RESUME_OVERRIDABLE, "out"):
            continue
        if getattr(saved, key) != getattr(config, key):
            raise InputError(
                path,
                f"was trained with {key}={getattr(saved, key)!r}, the run's config.toml says "
                f"{getattr(config, key)!r}; restore config.toml or start a new run",
            )
    if int(state["epoch"]) > config.epochs:
        raise CalibkitError(
            f"{path}: already trained for {state['epoch']} epochs, more than --epochs "
            f"{config.epochs}"
        )
    return state


def _save(state: Mapping[str, Any], path: Path) -> None:
    import torch

    with atomic_path(path) as tmp:
        torch.save(dict(state), tmp)
