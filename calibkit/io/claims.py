"""What a file's header claims against what the file holds, checked before anything
is allocated.

nibabel, numpy and ITK allocate the size a header claims before they read a byte:
a damaged header (a NIfTI ``dim`` of 32767^3, an ``.npy`` shape of 10^15 voxels, an
ITK size beyond its data) would exhaust memory instead of failing, and an ``NDims``
out of range crashes SimpleITK. Each check here bounds the claim by the file's size
(for compressed data, by its inflated length or the deflate ratio) and raises an
InputError that names both.
"""

from __future__ import annotations

import math
import os
import re
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from calibkit.errors import InputError
from calibkit.io.formats import RASTER_SUFFIXES

# Deflate (gzip, zip, zlib) expands at most 1032-fold (zlib's FAQ): a compressed file
# of n bytes cannot hold more than 1032 n bytes of data.
_DEFLATE_MAX_RATIO = 1032
# A header may claim up to this much data before a .nii.gz's real length is checked.
_UNCHECKED_CLAIM = 64 << 20
# PNG and TIFF data may be compressed: PNG's deflate expands at most 1032-fold, TIFF's
# LZW about 1400-fold (12-bit codes for strings that grow by one byte a code, before
# its table of 4096 entries is full); 4096 bounds both.
_RASTER_MAX_RATIO = 4096


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


def _check_metaimage_dimension(path: Path) -> None:
    """Refuse an ``NDims`` that SimpleITK cannot survive (-3 or 99999999999 crash it)."""
    with path.open("rb") as stream:
        head = stream.read(1 << 16).decode("latin1")
    ndims = re.search(r"^\s*NDims\s*=\s*([+-]?\d+)", head, re.M)
    if ndims is not None and not 1 <= int(ndims.group(1)) <= 5:
        raise InputError(
            path,
            f"header gives NDims = {ndims.group(1)}, not a number of dimensions (corrupt "
            "header); expected a 2-D or 3-D scalar or vector image",
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
    """Most data bytes a MetaImage, NRRD, PNG or TIFF file (or its data file) can hold,
    and how that reads in a message; None when the header does not tell (file lists,
    bzip2).

    Compressed MetaImage data are inflated (counted, nothing kept, at most
    ``claimed`` bytes); other compressed data are bounded by 1032 times their size.
    """
    if path.suffix.lower() in RASTER_SUFFIXES:
        stored = path.stat().st_size
        bound = _RASTER_MAX_RATIO * stored
        return bound, f"{stored} bytes (at most {_size_text(bound)} decompressed)"
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
