"""Training configuration: one frozen dataclass, presets, config files and their precedence.

Precedence, highest first: command-line options > config file (YAML, TOML or JSON) >
preset (``paper`` is the defaults, ``cpu-small`` a quick CPU run) > defaults (the
paper's settings, SPEC.md §7). A run writes its effective configuration to
``RUN_DIR/config.toml`` (flat TOML that :func:`load_config_file` reads back), so
``--resume`` and ``calibkit predict`` see exactly what was trained.

This module imports no torch; the loss spec is checked by :func:`check_loss_spec`.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from calibkit.errors import CalibkitError, InputError

__all__ = [
    "CONFIG_FILE",
    "PRESETS",
    "RESUME_OVERRIDABLE",
    "TrainConfig",
    "config_to_toml",
    "load_config_file",
    "parse_label_map",
    "parse_patch_size",
    "resolve_config",
]

CONFIG_FILE = "config.toml"
"""Name of the effective configuration inside a run folder."""

RESUME_OVERRIDABLE = ("data", "epochs", "device", "workers", "threads", "val_every")
"""Options that ``--resume`` may change: more epochs, where the data lives (``split.json``
names the cases), and how the work is run. Anything else would change the numbers."""

# The UNet halves each side three times (strides 2, 2, 2).
_PATCH_MULTIPLE = 8


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run depends on (defaults: the paper, SPEC.md §7).

    Attributes:
        data: dataset folder (BraTS 2021 case folders, or MSD / nnU-Net raw with
            ``dataset.json``, ``imagesTr``, ``labelsTr``).
        out: run folder (checkpoints, ``metrics.csv``, ``config.toml``, ``split.json``).
        loss: loss spec of :func:`calibkit.losses.build_loss`, e.g. ``dsc+ace``.
        epochs: number of epochs.
        iters_per_epoch: optimiser steps per epoch.
        batch_size: patches per step, over all processes (DDP splits it evenly).
        patch_size: training patch, also the sliding-window size at validation.
        lr: Adam learning rate.
        n_bins: bins of the calibration loss terms and of the validation metrics.
        val_every: validate every this many epochs (and after the last one).
        val_fraction: share of the cases held out for validation (seeded split).
        split: a JSON file ``{"train": [...], "val": [...]}`` of case ids (overrides
            ``val_fraction``).
        seed: seeds the split, the initial weights and every augmentation.
        device: ``auto`` (CUDA when available), ``cpu``, ``cuda``, ``cuda:1``.
        amp: mixed precision on CUDA (ignored, with a note, on CPU).
        workers: data-loading worker processes (at most one per CPU core is used).
        threads: torch CPU threads of each process (0: torch's default; 1 is often
            fastest for small patches on a busy machine).
        sw_batch_size: windows per forward pass in sliding-window validation.
        sw_overlap: overlap of the sliding windows.
        cache_mb: keep the training volumes in memory when they fit in this many MB.
        label_map: label value -> training class (0 BG, 1 NCR, 2 ED, 3 ET), e.g.
            ``"0:0,1:1,2:2,4:3"``; None: BraTS values, or read from ``dataset.json``.
        deterministic: deterministic cuDNN kernels (CPU runs are deterministic anyway).
        preset: the preset the run started from (recorded only).
    """

    data: str = ""
    out: str = ""
    loss: str = "dsc+ace"
    epochs: int = 1000
    iters_per_epoch: int = 16
    batch_size: int = 8
    patch_size: tuple[int, int, int] = (224, 224, 144)
    lr: float = 1e-3
    n_bins: int = 20
    val_every: int = 1
    val_fraction: float = 51 / 1051  # the paper's 1000:51:200 split, without the test set
    split: str | None = None
    seed: int = 0
    device: str = "auto"
    amp: bool = False
    workers: int = 4
    threads: int = 0
    sw_batch_size: int = 4
    sw_overlap: float = 0.5
    cache_mb: int = 4096
    label_map: str | None = None
    deterministic: bool = False
    preset: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain values (lists for tuples), ready for TOML, JSON or a checkpoint."""
        record = asdict(self)
        record["patch_size"] = list(self.patch_size)
        return record

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], source: str = "configuration") -> TrainConfig:
        """Build and check a config from plain values (unknown keys are an error)."""
        return _checked(_coerce(dict(values), source), source)


PRESETS: dict[str, dict[str, Any]] = {
    "paper": {},
    # The same pipeline on the 64^3 sample volumes in minutes on a 2-core CPU.
    "cpu-small": {
        "epochs": 10,
        "iters_per_epoch": 8,
        "batch_size": 2,
        "patch_size": (48, 48, 48),
        "val_every": 5,
        "val_fraction": 0.25,
        "device": "cpu",
        "workers": 0,
        "sw_batch_size": 2,
        "sw_overlap": 0.25,
        "cache_mb": 1024,
    },
}

_FIELDS = {field.name: field for field in fields(TrainConfig)}


def resolve_config(
    overrides: Mapping[str, Any] | None = None,
    *,
    config_file: Path | str | None = None,
    preset: str | None = None,
) -> TrainConfig:
    """The effective configuration: options > config file > preset > defaults.

    Args:
        overrides: option values from the command line; ``None`` values mean "not given".
        config_file: a ``.yaml`` / ``.yml``, ``.toml`` or ``.json`` file of options
            (top level, or under a ``train`` table); it may name a ``preset``.
        preset: a name from :data:`PRESETS`; wins over the file's ``preset``.

    Returns:
        The checked :class:`TrainConfig`.

    Raises:
        CalibkitError: unknown preset, option or bad value (the message names it).
        InputError: the config file cannot be read.

    Example:
        >>> config = resolve_config({"epochs": 3}, preset="cpu-small")
        >>> config.epochs, config.batch_size, config.patch_size
        (3, 2, (48, 48, 48))
    """
    given = {key: value for key, value in (overrides or {}).items() if value is not None}
    from_file: dict[str, Any] = {}
    source = "command line"
    if config_file is not None:
        from_file = _coerce(load_config_file(config_file), str(config_file))
        source = str(config_file)
    name = preset if preset is not None else given.get("preset", from_file.get("preset"))
    base: dict[str, Any] = {}
    if name is not None:
        if name not in PRESETS:
            raise CalibkitError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}")
        base = {**PRESETS[name], "preset": name}
    merged = {**base, **from_file, **_coerce(given, "command line")}
    if name is not None:
        merged["preset"] = name
    return _checked(merged, source)


def load_config_file(path: Path | str) -> dict[str, Any]:
    """Read a YAML, TOML or JSON file of options into a flat dict (keys as written).

    YAML needs PyYAML for anything beyond flat ``key: value`` lines; without it a
    small reader handles scalars and ``[a, b, c]`` lists.

    Raises:
        InputError: missing file, unknown suffix, syntax error, or not a mapping.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "config file not found; check the path")
    suffix = path.suffix.lower()
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(path, f"cannot read the config file ({error})") from None
    if suffix == ".toml":
        values = _read_toml(text, path)
    elif suffix in (".yaml", ".yml"):
        values = _read_yaml(text, path)
    elif suffix == ".json":
        try:
            values = json.loads(text)
        except json.JSONDecodeError as error:
            raise InputError(path, f"invalid JSON: {error}") from None
    else:
        raise InputError(path, "config files must end in .yaml, .yml, .toml or .json")
    if not isinstance(values, dict):
        raise InputError(path, "a config file must hold a mapping of option names to values")
    if set(values) == {"train"} and isinstance(values["train"], dict):
        values = values["train"]
    return {str(key).replace("-", "_"): value for key, value in values.items()}


def _read_toml(text: str, path: Path) -> Any:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        try:
            import tomli as tomllib  # type: ignore[no-redef]
        except ModuleNotFoundError:
            raise InputError(path, "reading TOML on Python 3.10 needs: pip install tomli") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise InputError(path, f"invalid TOML: {error}") from None


def _read_yaml(text: str, path: Path) -> Any:
    try:
        import yaml
    except ModuleNotFoundError:
        return _read_flat_yaml(text, path)
    try:
        return yaml.safe_load(text) or {}
    except yaml.YAMLError as error:
        raise InputError(path, f"invalid YAML: {' '.join(str(error).split())}") from None


_YAML_LINE = re.compile(r"^(?P<key>[A-Za-z_][\w-]*)\s*:\s*(?P<value>.*?)\s*$")


def _read_flat_yaml(text: str, path: Path) -> dict[str, Any]:
    """Flat ``key: value`` YAML (what a training config needs) without PyYAML."""
    values: dict[str, Any] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = _strip_comment(raw).rstrip()
        if not line.strip() or line.strip() == "---":
            continue
        match = _YAML_LINE.match(line)
        if match is None or not match["value"]:
            raise InputError(
                path,
                f"line {number}: expected 'key: value' (nested YAML needs: pip install pyyaml)",
            )
        values[match["key"]] = _yaml_scalar(match["value"], path, number)
    return values


def _strip_comment(line: str) -> str:
    quote = None
    for index, char in enumerate(line):
        if char in "'\"" and quote in (None, char):
            quote = None if quote == char else char
        elif char == "#" and quote is None and (index == 0 or line[index - 1].isspace()):
            return line[:index]
    return line


def _yaml_scalar(text: str, path: Path, number: int) -> Any:
    if text.startswith("[") and text.endswith("]"):
        inner = text[1:-1].strip()
        return (
            [_yaml_scalar(part.strip(), path, number) for part in inner.split(",")] if inner else []
        )
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    lowered = text.lower()
    if lowered in ("true", "yes", "on"):
        return True
    if lowered in ("false", "no", "off"):
        return False
    if lowered in ("null", "~", "none"):
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def config_to_toml(config: TrainConfig) -> str:
    """The config as flat TOML (``None`` values are written as comments).

    Example:
        >>> print(config_to_toml(TrainConfig(epochs=2)).splitlines()[4])
        epochs = 2
    """
    lines = ["# calibkit train: effective configuration (options > file > preset > defaults)"]
    for key, value in config.to_dict().items():
        if value is None:
            lines.append(f"# {key} = (not set)")
        else:
            lines.append(f"{key} = {_toml_value(value)}")
    return "\n".join(lines) + "\n"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    return json.dumps(str(value))  # a TOML basic string: JSON's escapes are valid TOML


def parse_patch_size(value: Any, source: str = "--patch-size") -> tuple[int, int, int]:
    """Three positive sides from ``"X,Y,Z"``, a list, or one number (a cube).

    Example:
        >>> parse_patch_size("224,224,144")
        (224, 224, 144)
        >>> parse_patch_size(64)
        (64, 64, 64)
    """
    parts: list[Any]
    if isinstance(value, str):
        parts = [part for part in re.split(r"[,x× ]+", value.strip()) if part]
    elif isinstance(value, (list, tuple)):
        parts = list(value)
    else:
        parts = [value] * 3
    try:
        sides = tuple(int(part) for part in parts)
        exact = all(float(part) == int(part) for part in parts)
    except (TypeError, ValueError):
        sides, exact = (), False
    if len(sides) != 3 or not exact or min(sides) < 1:
        raise CalibkitError(
            f"{source}: expected three positive integers such as 224,224,144, got {value!r}"
        )
    return (sides[0], sides[1], sides[2])


def parse_label_map(value: Any, source: str = "label_map") -> dict[int, int]:
    """``{label value: training class}`` from ``"0:0,1:1,2:2,4:3"`` or a mapping.

    Example:
        >>> parse_label_map("0:0,1:2,2:1,3:3")
        {0: 0, 1: 2, 2: 1, 3: 3}
    """
    pairs: list[tuple[Any, Any]]
    if isinstance(value, Mapping):
        pairs = list(value.items())
    else:
        pairs = [tuple(part.split(":", 1)) for part in str(value).split(",") if part.strip()]  # type: ignore[misc]
    mapping: dict[int, int] = {}
    try:
        for key, target in pairs:
            mapping[int(str(key).strip())] = int(str(target).strip())
    except (TypeError, ValueError):
        mapping = {}
    if not mapping or any(c not in range(4) for c in mapping.values()) or 0 not in mapping:
        raise CalibkitError(
            f"{source}: expected label:class pairs such as 0:0,1:1,2:2,4:3 (classes 0 BG, "
            f"1 NCR, 2 ED, 3 ET; label 0 must be listed), got {value!r}"
        )
    return mapping


def _coerce(values: dict[str, Any], source: str) -> dict[str, Any]:
    """Check names and convert types of raw option values (from a file or the CLI)."""
    out: dict[str, Any] = {}
    for raw_key, value in values.items():
        key = str(raw_key).replace("-", "_")
        if key not in _FIELDS:
            raise CalibkitError(
                f"{source}: unknown option {raw_key!r}; known options: {', '.join(_FIELDS)}"
            )
        if value is None:
            out[key] = None
            continue
        default = _FIELDS[key].default
        if key == "patch_size":
            out[key] = parse_patch_size(value, f"{source}: patch_size")
        elif key == "label_map":
            mapping = parse_label_map(value, f"{source}: label_map")
            out[key] = ",".join(f"{k}:{v}" for k, v in sorted(mapping.items()))
        elif isinstance(default, bool):
            if not isinstance(value, bool):
                raise CalibkitError(f"{source}: {key} must be true or false, got {value!r}")
            out[key] = value
        elif isinstance(default, int):
            out[key] = _as_int(value, key, source)
        elif isinstance(default, float):
            out[key] = _as_float(value, key, source)
        else:
            out[key] = str(value)
    return out


def _as_int(value: Any, key: str, source: str) -> int:
    if isinstance(value, bool):
        raise CalibkitError(f"{source}: {key} must be an integer, got {value!r}")
    try:
        number = float(value)
        if number == int(number):
            return int(number)
    except (TypeError, ValueError, OverflowError):
        pass
    raise CalibkitError(f"{source}: {key} must be an integer, got {value!r}")


def _as_float(value: Any, key: str, source: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if isinstance(value, bool) or not math.isfinite(number):
        raise CalibkitError(f"{source}: {key} must be a finite number, got {value!r}")
    return number


def _checked(values: dict[str, Any], source: str) -> TrainConfig:
    config = replace(TrainConfig(), **values)
    problems = []
    for key in ("epochs", "iters_per_epoch", "batch_size", "n_bins", "val_every", "sw_batch_size"):
        if getattr(config, key) < 1:
            problems.append(f"{key} must be at least 1, got {getattr(config, key)}")
    if config.workers < 0 or config.cache_mb < 0 or config.threads < 0:
        problems.append("workers, threads and cache_mb must not be negative")
    if not config.lr > 0:
        problems.append(f"lr must be positive, got {config.lr}")
    if not 0.0 <= config.val_fraction < 1.0:
        problems.append(f"val_fraction must lie in [0, 1), got {config.val_fraction}")
    if not 0.0 <= config.sw_overlap < 1.0:
        problems.append(f"sw_overlap must lie in [0, 1), got {config.sw_overlap}")
    if any(side % _PATCH_MULTIPLE for side in config.patch_size):
        problems.append(
            f"patch_size sides must be multiples of {_PATCH_MULTIPLE} (the UNet halves them "
            f"three times), got {','.join(map(str, config.patch_size))}"
        )
    if config.preset is not None and config.preset not in PRESETS:
        problems.append(f"unknown preset {config.preset!r}; choose one of: {', '.join(PRESETS)}")
    if problems:
        raise CalibkitError(f"{source}: {'; '.join(problems)}")
    return config
