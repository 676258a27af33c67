"""Classes and regions from a data set's ``dataset.json`` (``--classes-from``).

Two layouts are read:

- nnU-Net v2: ``"labels": {"background": 0, "liver": 1, "tumour": 2}`` (name to
  value). A region-based data set gives some entries as lists of values,
  ``"labels": {"background": 0, "kidney": [1, 2, 3], "masses": [2, 3], "tumor": 2}``;
  then every foreground entry is a region, scored against prediction channel ``i``
  for the ``i``-th entry (nnU-Net's order of sigmoid outputs) or, for a softmax map
  over the label values, the sum of its labels' channels.
- The Medical Segmentation Decathlon and nnU-Net v1: ``"labels": {"0": "background",
  "1": "edema"}`` (value, as a string, to name).

Label 0 is background: left out unless ``include_background``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from calibkit.classes import Region
from calibkit.errors import InputError

__all__ = ["DatasetClasses", "read_dataset_classes"]

# A dataset.json is a few kB; anything this large is not one.
_MAX_BYTES = 16 << 20


@dataclass(frozen=True)
class DatasetClasses:
    """What a ``dataset.json`` says is evaluated: classes with names, or regions.

    Attributes:
        classes: label values of the classes (None for a region-based data set).
        class_names: their names, in the same order.
        regions: the regions of a region-based data set (None otherwise).
    """

    classes: tuple[int, ...] | None
    class_names: tuple[str, ...] | None
    regions: tuple[Region, ...] | None


def read_dataset_classes(path: Path | str, *, include_background: bool = False) -> DatasetClasses:
    """Read the classes (or regions) and their names from a ``dataset.json``.

    Args:
        path: the ``dataset.json`` of an nnU-Net or Medical Segmentation Decathlon
            data set.
        include_background: keep label 0 as a class (not for regions).

    Returns:
        The classes and names, or the regions.

    Raises:
        InputError: the file cannot be read, is not JSON, has no ``labels`` object,
            or its labels are not integers (or lists of integers), repeat a value or
            a name, or define nothing but background.

    Example:
        >>> import json, tempfile, pathlib
        >>> folder = pathlib.Path(tempfile.mkdtemp())
        >>> _ = (folder / "dataset.json").write_text(
        ...     json.dumps({"labels": {"background": 0, "liver": 1, "tumour": 2}}))
        >>> read_dataset_classes(folder / "dataset.json")
        DatasetClasses(classes=(1, 2), class_names=('liver', 'tumour'), regions=None)
    """
    path = Path(path)
    entries = _label_entries(_load(path), path)
    region_based = any(len(values) > 1 or isinstance(raw, list) for _, values, raw in entries)
    foreground = [(name, values) for name, values, _ in entries if values != (0,)]
    if not foreground:
        raise InputError(path, '"labels" defines only background (label 0); nothing to evaluate')
    if region_based:
        if include_background:
            raise InputError(
                path,
                "defines regions (label lists); --include-background applies to classes only",
            )
        return DatasetClasses(
            None, None, tuple(Region(name, values) for name, values in foreground)
        )
    kept = [(name, values) for name, values, _ in entries] if include_background else foreground
    return DatasetClasses(
        classes=tuple(values[0] for _, values in kept),
        class_names=tuple(name for name, _ in kept),
        regions=None,
    )


def _load(path: Path) -> Any:
    try:
        if path.stat().st_size > _MAX_BYTES:
            raise InputError(path, "is too large to be a dataset.json")
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(path, "file not found") from None
    except IsADirectoryError:
        raise InputError(path, "is a folder; give the dataset.json file") from None
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(path, f"cannot be read ({error})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise InputError(path, f"is not valid JSON (line {error.lineno}: {error.msg})") from None


def _label_entries(document: Any, path: Path) -> list[tuple[str, tuple[int, ...], Any]]:
    """``(name, label values, raw value)`` of each ``labels`` entry, in file order."""
    labels = document.get("labels") if isinstance(document, dict) else None
    if not isinstance(labels, dict) or not labels:
        raise InputError(
            path,
            'has no "labels" object; a dataset.json maps names to label values, e.g. '
            '"labels": {"background": 0, "liver": 1}',
        )
    msd = all(_is_integer_text(key) for key in labels) and all(
        isinstance(value, str) for value in labels.values()
    )
    entries: list[tuple[str, tuple[int, ...], Any]] = []
    for key, raw in labels.items():
        name, value = (str(raw), int(key)) if msd else (str(key), raw)
        entries.append((name.strip(), _label_values(name, value, path), value))
    if any(name == "ignore" for name, _, _ in entries):
        raise InputError(
            path,
            'has an "ignore" label (nnU-Net sparse annotation): voxels to leave out of the '
            "metrics are not supported yet; evaluate on fully annotated label maps",
        )
    names = [name for name, _, _ in entries]
    if not all(names) or len(set(names)) != len(names):
        raise InputError(path, f'"labels" names must be distinct and non-empty, got {names}')
    singles = [values[0] for _, values, _ in entries if len(values) == 1]
    repeated = sorted({value for value in singles if singles.count(value) > 1})
    if repeated:
        raise InputError(path, f'"labels" gives label value(s) {repeated} to more than one name')
    return entries


def _label_values(name: str, value: Any, path: Path) -> tuple[int, ...]:
    values = value if isinstance(value, list) else [value]
    if not values or not all(
        isinstance(item, int) and not isinstance(item, bool) and item >= 0 for item in values
    ):
        raise InputError(
            path,
            f'"labels" entry {name!r} is {json.dumps(value)}; expected a label value '
            "(0, 1, 2, ...) or a list of them (a region)",
        )
    if len(set(values)) != len(values):
        raise InputError(path, f'"labels" entry {name!r} lists a value twice: {values}')
    return tuple(values)


def _is_integer_text(text: str) -> bool:
    return text.strip().isdigit()
