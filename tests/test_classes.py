"""Class resolution: channels and label values behind each evaluated class (SPEC.md §2)."""

from __future__ import annotations

import numpy as np
import pytest

from calibkit.classes import class_probability, class_target, resolve_classes, unexpected_labels
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
        resolve_classes(4, preset="kits")


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
