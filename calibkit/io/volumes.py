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

import math
import os
import re
import sys
import tempfile
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
# Deflate (gzip, zip, zlib) expands at most 1032-fold (zlib's FAQ): a compressed file
# of n bytes cannot hold more than 1032 n bytes of data.
_DEFLATE_MAX_RATIO = 1032
# A header may claim up to this much data before a .nii.gz's real length is checked.
_UNCHECKED_CLAIM = 64 << 20
# What SimpleITK's MetaImage / NRRD code prints (on the C++ stderr) when it fails
# to read data, while still returning an image of uninitialised memory.
_SITK_FAILURES = re.compile(r"fail|error|cannot|not read|unable|exception", re.IGNORECASE)


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
        OverflowError,  # nibabel: vox_offset inf
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
    return _shorten(reason or type(error).__name__)


def _shorten(reason: str) -> str:
    return reason if len(reason) <= 120 else reason[:117] + "..."


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


def _size_text(n_bytes: int) -> str:
    """``4.0e+15 bytes (3.6 PiB)``."""
    units = ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB")
    power = min(len(units) - 1, max(0, (n_bytes.bit_length() - 1) // 10))
    if power == 0:
        return f"{n_bytes} bytes"
    return f"{n_bytes:.1e} bytes ({n_bytes / 1024**power:.1f} {units[power]})"


def _claim_error(path: Path, what: str, claimed: int, holds: str) -> InputError:
    return InputError(
        path,
        f"header claims {what}: {_size_text(claimed)} of data, but the file holds {holds} "
        "(truncated or corrupt file); re-export or re-download it",
    )


def _check_nifti_claim(path: Path, shape: tuple[int, ...], itemsize: int, offset: int) -> None:
    """Refuse a header whose image cannot fit in the file, before anything is allocated.

    nibabel allocates the claimed size before it reads a byte; a damaged ``dim``
    (32767^3 float32 = 140 TB) would exhaust memory instead of failing.
    ``.nii``: the data must fit between ``vox_offset`` and the end of the file.
    ``.nii.gz``: offset plus data must be at most 1032 times the compressed size; a
    claim over 64 MiB must also match the gzip trailer's length (modulo 2^32) or,
    failing that, the stream's real decompressed length (counted, not stored).
    """
    claimed = math.prod(shape) * itemsize
    what = f"shape {shape} x {itemsize} bytes"
    size = path.stat().st_size
    if not path.name.lower().endswith(".gz"):
        if offset + claimed > size:
            holds = f"{max(0, size - offset)} bytes after its header"
            raise _claim_error(path, what, claimed, holds)
        return
    needed = offset + claimed
    if needed > _DEFLATE_MAX_RATIO * size:
        raise _claim_error(
            path, what, claimed, f"{size} compressed bytes (at most {_size_text(1032 * size)})"
        )
    if needed <= _UNCHECKED_CLAIM:
        return
    with path.open("rb") as stream:
        stream.seek(-4, os.SEEK_END)
        trailer_length = int.from_bytes(stream.read(4), "little")
    if trailer_length == needed % 2**32:
        return
    actual = _inflated_length(path, 0, needed)
    if actual < needed:
        raise _claim_error(
            path, what, claimed, f"{max(0, actual - offset)} bytes after its header (uncompressed)"
        )


def _inflated_length(
    path: Path, start: int, enough: int, wbits: int = 31, limit: int | None = None
) -> int:
    """Decompressed length of the deflate stream(s) from byte ``start`` of a file,
    counted in 1 MiB steps (nothing kept) and only up to ``enough``.

    ``wbits``: 31 for gzip, 47 for zlib or gzip. ``limit``: compressed bytes to read
    at most. Follows further gzip members; bytes after a complete stream that do not
    start a new one end the count (readers differ on such padding; the read itself
    decides).
    """
    total, carry, streams = 0, b"", 0
    left = limit if limit is not None else math.inf
    decompressor = zlib.decompressobj(wbits=wbits)
    with path.open("rb") as stream:
        stream.seek(start)
        while total < enough:
            chunk = decompressor.unconsumed_tail or carry
            if not chunk and left > 0:
                chunk = stream.read(int(min(1 << 20, left)))
                left -= len(chunk)
            carry = b""
            if not chunk:
                break
            try:
                total += len(decompressor.decompress(chunk, 1 << 20))
            except zlib.error:
                if streams:
                    break
                raise
            if decompressor.eof:
                streams += 1
                carry = decompressor.unused_data
                decompressor = zlib.decompressobj(wbits=wbits)
    return total


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
    # Scaling may overflow float32 (scl_slope 1e38): the infinities are then reported
    # by _check_finite as one error, not as numpy's RuntimeWarning lines on stderr.
    with _read_errors(path, "NIfTI"), np.errstate(over="ignore", invalid="ignore"):
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
    from numpy.lib import format as npy

    with _read_errors(path, "nnU-Net .npz"), zipfile.ZipFile(path) as archive:
        info = _checked_npz_member(archive, path)
        with archive.open(info) as member:
            probabilities: np.ndarray = npy.read_array(member, allow_pickle=False)
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
        with np.errstate(over="ignore"):  # beyond float32: inf, refused by _check_finite
            probabilities = probabilities.astype(np.float32)
    return probabilities.transpose(0, 3, 2, 1)


def _checked_npz_member(archive: zipfile.ZipFile, path: Path) -> zipfile.ZipInfo:
    """The ``probabilities.npy`` member, after checking its header; numpy would
    allocate what the header claims before reading the data.

    A damaged header (``(3, 100000, 100000, 100000)``) would exhaust memory. The claim
    must fit in the member's stated size, which for a deflated member is also at
    most 1032 times its compressed size.
    """
    names = archive.namelist()
    if "probabilities.npy" not in names:
        found = ", ".join(repr(name.removesuffix(".npy")) for name in names) or "no arrays"
        if "probabilities" in names:
            found += " (a member without the .npy suffix)"
        raise InputError(
            path,
            f"has no 'probabilities' array (found {found}); export predictions with "
            "nnU-Net's --save_probabilities",
        )
    info = archive.getinfo("probabilities.npy")
    with archive.open(info) as member:
        shape, dtype, header_end = _npy_header(member)
    if dtype.hasobject or dtype.kind not in "biuf":
        raise InputError(path, f"'probabilities' stores {dtype} values; expected floats")
    stored = info.compress_size
    if info.compress_type != zipfile.ZIP_STORED:
        stored *= _DEFLATE_MAX_RATIO
    available = max(0, min(info.file_size, stored) - header_end)
    claimed = math.prod(shape) * dtype.itemsize
    if claimed > available:
        raise _claim_error(
            path,
            f"'probabilities' of shape {shape} x {dtype.itemsize} bytes",
            claimed,
            f"{available} bytes for it",
        )
    return info


def _npy_header(member: Any) -> tuple[tuple[int, ...], np.dtype[Any], int]:
    """Shape, dtype and length of a ``.npy`` member's header (numpy's own parser)."""
    from numpy.lib import format as npy

    try:
        version = npy.read_magic(member)
        if version == (1, 0):
            shape, _, dtype = npy.read_array_header_1_0(member)
        else:
            shape, _, dtype = npy.read_array_header_2_0(member)
    except (OSError, EOFError, zlib.error, zipfile.BadZipFile):
        raise  # reading the archive failed: reported as such by _read_errors
    except Exception as error:  # numpy's header parser raises tokenize.TokenError, etc.
        raise ValueError(f"corrupt .npy header of 'probabilities' ({error})") from error
    return tuple(int(n) for n in shape), np.dtype(dtype), int(member.tell())


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

    kind = f"{split_suffix(path)[1][1:].upper()} (SimpleITK)"
    with _read_errors(path, kind):
        if path.suffix.lower() in (".mha", ".mhd"):
            _check_metaimage_dimension(path)
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        with _sitk_messages(path, kind):
            reader.ReadImageInformation()
        dimension = int(reader.GetDimension())
        components = int(reader.GetNumberOfComponents())
        size = tuple(int(n) for n in reader.GetSize())
        if dimension not in (3, 4) or (dimension == 4 and components > 1 and size[3] != 1):
            layout = f"{dimension}-D image of size {size} with {components} component(s)"
            raise InputError(
                path, f"{layout} is not supported; expected a 3-D scalar or vector image"
            )
        pixel_type = sitk.GetPixelIDValueAsString(reader.GetPixelID())
        _check_sitk_claim(path, size, components, pixel_type)
        with _sitk_messages(path, kind):
            image = reader.Execute()
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


@contextmanager
def _sitk_messages(path: Path, kind: str) -> Iterator[None]:
    """Catch what SimpleITK's C++ readers print on stderr while reading ``path``.

    MetaImage and NRRD report damaged data ("Uncompress failed", "data not read
    completely") only by printing it, and then return an image of uninitialised
    memory; when they do raise, the exception says less than the printed lines.
    Such a message makes the read fail with that message; anything else printed
    meanwhile (a progress bar's refresh, say) is passed on.
    """
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):  # no usable stderr: nothing to catch
        yield
        return
    error: RuntimeError | None = None
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        except RuntimeError as raised:  # SimpleITK's exceptions
            error = raised
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        captured.seek(0)
        text = captured.read().decode("utf-8", "replace")
    if _SITK_FAILURES.search(text):
        reason = " ".join(line.strip() for line in text.splitlines() if line.strip())
        raise InputError(
            path,
            f"cannot be read as {kind} (truncated or corrupt file: {_shorten(reason)}); "
            "re-export or re-download it",
        ) from error
    if text:
        sys.stderr.write(text)
    if error is not None:
        raise error


def _check_metaimage_dimension(path: Path) -> None:
    """Refuse an ``NDims`` that SimpleITK cannot survive (-3 or 99999999999 crash it)."""
    with path.open("rb") as stream:
        head = stream.read(1 << 16).decode("latin1")
    ndims = re.search(r"^\s*NDims\s*=\s*([+-]?\d+)", head, re.M)
    if ndims is not None and not 1 <= int(ndims.group(1)) <= 5:
        raise InputError(
            path,
            f"header gives NDims = {ndims.group(1)}, not a number of dimensions (corrupt "
            "header); expected a 3-D scalar or vector image",
        )


def _check_sitk_claim(path: Path, size: tuple[int, ...], components: int, pixel_type: str) -> None:
    """Refuse a header whose image cannot fit in its data, before ITK allocates it."""
    bits = re.search(r"(\d+)-bit", pixel_type)
    itemsize = int(bits.group(1)) // 8 if bits else 8
    if "complex" in pixel_type:
        itemsize *= 2
    claimed = math.prod(size) * components * itemsize
    bound = _sitk_data_bound(path, claimed)
    if bound is not None and claimed > bound[0]:
        raise _claim_error(
            path, f"size {size} x {components} x {itemsize} bytes", claimed, bound[1]
        )


def _sitk_data_bound(path: Path, claimed: int) -> tuple[int, str] | None:
    """Most data bytes a MetaImage or NRRD file (or its data file) can hold, and how
    that reads in a message; None when the header does not tell (file lists, bzip2).

    Compressed MetaImage data are inflated (counted, nothing kept, at most
    ``claimed`` bytes); other compressed data are bounded by 1032 times their size.
    """
    with path.open("rb") as stream:
        head = stream.read(1 << 16).decode("latin1")
    if path.suffix.lower() in (".mha", ".mhd"):
        data_file = re.search(r"^\s*ElementDataFile\s*=[ \t]*(.*?)[ \t]*\r?$", head, re.M)
        # MetaIO reads a CompressedData value starting with T, t or 1 as true ("Tpue"
        # too) and anything else as false.
        flag = re.search(r"^\s*CompressedData\s*=\s*(\S*)", head, re.M)
        compressed = flag is not None and flag.group(1).startswith(("T", "t", "1"))
        if data_file is None:
            return None
        name = data_file.group(1)
        local = name.upper() == "LOCAL"
        header_end = head.find("\n", data_file.end()) + 1
    else:  # NRRD: the header ends at the first empty line
        blank = re.search(r"\r?\n\r?\n", head)
        encoding = re.search(r"^encoding:\s*(\w+)", head, re.M | re.I)
        data_file = re.search(r"^data ?file:\s*(.*?)\s*$", head, re.M | re.I)
        codec = encoding.group(1).lower() if encoding else "raw"
        if codec not in ("raw", "gzip", "gz") or (data_file is None and blank is None):
            return None
        compressed = codec != "raw"
        local = data_file is None
        name = "" if data_file is None else data_file.group(1)
        header_end = blank.end() if blank is not None else 0
    if local:
        source, start, where = path, header_end, "after its header"
    else:
        source, start, where = path.parent / name, 0, f"in {name}"
        if " " in name.strip() or "%" in name or name.upper() == "LIST":
            return None  # a file pattern or list
        if not source.is_file():  # a device or pipe could block, or never end
            raise InputError(path, f"its data file {name!r} is missing or not a regular file")
    if compressed and path.suffix.lower() in (".mha", ".mhd"):
        # MetaIO inflates what the stream gives and silently leaves the rest of the
        # image uninitialised: the stream must really hold the image.
        # MetaIO reads CompressedDataSize bytes when the header gives a positive one.
        given = re.search(r"^\s*CompressedDataSize\s*=\s*(\d+)", head, re.M)
        limit = int(given.group(1)) if given and int(given.group(1)) > 0 else None
        actual = _inflated_length(source, start, claimed, wbits=47, limit=limit)
        return actual, f"{actual} bytes {where} (uncompressed)"
    stored = max(0, source.stat().st_size - start)
    if compressed:
        bound = _DEFLATE_MAX_RATIO * stored
        return bound, f"{stored} compressed bytes {where} (at most {_size_text(bound)})"
    return stored, f"{stored} bytes {where}"


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
