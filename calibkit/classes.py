"""Which prediction channels and label values make each evaluated class.

A class is evaluated from a probability (one channel, or a clipped sum of
channels for nested regions such as BraTS ET/TC/WT) and a binary target (the
voxels whose label is one of a set of values, or one channel of a multi-label
ground truth). Classes come from the channel count, from ``--classes`` (label
values), from regions (``--region NAME=VALUES``, a preset of :data:`PRESET_TABLE`,
or an nnU-Net ``dataset.json``), or from a multi-label ground truth. SPEC.md §2
gives the rules.
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

DICE_MODES = ("threshold", "argmax")
# A list this long is a typo (1-1000000 for 1-100): each class is a prediction
# channel and a row per case in the tables. Refused before a tuple of it is built.
MAX_CLASSES = 65_536
_LABEL = re.compile(r"\s*([0-9]+)\s*")
_RANGE = re.compile(r"\s*([0-9]+)\s*-\s*([0-9]+)\s*")
_REGION = re.compile(r"\s*([^=@]*?)\s*=([^@]*)(?:@(.*))?")


@dataclass(frozen=True)
class Region:
    """A named set of label values, scored as one class (sets may overlap).

    Attributes:
        name: the name used in tables and figures.
        labels: label values whose voxels form the region.
        channels: prediction channels whose probabilities are summed (clipped to 1)
            into the region's probability; None: chosen from the prediction's
            channel count (:func:`resolve_classes`).
    """

    name: str
    labels: tuple[int, ...]
    channels: tuple[int, ...] | None = None


@dataclass(frozen=True)
class Preset:
    """Regions of a challenge, and the channels of its softmax maps.

    Attributes:
        regions: the evaluated regions, in table order.
        softmax_channels: the label values of each channel of a softmax map over
            the challenge's labels (channel 0 is background).
        about: one line for ``--help`` and the README.
    """

    regions: tuple[Region, ...]
    softmax_channels: tuple[tuple[int, ...], ...]
    about: str


# The presets: data, read by the one mechanism that evaluates any regions.
PRESET_TABLE: dict[str, Preset] = {
    # BraTS labels: 1 NCR, 2 ED, 4 ET (3 is ET in BraTS 2023).
    "brats": Preset(
        regions=(
            Region("ET", (3, 4)),
            Region("TC", (1, 3, 4)),
            Region("WT", (1, 2, 3, 4)),
        ),
        softmax_channels=((0,), (1,), (2,), (3, 4)),
        about="BraTS regions ET = {4}, TC = {1, 4}, WT = {1, 2, 4} (label 3 counts as 4, "
        "as in BraTS 2023)",
    ),
    # KiTS labels: 1 kidney, 2 tumour, 3 cyst (the KiTS21/23 challenge regions).
    "kits": Preset(
        regions=(
            Region("kidney+masses", (1, 2, 3)),
            Region("masses", (2, 3)),
            Region("tumor", (2,)),
        ),
        softmax_channels=((0,), (1,), (2,), (3,)),
        about="KiTS regions kidney+masses = {1, 2, 3}, masses = {2, 3}, tumor = {2}",
    ),
}
PRESETS = tuple(PRESET_TABLE)


@dataclass(frozen=True)
class ClassSpec:
    """One evaluated class.

    Attributes:
        name: the name used in tables and figures.
        channels: prediction channels whose probabilities are summed (clipped to 1).
        labels: label values that form the binary target.
        label_channel: the channel of a multi-label ground truth ``(L, *spatial)``
            that holds the target (its value 1); None for a label map.
    """

    name: str
    channels: tuple[int, ...]
    labels: tuple[int, ...]
    label_channel: int | None = None


@dataclass(frozen=True)
class ClassPlan:
    """The classes of a run and the label values a label map may contain.

    Attributes:
        classes: evaluated classes, in table order.
        known_labels: every label value that is allowed in a label map.
        n_channels: channel count of the predictions this plan was made for.
        exclusive: whether channels are mutually exclusive classes (argmax Dice allowed).
        label_channels: channel count of a multi-label ground truth, or None for a
            label map.
    """

    classes: tuple[ClassSpec, ...]
    known_labels: frozenset[int]
    n_channels: int
    exclusive: bool
    label_channels: int | None = None

    @property
    def names(self) -> tuple[str, ...]:
        """Class names in table order."""
        return tuple(spec.name for spec in self.classes)


def parse_classes(text: str, option: str = "--classes") -> tuple[int, ...]:
    """Label values written as people write them: ``1,2,3``, ``1-117``, ``1-10,12,20-25``.

    Items are separated by commas (empty items are ignored); an item is a label value
    or an inclusive range ``low-high`` with ``low <= high``. Spaces around numbers
    and dashes are allowed.

    Args:
        text: the value of ``--classes`` (or the values of a region).
        option: the option named in errors.

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
                    f"{option}: the range '{item.strip()}' runs backwards; write {high}-{low}"
                )
        else:
            raise CalibkitError(
                f"{option}: '{item.strip()}' is not a label value (0, 1, 2, ...) or a range "
                "such as 1-117; write e.g. 1-10,12,20-25"
            )
        if len(values) + high - low + 1 > MAX_CLASSES:
            raise CalibkitError(
                f"{option} {text.strip()!r} lists more than {MAX_CLASSES} labels; check the ranges"
            )
        values.extend(range(low, high + 1))
    if not values:
        raise CalibkitError(f"{option} is empty; give label values such as 1,2,3 or 1-117")
    twice = sorted(value for value, count in Counter(values).items() if count > 1)
    if twice:
        shown = ", ".join(map(str, twice[:10])) + (" ..." if len(twice) > 10 else "")
        raise CalibkitError(
            f"{option} {text.strip()!r} lists label(s) {shown} more than once; give each label once"
        )
    return tuple(values)


def parse_region(text: str) -> Region:
    """A region written ``NAME=VALUES`` or ``NAME=VALUES@CHANNELS`` (``--region``).

    VALUES are label values as :func:`parse_classes` reads them; CHANNELS, when
    given, are the prediction channels whose probabilities are summed into the
    region's probability (without them the channels are chosen from the channel
    count, see :func:`resolve_classes`).

    Raises:
        CalibkitError: no ``=``, an empty name, or values that do not parse.

    Example:
        >>> parse_region("TC=1,4,3")
        Region(name='TC', labels=(1, 4, 3), channels=None)
        >>> parse_region("kidney=1-3@1")
        Region(name='kidney', labels=(1, 2, 3), channels=(1,))
    """
    match = _REGION.fullmatch(text)
    if match is None or not match.group(1):
        raise CalibkitError(
            f"--region {text!r} is not NAME=VALUES; write e.g. --region TC=1,4,3 "
            "(or TC=1,4,3@1 to read its probability from channel 1)"
        )
    name = match.group(1)
    labels = parse_classes(match.group(2), option=f"--region {name}")
    channels = None
    if match.group(3) is not None:
        channels = parse_classes(match.group(3), option=f"--region {name} channels (after @)")
    return Region(name, labels, channels)


def resolve_classes(
    n_channels: int,
    *,
    classes: Sequence[int] | None = None,
    class_names: Sequence[str] | None = None,
    include_background: bool = False,
    preset: str | None = None,
    regions: Sequence[Region] | None = None,
    label_channels: int | None = None,
) -> ClassPlan:
    """Work out the evaluated classes for predictions with ``n_channels`` channels.

    Rules (SPEC.md §2): without ``classes``, channel ``i`` is label ``i`` and
    label 0 is background (left out unless ``include_background``); a single
    channel is the foreground probability of label 1. With ``classes`` (label
    values), channels map to them in order, after a leading background channel
    when there is one more channel than classes.

    Regions (``regions``, or a preset of :data:`PRESET_TABLE` such as ``"brats"``
    for ET, TC, WT) are scored against a region map (one channel per region, in
    order: sigmoid outputs) or a softmax map over the label values (a region's
    probability is the clipped sum of the channels of its labels; channel ``v`` is
    label ``v``, or as the preset says), whichever the channel count fits; a region
    with explicit ``channels`` uses those.

    ``label_channels`` (a multi-label ground truth ``(L, *spatial)`` of binary
    channels) pairs prediction channel ``i`` with label channel ``i``, named by the
    regions or ``class_names`` when given.

    Raises:
        CalibkitError: when the channel count does not fit the options, or the
            options contradict each other.

    Example:
        >>> [(spec.name, spec.channels) for spec in resolve_classes(4, preset="kits").classes]
        [('kidney+masses', (1, 2, 3)), ('masses', (2, 3)), ('tumor', (2,))]
    """
    given = [
        option
        for option, value in (("--classes", classes), ("--preset", preset), ("--region", regions))
        if value is not None
    ]
    if len(given) > 1:
        raise CalibkitError(f"give one of {' and '.join(given)}: they both choose the classes")
    preset_regions, softmax_channels = None, None
    if preset is not None:
        if preset not in PRESET_TABLE:
            raise CalibkitError(f"unknown preset {preset!r}; choose one of: {', '.join(PRESETS)}")
        preset_regions = PRESET_TABLE[preset].regions
        softmax_channels = PRESET_TABLE[preset].softmax_channels
    chosen_regions = preset_regions if preset_regions is not None else regions
    if chosen_regions is not None and include_background:
        raise CalibkitError(
            "--include-background applies to classes; a region names its label values "
            "(add a region such as background=0 instead)"
        )
    if label_channels is not None:
        if classes is not None:
            raise CalibkitError(
                "--classes picks label values, but the ground truth is multi-label (one binary "
                "channel per class): name its channels with --class-names or --region instead"
            )
        plan = _multi_label_plan(n_channels, label_channels, chosen_regions)
    elif chosen_regions is not None:
        plan = _region_plan(n_channels, tuple(chosen_regions), softmax_channels, preset)
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
            ClassSpec(name, spec.channels, spec.labels, spec.label_channel)
            for name, spec in zip(names, plan.classes, strict=True)
        )
        plan = ClassPlan(
            renamed, plan.known_labels, plan.n_channels, plan.exclusive, plan.label_channels
        )
    return plan


def _region_plan(
    n_channels: int,
    regions: tuple[Region, ...],
    softmax_channels: tuple[tuple[int, ...], ...] | None,
    preset: str | None,
) -> ClassPlan:
    """Regions scored against a region map, a softmax map, or channels given per region."""
    what = f"--preset {preset}" if preset is not None else "--region"
    if not regions:
        raise CalibkitError(f"{what}: no regions given")
    names = [region.name for region in regions]
    if len(set(names)) != len(names):
        raise CalibkitError(f"{what}: region names must be distinct, got {', '.join(names)}")
    labels = frozenset(value for region in regions for value in region.labels)
    if softmax_channels is None:
        # A softmax over the label values 0 .. max: channel v is label v.
        softmax_channels = tuple((value,) for value in range(max(labels) + 1))
    softmax_labels = frozenset(value for group in softmax_channels for value in group)
    explicit = [region.channels is not None for region in regions]
    if any(explicit):
        if not all(explicit):
            raise CalibkitError(
                f"{what}: give channels (@) for every region or for none "
                f"(missing for {', '.join(r.name for r in regions if r.channels is None)})"
            )
        return _explicit_region_plan(n_channels, regions, labels)
    fits_regions = n_channels == len(regions)
    fits_softmax = n_channels == len(softmax_channels)
    if fits_regions and fits_softmax:
        raise CalibkitError(
            f"{n_channels} channels fit both one channel per region and a softmax over label "
            f"values 0-{n_channels - 1}; say which with channels per region, e.g. "
            f"--region {regions[0].name}={','.join(map(str, regions[0].labels))}@0"
        )
    if fits_regions:
        specs = tuple(
            ClassSpec(region.name, (i,), region.labels) for i, region in enumerate(regions)
        )
        return ClassPlan(specs, frozenset({0}) | labels, n_channels, exclusive=False)
    if fits_softmax:
        specs = tuple(
            ClassSpec(
                region.name, _softmax_region_channels(region, softmax_channels), region.labels
            )
            for region in regions
        )
        return ClassPlan(specs, labels | softmax_labels, n_channels, exclusive=True)
    layout = (
        f"{len(softmax_channels)} (a softmax over labels "
        + ", ".join("/".join(map(str, group)) for group in softmax_channels)
        + ")"
    )
    raise CalibkitError(
        f"{what} expects {len(regions)} channels (one per region: {', '.join(names)}) or "
        f"{layout}, got {n_channels}"
    )


def _softmax_region_channels(
    region: Region, softmax_channels: tuple[tuple[int, ...], ...]
) -> tuple[int, ...]:
    """The softmax channels whose sum is a region's probability.

    Each channel must lie wholly inside or outside the region: a channel that
    stands for labels on both sides cannot be split.
    """
    inside = set(region.labels)
    channels = []
    for channel, group in enumerate(softmax_channels):
        shared = inside.intersection(group)
        if shared and len(shared) != len(group):
            raise CalibkitError(
                f"region {region.name} takes label(s) {sorted(shared)} but not "
                f"{sorted(set(group) - shared)}, which softmax channel {channel} also stands for"
            )
        if shared:
            channels.append(channel)
    if not channels:
        raise CalibkitError(f"region {region.name}: no softmax channel holds its labels")
    return tuple(channels)


def _explicit_region_plan(
    n_channels: int, regions: tuple[Region, ...], labels: frozenset[int]
) -> ClassPlan:
    """Regions whose channels were given (``NAME=VALUES@CHANNELS``)."""
    specs = []
    for region in regions:
        channels = region.channels or ()
        outside = [channel for channel in channels if channel >= n_channels]
        if outside:
            raise CalibkitError(
                f"region {region.name} reads channel(s) {outside}, but the predictions have "
                f"{n_channels} channel(s) (0-{n_channels - 1})"
            )
        specs.append(ClassSpec(region.name, channels, region.labels))
    # One distinct channel per region, and no other channel: a region map (sigmoid).
    singles = [spec.channels for spec in specs if len(spec.channels) == 1]
    region_map = len(singles) == len(specs) == n_channels and len(set(singles)) == n_channels
    return ClassPlan(tuple(specs), frozenset({0}) | labels, n_channels, exclusive=not region_map)


def _multi_label_plan(
    n_channels: int, label_channels: int, regions: Sequence[Region] | None
) -> ClassPlan:
    """Prediction channel ``i`` against channel ``i`` of a multi-label ground truth."""
    if n_channels != label_channels:
        raise CalibkitError(
            f"the ground truth is multi-label with {label_channels} channels (one binary map "
            f"per class), so the predictions need {label_channels} channels (one sigmoid "
            f"probability each), got {n_channels}"
        )
    if regions is not None and len(regions) != label_channels:
        raise CalibkitError(
            f"{len(regions)} regions are defined but the multi-label ground truth has "
            f"{label_channels} channels; give one region per channel, in channel order"
        )
    names = (
        [r.name for r in regions] if regions is not None else [str(i) for i in range(n_channels)]
    )
    specs = tuple(ClassSpec(name, (i,), (1,), label_channel=i) for i, name in enumerate(names))
    return ClassPlan(
        specs, frozenset({0, 1}), n_channels, exclusive=False, label_channels=label_channels
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
    """Probability map of one class from channel-first probabilities ``(C, *spatial)``.

    A sum of channels keeps their memory order (a NIfTI map's Fortran order), so
    that it is binned in the order of its label map, without copying the label.
    """
    first: npt.NDArray[np.float32] = probabilities[spec.channels[0]]
    if len(spec.channels) == 1:
        return first
    total = first.copy(order="K")
    for channel in spec.channels[1:]:
        total += probabilities[channel]
    np.minimum(total, np.float32(1.0), out=total)
    return total


def class_label_map(label: npt.NDArray[np.integer], spec: ClassSpec) -> npt.NDArray[np.integer]:
    """The label map a class's target comes from: ``label``, or its channel of a multi-label map.

    A multi-label ground truth is channel-first ``(L, *spatial)``; the returned
    channel is a view, and the class's target is where it equals ``spec.labels``.
    """
    return label if spec.label_channel is None else label[spec.label_channel]


def class_target(label: npt.NDArray[np.integer], spec: ClassSpec) -> npt.NDArray[np.bool_]:
    """Binary target of one class from an integer label map (or a multi-label map)."""
    label = class_label_map(label, spec)
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
