"""Evaluate a folder of predictions against a folder of labels.

Orchestration only: :mod:`calibkit.io` reads and pairs files,
:mod:`calibkit.binning` bins, :mod:`calibkit.metrics` turns bins into numbers.
:func:`evaluate_folders` returns an :class:`Evaluation` holding the same tables
that ``calibkit evaluate`` writes.
"""

from __future__ import annotations

import atexit
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import numpy.typing as npt

from calibkit import __version__
from calibkit.binning import (
    DEFAULT_N_BINS,
    BinStats,
    bin_edges,
    bin_statistics,
    flatten_alike,
    numba_available,
)
from calibkit.classes import (
    DICE_MODES,
    PRESETS,
    ClassPlan,
    class_probability,
    class_target,
    resolve_classes,
    unexpected_labels,
)
from calibkit.errors import CalibkitError, InputError, WriteError
from calibkit.io.pairing import DEFAULT_CASE_SUFFIXES, CasePair, pair_cases
from calibkit.io.volumes import check_geometry, read_label, read_prediction
from calibkit.metrics import (
    CALIBRATION_METRICS,
    METRICS,
    OverlapCounts,
    calibration_errors,
    macro_summary,
    per_image_mean,
)

if TYPE_CHECKING:
    import pandas as pd

    from calibkit.io.checkpoint import CaseStore

Backend = Literal["auto", "numpy", "torch"]
InputKind = Literal["probabilities", "logits"]
Activation = Literal["softmax", "sigmoid"]

# Probabilities may stray this far outside [0, 1] (rounding of stored maps) before
# they are rejected; within it they are clipped.
PROBABILITY_TOLERANCE = 1e-4
# Channels of a softmax map may sum this far from 1: uint8 storage alone (1/255
# steps) moves a 4-channel sum by up to 0.008.
SOFTMAX_SUM_TOLERANCE = 0.01
MEAN_ROW = "mean"


@dataclass(frozen=True)
class EvaluationOptions:
    """Everything that changes the numbers of an evaluation (recorded in ``summary.json``).

    Attributes:
        n_bins: number of probability bins ``M``.
        dice_threshold: a voxel is predicted positive when ``p >= dice_threshold``.
        dice_mode: ``"threshold"`` (marginal, per class) or ``"argmax"`` (exclusive classes).
        classes: label values to evaluate (None: from the channel count).
        class_names: names of the evaluated classes, in order.
        include_background: evaluate label 0 / channel 0 too.
        preset: ``"brats"`` for the ET/TC/WT regions.
        input_kind: ``"probabilities"`` or ``"logits"``.
        activation: turns logits into probabilities: ``"softmax"`` or ``"sigmoid"``.
        ignore_geometry: downgrade affine mismatches to warnings.
        allow_missing: skip (and list) cases without a partner.
        suffixes: case-id suffixes stripped from file names.
        backend: ``"numpy"``, ``"torch"`` or ``"auto"`` (torch when a GPU is usable).
        device: torch device for the torch backend (``"cpu"``, ``"cuda"``, ``"cuda:1"``).
        strict: fail (instead of warning) when a softmax map's channels do not sum to 1.
        temperature: a ``t.json`` from ``calibkit fit-temperature``, applied to every
            prediction before evaluation.
    """

    n_bins: int = DEFAULT_N_BINS
    dice_threshold: float = 0.5
    dice_mode: str = "threshold"
    classes: tuple[int, ...] | None = None
    class_names: tuple[str, ...] | None = None
    include_background: bool = False
    preset: str | None = None
    input_kind: InputKind = "probabilities"
    activation: Activation = "softmax"
    ignore_geometry: bool = False
    allow_missing: bool = False
    suffixes: tuple[str, ...] = DEFAULT_CASE_SUFFIXES
    backend: Backend = "auto"
    device: str | None = None
    strict: bool = False
    temperature: str | None = None

    def __post_init__(self) -> None:
        if int(self.n_bins) != self.n_bins or self.n_bins < 1:
            raise CalibkitError(f"--n-bins must be a positive integer, got {self.n_bins}")
        if not 0.0 < self.dice_threshold <= 1.0:
            raise CalibkitError(f"--dice-threshold must lie in (0, 1], got {self.dice_threshold}")
        if self.preset is not None and self.preset not in PRESETS:
            raise CalibkitError(
                f"unknown preset {self.preset!r}; choose one of: {', '.join(PRESETS)}"
            )
        if self.dice_mode not in DICE_MODES:
            raise CalibkitError(f"--dice-mode must be one of {', '.join(DICE_MODES)}")
        if self.input_kind not in ("probabilities", "logits"):
            raise CalibkitError("--input must be 'probabilities' or 'logits'")
        if self.activation not in ("softmax", "sigmoid"):
            raise CalibkitError("--activation must be 'softmax' or 'sigmoid'")
        if self.backend not in ("auto", "numpy", "torch"):
            raise CalibkitError("--backend must be 'auto', 'numpy' or 'torch'")


@dataclass(frozen=True)
class CaseResult:
    """Bin statistics and overlap counts of one case, per evaluated class."""

    case_id: str
    source: Path
    class_names: tuple[str, ...]
    stats: BinStats
    overlap: OverlapCounts
    n_voxels: int
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class Evaluation:
    """The result of :func:`evaluate_folders`.

    Attributes:
        per_image: one row per (case, class): ``case_id, class, ace, ece, mce, dice,
            n_voxels, gt_voxels, gt_empty, pred_voxels, intersection``.
        summary: one row per (class, metric), classes in order then ``mean``:
            ``class, metric, mean, std, median, n, pooled``.
        bins: per-case, per-class bin statistics, shape ``(cases, classes, M)``.
        case_ids: case ids in table order (sorted).
        class_names: evaluated classes in table order.
        options: the options used.
        warnings: warnings raised on the way (geometry, skipped cases).
        missing_label: case ids skipped for want of a label (``allow_missing``).
        missing_prediction: case ids skipped for want of a prediction.
    """

    per_image: pd.DataFrame
    summary: pd.DataFrame
    bins: BinStats
    overlap: OverlapCounts
    case_ids: tuple[str, ...]
    class_names: tuple[str, ...]
    options: EvaluationOptions
    warnings: tuple[str, ...] = ()
    missing_label: tuple[str, ...] = ()
    missing_prediction: tuple[str, ...] = ()
    sources: dict[str, str] = field(default_factory=dict)

    def summary_record(self) -> dict[str, Any]:
        """Everything ``summary.json`` holds, as plain JSON-ready data."""
        table: dict[str, dict[str, dict[str, float | int | None]]] = {}
        for row in self.summary.to_dict(orient="records"):
            entry = {
                "mean": _json_float(row["mean"]),
                "std": _json_float(row["std"]),
                "median": _json_float(row["median"]),
                "n": int(row["n"]),
                "pooled": _json_float(row["pooled"]),
            }
            table.setdefault(str(row["class"]), {})[str(row["metric"])] = entry
        options = asdict(self.options)
        return {
            "calibkit_version": __version__,
            "inputs": self.sources,
            "options": options,
            "n_cases": len(self.case_ids),
            "case_ids": list(self.case_ids),
            "classes": list(self.class_names),
            "n_bins": self.options.n_bins,
            "bin_edges": [float(edge) for edge in bin_edges(self.options.n_bins)],
            "summary": table,
            "missing_label": list(self.missing_label),
            "missing_prediction": list(self.missing_prediction),
            "warnings": list(self.warnings),
        }


ProgressCallback = Callable[[str], None]


def evaluate_folders(
    predictions: str | os.PathLike[str],
    labels: str | os.PathLike[str],
    options: EvaluationOptions | None = None,
    *,
    workers: int = 1,
    progress: ProgressCallback | None = None,
    on_start: Callable[[int], None] | None = None,
    store: CaseStore | None = None,
) -> Evaluation:
    """Per-case, per-class ACE/ECE/MCE/Dice of a prediction folder against a label folder.

    Args:
        predictions: folder of probability (or logit) maps.
        labels: folder of integer label maps (BraTS case folders are searched recursively).
        options: :class:`EvaluationOptions`; defaults when None.
        workers: cases processed in parallel processes (1: in this process).
        progress: called with each case id as it finishes.
        on_start: called once with the number of cases before work begins.
        store: keeps each finished case on disk and supplies the cases an earlier,
            interrupted run finished (``calibkit evaluate --resume``).

    Returns:
        :class:`Evaluation` with the per-image and summary tables and the bins.

    Raises:
        CalibkitError: on any bad input, naming the file and the problem.
    """
    options = options or EvaluationOptions()
    if workers < 1:
        raise CalibkitError(f"--workers must be at least 1, got {workers}")
    if options.temperature is not None:
        from calibkit.calibrate import load_temperature

        load_temperature(options.temperature)  # a bad file fails before any work
    pred_dir, label_dir = Path(predictions), Path(labels)
    pairing = pair_cases(
        pred_dir, label_dir, suffixes=options.suffixes, allow_missing=options.allow_missing
    )
    if on_start is not None:
        on_start(len(pairing.pairs))
    done = store.load_done() if store is not None else {}
    wanted = {pair.case_id for pair in pairing.pairs}
    results = [result for case_id, result in done.items() if case_id in wanted]
    for result in results:
        if progress is not None:
            progress(result.case_id)
    todo = [pair for pair in pairing.pairs if pair.case_id not in done]
    results += _run_cases(todo, options, workers, progress, store)
    notes: list[str] = []
    if pairing.missing_label:
        notes.append(f"skipped {len(pairing.missing_label)} case(s) without a label")
    if pairing.missing_prediction:
        notes.append(f"skipped {len(pairing.missing_prediction)} case(s) without a prediction")
    return assemble_evaluation(
        results,
        options,
        extra_warnings=notes,
        missing_label=pairing.missing_label,
        missing_prediction=pairing.missing_prediction,
        sources={"predictions": str(pred_dir), "labels": str(label_dir)},
    )


def evaluate_to_folder(
    predictions: str | os.PathLike[str],
    labels: str | os.PathLike[str],
    out: str | os.PathLike[str],
    options: EvaluationOptions | None = None,
    *,
    workers: int = 1,
    resume: bool = False,
    overwrite: bool = False,
    plots: int | None = None,
    progress: ProgressCallback | None = None,
    on_start: Callable[[int], None] | None = None,
) -> tuple[Evaluation, list[Path]]:
    """:func:`evaluate_folders`, then write the result files into ``out`` (``calibkit evaluate``).

    Finished cases are kept in ``out`` while the run goes on, so that an interrupted
    run continues with ``resume=True``; a lock keeps two processes apart. On bad
    input nothing is left in ``out``. With ``plots=N`` the dataset reliability
    histogram and the diagrams of the N worst-calibrated cases go to ``out/figures``.
    The tables (and figures) are written beside any earlier result and replace it
    only once all are complete; when a write fails (a full disk, say) the earlier
    result stays as it was, and so do the finished cases, for ``resume=True``.

    Returns:
        The evaluation and the paths of the files written.
    """
    from calibkit.io.atomic import staged_folder
    from calibkit.io.checkpoint import CaseStore
    from calibkit.io.results import prepare_output_dir, write_result_files

    options = options or EvaluationOptions()
    out_dir = Path(out)
    prepare_output_dir(out_dir, [Path(predictions), Path(labels)], overwrite=overwrite)
    fingerprint = {
        "options": asdict(options),
        "predictions": str(Path(predictions).resolve()),
        "labels": str(Path(labels).resolve()),
    }
    with CaseStore(out_dir, fingerprint, resume=resume, overwrite=overwrite) as store:
        try:
            evaluation = evaluate_folders(
                predictions,
                labels,
                options,
                workers=workers,
                progress=progress,
                on_start=on_start,
                store=store,
            )
        except WriteError:
            raise  # a case could not be stored: the finished ones stay for --resume
        except CalibkitError:
            store.discard()
            raise
        # Tables and figures are staged beside an earlier result and replace it together.
        try:
            with staged_folder(out_dir) as staging:
                written = write_result_files(evaluation, staging)
                if plots is not None:
                    from calibkit.plots import save_evaluation_figures

                    written += save_evaluation_figures(
                        staging, staging, n_worst=plots, label=out_dir.resolve().name
                    )
        except WriteError as error:
            raise error.noted(store.resume_note()) from None
        paths = [out_dir / path.relative_to(staging) for path in written]
        store.finish()
    return evaluation, paths


def _run_cases(
    pairs: list[CasePair],
    options: EvaluationOptions,
    workers: int,
    progress: ProgressCallback | None,
    store: CaseStore | None,
) -> list[CaseResult]:
    def finished(result: CaseResult) -> None:
        if store is not None:
            store.save(result)
        if progress is not None:
            progress(result.case_id)

    if workers == 1 or len(pairs) <= 1:
        results = []
        for pair in pairs:
            results.append(evaluate_case(pair, options))
            finished(results[-1])
        return results
    # spawn, not fork: torch (CUDA) and BLAS thread pools do not survive a fork.
    context = get_context("spawn")
    with ProcessPoolExecutor(
        max_workers=min(workers, len(pairs)), mp_context=context, initializer=_prepare_worker
    ) as pool:
        futures: dict[Future[CaseResult], CasePair] = {
            pool.submit(evaluate_case, pair, options): pair for pair in pairs
        }
        done_results: dict[str, CaseResult] = {}
        pending = set(futures)
        try:
            # While the workers start and read their first cases, this process
            # imports what the tables need at the end (pandas, about 0.4 s).
            import pandas  # noqa: F401

            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    result = future.result()  # a worker's error is raised here
                    done_results[result.case_id] = result
                    finished(result)
        except BaseException:
            # A bad case, a failed save or Ctrl-C: cases not yet started never start.
            for other in pending:
                other.cancel()
            raise
    return [done_results[pair.case_id] for pair in pairs]


def _prepare_worker() -> None:
    """Initializer of each worker process: one numba thread, a quick start and exit."""
    from calibkit.binning import numba_available

    if numba_available():
        import numba

        from calibkit import _kernels  # chooses numba's threading layer first

        # Parallelism comes from the worker processes; threads inside each would
        # oversubscribe the cores.
        numba.set_num_threads(1)
        _kernels.start_without_blas_probe()  # a worker runs only calibkit's kernels
    # A worker's results have all been sent when the pool shuts it down; tearing down
    # its interpreter (numba and LLVM above all) then only delays the end of the run
    # by about half a second. The handler registered last runs first at exit, so
    # handlers registered earlier (logging, coverage) do not run in workers.
    atexit.register(_leave_at_once)


def _leave_at_once() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def evaluate_case(pair: CasePair, options: EvaluationOptions) -> CaseResult:
    """Read one case and compute its per-class bin statistics and overlap counts."""
    prediction = read_prediction(pair.prediction)
    label = read_label(pair.label)
    notes: list[str] = []
    geometry_problem = check_geometry(prediction, label)
    if geometry_problem is not None:
        if not options.ignore_geometry:
            raise InputError(pair.prediction, geometry_problem)
        notes.append(f"{pair.prediction}: {geometry_problem}")
    try:
        plan = resolve_classes(
            prediction.array.shape[0],
            classes=options.classes,
            class_names=options.class_names,
            include_background=options.include_background,
            preset=options.preset,
        )
    except CalibkitError as error:
        raise InputError(pair.prediction, str(error)) from None
    if options.dice_mode == "argmax" and not plan.exclusive:
        raise InputError(
            pair.prediction,
            "--dice-mode argmax needs mutually exclusive channels (a softmax map); "
            "these channels are regions or a single foreground",
        )
    unknown = unexpected_labels(label.array, plan)
    if unknown:
        raise InputError(
            pair.label,
            f"label values {unknown} have no prediction channel or class (known labels: "
            f"{', '.join(map(str, sorted(plan.known_labels)))}); check --classes or --preset",
        )
    if options.temperature is not None:
        from calibkit.calibrate import calibrated_probabilities, load_temperature

        model = load_temperature(options.temperature)
        probabilities = calibrated_probabilities(
            prediction.array, model, options, pair.prediction, prediction.value_range
        )
    else:
        probabilities = to_probabilities(
            prediction.array, options, pair.prediction, prediction.value_range
        )
    if plan.exclusive and options.input_kind == "probabilities":
        problem = softmax_sum_problem(probabilities)
        if problem is not None:
            if options.strict:
                raise InputError(pair.prediction, problem + " (--strict)")
            notes.append(f"{pair.prediction}: {problem} (--strict makes this an error)")
    stats, overlap = case_statistics(probabilities, label.array, plan, options)
    return CaseResult(
        case_id=pair.case_id,
        source=pair.prediction,
        class_names=plan.names,
        stats=stats,
        overlap=overlap,
        n_voxels=int(np.prod(label.array.shape)),
        warnings=tuple(notes),
    )


def to_probabilities(
    array: npt.NDArray[np.float32],
    options: EvaluationOptions,
    path: Path,
    value_range: tuple[float, float] | None = None,
) -> npt.NDArray[np.float32]:
    """Probabilities ``(C, *spatial)`` from the stored values: validated and clipped, or activated.

    ``value_range`` is the known smallest and largest value (``Volume.value_range``);
    None: found here.

    Raises:
        InputError: probabilities outside [0, 1] beyond the tolerance.
    """
    if options.input_kind == "logits":
        return _activate(array, options.activation)
    low, high = value_range or (float(array.min()), float(array.max()))
    if low < -PROBABILITY_TOLERANCE or high > 1.0 + PROBABILITY_TOLERANCE:
        raise InputError(
            path,
            f"values range from {low:.6g} to {high:.6g}, outside [0, 1]; if these are logits, "
            "use --input logits (with --activation softmax or sigmoid)",
        )
    if low < 0.0 or high > 1.0:
        np.clip(array, 0.0, 1.0, out=array)
    return array


def softmax_sum_problem(probabilities: npt.NDArray[np.float32]) -> str | None:
    """A message when the channels of a softmax map do not sum to 1, else None."""
    worst_error, voxel = 0.0, tuple(0 for _ in probabilities.shape[1:])
    # Slabs along the last axis keep the temporary sum small (volumes reach GBs).
    for start in range(probabilities.shape[-1]):
        slab = probabilities[..., start]
        error = np.abs(slab.sum(axis=0, dtype=np.float32) - np.float32(1.0))
        index = int(np.argmax(error))
        if error.flat[index] > worst_error:
            worst_error = float(error.flat[index])
            voxel = (*(int(i) for i in np.unravel_index(index, error.shape)), start)
    if worst_error <= SOFTMAX_SUM_TOLERANCE:
        return None
    at_voxel: tuple[Any, ...] = (slice(None), *voxel)
    sums = float(probabilities[at_voxel].sum(dtype=np.float64))
    return (
        f"channels do not sum to 1 (sum {sums:.4f} at voxel {voxel}); a softmax map's channels "
        "should: check the export, or use --preset / --classes for region or sigmoid maps"
    )


def argmax_channel(probabilities: npt.NDArray[np.float32]) -> npt.NDArray[np.uint8]:
    """Index of the largest channel per voxel as uint8, without an int64 volume."""
    if probabilities.shape[0] > 255:
        raise CalibkitError("--dice-mode argmax supports at most 255 channels")
    best = np.zeros(probabilities.shape[1:], dtype=np.uint8)
    best_value = probabilities[0].copy()
    for channel in range(1, probabilities.shape[0]):
        larger = probabilities[channel] > best_value
        best[larger] = channel
        np.maximum(best_value, probabilities[channel], out=best_value)
    return best


def _activate(logits: npt.NDArray[np.float32], activation: str) -> npt.NDArray[np.float32]:
    if activation == "sigmoid":
        out = np.negative(logits, dtype=np.float32)
        np.exp(out, out=out)
        out += np.float32(1.0)
        np.reciprocal(out, out=out)
        return out
    shifted: npt.NDArray[np.float32] = logits - logits.max(axis=0, keepdims=True)
    np.exp(shifted, out=shifted)
    shifted /= shifted.sum(axis=0, keepdims=True)
    return shifted


def case_statistics(
    probabilities: npt.NDArray[np.float32],
    label: npt.NDArray[np.integer],
    plan: ClassPlan,
    options: EvaluationOptions,
) -> tuple[BinStats, OverlapCounts]:
    """Per-class bins and Dice counts of one case's probabilities ``(C, *spatial)``.

    The one place where a case's numbers are computed: ``evaluate``, temperature
    fitting and training validation all call it.
    """
    if _one_pass_applies(probabilities, label, options):
        return _one_pass_case_statistics(probabilities, label, plan, options)
    bin_one_class = _class_binner(options)
    predicted_channel = argmax_channel(probabilities) if options.dice_mode == "argmax" else None
    threshold = np.float32(options.dice_threshold)
    per_class: list[BinStats] = []
    intersection, predicted, truth = [], [], []
    for spec in plan.classes:
        p = class_probability(probabilities, spec)
        y = class_target(label, spec)
        per_class.append(bin_one_class(p, y))
        if predicted_channel is None:
            mask = p >= threshold
        else:
            mask = np.isin(predicted_channel, spec.channels)
        predicted.append(np.count_nonzero(mask))
        truth.append(np.count_nonzero(y))
        np.logical_and(mask, y, out=mask)  # in place: no third volume-sized mask
        intersection.append(np.count_nonzero(mask))
    overlap = OverlapCounts(
        intersection=np.array(intersection, dtype=np.int64),
        predicted=np.array(predicted, dtype=np.int64),
        truth=np.array(truth, dtype=np.int64),
    )
    return BinStats.stack(per_class), overlap


def _one_pass_applies(
    probabilities: npt.NDArray[np.floating],
    label: npt.NDArray[np.integer],
    options: EvaluationOptions,
) -> bool:
    """Whether bins, targets and Dice counts can come from one compiled pass.

    It needs numba, the numpy backend, threshold Dice, float32 probabilities and a
    label map with values in ``[0, 64)`` (the targets come from a bit mask of each
    class's labels).
    """
    if (
        not numba_available()
        or options.dice_mode != "threshold"
        or resolve_backend(options.backend, options.device) != "numpy"
        or probabilities.dtype != np.float32
        or label.dtype.kind not in "iu"
        or not label.dtype.isnative
        or label.size == 0
    ):
        return False
    from calibkit._kernels import TARGET_BITS, supports

    return supports(options.n_bins) and 0 <= int(label.min()) and int(label.max()) < TARGET_BITS


def _one_pass_case_statistics(
    probabilities: npt.NDArray[np.float32],
    label: npt.NDArray[np.integer],
    plan: ClassPlan,
    options: EvaluationOptions,
) -> tuple[BinStats, OverlapCounts]:
    from calibkit._kernels import bin_flat

    results = []
    for spec in plan.classes:
        p, codes = flatten_alike(class_probability(probabilities, spec), label)
        results.append(
            bin_flat(
                np.ascontiguousarray(p, dtype=np.float32),
                np.ascontiguousarray(codes),
                options.n_bins,
                target_labels=spec.labels,
                threshold=options.dice_threshold,
            )
        )
    stats = BinStats(
        np.stack([r.count for r in results]),
        np.stack([r.sum_p for r in results]),
        np.stack([r.sum_y for r in results]),
    )
    overlap = OverlapCounts(
        intersection=np.array([r.intersection for r in results], dtype=np.int64),
        predicted=np.array([r.predicted for r in results], dtype=np.int64),
        truth=np.array([int(r.sum_y.sum()) for r in results], dtype=np.int64),
    )
    return stats, overlap


def _class_binner(
    options: EvaluationOptions,
) -> Callable[[npt.NDArray[np.float32], npt.NDArray[np.bool_]], BinStats]:
    """A function binning one class map ``(*spatial)`` with the chosen backend."""
    n_bins = options.n_bins
    if resolve_backend(options.backend, options.device) == "numpy":
        return lambda p, y: bin_statistics(p[None], y[None], n_bins)[0]

    import torch

    from calibkit.binning_torch import bin_statistics_torch

    device = torch.device(options.device or ("cuda" if torch.cuda.is_available() else "cpu"))

    def bin_with_torch(p: npt.NDArray[np.float32], y: npt.NDArray[np.bool_]) -> BinStats:
        p_tensor = torch.from_numpy(np.ascontiguousarray(p)[None]).to(device)
        y_tensor = torch.from_numpy(np.ascontiguousarray(y)[None]).to(device)
        return bin_statistics_torch(p_tensor, y_tensor, n_bins)[0]

    return bin_with_torch


def resolve_backend(backend: str, device: str | None) -> str:
    """``"numpy"`` or ``"torch"``: ``auto`` picks torch only when a CUDA device is usable."""
    if backend != "auto":
        if backend == "torch":
            _require_torch()
        return backend
    if device is not None and device != "cpu":
        _require_torch()
        return "torch"
    if device is None and _cuda_may_exist():
        try:
            import torch
        except ImportError:
            return "numpy"
        if torch.cuda.is_available():
            return "torch"
    return "numpy"


def _cuda_may_exist() -> bool:
    # Cheap check first: importing torch costs seconds on machines that cannot use it.
    import importlib.util

    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    return (
        visible not in ("", "-1")
        and os.path.exists("/proc/driver/nvidia")
        and importlib.util.find_spec("torch") is not None
    )


def _require_torch() -> None:
    try:
        import torch  # noqa: F401
    except ImportError:
        raise CalibkitError(
            "the torch backend needs PyTorch: pip install torch (or use --backend numpy)"
        ) from None


def assemble_evaluation(
    results: Sequence[CaseResult],
    options: EvaluationOptions,
    *,
    extra_warnings: Sequence[str] = (),
    missing_label: tuple[str, ...] = (),
    missing_prediction: tuple[str, ...] = (),
    sources: dict[str, str] | None = None,
) -> Evaluation:
    """Build the tables from per-case results (sorted by case id)."""
    if not results:
        raise CalibkitError("no cases to evaluate")
    ordered = sorted(results, key=lambda result: result.case_id)
    class_names = ordered[0].class_names
    for result in ordered[1:]:
        if result.class_names != class_names:
            raise InputError(
                result.source,
                f"gives classes {', '.join(result.class_names)} but {ordered[0].source} gives "
                f"{', '.join(class_names)}: every prediction must have the same channels",
            )
    bins = BinStats.stack([result.stats for result in ordered])
    overlap = OverlapCounts(
        intersection=np.stack([r.overlap.intersection for r in ordered]),
        predicted=np.stack([r.overlap.predicted for r in ordered]),
        truth=np.stack([r.overlap.truth for r in ordered]),
    )
    case_ids = tuple(result.case_id for result in ordered)
    n_voxels = np.array([result.n_voxels for result in ordered], dtype=np.int64)
    per_image = per_image_table(case_ids, class_names, bins, overlap, n_voxels)
    summary = summary_table(per_image, class_names, bins, overlap)
    notes = [note for result in ordered for note in result.warnings] + list(extra_warnings)
    return Evaluation(
        per_image=per_image,
        summary=summary,
        bins=bins,
        overlap=overlap,
        case_ids=case_ids,
        class_names=class_names,
        options=options,
        warnings=tuple(notes),
        missing_label=missing_label,
        missing_prediction=missing_prediction,
        sources=sources or {},
    )


def per_image_table(
    case_ids: Sequence[str],
    class_names: Sequence[str],
    bins: BinStats,
    overlap: OverlapCounts,
    n_voxels: npt.NDArray[np.int64],
) -> pd.DataFrame:
    """Long table, one row per (case, class), from stacked bins ``(cases, classes, M)``."""
    import pandas as pd  # not at module level: worker processes need no pandas

    errors = calibration_errors(bins)
    n_cases, n_classes = len(case_ids), len(class_names)
    return pd.DataFrame(
        {
            "case_id": np.repeat(np.asarray(case_ids, dtype=object), n_classes),
            "class": np.tile(np.asarray(class_names, dtype=object), n_cases),
            "ace": errors.ace.ravel(),
            "ece": errors.ece.ravel(),
            "mce": errors.mce.ravel(),
            "dice": overlap.dice.ravel(),
            "n_voxels": np.repeat(n_voxels, n_classes),
            "gt_voxels": overlap.truth.ravel(),
            "gt_empty": (overlap.truth == 0).ravel(),
            "pred_voxels": overlap.predicted.ravel(),
            "intersection": overlap.intersection.ravel(),
        }
    )


def summary_table(
    per_image: pd.DataFrame,
    class_names: Sequence[str],
    bins: BinStats,
    overlap: OverlapCounts,
) -> pd.DataFrame:
    """Macro (mean, std, median, n over cases) and pooled values per class and metric.

    ``pooled`` sums the bins (and overlap counts) of all cases first, then applies the
    formulas once: a dataset-level calibration that differs from the macro mean.
    The ``mean`` row summarises the per-image means over classes; its pooled value is
    the mean of the classes' pooled values.
    """
    n_classes = len(class_names)
    pooled_errors = calibration_errors(bins.pooled(axis=0))
    pooled_overlap = OverlapCounts(
        overlap.intersection.sum(axis=0), overlap.predicted.sum(axis=0), overlap.truth.sum(axis=0)
    )
    pooled = {
        "ace": pooled_errors.ace,
        "ece": pooled_errors.ece,
        "mce": pooled_errors.mce,
        "dice": pooled_overlap.dice,
    }
    rows = []
    for metric in METRICS:
        values = per_image[metric].to_numpy(dtype=np.float64).reshape(-1, n_classes)
        columns = {
            **{name: values[:, i] for i, name in enumerate(class_names)},
            MEAN_ROW: per_image_mean(values),
        }
        for i, (name, column) in enumerate(columns.items()):
            summary = macro_summary(column)
            pooled_value = float(pooled[metric][i]) if i < n_classes else _nanmean(pooled[metric])
            rows.append(
                {
                    "class": name,
                    "metric": metric,
                    "mean": float(summary.mean),
                    "std": float(summary.std),
                    "median": float(summary.median),
                    "n": int(summary.n),
                    "pooled": pooled_value,
                }
            )
    import pandas as pd

    table = pd.DataFrame(rows)
    order = {name: i for i, name in enumerate([*class_names, MEAN_ROW])}
    table["_order"] = table["class"].map(order)
    table["_metric"] = table["metric"].map({m: i for i, m in enumerate(METRICS)})
    table = table.sort_values(["_order", "_metric"], kind="stable").drop(
        columns=["_order", "_metric"]
    )
    return table.reset_index(drop=True)


def _nanmean(values: npt.NDArray[np.float64]) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(np.nanmean(values)) if values.size else float("nan")


def _json_float(value: Any) -> float | None:
    return None if value is None or np.isnan(value) else float(value)


__all__ = [
    "CALIBRATION_METRICS",
    "CaseResult",
    "Evaluation",
    "EvaluationOptions",
    "assemble_evaluation",
    "evaluate_case",
    "evaluate_folders",
    "per_image_table",
    "summary_table",
    "to_probabilities",
]
