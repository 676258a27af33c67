"""NIfTI (``.nii`` / ``.nii.gz``) headers and probability maps, read with nibabel
(imported only when a file is read)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from calibkit.errors import InputError
from calibkit.io.claims import _check_nifti_claim
from calibkit.io.read_errors import _read_errors

_PREDICTION_LAYOUTS = "expected (x, y), (x, y, z), (x, y, z, C) or (x, y, z, 1, C)"


def _load_nifti(path: Path) -> Any:
    """Open a NIfTI file (header only) after checking that it can hold what it claims."""
    import nibabel as nib

    with _read_errors(path, "NIfTI"), _quiet_nibabel():
        # keep_file_open: per-channel reads of a .nii.gz continue from the last position
        # instead of decompressing from the start each time.
        img: Any = nib.load(path, mmap=False, keep_file_open=True)
        shape = tuple(int(n) for n in img.shape)
        itemsize = np.dtype(img.get_data_dtype()).itemsize
        offset = int(img.dataobj.offset)  # vox_offset, or the default when 0
        _check_nifti_claim(path, shape, itemsize, offset)
    return img


@contextmanager
def _quiet_nibabel() -> Iterator[None]:
    """Keep nibabel's header "fixes" ("sizeof_hdr should be 348; set ...") off stderr.

    nibabel logs them through its own logger straight to stderr; calibkit reports a
    file's problems as one error line instead.
    """
    from nibabel.imageglobals import logger

    disabled = logger.disabled
    logger.disabled = True
    try:
        yield
    finally:
        logger.disabled = disabled


def _read_nifti_prediction(
    path: Path, *, keep_codes: bool = False
) -> tuple[np.ndarray, np.ndarray, str | None, np.ndarray | None]:
    """The channel-first array, the affine, :func:`_unscaled_integers`, and the code values.

    The array is float32, or with ``keep_codes`` and uint8 / uint16 storage the stored
    codes themselves, whose values :func:`_code_values` gives (the fourth item; None
    for a float32 array). A 2-D image ``(x, y)`` is one channel on one slice,
    ``(1, x, y, 1)``.
    """
    img = _load_nifti(path)
    shape = tuple(int(n) for n in img.shape)
    ndim = len(shape)
    if ndim == 5 and shape[3] != 1:
        raise InputError(
            path,
            f"5-D image of shape {shape} has {shape[3]} in its 4th dimension; "
            f"{_PREDICTION_LAYOUTS}",
        )
    if ndim not in (2, 3, 4, 5):
        raise InputError(
            path, f"{ndim}-D image of shape {shape} cannot be a prediction; {_PREDICTION_LAYOUTS}"
        )
    stored = np.dtype(img.get_data_dtype())
    if stored.kind not in "biuf":
        raise InputError(path, f"stores {stored} values; expected float or integer probabilities")
    # Scaling may overflow float32 (scl_slope 1e38): the infinities are then reported
    # by _check_finite as one error, not as numpy's RuntimeWarning lines on stderr.
    with _read_errors(path, "NIfTI"), np.errstate(over="ignore", invalid="ignore"):
        if ndim > 3 and stored.itemsize > 4:
            # float64 / int64 storage: read one channel at a time so that no
            # float64 copy of the whole volume exists at once.
            channels, code_values = shape[-1], None
            data = np.empty((*shape[:3], channels), dtype=np.float32, order="F")
            lead = (slice(None),) * 3 + ((0,) if ndim == 5 else ())
            for c in range(channels):
                data[..., c] = img.dataobj[(*lead, c)]
        else:
            # Not get_fdata(dtype=float32): nibabel keeps the slope as a Python float,
            # so with numpy 2 it scales uint8 data through a float64 copy of the volume.
            raw = np.asarray(img.dataobj.get_unscaled())
            slope, inter = float(img.dataobj.slope), float(img.dataobj.inter)
            if keep_codes and raw.dtype in _CODE_DTYPES:
                code_values = _code_values(raw.dtype, slope, inter)
                data = raw
            else:
                code_values = None
                data = _scale_to_float32(raw, slope, inter)
            if ndim == 5:
                data = data[:, :, :, 0, :]
    if ndim == 2:  # a 2-D image: one slice
        data = data[:, :, np.newaxis]
    array = data[np.newaxis] if ndim <= 3 else np.moveaxis(data, -1, 0)
    affine = np.asarray(img.affine, dtype=np.float64)
    return array, affine, _unscaled_integers(img, stored), code_values


# Storage whose values binning can read from a table of every code (256 or 65,536);
# native byte order only (a dtype of the other order compares unequal).
_CODE_DTYPES = (np.dtype(np.uint8), np.dtype(np.uint16))


def _code_values(stored: np.dtype[Any], slope: float, inter: float) -> np.ndarray:
    """The float32 value of every code of 8- or 16-bit unsigned storage.

    Scaled by :func:`_scale_to_float32` itself, so code ``k`` reads as the float
    path reads a voxel holding ``k``, bit for bit.
    """
    with np.errstate(over="ignore", invalid="ignore"):
        codes = np.arange(1 << (8 * stored.itemsize), dtype=stored)
        return _scale_to_float32(codes, slope, inter)


def _decode_codes(codes: np.ndarray, code_values: np.ndarray) -> np.ndarray:
    """The float32 array of stored codes: what the float path reads, in the same memory layout.

    The lookup runs over the axes in memory order (numpy's ``take`` into a strided
    output is some 50 times slower) and its result is transposed back.
    """
    order = np.argsort([-stride for stride in codes.strides], kind="stable")
    in_memory_order = codes.transpose(order)
    values = np.empty(in_memory_order.shape, dtype=np.float32)
    np.take(code_values, in_memory_order, out=values, mode="clip")  # "clip": unbuffered
    return values.transpose(np.argsort(order))


def _scale_to_float32(raw: np.ndarray, slope: float, inter: float) -> np.ndarray:
    """Apply NIfTI scaling with nibabel's values and without a float64 copy of the volume.

    nibabel computes ``k * slope + inter`` in float64; loaders built on it (MONAI's
    ``LoadImage``) then cast to float32. For 8- and 16-bit integers with no intercept
    the float32 product is exact before its one rounding, so it equals that value bit
    for bit (uint8 51 with slope float32(1/255) gives 0.20000002, as everywhere else).
    Other storage is scaled in float64 one channel at a time.
    """
    if raw.dtype == np.dtype(np.float32) and slope == 1.0 and inter == 0.0:
        return raw
    if inter == 0.0 and (slope == 1.0 or (raw.dtype.kind in "iu" and raw.dtype.itemsize <= 2)):
        out = raw.astype(np.float32)
        if slope != 1.0:
            out *= np.float32(slope)
        return out
    out = np.empty(raw.shape, dtype=np.float32, order="F")
    if raw.ndim <= 3:
        out[...] = raw.astype(np.float64) * slope + inter
        return out
    for c in range(raw.shape[-1]):
        out[..., c] = raw[..., c].astype(np.float64) * slope + inter
    return out


def _unscaled_integers(img: Any, stored: np.dtype[Any]) -> str | None:
    """``"uint16 values with no scale factor (scl_slope unset, 0 or 1)"`` when the file
    stores integers that nibabel does not scale; None for floats or scaled integers.

    Probability maps stored as integers need ``scl_slope`` (uint8 ``k`` with slope
    1/255 is ``k/255``); without it ``k`` is read as is, which a range error then
    explains. nibabel reads a slope of 0 or NaN as none, and resets the loaded
    header's slope, so which of these the file holds is not told apart.
    """
    if stored.kind not in "iu" or float(img.dataobj.slope) != 1.0 or img.dataobj.inter != 0.0:
        return None
    return f"{stored} values with no scale factor (scl_slope unset, 0 or 1)"
