"""``calibkit predict``: sliding-window inference writing probability maps per case.

Each case of the data folder (BraTS, MSD or nnU-Net layout, labels optional) is
normalised as in validation, run through the network with MONAI's
``sliding_window_inference`` and written as ``OUT/CASE_pred.nii.gz`` in the geometry
of the case's first image: the 4-channel softmax (BG, NCR, ED, ET), or with
``regions`` the BraTS regions ET, TC, WT (summed channels, SPEC.md §2). Files are
written atomically; ``calibkit evaluate OUT DATA --preset brats`` pairs them.
When a write fails (a full disk, say), the error says how many cases were
written before it; no file is ever left half-written under its final name.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from calibkit._version import __version__
from calibkit.classes import class_probability, resolve_classes
from calibkit.errors import CalibkitError, OutputError, WriteError
from calibkit.io.atomic import atomic_write_text, unwritable_reason, write_error
from calibkit.io.writing import write_prediction
from calibkit.train.config import TrainConfig, parse_patch_size
from calibkit.train.data import find_cases, load_case, val_transforms
from calibkit.train.model import load_model, require_monai

if TYPE_CHECKING:
    import torch

__all__ = [
    "PREDICTION_SUFFIX",
    "PredictResult",
    "predict_folder",
    "region_probabilities",
    "resolve_device",
    "sliding_window_logits",
]

PREDICTION_SUFFIX = "_pred.nii.gz"
STORAGES = ("uint8", "uint16", "float32")


@dataclass(frozen=True)
class PredictResult:
    """What :func:`predict_folder` wrote.

    Attributes:
        out: the prediction folder.
        files: one probability map per case, sorted by case id.
        logits: the logit maps (``save_logits``), else empty.
        case_ids: the cases, sorted.
        seconds: wall time.
        device: the torch device used.
    """

    out: Path
    files: tuple[Path, ...]
    logits: tuple[Path, ...]
    case_ids: tuple[str, ...]
    seconds: float
    device: str


def resolve_device(device: str | None, local_rank: int = 0) -> torch.device:
    """``auto`` / None: ``cuda:LOCAL_RANK`` when CUDA is available, else the CPU.

    Raises:
        CalibkitError: an unknown device name, or CUDA asked for but not available.
    """
    import torch

    name = (device or "auto").strip().lower()
    if name == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    try:
        chosen = torch.device(name)
    except RuntimeError:
        raise CalibkitError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N") from None
    if chosen.type == "cuda":
        if not torch.cuda.is_available():
            raise CalibkitError(f"device {device!r}: CUDA is not available on this machine")
        if chosen.index is None:
            chosen = torch.device(f"cuda:{local_rank}")
        if chosen.index is not None and chosen.index >= torch.cuda.device_count():
            raise CalibkitError(
                f"device {device!r}: only {torch.cuda.device_count()} CUDA device(s) found"
            )
    elif chosen.type != "cpu":
        raise CalibkitError(f"device {device!r} is not supported; use cpu or cuda")
    return chosen


def sliding_window_logits(
    model: torch.nn.Module,
    image: npt.NDArray[np.float32],
    *,
    roi_size: Sequence[int],
    sw_batch_size: int,
    overlap: float,
    device: torch.device,
    amp: bool = False,
) -> torch.Tensor:
    """Logits ``(C, x, y, z)`` (float32, CPU) of a whole raw image ``(4, x, y, z)``.

    The image is normalised as in training (non-zero voxels, channel-wise) first.
    """
    import torch
    from monai.inferers.utils import sliding_window_inference

    tensor = val_transforms()({"image": image})["image"].float()[None].to(device)
    use_amp = amp and device.type == "cuda"
    with torch.inference_mode(), torch.autocast("cuda", torch.float16, enabled=use_amp):
        logits = sliding_window_inference(
            tensor,
            roi_size=tuple(int(s) for s in roi_size),
            sw_batch_size=sw_batch_size,
            predictor=model,
            overlap=overlap,
        )
    assert isinstance(logits, torch.Tensor)
    return logits[0].float().cpu()


def region_probabilities(probabilities: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """BraTS regions ET, TC, WT ``(3, ...)`` from a BG/NCR/ED/ET softmax ``(4, ...)``.

    Uses :func:`calibkit.classes.class_probability`, as ``calibkit evaluate`` does.

    Example:
        >>> p = np.array([0.1, 0.2, 0.3, 0.4], dtype=np.float32).reshape(4, 1)
        >>> [round(float(v), 3) for v in region_probabilities(p).ravel()]
        [0.4, 0.6, 0.9]
    """

    plan = resolve_classes(4, preset="brats")
    return np.stack([class_probability(probabilities, spec) for spec in plan.classes])


def predict_folder(
    checkpoint: Path | str,
    data: Path | str,
    out: Path | str,
    *,
    regions: bool = False,
    save_logits: bool = False,
    device: str | None = "auto",
    amp: bool = False,
    storage: str = "uint8",
    patch_size: Sequence[int] | None = None,
    sw_batch_size: int | None = None,
    sw_overlap: float | None = None,
    label_map: dict[int, int] | None = None,
    overwrite: bool = False,
    on_start: Callable[[int], None] | None = None,
    progress: Callable[[str], None] | None = None,
) -> PredictResult:
    """Predict every case of ``data`` with a trained model and write probability maps.

    Args:
        checkpoint: ``RUN_DIR/best.pt`` / ``last.pt`` of ``calibkit train``, or a ``.pt``
            holding a MONAI UNet state dict with the paper's architecture.
        data: a BraTS, MSD or nnU-Net raw folder (labels not needed).
        out: prediction folder (created); it must not lie inside ``data``.
        regions: write ET, TC, WT region probabilities instead of the 4-class softmax.
        save_logits: also write float32 logits to the sibling folder ``OUT_logits``
            (same file names, so ``calibkit evaluate OUT_logits DATA --input logits`` works).
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N``.
        amp: float16 autocast on CUDA.
        storage: ``uint8`` (default, 1/255 steps), ``uint16`` or ``float32``.
        patch_size: sliding-window size; default: the checkpoint's training patch
            (the paper's 224,224,144 for a plain state dict).
        sw_batch_size: windows per forward pass (default: the checkpoint's, else 4).
        sw_overlap: window overlap (default: the checkpoint's, else 0.5).
        label_map: only used to read label maps; predictions do not need them.
        overwrite: replace predictions already in ``out``.
        on_start: called with the number of cases before the first one.
        progress: called with each case id when its file is written.

    Returns:
        :class:`PredictResult`.

    Raises:
        InputError: bad checkpoint or data folder.
        OutputError: ``out`` lies inside ``data`` or already holds predictions.
        CalibkitError: bad option.
    """
    require_monai()
    import torch

    if storage not in STORAGES:
        raise CalibkitError(f"--storage must be one of {', '.join(STORAGES)}, got {storage!r}")
    started = time.perf_counter()
    data, out = Path(data), Path(out)
    dataset = find_cases(data, require_labels=False, label_map=label_map)
    logits_dir = out.with_name(out.name + "_logits")
    targets = [out, logits_dir] if save_logits else [out]
    _check_output(targets, dataset.root, overwrite)
    torch_device = resolve_device(device)
    loaded = load_model(checkpoint, torch_device)
    trained = loaded.config or {}
    defaults = TrainConfig()
    roi = parse_patch_size(
        patch_size if patch_size is not None else trained.get("patch_size", defaults.patch_size)
    )
    windows = int(sw_batch_size or trained.get("sw_batch_size", defaults.sw_batch_size))
    overlap = float(
        sw_overlap if sw_overlap is not None else trained.get("sw_overlap", defaults.sw_overlap)
    )
    if windows < 1 or not 0.0 <= overlap < 1.0:
        raise CalibkitError("--sw-batch-size must be >= 1 and --sw-overlap in [0, 1)")
    for folder in targets:
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise write_error(folder, error) from None
    if on_start is not None:
        on_start(len(dataset.cases))
    files: list[Path] = []
    logit_files: list[Path] = []
    for case in dataset.cases:
        loaded_case = load_case(case, dataset.label_map, with_label=False)
        logits = sliding_window_logits(
            loaded.model,
            loaded_case.image,
            roi_size=roi,
            sw_batch_size=windows,
            overlap=overlap,
            device=torch_device,
            amp=amp,
        )
        probabilities = torch.softmax(logits, dim=0).numpy()
        if regions:
            probabilities = region_probabilities(probabilities)
        target = out / f"{case.case_id}{PREDICTION_SUFFIX}"
        try:
            write_prediction(target, probabilities, loaded_case.reference, storage=storage)
            if save_logits:
                logit_path = logits_dir / f"{case.case_id}{PREDICTION_SUFFIX}"
                write_prediction(
                    logit_path, logits.numpy(), loaded_case.reference, storage="float32"
                )
                logit_files.append(logit_path)
        except WriteError as error:
            raise error.noted(
                f"{len(files)} of {len(dataset.cases)} case(s) were written before it"
            ) from None
        files.append(target)
        if progress is not None:
            progress(case.case_id)
    seconds = time.perf_counter() - started
    record: dict[str, Any] = {
        "calibkit_version": __version__,
        "checkpoint": str(Path(checkpoint).resolve()),
        "trained_epochs": loaded.epoch,
        "data": str(dataset.root.resolve()),
        "layout": dataset.layout,
        "channels": ["ET", "TC", "WT"] if regions else ["BG", "NCR", "ED", "ET"],
        "storage": storage,
        "patch_size": list(roi),
        "sw_batch_size": windows,
        "sw_overlap": overlap,
        "device": str(torch_device),
        "amp": bool(amp and torch_device.type == "cuda"),
        "case_ids": [case.case_id for case in dataset.cases],
        "seconds": round(seconds, 3),
    }
    try:
        atomic_write_text(out / "predict.json", json.dumps(record, indent=2) + "\n")
    except WriteError as error:
        raise error.noted(
            f"all {len(files)} prediction(s) were written; only this record of the run is missing"
        ) from None
    return PredictResult(
        out=out,
        files=tuple(files),
        logits=tuple(logit_files),
        case_ids=tuple(case.case_id for case in dataset.cases),
        seconds=seconds,
        device=str(torch_device),
    )


def _check_output(targets: Sequence[Path], data: Path, overwrite: bool) -> None:
    data_resolved = data.resolve()
    for folder in targets:
        resolved = folder.resolve()
        if resolved == data_resolved or data_resolved in resolved.parents:
            raise OutputError(
                f"{folder}: refusing to write predictions into the data folder {data}; "
                "choose an --out outside it"
            )
        if folder.exists() and not folder.is_dir():
            raise OutputError(f"{folder}: exists and is not a folder")
        reason = unwritable_reason(folder)
        if reason is not None:
            raise OutputError(f"{folder}: cannot write here ({reason})")
        if folder.is_dir() and not overwrite:
            present = sorted(folder.glob(f"*{PREDICTION_SUFFIX}"))
            if present:
                raise OutputError(
                    f"{folder}: already holds predictions ({present[0].name}, ...); "
                    "use --overwrite to replace them or choose another --out"
                )
