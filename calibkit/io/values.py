"""What a volume's values must be: finite probabilities; integer labels on a 3-D grid
(a 2-D image is one slice)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from calibkit.errors import InputError


def _check_finite(array: np.ndarray, path: Path) -> tuple[float, float] | None:
    """Raise when any value is NaN or infinite; else the smallest and largest value.

    Per channel, the minimum and maximum are finite exactly when every value is (NaN
    propagates, an infinity is a bound): two vectorised passes with no volume-sized
    temporary, whose result ``evaluate`` reuses for its range check.
    """
    problems: list[str] = []
    first: tuple[int, ...] | None = None
    lows, highs = [], []
    for c in range(array.shape[0]):
        channel = array[c]
        if channel.size == 0:
            continue
        low, high = float(channel.min()), float(channel.max())
        if np.isfinite(low) and np.isfinite(high):
            lows.append(low)
            highs.append(high)
            continue
        n_nan = int(np.count_nonzero(np.isnan(channel)))
        n_inf = int(np.count_nonzero(np.isinf(channel)))
        if n_nan:
            problems.append(f"{n_nan} NaN values in channel {c}")
        if n_inf:
            problems.append(f"{n_inf} infinite values in channel {c}")
        if first is None:
            first = tuple(int(i) for i in np.argwhere(~np.isfinite(channel))[0])
    if problems:
        raise InputError(
            path,
            f"{', '.join(problems)} (first at voxel {first}); "
            "fix the export so that every value is finite",
        )
    return (min(lows), max(highs)) if lows else None


def _check_label_shape(shape: tuple[int, ...], path: Path) -> None:
    """Accept ``(x, y, z)`` with trailing singletons, a 2-D ``(x, y)`` image, or one
    axis of label channels after the third (a multi-label ground truth)."""
    if len(shape) < 2 or sum(n != 1 for n in shape[3:]) > 1:
        raise InputError(
            path,
            f"label map has shape {shape}; expected a 3-D (x, y, z) or 2-D (x, y) integer "
            "label map, or (x, y, z, L) with one binary map per class (multi-label)",
        )


def _to_label_array(raw: np.ndarray, path: Path) -> np.ndarray:
    """Small integers keep their stored type (no copy); others become int16 or int32.

    Big-endian storage becomes native byte order (the compiled kernels need it).
    """
    kind = raw.dtype.kind
    if kind not in "biuf":
        raise InputError(path, f"label map stores {raw.dtype} values; labels must be integers")
    if not raw.dtype.isnative:
        raw = raw.astype(raw.dtype.newbyteorder("="))
    if kind in "iu" and raw.dtype.itemsize <= 2:
        return raw
    if kind == "f":
        _check_integer_valued(raw, path)
    if raw.size == 0 or kind == "b":
        return raw.astype(np.int16)
    low, high = raw.min(), raw.max()
    for dtype in (np.int16, np.int32):
        info = np.iinfo(dtype)
        if info.min <= low and high <= info.max:
            return raw.astype(dtype, copy=False)
    raise InputError(
        path,
        f"label values range from {low} to {high}, beyond int32; labels must be small integers",
    )


def _check_integer_valued(raw: np.ndarray, path: Path) -> None:
    # Slabs along the last axis bound the temporaries to ~16 M voxels.
    plane = max(1, int(np.prod(raw.shape[:-1])))
    step = max(1, (1 << 24) // plane)
    for start in range(0, raw.shape[-1], step):
        slab = raw[..., start : start + step]
        bad = slab != np.floor(slab)  # NaN != NaN, so NaN counts as non-integer
        if bad.any():
            # numpy's shortest round-trip text of the stored value: float32 1.0000001
            # shows as 1.0000001, where :g (6 significant digits) showed 1.
            example = str(slab[bad].flat[0])
            raise InputError(
                path,
                f"label map has non-integer values (e.g. {example}); labels must be integers "
                "(re-save it with an integer data type)",
            )
        if not np.isfinite(slab).all():
            raise InputError(path, "label map has infinite values; labels must be integers")
