"""Read probability maps and label maps (the public API of calibkit's volume files).

Conventions (SPEC §2):

- A prediction is returned channel-first, float32, shape ``(C, x, y, z)``.
- A label map is returned as integers, shape ``(x, y, z)``: 8- and 16-bit storage as
  stored, anything else as int16 (int32 when needed). A multi-label ground truth (one
  binary map per class, overlapping) is returned channel-first, ``(L, x, y, z)``.
- A 2-D image (2-D NIfTI, MetaImage or NRRD, and PNG / TIFF) is a volume of one slice:
  ``(C, x, y, 1)`` and ``(x, y, 1)``; its affine gets z spacing 1 and origin 0.
- ``affine`` maps voxel indices to world millimetres in NIfTI's RAS+ convention;
  formats without geometry (nnU-Net ``.npz``) have ``affine=None``.

NIfTI files are read with nibabel; ``.mha`` / ``.mhd`` / ``.nrrd`` / ``.nhdr`` and
``.png`` / ``.tif`` / ``.tiff`` with SimpleITK (imported only when such a file is read;
``io.raster`` says what PNG and TIFF pixels mean); ``.npz`` with numpy.

This module composes the rooms below it and re-exports their public names:
``io.formats`` (suffixes, ``split_suffix``), the readers ``io.nifti``, ``io.npz``,
``io.simpleitk`` and ``io.raster``, ``io.claims`` (a header's claim against what the file holds),
``io.values`` (finite probabilities, integer labels), ``io.read_errors`` (a reader's
failure as one line) and ``io.writing`` (``write_prediction``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from calibkit.errors import InputError
from calibkit.io.formats import (
    LABEL_SUFFIXES,
    NIFTI_SUFFIXES,
    PREDICTION_SUFFIXES,
    RASTER_SUFFIXES,
    SITK_SUFFIXES,
    _check_file,
    split_suffix,
)
from calibkit.io.nifti import _decode_codes, _load_nifti, _read_nifti_prediction
from calibkit.io.npz import _read_npz_prediction
from calibkit.io.raster import _read_raster_label, _read_raster_prediction
from calibkit.io.read_errors import _read_errors
from calibkit.io.simpleitk import _read_sitk, _read_sitk_prediction
from calibkit.io.values import _check_finite, _check_label_shape, _to_label_array
from calibkit.io.writing import write_prediction

__all__ = [
    "LABEL_SUFFIXES",
    "NIFTI_SUFFIXES",
    "PREDICTION_SUFFIXES",
    "RASTER_SUFFIXES",
    "SITK_SUFFIXES",
    "Volume",
    "check_geometry",
    "decode_prediction",
    "multi_label_channels",
    "read_label",
    "read_prediction",
    "split_suffix",
    "write_prediction",
]


@dataclass(frozen=True, eq=False)
class Volume:
    """An image read from disk.

    Attributes:
        array: ``(C, x, y, z)`` float32 probabilities (``read_prediction``) or
            ``(x, y, z)`` int16/int32 labels (``read_label``). May be a non-contiguous view.
        affine: 4x4 float64 voxel-to-world matrix (RAS+, mm), or None when the
            format stores no geometry (``.npz``).
        path: the file it was read from.
        value_range: smallest and largest value of a prediction (found by the
            finiteness check of ``read_prediction``); None for labels.
        unscaled_integers: how a NIfTI prediction stores integers read without a
            scale factor (``"uint16 values with no scale factor (scl_slope unset, 0 or
            1)"``),
            which explains values far above 1; None for floats, scaled integers,
            other formats and labels.
        note: a warning about how the values were read (an 8-bit PNG / TIFF map that
            holds only the codes 0 and 1, which reads as probabilities 0 and 1/255).
        code_values: None, except for a prediction read with ``keep_codes=True``
            from uint8 / uint16 NIfTI storage: then ``array`` holds the stored codes
            (uint8 / uint16, ``(C, x, y, z)``) and the value of code ``k`` is the
            float32 ``code_values[k]`` (scale factors applied; 256 or 65,536
            entries). :func:`decode_prediction` gives the float32 Volume.
    """

    array: np.ndarray
    affine: np.ndarray | None
    path: Path
    value_range: tuple[float, float] | None = None
    unscaled_integers: str | None = None
    note: str | None = None
    code_values: np.ndarray | None = None


def read_prediction(path: Path | str, *, keep_codes: bool = False) -> Volume:
    """Read a probability (or logit) map as channel-first float32.

    NIfTI: 2-D ``(x, y)`` and 3-D ``(x, y, z)`` are one channel, 4-D ``(x, y, z, C)``,
    5-D ``(x, y, z, 1, C)``; ``scl_slope`` / ``scl_inter`` are applied (uint8 ``k`` with
    slope 1/255 gives float32 ``k/255``, correctly rounded). MetaImage / NRRD: 2-D or
    3-D scalar or vector images (one channel per component). PNG / TIFF: one value per
    pixel, 8- and 16-bit codes ``k`` as ``k/255`` and ``k/65535``, floats as stored
    (see ``calibkit.io.raster``). nnU-Net ``.npz``: array ``probabilities`` with axes
    ``(C, z, y, x)``. A 2-D image is read as one slice, ``(C, x, y, 1)``.

    Args:
        path: the prediction file.
        keep_codes: keep a NIfTI map stored as uint8 / uint16 as its codes and their
            values (``Volume.code_values``) instead of a float32 array: a quarter
            (or half) of the memory, and binning reads the codes directly
            (:mod:`calibkit.cases`). Other files are read as float32 as usual.

    Returns:
        A Volume whose array is float32 ``(C, x, y, z)`` (a view; not necessarily
        C-contiguous), or codes with ``code_values`` (see ``keep_codes``).

    Raises:
        InputError: the file is missing, unreadable, has an unsupported layout or
            holds NaN / infinite values.
    """
    path = Path(path)
    suffix = _check_file(path, PREDICTION_SUFFIXES)
    unscaled_integers = code_values = None
    if suffix in NIFTI_SUFFIXES:
        array, affine, unscaled_integers, code_values = _read_nifti_prediction(
            path, keep_codes=keep_codes
        )
    elif suffix == ".npz":
        array, affine = _read_npz_prediction(path), None
    elif suffix in RASTER_SUFFIXES:
        array, affine = _read_raster_prediction(path)
    else:
        array, affine = _read_sitk_prediction(path)
    if code_values is None:
        value_range = _check_finite(array, path)
    else:
        value_range = _check_finite_codes(array, code_values, path)
    note = None
    if (
        suffix in RASTER_SUFFIXES
        and value_range is not None
        and value_range[1] == np.float32(1 / 255)
    ):
        note = (
            f"{path}: holds only the codes 0 and 1, read as probabilities 0 and 1/255 "
            "(k/255); a hard 0/1 mask is not a probability map: store probabilities, or "
            "the mask as codes 0 and 255"
        )
    return Volume(
        array=array,
        affine=affine,
        path=path,
        value_range=value_range,
        unscaled_integers=unscaled_integers,
        note=note,
        code_values=code_values,
    )


def decode_prediction(volume: Volume) -> Volume:
    """A prediction kept as codes (``Volume.code_values``) as the float32 Volume.

    Equal, value for value and in memory layout, to ``read_prediction(path)``; a
    float32 Volume is returned as it is.
    """
    if volume.code_values is None:
        return volume
    return replace(volume, array=_decode_codes(volume.array, volume.code_values), code_values=None)


def _check_finite_codes(
    codes: np.ndarray, code_values: np.ndarray, path: Path
) -> tuple[float, float] | None:
    """:func:`_check_finite` of the values of stored codes, from the codes present.

    A scale factor maps codes to values in order (``k * slope + inter`` rounded),
    so the smallest and largest code hold the extreme values; a non-finite value
    (a huge ``scl_slope``) is reported by the float check itself.
    """
    if codes.size == 0:
        return None
    ends = code_values[[int(codes.min()), int(codes.max())]]
    if not np.isfinite(ends).all():
        _check_finite(_decode_codes(codes, code_values), path)
    return float(ends.min()), float(ends.max())


def read_label(path: Path | str) -> Volume:
    """Read an integer label map, or a multi-label ground truth.

    Float storage is accepted when every value is an integer. Singleton dimensions
    after the third (``(x, y, z, 1)``) are dropped. A fourth axis of length ``L > 1``
    (``(x, y, z, L)``, or NIfTI's vector layout ``(x, y, z, 1, L)``; a SimpleITK vector
    image) is a multi-label ground truth: one binary map per class, which may overlap.
    A 2-D image is one slice, ``(x, y, 1)``. PNG / TIFF masks hold one value per
    pixel, read as stored; a palette PNG or TIFF gives its palette indices (see
    ``calibkit.io.raster``).

    Args:
        path: the label file (NIfTI, MetaImage, NRRD, PNG or TIFF).

    Returns:
        A Volume whose array is ``(x, y, z)`` (a multi-label map: channel-first
        ``(L, x, y, z)``, see :func:`multi_label_channels`): 8- and 16-bit integers as
        stored, other storage as int16 (int32 when values need it).

    Raises:
        InputError: the file is missing or unreadable, is not 2-D or 3-D (or 3-D
            with one axis of label channels), is a colour image, or holds values that
            are not integers.
    """
    path = Path(path)
    suffix = _check_file(path, LABEL_SUFFIXES)
    if suffix in NIFTI_SUFFIXES:
        img = _load_nifti(path)
        shape = tuple(int(n) for n in img.shape)
        _check_label_shape(shape, path)
        with _read_errors(path, "NIfTI"):
            raw = np.asanyarray(img.dataobj)
        if raw.ndim == 2:  # a 2-D image: one slice
            raw = raw[:, :, np.newaxis]
        affine = np.asarray(img.affine, dtype=np.float64)
    else:
        if suffix in RASTER_SUFFIXES:
            raw, affine = _read_raster_label(path)
        else:
            raw, affine = _read_sitk(path, as_float32=False)
        raw = raw.transpose(2, 1, 0) if raw.ndim == 3 else raw.transpose(2, 1, 0, 3)
        _check_label_shape(tuple(int(n) for n in raw.shape), path)
    channels = [n for n in raw.shape[3:] if n != 1]
    raw = raw.reshape(*raw.shape[:3], *channels)
    if channels:  # multi-label: channel-first, as predictions are
        raw = np.moveaxis(raw, 3, 0)
    return Volume(array=_to_label_array(raw, path), affine=affine, path=path)


def multi_label_channels(label: np.ndarray) -> int | None:
    """The channel count of a multi-label ground truth ``(L, x, y, z)``; None for a label map.

    Example:
        >>> multi_label_channels(np.zeros((3, 4, 4, 2), dtype=np.uint8))
        3
        >>> multi_label_channels(np.zeros((4, 4, 2), dtype=np.uint8)) is None
        True
    """
    return int(label.shape[0]) if label.ndim == 4 else None


def check_geometry(pred: Volume, label: Volume, tolerance_mm: float = 1e-3) -> str | None:
    """Check that a prediction lies on its label's voxel grid.

    Args:
        pred: prediction, array ``(C, x, y, z)``.
        label: label map, array ``(x, y, z)`` (or a multi-label ``(L, x, y, z)``).
        tolerance_mm: largest accepted absolute difference between affine entries.

    Returns:
        None when the geometry agrees (or either file has no affine), else a
        one-line message; the caller decides whether it is a warning or an error.

    Raises:
        InputError: the spatial shapes differ (never acceptable); the message says
            what the shapes suggest (channels on the wrong axis, a 2-D map against
            a 3-D label or the reverse, axes in reversed order).
    """
    spatial = tuple(int(n) for n in pred.array.shape[1:])
    label_shape = tuple(int(n) for n in label.array.shape[-3:])
    if spatial != label_shape:
        hint = (
            _channel_first_hint(pred, label_shape)
            or _slices_hint(pred, label_shape)
            or _reversed_axes_hint(spatial, label_shape)
        )
        raise InputError(
            pred.path,
            f"shape {spatial} does not match label {label.path} shape {label_shape}; "
            + (hint or "predictions must be on the label's voxel grid (resample them first)"),
        )
    if pred.affine is None or label.affine is None:
        return None
    difference = float(np.max(np.abs(pred.affine - label.affine)))
    if not difference <= tolerance_mm:  # also catches NaN
        return (
            f"affine differs from label {label.path} by up to {difference:.4g} mm"
            f"{_affine_hint(pred.affine, label.affine, tolerance_mm)} "
            "(use --ignore-geometry to accept)"
        )
    return None


def _affine_hint(pred: np.ndarray, label: np.ndarray, tolerance_mm: float) -> str:
    """What differs between two affines, when it is a voxel size or the x/y directions."""
    if not (np.all(np.isfinite(pred)) and np.all(np.isfinite(label))):
        return ""
    pred_size = np.linalg.norm(pred[:3, :3], axis=0)
    label_size = np.linalg.norm(label[:3, :3], axis=0)
    if np.max(np.abs(pred_size - label_size)) > tolerance_mm:
        here, there = (" x ".join(f"{v:.4g}" for v in size) for size in (pred_size, label_size))
        return f" (voxel size {here} mm here, {there} mm in the label)"
    flipped = label.copy()
    flipped[:2] *= -1.0
    if np.max(np.abs(pred - flipped)) <= tolerance_mm:
        return (
            " (x and y point the opposite ways: NIfTI's RAS against ITK's LPS, as when a "
            "NIfTI saved with a diagonal affine meets an ITK, PNG or TIFF image)"
        )
    return ""


def _channel_first_hint(pred: Volume, label_shape: tuple[int, ...]) -> str | None:
    """How to fix a NIfTI prediction saved channel-first, ``(C, x, y, z)``; else None.

    NIfTI channels are read from the last axis, so such a file reads as ``z``
    channels on the grid ``(C, x, y)``. It looks channel-first when its last three
    stored axes are the label's shape.
    """
    # One channel: a 3-D file, which has no channel axis to misplace.
    if split_suffix(pred.path)[1] not in NIFTI_SUFFIXES or pred.array.shape[0] < 2:
        return None
    stored = (*(int(n) for n in pred.array.shape[1:]), int(pred.array.shape[0]))
    if stored[1:] != label_shape:
        return None
    return (
        f"the file's shape {stored} looks channel-first, (C, x, y, z) with {stored[0]} "
        "channel(s), but NIfTI channels come last, (x, y, z, C): move the channel axis "
        "last (e.g. numpy.moveaxis(probabilities, 0, -1)) before saving"
    )


def _slices_hint(pred: Volume, label_shape: tuple[int, ...]) -> str | None:
    """What a 2-D map against a 3-D label (or the reverse) suggests; else None.

    A label of one slice is a 2-D image: a map on its ``(x, y)`` with more slices holds
    channels on the slice axis (one channel), or is a 3-D map (several channels); a
    one-channel map on ``(C, x, y)`` holds channels first. A one-slice map on a
    3-D label's ``(x, y)`` is a 2-D map paired with a 3-D label.
    """
    channels = int(pred.array.shape[0])
    a, b, c = (int(n) for n in pred.array.shape[1:])
    x, y, z = label_shape
    if z == 1 and (a, b) == (x, y):
        if channels > 1:
            return (
                f"the label is a 2-D image but this map is 3-D ({c} slices of {channels} "
                "channels): pair 2-D maps with 2-D labels"
            )
        return (
            f"the label is a 2-D image and this map has {c} slices: if they are {c} class "
            f"channels, store them as channels ({_where_channels_go(pred.path)}); else pair "
            "it with its 3-D label"
        )
    if z == 1 and channels == 1 and (b, c) == (x, y) and a > 1:
        return (
            f"the label is a 2-D image and this map looks channel-first, (C, x, y) with {a} "
            f"channels: store them as channels ({_where_channels_go(pred.path)})"
        )
    if z > 1 and c == 1 and (a, b) == (x, y):
        return (
            f"this map is a 2-D image but the label has {z} slices: pair 2-D maps with 2-D labels"
        )
    return None


def _reversed_axes_hint(spatial: tuple[int, ...], label_shape: tuple[int, ...]) -> str | None:
    """A map whose axes are the label's in reverse order: ``(y, x)`` for 2-D, ``(z, y, x)``."""
    x, y, z = label_shape
    reverse = (y, x, 1) if z == 1 else (z, y, x)
    if spatial != reverse:
        return None
    return (
        "its axes are the label's in reverse order: numpy arrays are written x first by "
        "nibabel but y first (rows) by SimpleITK, PNG and TIFF writers; transpose one of "
        "them before saving"
    )


def _where_channels_go(path: Path) -> str:
    """Where the file's format keeps the channels of a 2-D map."""
    suffix = split_suffix(path)[1]
    if suffix in NIFTI_SUFFIXES:
        return "NIfTI keeps them last, (x, y, 1, C)"
    if suffix == ".npz":
        return "nnU-Net's .npz holds (C, 1, y, x)"
    if suffix in SITK_SUFFIXES:
        return "a 2-D vector image, one component per channel"
    return (
        "as .mha or .nrrd with one vector component per channel, a float TIFF with one "
        "sample per channel, or NIfTI (x, y, 1, C)"
    )
