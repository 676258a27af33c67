"""Fit a temperature on a validation folder, and apply it to prediction maps.

Orchestration only: :mod:`calibkit.io` reads, pairs and writes files,
:mod:`calibkit.classes` says which channels and label values make each class,
:mod:`calibkit.temperature` fits and applies ``T``, and :mod:`calibkit.binning` /
:mod:`calibkit.metrics` give the ACE before and after.

The temperature divides the logits of the prediction *channels* (for a BraTS softmax
map: BG, NCR, ED, ET), before any region is formed; ACE is reported on the evaluated
classes (ET, TC, WT), exactly as ``calibkit evaluate`` forms them.

Fitting reads one case at a time and keeps a seeded, uniform subsample of at most
``max_voxels // n_cases`` voxels per case (at least one), so memory stays bounded
whatever the folder size. A case's sample depends only on ``seed`` and its case id.
"""

from __future__ import annotations

import math
import os
import warnings
import zlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from calibkit._deprecation import moved_names
from calibkit._version import __version__
from calibkit.binning import BinStats, bin_statistics
from calibkit.cases import (
    calibrated_probabilities,
    choose_activation,
    load_case,
    to_probabilities,
)
from calibkit.classes import ClassPlan, class_probability, class_target
from calibkit.errors import CalibkitError, InputError, OutputError, WriteError
from calibkit.execution import Executor, run_cases
from calibkit.io.atomic import unwritable_reason, write_error
from calibkit.io.formats import split_suffix
from calibkit.io.pairing import CasePair, find_predictions, pair_cases
from calibkit.io.temperature import FORMAT_VERSION, TEMPERATURE_FORMAT, load_temperature
from calibkit.io.volumes import read_prediction
from calibkit.io.writing import rewrite_storage, rewrite_suffix, write_prediction
from calibkit.metrics import calibration_errors, per_image_mean
from calibkit.records import ACTIVATION_CHOICES, EvaluationOptions
from calibkit.temperature import (
    DEFAULT_BOUNDS,
    PROBABILITY_CLIP,
    TemperatureFit,
    TemperatureModel,
    apply_temperature,
    fit_temperature,
    logits_from_probabilities,
)

__all__ = [
    "DEFAULT_MAX_VOXELS",
    "AppliedTemperature",
    "FolderTemperature",
    "apply_temperature_folder",
    "channel_labels",
    "fit_temperature_folder",
]

__getattr__ = moved_names(
    __name__,
    {
        "calibrate_logits": "calibkit.temperature",
        "calibrate_probabilities": "calibkit.temperature",
        "check_output_file": "calibkit.io.temperature",
        "save_temperature": "calibkit.io.temperature",
    },
)

DEFAULT_MAX_VOXELS = 2_000_000
MEAN_KEY = "mean"
# A softmax map whose channels miss 1 by more than this on average draws a warning.
_SUM_TOLERANCE = 0.02

ProgressCallback = Callable[[str], None]


# --------------------------------------------------------------------------- fitting


@dataclass(frozen=True, eq=False)
class FolderTemperature:
    """The result of :func:`fit_temperature_folder` (what ``t.json`` records).

    Attributes:
        fit: the core fit (temperature, NLL before / after, convergence).
        n_channels: channel count of the predictions.
        class_names: evaluated classes (ACE is reported for these).
        input_kind: ``"probabilities"`` or ``"logits"``.
        ace_before: per class and ``"mean"``: mean over cases of each case's ACE on its
            sampled voxels, before scaling (``"mean"``: of the per-case class means).
        ace_after: the same after scaling.
        ace_pooled_before: per class and ``"mean"``: ACE of all sampled voxels pooled.
        ace_pooled_after: the same after scaling.
        bins_before: bin statistics of the sample, ``(cases, classes, M)``, before.
        bins_after: the same after scaling.
        case_ids: fitted cases, sorted.
        voxels_per_case: the per-case sample budget.
        max_voxels: the requested total budget.
        seed: the sampling seed.
        options: the evaluation options used (classes, bins, input kind).
        sources: the input folders.
        warnings: notes raised on the way.
    """

    fit: TemperatureFit
    n_channels: int
    class_names: tuple[str, ...]
    input_kind: str
    ace_before: dict[str, float]
    ace_after: dict[str, float]
    ace_pooled_before: dict[str, float]
    ace_pooled_after: dict[str, float]
    bins_before: BinStats
    bins_after: BinStats
    case_ids: tuple[str, ...]
    voxels_per_case: int
    max_voxels: int
    seed: int
    options: EvaluationOptions
    sources: dict[str, str] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()

    @property
    def temperature(self) -> float | list[float]:
        """The fitted ``T``: a float, or a list with one value per channel."""
        value = self.fit.temperature_
        return float(value) if isinstance(value, float) else [float(t) for t in value]

    @property
    def activation(self) -> str:
        return self.fit.activation

    def model(self) -> TemperatureModel:
        """The fitted temperature as a :class:`TemperatureModel`."""
        return TemperatureModel(
            temperature=tuple(float(t) for t in self.fit.temperatures),
            activation=self.fit.activation,
            n_channels=self.n_channels,
            class_names=self.class_names,
            input_kind=self.input_kind,
        )

    def record(self) -> dict[str, Any]:
        """Everything ``t.json`` holds, as plain JSON-ready data."""
        return {
            "format": TEMPERATURE_FORMAT,
            "format_version": FORMAT_VERSION,
            "calibkit_version": __version__,
            "temperature": self.temperature,
            "per_class": self.fit.per_class,
            "activation": self.fit.activation,
            "input_kind": self.input_kind,
            "n_channels": self.n_channels,
            "classes": list(self.class_names),
            "nll_before": _json_float(self.fit.nll_before),
            "nll_after": _json_float(self.fit.nll_after),
            "ace_before": _json_dict(self.ace_before),
            "ace_after": _json_dict(self.ace_after),
            "ace_pooled_before": _json_dict(self.ace_pooled_before),
            "ace_pooled_after": _json_dict(self.ace_pooled_after),
            "converged": self.fit.converged,
            "at_bound": self.fit.at_bound,
            "bounds": list(self.fit.bounds),
            "n_voxels": self.fit.n_voxels,
            "n_cases": len(self.case_ids),
            "voxels_per_case": self.voxels_per_case,
            "max_voxels": self.max_voxels,
            "seed": self.seed,
            "probability_clip": PROBABILITY_CLIP,
            "options": asdict(self.options),
            "inputs": self.sources,
            "case_ids": list(self.case_ids),
            "warnings": list(self.warnings),
        }


@dataclass(frozen=True)
class _CaseSample:
    """What fitting keeps of one case: its sampled voxels, and what it found on the way."""

    case_id: str
    source: Path
    setup: _Setup  # classes, activation and channel labels, as this case gives them
    logits: npt.NDArray[np.float32]  # (C, k)
    probabilities: npt.NDArray[np.float32]  # (C, k), as evaluate reads them
    labels: npt.NDArray[np.integer]  # (k,)
    targets: npt.NDArray[Any]  # softmax: (k,) channel index; sigmoid: (C, k) booleans
    sum_gap: float  # sum over sampled voxels of |sum of channels - 1|
    notes: tuple[str, ...]


def fit_temperature_folder(
    predictions: str | os.PathLike[str],
    labels: str | os.PathLike[str],
    *,
    options: EvaluationOptions | None = None,
    per_class: bool = False,
    max_voxels: int = DEFAULT_MAX_VOXELS,
    seed: int = 0,
    activation: str | None = None,
    bounds: tuple[float, float] = DEFAULT_BOUNDS,
    progress: ProgressCallback | None = None,
    on_start: Callable[[int], None] | None = None,
    executor: Executor | None = None,
) -> FolderTemperature:
    """Fit a temperature on a validation folder of predictions and labels.

    Args:
        predictions: folder of probability (or logit) maps.
        labels: folder of integer label maps.
        options: pairing, classes (``preset``, ``classes``...), ``n_bins`` for the ACE,
            ``input_kind`` and (for logits) ``activation``; defaults when None.
        per_class: one temperature per prediction channel.
        max_voxels: total voxel budget, spread evenly over the cases.
        seed: sampling seed (non-negative).
        activation: ``"auto"``, ``"softmax"`` or ``"sigmoid"``; None: for logits
            ``options.activation``, else ``"auto"``, which picks the softmax for
            mutually exclusive channels (a softmax map) and the sigmoid for region maps
            or one channel (:func:`calibkit.cases.choose_activation`). For logits it
            must agree with ``options.activation`` unless that is ``"auto"``.
        bounds: search interval for ``T``.
        progress: called with each case id once its voxels are sampled.
        on_start: called once with the number of cases.
        executor: where the cases are read and sampled (:mod:`calibkit.execution`);
            default: in this process. The sample, hence ``T``, is the same anywhere.

    Returns:
        :class:`FolderTemperature`.

    Raises:
        CalibkitError: on bad input, naming the file and the problem.
    """
    options = options or EvaluationOptions()
    if int(max_voxels) != max_voxels or max_voxels < 1:
        raise CalibkitError(f"--max-voxels must be a positive integer, got {max_voxels}")
    if int(seed) != seed or seed < 0:
        raise CalibkitError(f"--seed must be a non-negative integer, got {seed}")
    if activation is not None and activation not in ACTIVATION_CHOICES:
        raise CalibkitError("--activation must be 'auto', 'softmax' or 'sigmoid'")
    if not (0 < bounds[0] < bounds[1] and math.isfinite(bounds[1])):
        raise CalibkitError(f"temperature bounds must satisfy 0 < low < high, got {bounds}")
    pred_dir, label_dir = Path(predictions), Path(labels)
    pairing = pair_cases(
        pred_dir, label_dir, suffixes=options.suffixes, allow_missing=options.allow_missing
    )
    pairs = list(pairing.pairs)
    if on_start is not None:
        on_start(len(pairs))
    budget = max(1, int(max_voxels) // len(pairs))
    sample_case = partial(
        _sample_case, options=options, activation=activation, budget=budget, seed=seed
    )
    samples = run_cases(
        sample_case,
        {pair.case_id: pair for pair in pairs},
        executor=executor,
        progress=progress,
    )
    if not samples:
        raise CalibkitError("no cases to fit")
    setup = samples[0].setup
    for sample in samples[1:]:
        if sample.setup.plan.n_channels != setup.plan.n_channels:
            raise InputError(
                sample.source,
                f"has {sample.setup.plan.n_channels} channel(s) but {samples[0].source} has "
                f"{setup.plan.n_channels}: every prediction must have the same channels",
            )
    plan, chosen = setup.plan, setup.activation
    notes = [note for sample in samples for note in sample.notes]
    targets = [sample.targets for sample in samples]
    sum_gap = sum(sample.sum_gap for sample in samples)

    logits = np.concatenate([s.logits for s in samples], axis=1)  # (C, N)
    if chosen == "softmax" and options.input_kind == "probabilities":
        mean_gap = sum_gap / logits.shape[1]
        if mean_gap > _SUM_TOLERANCE:
            notes.append(
                f"channels sum to 1 only within {mean_gap:.3f} on average: is this a softmax "
                "map? (use --activation sigmoid for independent channels)"
            )
    target = np.concatenate(targets, axis=-1)
    fit = fit_temperature(
        logits.T,
        target if chosen == "softmax" else target.T,
        activation=chosen,  # type: ignore[arg-type]
        per_class=per_class,
        bounds=bounds,
    )
    if fit.at_bound:
        notes.append(
            f"the fitted temperature lies on a bound of {fit.bounds}: the data ask for a more "
            "extreme value"
        )
    if not fit.converged:
        notes.append("the optimiser did not report convergence; check the result")

    temperatures = fit.temperatures if fit.per_class else fit.temperatures.reshape(())
    bins_before, bins_after = [], []
    for sample in samples:
        after = apply_temperature(sample.logits, temperatures, chosen, axis=0)  # type: ignore[arg-type]
        bins_before.append(_class_bins(sample.probabilities, sample.labels, plan, options.n_bins))
        bins_after.append(_class_bins(after, sample.labels, plan, options.n_bins))
    before, after_stats = BinStats.stack(bins_before), BinStats.stack(bins_after)
    notes.extend(pairing.notes)
    return FolderTemperature(
        fit=fit,
        n_channels=plan.n_channels,
        class_names=plan.names,
        input_kind=options.input_kind,
        ace_before=_macro_ace(before, plan.names),
        ace_after=_macro_ace(after_stats, plan.names),
        ace_pooled_before=_pooled_ace(before, plan.names),
        ace_pooled_after=_pooled_ace(after_stats, plan.names),
        bins_before=before,
        bins_after=after_stats,
        case_ids=tuple(pair.case_id for pair in pairs),
        voxels_per_case=budget,
        max_voxels=int(max_voxels),
        seed=int(seed),
        options=options,
        sources={"predictions": str(pred_dir), "labels": str(label_dir)},
        warnings=tuple(notes),
    )


def channel_labels(plan: ClassPlan) -> tuple[frozenset[int], ...]:
    """The label values each prediction channel stands for.

    Mutually exclusive channels (a softmax map): a channel takes the labels shared by
    every class it is part of, minus those of the classes it is not part of; a channel
    in no class (background) takes its own index as label. BraTS (BG, NCR, ED, ET)
    gives ``{0}, {1}, {2}, {3, 4}``. Region maps: each channel takes its class's labels.

    Raises:
        CalibkitError: a channel has no class (region maps) or two channels share a label.

    Example:
        >>> from calibkit.classes import resolve_classes
        >>> plan = resolve_classes(4, preset="brats")
        >>> [sorted(labels) for labels in channel_labels(plan)]
        [[0], [1], [2], [3, 4]]
    """
    n = plan.n_channels
    found: list[frozenset[int] | None] = [None] * n
    if not plan.exclusive:
        for spec in plan.classes:
            if len(spec.channels) == 1:
                found[spec.channels[0]] = frozenset(spec.labels)
        missing = [c for c in range(n) if found[c] is None]
        if missing:
            raise CalibkitError(f"prediction channel(s) {missing} belong to no evaluated class")
        return tuple(labels for labels in found if labels is not None)
    for c in range(n):
        inside = [frozenset(spec.labels) for spec in plan.classes if c in spec.channels]
        if inside:
            outside = [frozenset(spec.labels) for spec in plan.classes if c not in spec.channels]
            found[c] = frozenset.intersection(*inside).difference(*outside)
    taken = frozenset().union(*(labels for labels in found if labels is not None))
    result = tuple(
        labels if labels is not None else frozenset({c}) - taken for c, labels in enumerate(found)
    )
    if sum(len(labels) for labels in result) != len(frozenset().union(*result)):
        raise CalibkitError("two prediction channels stand for the same label value")
    return result


@dataclass(frozen=True)
class _Setup:
    plan: ClassPlan
    activation: str
    mapping: tuple[frozenset[int], ...]


def _setup(
    plan: ClassPlan, options: EvaluationOptions, activation: str | None, path: Path
) -> _Setup:
    """Activation and channel labels of a prediction with this class plan."""
    chosen = _choose_activation(activation, options, plan, path)
    try:
        mapping = channel_labels(plan)
    except CalibkitError as error:
        raise InputError(path, str(error)) from None
    return _Setup(plan, chosen, mapping)


def _choose_activation(
    requested: str | None, options: EvaluationOptions, plan: ClassPlan, path: Path
) -> str:
    """The activation of the fit: ``requested``, reconciled with how logits are read."""
    wanted = requested or "auto"
    if options.input_kind == "logits" and options.activation != "auto":
        if requested is not None and requested not in ("auto", options.activation):
            raise CalibkitError(
                f"--activation {requested} differs from the activation the logits are read "
                f"with ({options.activation}); give one activation"
            )
        wanted = options.activation
    return choose_activation(wanted, plan, path)


def _sample_case(
    pair: CasePair,
    *,
    options: EvaluationOptions,
    activation: str | None,
    budget: int,
    seed: int,
) -> _CaseSample:
    """Read one case and keep a seeded sample of its voxels (a task of fitting)."""
    case = load_case(pair, options)
    setup = _setup(case.plan, options, activation, pair.prediction)
    array, label = case.prediction.array, case.label.array
    spatial = tuple(int(n) for n in array.shape[1:])
    n_voxels = int(np.prod(spatial))
    if budget >= n_voxels:
        index = np.arange(n_voxels)
    else:
        # Seeded by case id, not position: adding a case leaves the others' samples alone.
        rng = np.random.default_rng([seed, zlib.crc32(pair.case_id.encode())])
        index = np.sort(rng.choice(n_voxels, size=budget, replace=False))
    where = np.unravel_index(index, spatial)
    channels_at: tuple[Any, ...] = (slice(None), *where)
    if options.input_kind == "logits":
        logits = np.ascontiguousarray(array[channels_at], dtype=np.float32)
        probabilities = apply_temperature(logits, 1.0, setup.activation, axis=0)  # type: ignore[arg-type]
    else:
        full = to_probabilities(
            array,
            options,
            pair.prediction,
            case.prediction.value_range,
            unscaled_integers=case.prediction.unscaled_integers,
        )
        probabilities = np.ascontiguousarray(full[channels_at], dtype=np.float32)
        logits = logits_from_probabilities(probabilities, setup.activation)  # type: ignore[arg-type]
    # A multi-label ground truth keeps its channel axis: (L, k).
    labels = label[channels_at] if case.plan.label_channels else label[where]
    return _CaseSample(
        case_id=pair.case_id,
        source=pair.prediction,
        setup=setup,
        logits=logits,
        probabilities=probabilities,
        labels=labels,
        targets=(
            labels.astype(bool)
            if case.plan.label_channels
            else _channel_targets(labels, setup.mapping, setup.activation, pair.label)
        ),
        sum_gap=float(np.sum(np.abs(probabilities.sum(axis=0) - 1), dtype=np.float64)),
        notes=case.notes,
    )


def _channel_targets(
    labels: npt.NDArray[np.integer],
    mapping: Sequence[frozenset[int]],
    activation: str,
    label_path: Path,
) -> npt.NDArray[Any]:
    """Softmax: the channel index of each voxel ``(k,)``; sigmoid: ``(C, k)`` booleans."""
    if activation == "sigmoid":
        return np.stack([np.isin(labels, sorted(values)) for values in mapping])
    top = max((max(values) for values in mapping if values), default=0)
    lookup = np.full(max(top, int(labels.max(initial=0))) + 1, -1, dtype=np.int16)
    for channel, values in enumerate(mapping):
        lookup[sorted(values)] = channel
    target: npt.NDArray[Any] = lookup[labels]
    if target.size and int(target.min()) < 0:
        value = int(labels[np.argmin(target)])
        raise InputError(
            label_path,
            f"label value {value} belongs to no prediction channel; a softmax temperature "
            "needs one channel per label (check --classes, or use --activation sigmoid)",
        )
    return target


def _class_bins(
    probabilities: npt.NDArray[np.float32],
    labels: npt.NDArray[np.integer],
    plan: ClassPlan,
    n_bins: int,
) -> BinStats:
    p = np.stack([class_probability(probabilities, spec) for spec in plan.classes])
    y = np.stack([class_target(labels, spec) for spec in plan.classes])
    return bin_statistics(p, y, n_bins)


def _macro_ace(stats: BinStats, names: Sequence[str]) -> dict[str, float]:
    ace = calibration_errors(stats).ace  # (cases, classes)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        result = {name: float(np.nanmean(ace[:, i])) for i, name in enumerate(names)}
        result[MEAN_KEY] = float(np.nanmean(per_image_mean(ace)))
    return result


def _pooled_ace(stats: BinStats, names: Sequence[str]) -> dict[str, float]:
    ace = calibration_errors(stats.pooled(axis=0)).ace  # (classes,)
    result = {name: float(ace[i]) for i, name in enumerate(names)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        result[MEAN_KEY] = float(np.nanmean(ace))
    return result


# --------------------------------------------------------------------------- applying


@dataclass(frozen=True)
class AppliedTemperature:
    """The result of :func:`apply_temperature_folder`.

    Attributes:
        model: the temperature applied.
        outputs: the files written, by case id.
        storage: the storage type of each output, by case id.
    """

    model: TemperatureModel
    outputs: dict[str, Path]
    storage: dict[str, str]


def apply_temperature_folder(
    predictions: str | os.PathLike[str],
    temperature: str | os.PathLike[str] | TemperatureModel,
    out_dir: str | os.PathLike[str],
    *,
    options: EvaluationOptions | None = None,
    overwrite: bool = False,
    progress: ProgressCallback | None = None,
    on_start: Callable[[int], None] | None = None,
    executor: Executor | None = None,
) -> AppliedTemperature:
    """Write calibrated probability maps of every prediction in a folder.

    Each output has its input's file name (``.nii.gz`` for SimpleITK formats) and
    relative folder under ``out_dir``, its geometry and header, and its storage: uint8
    and uint16 maps stay scaled integers (``scl_slope`` 1/255, 1/65535), anything else
    becomes float32. Every file is written atomically; the inputs are never touched.
    When a write fails (a full disk, say), the error says how many maps were written
    before it; the others, and earlier files under their names, are untouched.

    Args:
        predictions: folder of probability (or logit) maps.
        temperature: a temperature file or a :class:`TemperatureModel`.
        out_dir: output folder, outside ``predictions`` (and not containing it).
        options: ``input_kind`` and ``suffixes`` are used; logits are activated with
            the model's activation.
        overwrite: replace outputs that already exist.
        progress: called with each case id once written.
        on_start: called once with the number of cases.
        executor: where the maps are calibrated and written (:mod:`calibkit.execution`);
            default: in this process.

    Raises:
        CalibkitError: bad input (a channel count that does not fit the model, nnU-Net
            ``.npz`` files, which have no geometry), or an unusable ``out_dir``.
    """
    options = options or EvaluationOptions()
    model = (
        temperature if isinstance(temperature, TemperatureModel) else load_temperature(temperature)
    )
    if options.input_kind == "logits":
        options = replace(options, activation=model.activation)  # type: ignore[arg-type]
    pred_dir, out = Path(predictions), Path(out_dir)
    files = find_predictions(pred_dir, options.suffixes)
    targets = _plan_outputs(pred_dir, files, out, overwrite)
    if on_start is not None:
        on_start(len(files))
    written: list[str] = []

    def finished(case_id: str) -> None:
        written.append(case_id)
        if progress is not None:
            progress(case_id)

    try:
        storage = run_cases(
            partial(_apply_to_case, model=model, options=options),
            {case_id: (files[case_id], targets[case_id]) for case_id in sorted(files)},
            executor=executor,
            progress=finished,
        )
    except WriteError as error:
        # Each map is written atomically: the ones before it are complete, the
        # others (and an earlier file under this name) untouched.
        raise error.noted(
            f"{len(written)} of {len(files)} calibrated map(s) were written before it"
        ) from None
    return AppliedTemperature(
        model=model, outputs=targets, storage=dict(zip(sorted(files), storage, strict=True))
    )


def _apply_to_case(
    files: tuple[Path, Path], *, model: TemperatureModel, options: EvaluationOptions
) -> str:
    """Write the calibrated map of one prediction file; return its storage type."""
    source, target = files
    volume = read_prediction(source)
    calibrated = calibrated_probabilities(
        volume.array,
        model,
        options,
        source,
        unscaled_integers=volume.unscaled_integers,
    )
    storage = rewrite_storage(source)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise write_error(target.parent, error) from None
    write_prediction(target, calibrated, source, storage=storage)
    return storage


def _plan_outputs(
    pred_dir: Path, files: dict[str, Path], out: Path, overwrite: bool
) -> dict[str, Path]:
    resolved, inputs = out.resolve(), pred_dir.resolve()
    if resolved == inputs or inputs in resolved.parents or resolved in inputs.parents:
        raise OutputError(
            f"{out}: the output folder must lie outside the prediction folder {pred_dir} "
            "(and not contain it); choose another --out"
        )
    if out.exists() and not out.is_dir():
        raise OutputError(f"{out}: exists and is not a folder")
    targets: dict[str, Path] = {}
    for case_id, source in files.items():
        stem, suffix = split_suffix(source)
        if suffix == ".npz":
            raise InputError(
                source,
                "nnU-Net .npz probabilities carry no geometry, so no NIfTI can be written with "
                "it; use calibkit evaluate --temperature to apply the temperature on the fly",
            )
        relative = source.parent.relative_to(pred_dir)
        written = rewrite_suffix(source)
        name = source.name if written == suffix else f"{stem}{written}"
        targets[case_id] = out / relative / name
    present = sorted(str(path) for path in targets.values() if path.exists())
    if present and not overwrite:
        more = f" and {len(present) - 1} more" if len(present) > 1 else ""
        raise OutputError(
            f"{out}: already holds {present[0]}{more}; use --overwrite to replace them or "
            "choose another --out"
        )
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise write_error(out, error) from None
    reason = unwritable_reason(out)
    if reason is not None:
        raise OutputError(f"{out}: cannot write here ({reason} on {out})")
    return targets


def _json_float(value: float) -> float | None:
    return None if not math.isfinite(value) else float(value)


def _json_dict(values: dict[str, float]) -> dict[str, float | None]:
    return {key: _json_float(value) for key, value in values.items()}
