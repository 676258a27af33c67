"""Write a probability map as NIfTI (or, for a 2-D map, PNG / TIFF), atomically, on a
reference file's geometry."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from calibkit.errors import InputError, OutputError
from calibkit.io.atomic import atomic_path, atomic_write_bytes
from calibkit.io.formats import (
    LABEL_SUFFIXES,
    NIFTI_SUFFIXES,
    RASTER_SUFFIXES,
    _check_file,
    split_suffix,
)
from calibkit.io.nifti import _load_nifti
from calibkit.io.raster import _raster_pixels
from calibkit.io.simpleitk import _sitk_affine, _sitk_header

__all__ = ["rewrite_storage", "rewrite_suffix", "write_prediction"]

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
    """Write a probability map as NIfTI (or a 2-D map as PNG / TIFF), atomically.

    Args:
        path: output ``.nii.gz`` or ``.nii`` file; for a one-channel 2-D map (z = 1)
            also ``.png`` (8- or 16-bit codes) or ``.tif`` / ``.tiff`` (deflate).
        array: ``(C, x, y, z)`` probabilities. Written as ``(x, y, z, C)``, or
            ``(x, y, z)`` when C is 1; on a 2-D reference as a 2-D NIfTI ``(x, y)`` or
            ``(x, y, 1, C)``. PNG and TIFF get the one channel's ``(x, y)`` plane.
        reference_path: file whose affine (and, for NIfTI, header) the output gets;
            identity affine when None. A TIFF output gets its pixel spacing.
        storage: ``"uint8"`` (``scl_slope`` 1/255; PNG / TIFF code ``k`` for ``k/255``),
            ``"uint16"`` (1/65535) or ``"float32"`` (not in PNG).

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
    suffix = split_suffix(path)[1]
    if suffix not in (*NIFTI_SUFFIXES, *RASTER_SUFFIXES):
        raise InputError(
            path, "output must be a NIfTI file (.nii.gz or .nii), or PNG / TIFF for a 2-D map"
        )
    spatial = tuple(int(n) for n in array.shape[1:])

    header: Any = None
    affine = np.eye(4)
    two_d = False
    if reference_path is not None:
        reference_path = Path(reference_path)
        if _same_file(path, reference_path):
            raise InputError(
                path, "refusing to overwrite the reference file; choose another output folder"
            )
        affine, header, reference_shape, two_d = _reference_geometry(reference_path)
        if reference_shape != spatial:
            raise InputError(
                reference_path,
                f"shape {reference_shape} does not match the probability map's {spatial}",
            )

    dtype, scale = _STORAGE[storage]
    if suffix in RASTER_SUFFIXES:
        _write_raster(path, array, affine, np.dtype(dtype), scale, storage)
        return

    import nibabel as nib

    data = _to_storage(array, np.dtype(dtype), scale, path, storage)
    if two_d and data.ndim == 3:  # a 2-D map stays 2-D: (x, y); with channels (x, y, 1, C)
        data = data[:, :, 0]
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


def rewrite_suffix(path: Path | str) -> str:
    """The file type that a new version of the prediction file ``path`` is written as.

    Its own for NIfTI and PNG, and for a TIFF of one value per pixel on one page;
    ``.nii.gz`` for the rest (MetaImage, NRRD, several channels or pages in a TIFF).

    Example:
        >>> rewrite_suffix("case_0001.mha")
        '.nii.gz'
    """
    path = Path(path)
    suffix = split_suffix(path)[1]
    if suffix in NIFTI_SUFFIXES or suffix == ".png":
        return suffix
    if suffix in RASTER_SUFFIXES:
        pixels = _raster_pixels(path)
        if pixels.samples == 1 and not pixels.pages:
            return suffix
    return ".nii.gz"


def rewrite_storage(path: Path | str) -> str:
    """The ``write_prediction`` storage that keeps the precision of the prediction ``path``.

    ``uint8`` for 8-bit (and 1-, 2-, 4-bit PNG) integers, ``uint16`` for other NIfTI
    integers and 16-bit PNG / TIFF, ``float32`` for floats and other formats.
    """
    path = Path(path)
    suffix = split_suffix(path)[1]
    if suffix in RASTER_SUFFIXES:
        pixels = _raster_pixels(path)
        if pixels.kind == "f" or pixels.bits > 16:
            return "float32"
        return "uint8" if pixels.bits <= 8 else "uint16"
    if suffix not in NIFTI_SUFFIXES:
        return "float32"
    import nibabel as nib

    image: Any = nib.load(path)
    dtype = np.dtype(image.get_data_dtype())
    if dtype == np.uint8:
        return "uint8"
    if dtype.kind in "iu":
        return "uint16"
    return "float32"


def _same_file(a: Path, b: Path) -> bool:
    try:
        if a.exists() and b.exists():
            return a.samefile(b)
    except OSError:
        pass
    return a.resolve() == b.resolve()


def _reference_geometry(path: Path) -> tuple[np.ndarray, Any, tuple[int, ...], bool]:
    """Affine, NIfTI header (None for other formats), spatial shape (a 2-D image's as
    ``(x, y, 1)``) of a reference, and whether it is a 2-D image."""
    suffix = _check_file(path, LABEL_SUFFIXES)
    if suffix in NIFTI_SUFFIXES:
        img = _load_nifti(path)
        dimension = len(img.shape)
        shape = tuple(int(n) for n in img.shape[:3]) + (1,) * max(0, 3 - dimension)
        affine = np.asarray(img.affine, dtype=np.float64)
        return affine, img.header.copy(), shape, dimension == 2
    reader = _sitk_header(path)
    dimension = int(reader.GetDimension())
    if dimension < 2:
        raise InputError(path, "reference image is not 2-D or 3-D")
    shape = tuple(int(n) for n in reader.GetSize()[:3]) + (1,) * max(0, 3 - dimension)
    return _sitk_affine(reader), None, shape, dimension == 2


def _write_raster(
    path: Path,
    array: np.ndarray,
    affine: np.ndarray,
    dtype: np.dtype[Any],
    scale: float,
    storage: str,
) -> None:
    """Write a one-channel 2-D map as PNG or TIFF (encoded by Pillow in memory, then
    written atomically, so that a write fails as every other write does).

    The affine's x and y voxel size is kept as SimpleITK reads it back: a TIFF's
    resolution (pixels per cm), a PNG's sCAL chunk (written as SimpleITK writes it).
    """
    channels, _, _, depth = array.shape
    kind = "PNG" if path.suffix.lower() == ".png" else "TIFF"
    if channels != 1 or depth != 1:
        raise InputError(
            path,
            f"a {kind} holds one 2-D channel, but the map has {channels} channel(s) and "
            f"{depth} slice(s); write it as NIfTI (.nii.gz)",
        )
    if kind == "PNG" and dtype.kind == "f":
        raise InputError(path, "PNG cannot store float32 values; use uint8 or uint16 storage")
    import io

    from PIL import Image

    plane = _to_storage(array, dtype, scale, path, storage)[:, :, 0].T  # (y, x): rows first
    image = Image.fromarray(np.ascontiguousarray(plane))
    options: dict[str, Any] = {}
    spacing = np.linalg.norm(affine[:3, :2], axis=0)
    keep = bool(np.all(np.isfinite(spacing)) and np.all(spacing > 0) and np.any(spacing != 1))
    if kind == "TIFF":
        options["compression"] = "tiff_deflate"
        if keep:
            options.update(
                resolution_unit=3,  # centimetre
                x_resolution=10.0 / float(spacing[0]),
                y_resolution=10.0 / float(spacing[1]),
            )
    encoded = io.BytesIO()
    image.save(encoded, format=kind, **options)
    data = encoded.getvalue()
    if kind == "PNG" and keep:
        # sCAL as SimpleITK writes it (unit byte 1, then x and y as text, which it
        # reads as millimetres), right after the 33 bytes of signature and IHDR;
        # Pillow writes no sCAL.
        text = b"\x01" + f"{float(spacing[0])!r}\0{float(spacing[1])!r}".encode("ascii")
        body = b"sCAL" + text
        chunk = struct.pack(">I", len(text)) + body + struct.pack(">I", zlib.crc32(body))
        data = data[:33] + chunk + data[33:]
    atomic_write_bytes(path, data)


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
