"""``calibkit predict``: sliding-window inference writing probability maps per case.

Each case of the data folder (BraTS, MSD or nnU-Net layout, labels optional) is
normalised as in validation, run through the network with MONAI's
``sliding_window_inference`` and written as ``OUT/CASE_pred.nii.gz`` in the geometry
of the case's first image: the 4-channel softmax (BG, NCR, ED, ET), or with
``regions`` the BraTS regions ET, TC, WT (summed channels, SPEC.md §2). Files are
written atomically; ``calibkit evaluate OUT DATA --preset brats`` pairs them.
When a write fails (a full disk, say), the error says how many cases were
written before it; no file is ever left half-written under its final name.

Each case is one task of :func:`calibkit.execution.run_cases`: here by default, or
on the (GPU) workers of a Dask cluster (``--scheduler``), where each worker loads the
model once, predicts its cases and writes their files itself.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from calibkit._version import __version__
from calibkit.classes import class_probability, resolve_classes
from calibkit.errors import CalibkitError, OutputError, WriteError
from calibkit.execution import Executor, run_cases
from calibkit.io.atomic import atomic_write_text, unwritable_reason, write_error
from calibkit.io.writing import write_prediction
from calibkit.train.config import TrainConfig, parse_patch_size
from calibkit.train.data import Case, find_cases, load_case, val_transforms
from calibkit.train.model import LoadedModel, load_model, require_monai

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
        device: the torch device used (on a cluster: each device the workers used).
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
    executor: Executor | None = None,
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
        executor: where the cases run (:mod:`calibkit.execution`); default: here.
            Elsewhere (a Dask cluster) ``device`` is resolved on each worker, which
            loads the model once and writes its cases' files.

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
    # Here the model predicts; for a cluster it is read (on the CPU) for its settings
    # and each worker resolves the device and loads it for itself.
    here = executor is None
    torch_device = resolve_device(device) if here else torch.device("cpu")
    loaded = _model_on(Path(checkpoint), torch_device)
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
    job = _PredictionJob(
        checkpoint=Path(checkpoint),
        device=str(torch_device) if here else device,
        roi=tuple(roi),
        windows=windows,
        overlap=overlap,
        amp=amp,
        regions=regions,
        storage=storage,
        out=out,
        logits_dir=logits_dir if save_logits else None,
        label_map=dataset.label_map,
    )
    written: list[str] = []

    def finished(case_id: str) -> None:
        written.append(case_id)
        if progress is not None:
            progress(case_id)

    try:
        outputs = run_cases(
            partial(_predict_case, job=job),
            {case.case_id: case for case in dataset.cases},
            executor=executor,
            progress=finished,
        )
    except WriteError as error:
        raise error.noted(
            f"{len(written)} of {len(dataset.cases)} case(s) were written before it"
        ) from None
    finally:
        _MODELS.clear()  # a worker keeps its model for its next case; this process not
    files = [output.prediction for output in outputs]
    logit_files = [output.logits for output in outputs if output.logits is not None]
    used_devices = ", ".join(sorted({output.device for output in outputs})) or str(torch_device)
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
        "device": used_devices,
        "amp": bool(amp and "cuda" in used_devices),
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
        device=used_devices,
    )


@dataclass(frozen=True)
class _PredictionJob:
    """What every case's task needs (small: it travels to each worker with the case)."""

    checkpoint: Path
    device: str | None
    roi: tuple[int, ...]
    windows: int
    overlap: float
    amp: bool
    regions: bool
    storage: str
    out: Path
    logits_dir: Path | None
    label_map: dict[int, int]


@dataclass(frozen=True)
class _CaseOutput:
    """What a case's task sends back: the files it wrote and the device it used."""

    prediction: Path
    logits: Path | None
    device: str


# The model a process last loaded, by (checkpoint, its size and time, device): a worker
# of a cluster loads it for its first case and keeps it for the next ones.
_MODELS: dict[tuple[str, int, int, str], LoadedModel] = {}


def _model_on(checkpoint: Path, device: torch.device) -> LoadedModel:
    try:
        stat = checkpoint.stat()
        key = (str(checkpoint.resolve()), stat.st_size, stat.st_mtime_ns, str(device))
    except OSError:
        return load_model(checkpoint, device)  # names the file and the problem
    if key not in _MODELS:
        _MODELS.clear()
        _MODELS[key] = load_model(checkpoint, device)
    return _MODELS[key]


def _predict_case(case: Case, *, job: _PredictionJob) -> _CaseOutput:
    """Predict one case and write its map (and logits): a task of :func:`predict_folder`."""
    import torch

    device = resolve_device(job.device)
    loaded = _model_on(job.checkpoint, device)
    loaded_case = load_case(case, job.label_map, with_label=False)
    logits = sliding_window_logits(
        loaded.model,
        loaded_case.image,
        roi_size=job.roi,
        sw_batch_size=job.windows,
        overlap=job.overlap,
        device=device,
        amp=job.amp,
    )
    probabilities = torch.softmax(logits, dim=0).numpy()
    if job.regions:
        probabilities = region_probabilities(probabilities)
    target = job.out / f"{case.case_id}{PREDICTION_SUFFIX}"
    write_prediction(target, probabilities, loaded_case.reference, storage=job.storage)
    logit_path = None
    if job.logits_dir is not None:
        logit_path = job.logits_dir / f"{case.case_id}{PREDICTION_SUFFIX}"
        write_prediction(logit_path, logits.numpy(), loaded_case.reference, storage="float32")
    return _CaseOutput(target, logit_path, str(device))


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
