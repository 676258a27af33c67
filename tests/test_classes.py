"""Class resolution: channels and label values behind each evaluated class (SPEC.md §2)."""

from __future__ import annotations

import numpy as np
import pytest

from calibkit.classes import (
    MAX_CLASSES,
    class_probability,
    class_target,
    parse_classes,
    resolve_classes,
    unexpected_labels,
)
from calibkit.errors import CalibkitError


def test_default_channels_are_labels_without_background() -> None:
    plan = resolve_classes(4)
    assert plan.names == ("1", "2", "3")
    assert [spec.channels for spec in plan.classes] == [(1,), (2,), (3,)]
    assert resolve_classes(4, include_background=True).names == ("0", "1", "2", "3")


def test_single_channel_is_foreground_label_one() -> None:
    plan = resolve_classes(1)
    assert plan.classes[0].channels == (0,) and plan.classes[0].labels == (1,)
    assert not plan.exclusive


def test_classes_positional_and_after_background() -> None:
    assert [s.channels for s in resolve_classes(3, classes=[1, 2, 4]).classes] == [(0,), (1,), (2,)]
    shifted = resolve_classes(4, classes=[1, 2, 4])
    assert [s.channels for s in shifted.classes] == [(1,), (2,), (3,)]
    assert [s.labels for s in shifted.classes] == [(1,), (2,), (4,)]
    assert resolve_classes(4, classes=[2, 3]).classes[0].channels == (2,)
    with pytest.raises(CalibkitError, match="channel"):
        resolve_classes(2, classes=[1, 5, 7])


def test_brats_regions() -> None:
    softmax = resolve_classes(4, preset="brats")
    assert softmax.names == ("ET", "TC", "WT")
    assert softmax.classes[1].channels == (1, 3) and 3 in softmax.classes[0].labels
    regions = resolve_classes(3, preset="brats")
    assert [s.channels for s in regions.classes] == [(0,), (1,), (2,)] and not regions.exclusive
    with pytest.raises(CalibkitError, match="brats"):
        resolve_classes(2, preset="brats")
    with pytest.raises(CalibkitError, match="unknown preset"):
        resolve_classes(4, preset="acdc")


def test_class_names() -> None:
    assert resolve_classes(3, class_names=["liver", "tumour"]).names == ("liver", "tumour")
    with pytest.raises(CalibkitError, match="2 class"):
        resolve_classes(3, class_names=["a"])


def test_region_probability_and_target() -> None:
    probs = np.array([[0.1, 0.7], [0.5, 0.2], [0.3, 0.05], [0.4, 0.05]], np.float32)
    plan = resolve_classes(4, preset="brats")
    wt = class_probability(probs, plan.classes[2])
    np.testing.assert_allclose(wt, [1.0, 0.3], rtol=1e-6)  # clipped to 1
    label = np.array([4, 2, 0, 3, 1])
    assert class_target(label, plan.classes[0]).tolist() == [True, False, False, True, False]
    assert class_target(label, plan.classes[1]).tolist() == [True, False, False, True, True]


def test_unexpected_labels() -> None:
    plan = resolve_classes(3)
    assert unexpected_labels(np.array([0, 1, 2, 7, 7]), plan) == [7]
    assert unexpected_labels(np.array([-1, 0, 1]), plan) == [-1]


@pytest.mark.parametrize(
    ("text", "values"),
    [
        ("1,2,3", (1, 2, 3)),
        ("1-117", tuple(range(1, 118))),
        ("1-10,12,20-25", (*range(1, 11), 12, *range(20, 26))),
        (" 3 , 1 - 2 ,", (3, 1, 2)),  # order kept, spaces and an empty item allowed
        ("0-0", (0,)),
        ("4", (4,)),
    ],
)
def test_parse_classes(text: str, values: tuple[int, ...]) -> None:
    assert parse_classes(text) == values


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("5-2", "--classes: the range '5-2' runs backwards; write 2-5"),
        ("1-", "--classes: '1-' is not a label value (0, 1, 2, ...) or a range such as 1-117"),
        ("a-b", "--classes: 'a-b' is not a label value"),
        ("1,a", "--classes: 'a' is not a label value"),
        ("-3", "--classes: '-3' is not a label value"),
        ("1-2-3", "--classes: '1-2-3' is not a label value"),
        ("1.5", "--classes: '1.5' is not a label value"),
        ("\u0663", "is not a label value"),  # an Arabic-Indic digit: int() would take it
        ("1,2,1", "--classes '1,2,1' lists label(s) 1 more than once; give each label once"),
        ("1-10,5-12", "lists label(s) 5, 6, 7, 8, 9, 10 more than once"),
        (" , ", "--classes is empty; give label values such as 1,2,3 or 1-117"),
        (f"1-{MAX_CLASSES + 1}", f"lists more than {MAX_CLASSES} labels"),
    ],
)
def test_parse_classes_refuses(text: str, message: str) -> None:
    with pytest.raises(CalibkitError) as info:
        parse_classes(text)
    assert message in str(info.value)
    assert "\n" not in str(info.value)
