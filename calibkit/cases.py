"""The case pipeline: one stored prediction and its label map → the numbers of one case.

Every workflow goes through here: ``evaluate`` (locally or through an executor),
``fit-temperature``, ``apply-temperature`` and training validation. A case is

1. read and checked (:func:`load_case`: prediction and label, geometry, the class
   plan of ``--classes`` / ``--preset`` / regions, label values no class accounts for);
2. turned into class probabilities ``(C, *spatial)`` (:func:`case_probabilities`:
   range checks and clipping, or an activation of logits, and an optional temperature);
3. binned with its targets and Dice counts (:func:`case_statistics`).

:func:`evaluate_case` runs the three steps and returns a
:class:`~calibkit.records.CaseResult`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from calibkit.binning import (
    BinStats,
    LabelMapBins,
    bin_codes_with_label_map,
    bin_with_label_map,
    class_binner,
    coded_channel_sum_error,
    coded_pass_applies,
    compiled_kernel_applies,
    label_map_pass_applies,
)
from calibkit.classes import (
    ClassPlan,
    class_label_map,
    class_probability,
    class_target,
    resolve_classes,
    unexpected_labels,
)
from calibkit.errors import CalibkitError, InputError
from calibkit.io.pairing import CasePair
from calibkit.io.temperature import load_temperature
from calibkit.io.volumes import (
    Volume,
    check_geometry,
    decode_prediction,
    multi_label_channels,
    read_label,
    read_prediction,
)
from calibkit.metrics import OverlapCounts
from calibkit.records import CaseResult, EvaluationOptions
from calibkit.temperature import TemperatureModel, calibrate_logits, calibrate_probabilities

__all__ = [
    "PROBABILITY_TOLERANCE",
    "SOFTMAX_SUM_TOLERANCE",
    "LoadedCase",
    "argmax_channel",
    "calibrated_probabilities",
    "case_probabilities",
    "case_statistics",
    "choose_activation",
    "class_plan",
    "coded_case_statistics",
    "evaluate_case",
    "load_case",
    "softmax_sum_problem",
    "to_probabilities",
]

# Probabilities may stray this far outside [0, 1] (rounding of stored maps) before
# they are rejected; within it they are clipped.
PROBABILITY_TOLERANCE = 1e-4
# Channels of a softmax map may sum this far from 1: uint8 storage alone (1/255
# steps) moves a 4-channel sum by up to 0.008.
SOFTMAX_SUM_TOLERANCE = 0.01


@dataclass(frozen=True)
class LoadedCase:
    """One case read and checked: its prediction, label map and class plan.

    Attributes:
        pair: the files.
        prediction: the prediction, channel-first ``(C, *spatial)``.
        label: the label map on the same grid.
        plan: the evaluated classes (channels and label values of each).
        notes: warnings raised on the way (an accepted affine mismatch).
    """

    pair: CasePair
    prediction: Volume
    label: Volume
    plan: ClassPlan
    notes: tuple[str, ...] = ()


def class_plan(
    n_channels: int,
    options: EvaluationOptions,
    path: Path,
    label_channels: int | None = None,
) -> ClassPlan:
    """The evaluated classes of a prediction with ``n_channels`` channels.

    ``label_channels``: the channel count of a multi-label ground truth, or None
    for a label map.

    Raises:
        InputError: the options do not fit the channel count (named after ``path``).
    """
    try:
        return resolve_classes(
            n_channels,
            classes=options.classes,
            class_names=options.class_names,
            include_background=options.include_background,
            preset=options.preset,
            regions=options.regions,
            label_channels=label_channels,
        )
    except CalibkitError as error:
        raise InputError(path, str(error)) from None


def choose_activation(
    requested: str, plan: ClassPlan, path: Path | str
) -> Literal["softmax", "sigmoid"]:
    """The activation that turns the logits of a prediction with this class plan into probabilities.

    The one place that decides it, for ``evaluate``, ``fit-temperature``,
    ``apply-temperature`` and ``evaluate --temperature``. ``"auto"`` picks from the
    channels: the softmax for mutually exclusive channels (a softmax map of two or
    more classes), the sigmoid for one channel (a binary map: the logit of the
    foreground) and for region maps (overlapping channels, such as BraTS ET/TC/WT).

    Args:
        requested: ``"auto"``, ``"softmax"`` or ``"sigmoid"`` (``--activation``).
        plan: the evaluated classes of the prediction.
        path: the prediction file, named in errors.

    Raises:
        InputError: a softmax asked for channels that are not mutually exclusive (a
            softmax over one channel is 1 everywhere; over regions it makes nested
            regions compete).
        CalibkitError: ``requested`` is no activation.

    Example:
        >>> from calibkit.classes import resolve_classes
        >>> choose_activation("auto", resolve_classes(1), "a.nii.gz")
        'sigmoid'
        >>> choose_activation("auto", resolve_classes(4, preset="brats"), "a.nii.gz")
        'softmax'
    """
    exclusive = plan.exclusive and plan.n_channels > 1
    if requested == "auto":
        return "softmax" if exclusive else "sigmoid"
    if requested == "sigmoid":
        return "sigmoid"
    if requested != "softmax":
        raise CalibkitError(
            f"--activation must be 'auto', 'softmax' or 'sigmoid', got {requested!r}"
        )
    if not exclusive:
        if plan.n_channels == 1:
            problem = (
                "a softmax over one channel is 1 everywhere; a one-channel map is binary: "
                "use --activation sigmoid (the default for one channel)"
            )
        else:
            problem = (
                f"a softmax over the {plan.n_channels} region channels "
                f"({', '.join(plan.names)}) makes overlapping regions exclude each other; "
                "use --activation sigmoid (the default for region maps)"
            )
        raise InputError(path, problem)
    return "softmax"


def load_case(
    pair: CasePair, options: EvaluationOptions, *, keep_codes: bool = False
) -> LoadedCase:
    """Read one case and check it: geometry, class plan, label values.

    ``keep_codes``: keep a prediction stored as uint8 / uint16 codes as codes
    (:func:`calibkit.io.volumes.read_prediction`); :func:`case_probabilities`
    decodes them when needed.

    Raises:
        InputError: the files cannot be read, do not lie on one grid (unless
            ``options.ignore_geometry``), do not fit the class options, or hold label
            values no class accounts for.
    """
    prediction = read_prediction(pair.prediction, keep_codes=keep_codes)
    label = read_label(pair.label)
    notes: list[str] = [prediction.note] if prediction.note else []
    geometry_problem = check_geometry(prediction, label)
    if geometry_problem is not None:
        if not options.ignore_geometry:
            raise InputError(pair.prediction, geometry_problem)
        notes.append(f"{pair.prediction}: {geometry_problem}")
    plan = class_plan(
        prediction.array.shape[0], options, pair.prediction, multi_label_channels(label.array)
    )
    unknown = unexpected_labels(label.array, plan)
    if unknown and plan.label_channels is not None:
        raise InputError(
            pair.label,
            f"a multi-label ground truth holds 0 or 1 in each of its {plan.label_channels} "
            f"channels, but it holds {', '.join(map(str, unknown[:10]))}",
        )
    if unknown:
        raise InputError(
            pair.label,
            f"label values {unknown} have no prediction channel or class (known labels: "
            f"{', '.join(map(str, sorted(plan.known_labels)))}); "
            + (
                "a mask stored as 0/255 is read with --classes 255"
                if unknown == [255] and plan.n_channels == 1
                else "check --classes, --region or --preset"
            ),
        )
    return LoadedCase(pair, prediction, label, plan, tuple(notes))


def case_probabilities(
    case: LoadedCase, options: EvaluationOptions, temperature: TemperatureModel | None = None
) -> npt.NDArray[np.float32]:
    """Class probabilities ``(C, *spatial)`` of a loaded case, as ``calibkit evaluate`` reads them.

    The prediction's array may be modified in place (clipping, activation). A
    prediction kept as codes is decoded first.
    """
    prediction, path = decode_prediction(case.prediction), case.pair.prediction
    if temperature is not None:
        return calibrated_probabilities(
            prediction.array,
            temperature,
            options,
            path,
            prediction.value_range,
            unscaled_integers=prediction.unscaled_integers,
            plan=case.plan,
        )
    return to_probabilities(
        prediction.array,
        options,
        path,
        prediction.value_range,
        unscaled_integers=prediction.unscaled_integers,
        plan=case.plan,
    )


def evaluate_case(pair: CasePair, options: EvaluationOptions) -> CaseResult:
    """Read one case and compute its per-class bin statistics and overlap counts.

    A prediction stored as uint8 / uint16 codes is binned from its codes
    (:func:`coded_case_statistics`) when nothing needs its float values: no
    temperature, probabilities (not logits), threshold Dice and the compiled
    kernel; otherwise it is decoded and takes the float path. Both give the same
    numbers bit for bit.
    """
    temperature = load_temperature(options.temperature) if options.temperature else None
    # Codes are kept only where they may be binned: other paths read float32 as
    # before (decoding costs more than the reader's own scaling).
    case = load_case(pair, options, keep_codes=temperature is None and _codes_may_apply(options))
    if options.dice_mode == "argmax" and not case.plan.exclusive:
        raise InputError(
            pair.prediction,
            "--dice-mode argmax needs mutually exclusive channels (a softmax map); "
            "these channels are regions or a single foreground",
        )
    checks_sum = case.plan.exclusive and options.input_kind == "probabilities"
    if temperature is None and _coded_pass_applies(case, options):
        stats, overlap, problem = coded_case_statistics(case, options, check_sum=checks_sum)
    else:
        probabilities = case_probabilities(case, options, temperature)
        problem = softmax_sum_problem(probabilities) if checks_sum else None
        stats, overlap = case_statistics(probabilities, case.label.array, case.plan, options)
    notes = list(case.notes)
    if problem is not None:
        if options.strict:
            raise InputError(pair.prediction, problem + " (--strict)")
        notes.append(f"{pair.prediction}: {problem} (--strict makes this an error)")
    return CaseResult(
        case_id=pair.case_id,
        source=pair.prediction,
        class_names=case.plan.names,
        stats=stats,
        overlap=overlap,
        n_voxels=int(np.prod(case.prediction.array.shape[1:])),
        warnings=tuple(notes),
    )


def to_probabilities(
    array: npt.NDArray[np.float32],
    options: EvaluationOptions,
    path: Path,
    value_range: tuple[float, float] | None = None,
    *,
    unscaled_integers: str | None = None,
    plan: ClassPlan | None = None,
) -> npt.NDArray[np.float32]:
    """Probabilities ``(C, *spatial)`` from the stored values: validated and clipped, or activated.

    ``value_range`` is the known smallest and largest value (``Volume.value_range``);
    None: found here. ``unscaled_integers`` (``Volume.unscaled_integers``) explains
    values above 1 in the error. ``plan`` is the prediction's class plan (None: made
    here from the channel count and ``options``); logits are activated as
    :func:`choose_activation` says for it.

    Raises:
        InputError: probabilities outside [0, 1] beyond the tolerance, or a softmax
            asked for channels that are not mutually exclusive.
    """
    if options.input_kind == "logits":
        return _activate(array, _logit_activation(array, options, path, plan))
    low, high = value_range or (float(array.min()), float(array.max()))
    if low < -PROBABILITY_TOLERANCE or high > 1.0 + PROBABILITY_TOLERANCE:
        raise InputError(path, _range_problem(low, high, unscaled_integers))
    if low < 0.0 or high > 1.0:
        np.clip(array, 0.0, 1.0, out=array)
    return array


def _range_problem(low: float, high: float, unscaled_integers: str | None) -> str:
    """Why values outside [0, 1] are refused: logits, or integers without their scale."""
    logits = "use --input logits (with --activation softmax or sigmoid)"
    text = f"values range from {low:.6g} to {high:.6g}, outside [0, 1]"
    if unscaled_integers is None or high <= 1.0:
        return f"{text}; if these are logits, {logits}"
    # The integer that most likely stands for probability 1: the largest uint8, int16
    # or uint16 (the usual storage of probability maps), whichever first holds them.
    full = next((n for n in (255, 32767, 65535) if high <= n), int(high))
    return (
        f"{text}; they look like unscaled integer storage, {unscaled_integers}: if {full} "
        f"stands for probability 1, save the map with scl_slope 1/{full} (or as float32); "
        f"if they are logits, {logits}"
    )


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


def _logit_activation(
    array: npt.NDArray[np.float32],
    options: EvaluationOptions,
    path: Path,
    plan: ClassPlan | None,
) -> Literal["softmax", "sigmoid"]:
    """The activation of these logits: :func:`choose_activation` for their class plan."""
    if plan is None:
        plan = class_plan(int(array.shape[0]), options, path)
    return choose_activation(options.activation, plan, path)


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
    bin_one_class = class_binner(options.n_bins, options.backend, options.device)
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
    """Whether bins, targets and Dice counts of a case come from one compiled pass.

    Threshold Dice, and what :func:`calibkit.binning.label_map_pass_applies` needs.
    """
    return options.dice_mode == "threshold" and label_map_pass_applies(
        probabilities, label, options.n_bins, options.backend, options.device
    )


def _one_pass_case_statistics(
    probabilities: npt.NDArray[np.float32],
    label: npt.NDArray[np.integer],
    plan: ClassPlan,
    options: EvaluationOptions,
) -> tuple[BinStats, OverlapCounts]:
    results = [
        bin_with_label_map(
            class_probability(probabilities, spec),
            class_label_map(label, spec),
            options.n_bins,
            target_labels=spec.labels,
            threshold=options.dice_threshold,
        )
        for spec in plan.classes
    ]
    return _label_map_results(results)


def _label_map_results(results: list[LabelMapBins]) -> tuple[BinStats, OverlapCounts]:
    """The bins and Dice counts of a case's classes, each binned against its label map."""
    overlap = OverlapCounts(
        intersection=np.array([r.intersection for r in results], dtype=np.int64),
        predicted=np.array([r.predicted for r in results], dtype=np.int64),
        truth=np.array([int(r.stats.sum_y.sum()) for r in results], dtype=np.int64),
    )
    return BinStats.stack([r.stats for r in results]), overlap


def _codes_may_apply(options: EvaluationOptions) -> bool:
    """Whether these options let a map stored as codes be binned from them."""
    return (
        options.input_kind == "probabilities"
        and options.dice_mode == "threshold"
        and compiled_kernel_applies(options.n_bins, options.backend, options.device)
    )


def _coded_pass_applies(case: LoadedCase, options: EvaluationOptions) -> bool:
    """Whether a case's prediction is kept as codes and can be binned from them."""
    return (
        case.prediction.code_values is not None
        and _codes_may_apply(options)
        and coded_pass_applies(
            case.prediction.array, case.label.array, options.n_bins, options.backend, options.device
        )
    )


def coded_case_statistics(
    case: LoadedCase, options: EvaluationOptions, *, check_sum: bool = False
) -> tuple[BinStats, OverlapCounts, str | None]:
    """:func:`case_statistics` of a prediction kept as codes, read from the codes.

    The values of the codes (``Volume.code_values``) are checked and clipped as
    :func:`to_probabilities` checks and clips the decoded map; each class is then
    binned from the codes (:func:`calibkit.binning.bin_codes_with_label_map`): no
    float32 copy of the volume is made. With ``check_sum``, the third item is
    :func:`softmax_sum_problem` of the decoded map (the map is decoded only to
    describe a problem found).

    Returns:
        The bins, the Dice counts, and the softmax-sum problem or None.

    Raises:
        InputError: values outside [0, 1] beyond the tolerance.
    """
    prediction = case.prediction
    if prediction.code_values is None:
        raise CalibkitError("coded_case_statistics needs a prediction kept as codes")
    code_values = to_probabilities(
        prediction.code_values.copy(),
        options,
        case.pair.prediction,
        prediction.value_range,
        unscaled_integers=prediction.unscaled_integers,
        plan=case.plan,
    )
    codes, label = prediction.array, case.label.array
    problem = None
    if check_sum and coded_channel_sum_error(codes, code_values) > SOFTMAX_SUM_TOLERANCE:
        decoded = decode_prediction(replace(prediction, code_values=code_values))
        problem = softmax_sum_problem(decoded.array)
    results = [
        bin_codes_with_label_map(
            codes,
            code_values,
            spec.channels,
            class_label_map(label, spec),
            options.n_bins,
            target_labels=spec.labels,
            threshold=options.dice_threshold,
        )
        for spec in case.plan.classes
    ]
    return (*_label_map_results(results), problem)


def calibrated_probabilities(
    array: npt.NDArray[np.float32],
    model: TemperatureModel,
    options: EvaluationOptions,
    path: Path,
    value_range: tuple[float, float] | None = None,
    *,
    unscaled_integers: str | None = None,
    plan: ClassPlan | None = None,
) -> npt.NDArray[np.float32]:
    """Calibrated probabilities of one stored prediction, as ``calibkit evaluate`` reads it.

    The drop-in for :func:`to_probabilities` when a temperature is
    given: probability maps are validated and clipped as there, then calibrated with
    :func:`calibrate_probabilities`; logits (``options.input_kind == "logits"``) are
    divided by ``T`` directly (no clipping).

    Args:
        array: ``(C, *spatial)`` float32 values as read (may be modified in place).
        model: the temperature.
        options: ``input_kind`` and ``activation`` are used.
        path: the prediction file, named in errors.
        value_range: the known smallest and largest value (``Volume.value_range``).
        unscaled_integers: ``Volume.unscaled_integers``, named when values exceed 1.
        plan: the prediction's class plan (None: made here from the channel count and
            ``options``); logits are activated as :func:`choose_activation` says for it.

    Raises:
        InputError: bad probabilities, a channel count that does not fit the model, or
            logits to activate with another activation than the model's.
    """
    if options.input_kind == "logits":
        activation = _logit_activation(array, options, path, plan)
        if activation != model.activation:
            raise InputError(
                model.source or path,
                f"was fitted with a {model.activation} but the logits are read with a "
                f"{activation} (--activation {options.activation}); "
                f"use --activation {model.activation}",
            )
        return calibrate_logits(array, model, path=path)
    probabilities = to_probabilities(
        array, options, path, value_range, unscaled_integers=unscaled_integers, plan=plan
    )
    return calibrate_probabilities(probabilities, model, path=path)
