"""Which prediction channels and label values make each evaluated class.

A class is evaluated from a probability (one channel, or a clipped sum of
channels for nested regions such as BraTS ET/TC/WT) and a binary target (the
voxels whose label is one of a set of values). SPEC.md §2 gives the rules.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from calibkit.binning import dense_values, numba_available
from calibkit.errors import CalibkitError

PRESETS = ("brats",)
DICE_MODES = ("threshold", "argmax")
# A list this long is a typo (1-1000000 for 1-100): each class is a prediction
# channel and a row per case in the tables. Refused before a tuple of it is built.
MAX_CLASSES = 65_536
_LABEL = re.compile(r"\s*([0-9]+)\s*")
_RANGE = re.compile(r"\s*([0-9]+)\s*-\s*([0-9]+)\s*")


@dataclass(frozen=True)
class ClassSpec:
    """One evaluated class.

    Attributes:
        name: the name used in tables and figures.
        channels: prediction channels whose probabilities are summed (clipped to 1).
        labels: label values that form the binary target.
    """

    name: str
    channels: tuple[int, ...]
    labels: tuple[int, ...]


@dataclass(frozen=True)
class ClassPlan:
    """The classes of a run and the label values a label map may contain.

    Attributes:
        classes: evaluated classes, in table order.
        known_labels: every label value that is allowed in a label map.
        n_channels: channel count of the predictions this plan was made for.
        exclusive: whether channels are mutually exclusive classes (argmax Dice allowed).
    """

    classes: tuple[ClassSpec, ...]
    known_labels: frozenset[int]
    n_channels: int
    exclusive: bool

    @property
    def names(self) -> tuple[str, ...]:
        """Class names in table order."""
        return tuple(spec.name for spec in self.classes)


def parse_classes(text: str) -> tuple[int, ...]:
    """Label values written as people write them: ``1,2,3``, ``1-117``, ``1-10,12,20-25``.

    Items are separated by commas (empty items are ignored); an item is a label value
    or an inclusive range ``low-high`` with ``low <= high``. Spaces around numbers
    and dashes are allowed.

    Args:
        text: the value of ``--classes``.

    Returns:
        The label values in the order written.

    Raises:
        CalibkitError: an item that is neither (``a-b``, ``1-``, ``-3``), a range
            that runs backwards (``5-2``), a label listed twice, or an empty list.

    Example:
        >>> parse_classes("1-3,7,10-11")
        (1, 2, 3, 7, 10, 11)
    """
    values: list[int] = []
    for item in text.split(","):
        if not item.strip():
            continue
        single, span = _LABEL.fullmatch(item), _RANGE.fullmatch(item)
        if single is not None:
            low = high = int(single.group(1))
        elif span is not None:
            low, high = int(span.group(1)), int(span.group(2))
            if low > high:
                raise CalibkitError(
                    f"--classes: the range '{item.strip()}' runs backwards; write {high}-{low}"
                )
        else:
            raise CalibkitError(
                f"--classes: '{item.strip()}' is not a label value (0, 1, 2, ...) or a range "
                "such as 1-117; write e.g. 1-10,12,20-25"
            )
        if len(values) + high - low + 1 > MAX_CLASSES:
            raise CalibkitError(
                f"--classes {text.strip()!r} lists more than {MAX_CLASSES} labels; check the ranges"
            )
        values.extend(range(low, high + 1))
    if not values:
        raise CalibkitError("--classes is empty; give label values such as 1,2,3 or 1-117")
    twice = sorted(value for value, count in Counter(values).items() if count > 1)
    if twice:
        shown = ", ".join(map(str, twice[:10])) + (" ..." if len(twice) > 10 else "")
        raise CalibkitError(
            f"--classes {text.strip()!r} lists label(s) {shown} more than once; "
            "give each label once"
        )
    return tuple(values)


def resolve_classes(
    n_channels: int,
    *,
    classes: Sequence[int] | None = None,
    class_names: Sequence[str] | None = None,
    include_background: bool = False,
    preset: str | None = None,
) -> ClassPlan:
    """Work out the evaluated classes for predictions with ``n_channels`` channels.

    Rules (SPEC.md §2): without ``classes``, channel ``i`` is label ``i`` and
    label 0 is background (left out unless ``include_background``); a single
    channel is the foreground probability of label 1. With ``classes`` (label
    values), channels map to them in order, after a leading background channel
    when there is one more channel than classes. ``preset="brats"`` evaluates
    the regions ET, TC, WT.

    Raises:
        CalibkitError: when the channel count does not fit the options.
    """
    if preset is not None:
        if preset not in PRESETS:
            raise CalibkitError(f"unknown preset {preset!r}; choose one of: {', '.join(PRESETS)}")
        plan = _brats_plan(n_channels)
    elif classes is not None:
        plan = _plan_from_classes(n_channels, list(classes), include_background)
    else:
        plan = _default_plan(n_channels, include_background)
    if class_names is not None:
        names = [name.strip() for name in class_names]
        if len(names) != len(plan.classes):
            raise CalibkitError(
                f"--class-names has {len(names)} name(s) but {len(plan.classes)} class(es) are "
                f"evaluated ({', '.join(plan.names)})"
            )
        if len(set(names)) != len(names) or not all(names):
            raise CalibkitError("--class-names must be distinct and non-empty")
        renamed = tuple(
            ClassSpec(name, spec.channels, spec.labels)
            for name, spec in zip(names, plan.classes, strict=True)
        )
        plan = ClassPlan(renamed, plan.known_labels, plan.n_channels, plan.exclusive)
    return plan


def _brats_plan(n_channels: int) -> ClassPlan:
    # BraTS labels: 1 NCR, 2 ED, 4 ET (3 is ET in BraTS 2023).
    known = frozenset({0, 1, 2, 3, 4})
    if n_channels == 4:  # softmax over BG, NCR, ED, ET
        regions = (
            ClassSpec("ET", (3,), (3, 4)),
            ClassSpec("TC", (1, 3), (1, 3, 4)),
            ClassSpec("WT", (1, 2, 3), (1, 2, 3, 4)),
        )
        return ClassPlan(regions, known, n_channels, exclusive=True)
    if n_channels == 3:  # region probabilities ET, TC, WT
        regions = (
            ClassSpec("ET", (0,), (3, 4)),
            ClassSpec("TC", (1,), (1, 3, 4)),
            ClassSpec("WT", (2,), (1, 2, 3, 4)),
        )
        return ClassPlan(regions, known, n_channels, exclusive=False)
    raise CalibkitError(
        f"--preset brats expects 4 channels (softmax BG, NCR, ED, ET) or 3 (regions ET, TC, WT), "
        f"got {n_channels}"
    )


def _default_plan(n_channels: int, include_background: bool) -> ClassPlan:
    if n_channels == 1:
        return ClassPlan((ClassSpec("1", (0,), (1,)),), frozenset({0, 1}), 1, exclusive=False)
    first = 0 if include_background else 1
    specs = tuple(ClassSpec(str(i), (i,), (i,)) for i in range(first, n_channels))
    return ClassPlan(specs, frozenset(range(n_channels)), n_channels, exclusive=True)


def _plan_from_classes(n_channels: int, classes: list[int], include_background: bool) -> ClassPlan:
    if not classes:
        raise CalibkitError("--classes is empty; give label values such as 1,2,3")
    if len(set(classes)) != len(classes):
        raise CalibkitError(f"--classes lists a label twice: {classes}")
    if any(value < 0 for value in classes):
        raise CalibkitError(f"--classes must be non-negative label values, got {classes}")
    if n_channels == len(classes):
        channel_of = {value: i for i, value in enumerate(classes)}
        background_channel = None
    elif n_channels == len(classes) + 1 and 0 not in classes:
        channel_of = {value: i + 1 for i, value in enumerate(classes)}
        background_channel = 0
    elif all(value < n_channels for value in classes):
        channel_of = {value: value for value in classes}
        background_channel = 0 if 0 not in classes else None
    else:
        raise CalibkitError(
            f"predictions have {n_channels} channel(s), which does not fit --classes "
            f"{','.join(map(str, classes))}: give one channel per class, optionally after a "
            "background channel"
        )
    specs = [ClassSpec(str(value), (channel_of[value],), (value,)) for value in classes]
    if include_background and background_channel is not None:
        specs.insert(0, ClassSpec("0", (background_channel,), (0,)))
    known = (
        frozenset({0, *classes, *range(n_channels)}) if n_channels > 1 else frozenset({0, *classes})
    )
    return ClassPlan(tuple(specs), known, n_channels, exclusive=n_channels > 1)


def class_probability(
    probabilities: npt.NDArray[np.float32], spec: ClassSpec
) -> npt.NDArray[np.float32]:
    """Probability map of one class from channel-first probabilities ``(C, *spatial)``."""
    first: npt.NDArray[np.float32] = probabilities[spec.channels[0]]
    if len(spec.channels) == 1:
        return first
    total = first.copy()
    for channel in spec.channels[1:]:
        total += probabilities[channel]
    np.minimum(total, np.float32(1.0), out=total)
    return total


def class_target(label: npt.NDArray[np.integer], spec: ClassSpec) -> npt.NDArray[np.bool_]:
    """Binary target of one class from an integer label map."""
    target: npt.NDArray[np.bool_] = label == spec.labels[0]
    for value in spec.labels[1:]:
        target |= label == value
    return target


def _labels_seen(label: npt.NDArray[np.integer], size: int) -> npt.NDArray[np.bool_]:
    """Which values ``0 .. size - 1`` occur in a label map with values in that range."""
    flat = dense_values(label)
    if numba_available() and flat is not None:
        # Deferred: numba costs ~0.5 s to import
        from calibkit._kernels import values_present

        return values_present(flat, size)
    # bincount converts to intp: count slabs so the copy stays small.
    flat = label.ravel(order="K")
    seen = np.zeros(size, dtype=bool)
    for start in range(0, flat.size, 1 << 20):
        seen |= np.bincount(flat[start : start + (1 << 20)], minlength=size) > 0
    return seen


def unexpected_labels(label: npt.NDArray[np.integer], plan: ClassPlan) -> list[int]:
    """Label values present in ``label`` that no class or channel accounts for."""
    low, high = int(label.min()), int(label.max())
    if low >= 0 and high < 1 << 16:
        # bincount converts to intp: count slabs so the copy stays small.
        present = np.flatnonzero(_labels_seen(label, high + 1))
    else:
        present = np.unique(label)
    return sorted(int(value) for value in present if int(value) not in plan.known_labels)
