"""Temperature files (``t.json``): check where one goes, write it atomically, read it back.

``calibkit fit-temperature`` writes the record of a fit; ``load_temperature`` reads
that file (or a hand-written ``{"temperature": 1.5, "activation": "softmax",
"n_channels": 4}``) into a :class:`~calibkit.temperature.TemperatureModel`.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Protocol

from calibkit.errors import InputError, OutputError, WriteError
from calibkit.io.atomic import atomic_write_text, unwritable_reason, write_error
from calibkit.temperature import ACTIVATIONS, TemperatureModel

__all__ = [
    "FORMAT_VERSION",
    "TEMPERATURE_FORMAT",
    "check_output_file",
    "load_temperature",
    "save_temperature",
]

TEMPERATURE_FORMAT = "calibkit-temperature"
FORMAT_VERSION = 1


class TemperatureRecord(Protocol):
    """A fit that can say what its ``t.json`` holds (``calibrate.FolderTemperature``)."""

    def record(self) -> dict[str, Any]: ...


def check_output_file(path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
    """Check, before any work, that ``path`` can take a temperature file.

    Creates the parent folder when missing.

    Raises:
        OutputError: ``path`` is a folder, exists (without ``overwrite``) or cannot be written.
    """
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{path}: is a folder; give a file name such as {path / 't.json'}")
    if path.exists() and not overwrite:
        raise OutputError(f"{path}: already exists; use --overwrite to replace it")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise write_error(path.parent, error) from None
    reason = unwritable_reason(path.parent)
    if reason is not None:
        raise OutputError(f"{path}: cannot write here ({reason} on {path.parent})")
    return path


def save_temperature(result: TemperatureRecord, path: str | os.PathLike[str]) -> Path:
    """Write ``result.record()`` as JSON, atomically. Returns the path.

    Raises:
        WriteError: the file cannot be written (disk full, ...); an earlier file
            under ``path`` keeps its content.
    """
    path = Path(path)
    text = json.dumps(result.record(), indent=2, allow_nan=False)
    earlier = path.exists()
    try:
        atomic_write_text(path, text + "\n")
    except WriteError as error:
        raise (error.noted("the earlier file is unchanged") if earlier else error) from None
    return path


def load_temperature(path: str | os.PathLike[str]) -> TemperatureModel:
    """Read a temperature file written by ``calibkit fit-temperature``.

    Required fields: ``temperature`` (a positive number, or one per channel),
    ``activation`` (``"softmax"`` / ``"sigmoid"``) and ``n_channels``; a hand-written
    ``{"temperature": 1.5, "activation": "softmax", "n_channels": 4}`` is enough.

    Raises:
        InputError: the file is missing, not JSON, or misses or mangles a field.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "temperature file not found; write it with calibkit fit-temperature")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise InputError(path, "is not a text (JSON) file") from None
    except json.JSONDecodeError as error:
        raise InputError(
            path, f"is not valid JSON (line {error.lineno}, column {error.colno}: {error.msg})"
        ) from None
    except OSError as error:
        raise InputError(path, f"cannot be read ({error.strerror})") from None
    if not isinstance(data, dict):
        raise InputError(path, "must hold a JSON object with a 'temperature' field")
    if data.get("format", TEMPERATURE_FORMAT) != TEMPERATURE_FORMAT:
        raise InputError(path, f"is a {data['format']!r} file, not a temperature file")
    missing = [key for key in ("temperature", "activation", "n_channels") if key not in data]
    if missing:
        raise InputError(
            path, f"misses field(s) {', '.join(missing)}; write it with calibkit fit-temperature"
        )
    activation = data["activation"]
    if activation not in ACTIVATIONS:
        raise InputError(path, f"activation must be 'softmax' or 'sigmoid', got {activation!r}")
    n_channels = data["n_channels"]
    if isinstance(n_channels, bool) or not isinstance(n_channels, int) or n_channels < 1:
        raise InputError(path, f"n_channels must be a positive integer, got {n_channels!r}")
    if activation == "softmax" and n_channels < 2:
        raise InputError(
            path,
            "a softmax over one channel is 1 everywhere; a one-channel map is binary: "
            'its temperature needs "activation": "sigmoid"',
        )
    temperature = _read_temperatures(data["temperature"], n_channels, path)
    classes = data.get("classes", [])
    if not isinstance(classes, list) or not all(isinstance(name, str) for name in classes):
        raise InputError(path, "classes must be a list of names")
    input_kind = data.get("input_kind", "probabilities")
    if input_kind not in ("probabilities", "logits"):
        raise InputError(
            path, f"input_kind must be 'probabilities' or 'logits', got {input_kind!r}"
        )
    return TemperatureModel(
        temperature=temperature,
        activation=activation,
        n_channels=n_channels,
        class_names=tuple(classes),
        input_kind=input_kind,
        source=path,
    )


def _read_temperatures(value: Any, n_channels: int, path: Path) -> tuple[float, ...]:
    values = value if isinstance(value, list) else [value]
    if isinstance(value, list) and len(values) not in (1, n_channels):
        raise InputError(
            path,
            f"has {len(values)} temperatures for n_channels = {n_channels}; give one or "
            f"{n_channels}",
        )
    numbers: list[float] = []
    for item in values:
        if isinstance(item, bool) or not isinstance(item, (int, float)):
            raise InputError(
                path, f"temperature must be a number or a list of numbers, got {item!r}"
            )
        if not (math.isfinite(item) and item > 0):
            raise InputError(path, f"temperature must be positive and finite, got {item!r}")
        numbers.append(float(item))
    return tuple(numbers)
