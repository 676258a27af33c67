"""Read probability maps and label maps; write probability maps.

Conventions (SPEC §2):

- A prediction is returned channel-first, float32, shape ``(C, x, y, z)``.
- A label map is returned as integers, shape ``(x, y, z)``: 8- and 16-bit storage as
  stored, anything else as int16 (int32 when needed).
- ``affine`` maps voxel indices to world millimetres in NIfTI's RAS+ convention;
  formats without geometry (nnU-Net ``.npz``) have ``affine=None``.

NIfTI files are read with nibabel; ``.mha`` / ``.mhd`` / ``.nrrd`` / ``.nhdr`` with
SimpleITK (imported only when such a file is read); ``.npz`` with numpy.
"""

from __future__ import annotations

import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from calibkit.errors import InputError, OutputError
from calibkit.io.atomic import atomic_path

__all__ = [
    "LABEL_SUFFIXES",
    "NIFTI_SUFFIXES",
    "PREDICTION_SUFFIXES",
    "SITK_SUFFIXES",
    "Volume",
    "check_geometry",
    "read_label",
    "read_prediction",
    "split_suffix",
    "write_prediction",
]

NIFTI_SUFFIXES = (".nii.gz", ".nii")
SITK_SUFFIXES = (".mha", ".mhd", ".nrrd", ".nhdr")
PREDICTION_SUFFIXES = (*NIFTI_SUFFIXES, *SITK_SUFFIXES, ".npz")
LABEL_SUFFIXES = (*NIFTI_SUFFIXES, *SITK_SUFFIXES)

_KNOWN_SUFFIXES = sorted(set(PREDICTION_SUFFIXES), key=len, reverse=True)
_STORAGE = {
    "uint8": (np.uint8, 255.0),
    "uint16": (np.uint16, 65535.0),
    "float32": (np.float32, 1.0),
}
# Values a little outside [0, 1] (float rounding upstream) are clipped, not rejected.
_RANGE_TOLERANCE = 1e-4
_PREDICTION_LAYOUTS = "expected (x, y, z), (x, y, z, C) or (x, y, z, 1, C)"


@cache
def _read_errors_types() -> tuple[type[BaseException], ...]:
    """Exceptions that mean "this file is damaged or not what its name says".

    nibabel is imported by the readers and writers only: the process that hands
    cases to ``evaluate``'s workers never reads a volume and need not import it.
    """
    from nibabel.filebasedimages import ImageFileError
    from nibabel.spatialimages import HeaderDataError
    from nibabel.wrapstruct import WrapStructError

    return (
        OSError,  # includes gzip.BadGzipFile and nibabel's "Expected N bytes" truncation
        EOFError,
        zlib.error,
        ValueError,
        ImageFileError,
        HeaderDataError,
        WrapStructError,
        RuntimeError,  # SimpleITK
        zipfile.BadZipFile,
    )


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
    """

    array: np.ndarray
    affine: np.ndarray | None
    path: Path
    value_range: tuple[float, float] | None = None


def split_suffix(path: Path | str) -> tuple[str, str]:
    """Split a file name into its stem and volume suffix.

    Known suffixes (``PREDICTION_SUFFIXES``) match case-insensitively and are returned
    lower-case; ``.nii.gz`` counts as one suffix. Unknown names split at the last dot.

    Args:
        path: a file path or name.

    Returns:
        ``(stem, suffix)``.

    Example:
        >>> split_suffix(Path("BraTS/CASE_001_seg.NII.GZ"))
        ('CASE_001_seg', '.nii.gz')
    """
    name = Path(path).name
    lower = name.lower()
    for suffix in _KNOWN_SUFFIXES:
        if lower.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)], suffix
    return Path(name).stem, Path(name).suffix.lower()


# --------------------------------------------------------------------------- reading


def read_prediction(path: Path | str) -> Volume:
    """Read a probability (or logit) map as channel-first float32.

    NIfTI: 3-D ``(x, y, z)`` is one channel, 4-D ``(x, y, z, C)``, 5-D ``(x, y, z, 1, C)``;
    ``scl_slope`` / ``scl_inter`` are applied (uint8 ``k`` with slope 1/255 gives
    float32 ``k/255``, correctly rounded). SimpleITK formats: scalar or vector images.
    nnU-Net ``.npz``: array ``probabilities`` with axes ``(C, z, y, x)``.

    Args:
        path: the prediction file.

    Returns:
        A Volume whose array is float32 ``(C, x, y, z)`` (a view; not necessarily
        C-contiguous).

    Raises:
        InputError: the file is missing, unreadable, has an unsupported layout or
            holds NaN / infinite values.
    """
    path = Path(path)
    suffix = _check_file(path, PREDICTION_SUFFIXES)
    if suffix in NIFTI_SUFFIXES:
        array, affine = _read_nifti_prediction(path)
    elif suffix == ".npz":
        array, affine = _read_npz_prediction(path), None
    else:
        array, affine = _read_sitk_prediction(path)
    value_range = _check_finite(array, path)
    return Volume(array=array, affine=affine, path=path, value_range=value_range)


def read_label(path: Path | str) -> Volume:
    """Read an integer label map.

    Float storage is accepted when every value is an integer. Trailing singleton
    dimensions (``(x, y, z, 1)``) are dropped.

    Args:
        path: the label file (NIfTI or a SimpleITK format).

    Returns:
        A Volume whose array is ``(x, y, z)``: 8- and 16-bit integers as stored, other
        storage as int16 (int32 when values need it).

    Raises:
        InputError: the file is missing or unreadable, is not 3-D, or holds values
            that are not integers.
    """
    path = Path(path)
    suffix = _check_file(path, LABEL_SUFFIXES)
    if suffix in NIFTI_SUFFIXES:
        img = _load_nifti(path)
        shape = tuple(int(n) for n in img.shape)
        _check_label_shape(shape, path)
        with _read_errors(path, "NIfTI"):
            raw = np.asanyarray(img.dataobj)
        affine = np.asarray(img.affine, dtype=np.float64)
    else:
        raw, affine = _read_sitk(path, as_float32=False)
        raw = raw.transpose(2, 1, 0) if raw.ndim == 3 else raw.transpose(2, 1, 0, 3)
        _check_label_shape(tuple(int(n) for n in raw.shape), path)
    raw = raw[(...,) + (0,) * (raw.ndim - 3)]
    return Volume(array=_to_label_array(raw, path), affine=affine, path=path)


def _check_file(path: Path, allowed: tuple[str, ...]) -> str:
    """Return the file's suffix after checking it exists, is non-empty and is allowed."""
    suffix = split_suffix(path)[1]
    if suffix not in allowed:
        raise InputError(
            path, f"unsupported file type '{suffix}'; expected one of {', '.join(allowed)}"
        )
    if not path.exists():
        raise InputError(path, "file not found; check the path")
    if path.is_dir():
        raise InputError(path, "is a folder, expected a file")
    if path.stat().st_size == 0:
        raise InputError(path, "file is empty (0 bytes); re-export or re-download it")
    return suffix


@contextmanager
def _read_errors(path: Path, kind: str) -> Iterator[None]:
    """Turn a reader's low-level exception into one InputError line."""
    try:
        yield
    except InputError:
        raise
    except _read_errors_types() as error:
        raise InputError(
            path,
            f"cannot be read as {kind} (truncated or corrupt file: {_short_reason(error, path)}); "
            "re-export or re-download it",
        ) from error


def _short_reason(error: BaseException, path: Path) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if isinstance(error, RuntimeError) and len(lines) > 1:
        # SimpleITK: "Exception thrown in ...: file.cxx:99:\nITK ERROR: Reader(0x..): reason"
        lines = [line.split("): ", 1)[-1].split("ERROR: ", 1)[-1] for line in lines[1:]]
    reason = " ".join(lines).replace(f'"{path}"', "file").replace(str(path), "file")
    if not reason:
        reason = type(error).__name__
    return reason if len(reason) <= 120 else reason[:117] + "..."


def _load_nifti(path: Path) -> Any:
    import nibabel as nib

    with _read_errors(path, "NIfTI"):
        # keep_file_open: per-channel reads of a .nii.gz continue from the last position
        # instead of decompressing from the start each time.
        return nib.load(path, mmap=False, keep_file_open=True)


def _read_nifti_prediction(path: Path) -> tuple[np.ndarray, np.ndarray]:
    img = _load_nifti(path)
    shape = tuple(int(n) for n in img.shape)
    ndim = len(shape)
    if ndim == 5 and shape[3] != 1:
        raise InputError(
            path,
            f"5-D image of shape {shape} has {shape[3]} in its 4th dimension; "
            f"{_PREDICTION_LAYOUTS}",
        )
    if ndim not in (3, 4, 5):
        raise InputError(
            path, f"{ndim}-D image of shape {shape} cannot be a prediction; {_PREDICTION_LAYOUTS}"
        )
    stored = np.dtype(img.get_data_dtype())
    if stored.kind not in "biuf":
        raise InputError(path, f"stores {stored} values; expected float or integer probabilities")
    with _read_errors(path, "NIfTI"):
        if ndim > 3 and stored.itemsize > 4:
            # float64 / int64 storage: read one channel at a time so that no
            # float64 copy of the whole volume exists at once.
            channels = shape[-1]
            data = np.empty((*shape[:3], channels), dtype=np.float32, order="F")
            lead = (slice(None),) * 3 + ((0,) if ndim == 5 else ())
            for c in range(channels):
                data[..., c] = img.dataobj[(*lead, c)]
        else:
            # Not get_fdata(dtype=float32): nibabel keeps the slope as a Python float,
            # so with numpy 2 it scales uint8 data through a float64 copy of the volume.
            raw = np.asarray(img.dataobj.get_unscaled())
            data = _scale_to_float32(raw, float(img.dataobj.slope), float(img.dataobj.inter))
            if ndim == 5:
                data = data[:, :, :, 0, :]
    array = data[np.newaxis] if ndim == 3 else np.moveaxis(data, -1, 0)
    return array, np.asarray(img.affine, dtype=np.float64)


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


def _read_npz_prediction(path: Path) -> np.ndarray:
    with _read_errors(path, "nnU-Net .npz"):
        with np.load(path, allow_pickle=False) as archive:
            keys = list(archive.files)
            if "probabilities" not in keys:
                found = ", ".join(repr(k) for k in keys) or "no arrays"
                raise InputError(
                    path,
                    f"has no 'probabilities' array (found {found}); export predictions with "
                    "nnU-Net's --save_probabilities",
                )
            probabilities: np.ndarray = archive["probabilities"]
    if probabilities.ndim != 4:
        raise InputError(
            path,
            f"'probabilities' has shape {probabilities.shape}; expected 4-D (C, z, y, x) "
            "as nnU-Net writes it",
        )
    if probabilities.dtype.kind not in "biuf":
        raise InputError(
            path, f"'probabilities' stores {probabilities.dtype} values; expected floats"
        )
    if probabilities.dtype != np.dtype(np.float32):
        probabilities = probabilities.astype(np.float32)
    return probabilities.transpose(0, 3, 2, 1)


def _read_sitk_prediction(path: Path) -> tuple[np.ndarray, np.ndarray]:
    array, affine = _read_sitk(path, as_float32=True)
    if array.ndim == 3:  # scalar (z, y, x)
        return array.transpose(2, 1, 0)[np.newaxis], affine
    if array.ndim == 4:  # (z, y, x, C)
        return array.transpose(3, 2, 1, 0), affine
    raise InputError(path, f"image of shape {array.shape} cannot be a prediction")


def _read_sitk(path: Path, *, as_float32: bool) -> tuple[np.ndarray, np.ndarray]:
    """Read with SimpleITK; return the numpy array in ITK's reversed axis order.

    3-D images give ``(z, y, x)``, vector images ``(z, y, x, C)``; a 4-D scalar image
    ``(C, z, y, x)`` is returned as ``(z, y, x, C)`` so that callers see one layout.
    """
    import SimpleITK as sitk

    with _read_errors(path, f"{split_suffix(path)[1][1:].upper()} (SimpleITK)"):
        image = sitk.ReadImage(str(path))
        dimension = int(image.GetDimension())
        components = int(image.GetNumberOfComponentsPerPixel())
        size = tuple(int(n) for n in image.GetSize())
        if dimension not in (3, 4) or (dimension == 4 and components > 1 and size[3] != 1):
            layout = f"{dimension}-D image of size {size} with {components} component(s)"
            raise InputError(
                path, f"{layout} is not supported; expected a 3-D scalar or vector image"
            )
        if as_float32:
            target = sitk.sitkVectorFloat32 if components > 1 else sitk.sitkFloat32
            if image.GetPixelID() != target:
                image = sitk.Cast(image, target)
        affine = _sitk_affine(image)
        array = sitk.GetArrayFromImage(image)
    del image
    if dimension == 4:
        array = array[0] if components > 1 else np.moveaxis(array, 0, -1)
    return array, affine


def _sitk_affine(image: Any) -> np.ndarray:
    """RAS+ voxel-to-world affine from an ITK image (or reader) in LPS+."""
    dimension = int(image.GetDimension())
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(dimension, dimension)
    spacing = np.asarray(image.GetSpacing(), dtype=np.float64)[:3]
    affine = np.eye(4)
    affine[:3, :3] = direction[:3, :3] * spacing
    affine[:3, 3] = np.asarray(image.GetOrigin(), dtype=np.float64)[:3]
    affine[:2] *= -1.0  # LPS -> RAS
    return affine


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
    if len(shape) < 3 or any(n != 1 for n in shape[3:]):
        raise InputError(
            path, f"label map has shape {shape}; expected a 3-D (x, y, z) integer label map"
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
            example = slab[bad].flat[0]
            raise InputError(
                path,
                f"label map has non-integer values (e.g. {example:g}); labels must be integers "
                "(re-save it with an integer data type)",
            )
        if not np.isfinite(slab).all():
            raise InputError(path, "label map has infinite values; labels must be integers")


# --------------------------------------------------------------------------- geometry


def check_geometry(pred: Volume, label: Volume, tolerance_mm: float = 1e-3) -> str | None:
    """Check that a prediction lies on its label's voxel grid.

    Args:
        pred: prediction, array ``(C, x, y, z)``.
        label: label map, array ``(x, y, z)``.
        tolerance_mm: largest accepted absolute difference between affine entries.

    Returns:
        None when the geometry agrees (or either file has no affine), else a
        one-line message; the caller decides whether it is a warning or an error.

    Raises:
        InputError: the spatial shapes differ (never acceptable).
    """
    spatial = tuple(int(n) for n in pred.array.shape[1:])
    label_shape = tuple(int(n) for n in label.array.shape)
    if spatial != label_shape:
        raise InputError(
            pred.path,
            f"shape {spatial} does not match label {label.path} shape {label_shape}; "
            "predictions must be on the label's voxel grid (resample them first)",
        )
    if pred.affine is None or label.affine is None:
        return None
    difference = float(np.max(np.abs(pred.affine - label.affine)))
    if not difference <= tolerance_mm:  # also catches NaN
        return (
            f"affine differs from label {label.path} by up to {difference:.4g} mm "
            "(use --ignore-geometry to accept)"
        )
    return None


# --------------------------------------------------------------------------- writing


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
