"""Write a probability map as NIfTI, atomically, on a reference file's geometry."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from calibkit.errors import InputError, OutputError
from calibkit.io.atomic import atomic_path
from calibkit.io.formats import LABEL_SUFFIXES, NIFTI_SUFFIXES, _check_file, split_suffix
from calibkit.io.nifti import _load_nifti
from calibkit.io.read_errors import _read_errors
from calibkit.io.simpleitk import _sitk_affine

__all__ = ["write_prediction"]

_STORAGE = {
    "uint8": (np.uint8, 255.0),
    "uint16": (np.uint16, 65535.0),
    "float32": (np.float32, 1.0),
}
# Values a little outside [0, 1] (float rounding upstream) are clipped, not rejected.
_RANGE_TOLERANCE = 1e-4


def write_prediction(
    path: Path | str,
    array: np.ndarray,
    reference_path: Path | str | None = None,
    *,
    storage: str = "uint8",
) -> None:
    """Write a probability map as NIfTI, atomically.

    Args:
        path: output ``.nii.gz`` or ``.nii`` file.
        array: ``(C, x, y, z)`` probabilities. Written as ``(x, y, z, C)``, or
            ``(x, y, z)`` when C is 1.
        reference_path: file whose affine (and, for NIfTI, header) the output gets;
            identity affine when None.
        storage: ``"uint8"`` (``scl_slope`` 1/255), ``"uint16"`` (1/65535) or ``"float32"``.

    Raises:
        ValueError: ``array`` is not 4-D or ``storage`` is unknown.
        InputError: bad output name, ``path`` is the reference file, the reference
            does not match, or the values cannot be stored.
        OutputError: the file cannot be written.
    """
    path = Path(path)
    if storage not in _STORAGE:
        raise ValueError(f"storage must be one of {', '.join(_STORAGE)}, got {storage!r}")
    array = np.asarray(array)
    if array.ndim != 4:
        raise ValueError(f"array must be (C, x, y, z), got shape {array.shape}")
    if split_suffix(path)[1] not in NIFTI_SUFFIXES:
        raise InputError(path, "output must be a NIfTI file (.nii.gz or .nii)")
    spatial = tuple(int(n) for n in array.shape[1:])

    header: Any = None
    affine = np.eye(4)
    if reference_path is not None:
        reference_path = Path(reference_path)
        if _same_file(path, reference_path):
            raise InputError(
                path, "refusing to overwrite the reference file; choose another output folder"
            )
        affine, header, reference_shape = _reference_geometry(reference_path)
        if reference_shape != spatial:
            raise InputError(
                reference_path,
                f"shape {reference_shape} does not match the probability map's {spatial}",
            )

    import nibabel as nib

    dtype, scale = _STORAGE[storage]
    data = _to_storage(array, np.dtype(dtype), scale, path, storage)
    img = nib.Nifti1Image(data, affine, header=header)
    img.set_data_dtype(dtype)
    # Fixed scaling (not nibabel's data-dependent choice) so k/255 always means the same.
    img.header.set_slope_inter(1.0 / scale, 0.0)
    img.header["cal_min"] = 0.0
    img.header["cal_max"] = 0.0
    from nibabel.fileholders import FileHolder
    from nibabel.openers import ImageOpener

    try:
        with atomic_path(path) as tmp:
            # nib.save(img, tmp) writes the same bytes but leaves its (gzip) file open
            # when a write fails; this closes it, so a full disk gets its space back.
            with ImageOpener(str(tmp), "wb") as handle:
                holder = FileHolder(fileobj=handle.fobj)
                img.to_file_map({"image": holder, "header": holder})
    except OSError as error:
        raise OutputError(f"{path}: cannot write ({error.strerror or error})") from error


def _same_file(a: Path, b: Path) -> bool:
    try:
        if a.exists() and b.exists():
            return a.samefile(b)
    except OSError:
        pass
    return a.resolve() == b.resolve()


def _reference_geometry(path: Path) -> tuple[np.ndarray, Any, tuple[int, ...]]:
    """Affine, NIfTI header (None for other formats) and spatial shape of a reference."""
    suffix = _check_file(path, LABEL_SUFFIXES)
    if suffix in NIFTI_SUFFIXES:
        img = _load_nifti(path)
        shape = tuple(int(n) for n in img.shape[:3])
        return np.asarray(img.affine, dtype=np.float64), img.header.copy(), shape
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    with _read_errors(path, f"{suffix[1:].upper()} (SimpleITK)"):
        reader.ReadImageInformation()
    if int(reader.GetDimension()) < 3:
        raise InputError(path, "reference image is not 3-D")
    shape = tuple(int(n) for n in reader.GetSize()[:3])
    return _sitk_affine(reader), None, shape


def _to_storage(
    array: np.ndarray, dtype: np.dtype[Any], scale: float, path: Path, storage: str
) -> np.ndarray:
    """``(C, x, y, z)`` probabilities -> ``(x, y, z, C)`` (or ``(x, y, z)``) stored values.

    Works one channel at a time so the only full-size allocation is the output.
    """
    channels = array.shape[0]
    out = np.empty((*array.shape[1:], channels), dtype=dtype, order="F")
    for c in range(channels):
        channel = np.asarray(array[c], dtype=np.float32)
        low, high = float(np.min(channel)), float(np.max(channel))
        if not (np.isfinite(low) and np.isfinite(high)):
            raise InputError(path, f"channel {c} has NaN or infinite values; cannot write them")
        if dtype.kind == "f":
            out[..., c] = channel
            continue
        if low < -_RANGE_TOLERANCE or high > 1.0 + _RANGE_TOLERANCE:
            raise InputError(
                path,
                f"channel {c} has values outside [0, 1] (min {low:.4g}, max {high:.4g}) that "
                f"{storage} cannot store; write probabilities, or use float32 storage",
            )
        scaled = np.multiply(channel, np.float32(scale), dtype=np.float32)
        np.clip(scaled, 0.0, scale, out=scaled)
        np.rint(scaled, out=scaled)
        out[..., c] = scaled
    return out[..., 0] if channels == 1 else out
