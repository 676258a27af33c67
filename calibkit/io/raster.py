"""PNG and TIFF images: 2-D probability maps and label masks (pathology tiles,
X-rays, ultrasound frames), read with SimpleITK as images of one slice.

What a PNG or TIFF pixel means is not all in what SimpleITK returns: it gives a
palette image as RGB colours, a 1-bit TIFF as RGBA, and scales 1-, 2- and 4-bit PNG
values up to 8 bits (a 1-bit 1 reads as 255). So the file's header is read first
(:func:`_raster_pixels`), and decides:

- **Probability maps** hold one value per pixel. An integer code ``k`` means the
  probability ``k / (2**bits - 1)``: ``k / 255`` for 8 bits, ``k / 65535`` for 16
  (float32, correctly rounded, as torchvision's ``ToTensor`` reads 8-bit images);
  PNG has no other way to store a fraction. Float TIFFs are read as stored (float64
  rounded to float32), and a float TIFF with several samples per pixel is a map
  with one channel per sample. Signed or 32-bit integer TIFFs are refused: no
  convention says which code means probability 1.
- **Label masks** hold one value per pixel, read as stored (a 1-bit PNG's 1 is label
  1); a palette (indexed-colour) PNG or TIFF gives its palette indices, as PASCAL
  VOC's label PNGs mean them (read with Pillow).
- Colour (RGB, RGBA, grayscale with alpha or a transparent colour), 1-bit TIFFs and
  white-is-zero TIFFs are refused with the reason, as are palette probability maps.

A multi-page TIFF is 3-D (its pages are slices), as SimpleITK reads it.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from calibkit.errors import InputError
from calibkit.io.formats import split_suffix
from calibkit.io.read_errors import _read_errors
from calibkit.io.simpleitk import _channel_first, _read_sitk, _sitk_affine, _sitk_header

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_TIFF_SIGNATURES = (b"II*\0", b"MM\0*", b"II+\0", b"MM\0+")  # classic and BigTIFF
# PNG colour types and TIFF photometric interpretations that are not plain grayscale.
_PNG_COLOURS = {2: "RGB colour", 3: "palette", 4: "grayscale with alpha", 6: "RGBA colour"}
_TIFF_PHOTOMETRIC = {
    0: "white-is-zero grayscale",
    2: "RGB colour",
    3: "palette",
    4: "transparency mask",
    5: "CMYK colour",
    6: "YCbCr colour",
    8: "CIELab colour",
}
# TIFF tags: BitsPerSample, PhotometricInterpretation, SamplesPerPixel, SampleFormat.
_BITS, _PHOTOMETRIC, _SAMPLES, _SAMPLE_FORMAT = 258, 262, 277, 339
# How to save a map or a mask that is not one value per pixel.
_HINTS = {
    True: (
        "not a probability map of one value per pixel; save it as a grayscale image, or a "
        "multi-class map as .mha or .nrrd with one vector component per class"
    ),
    False: (
        "not a mask of one label value per pixel; save the label values as a grayscale "
        "(or palette) image"
    ),
}


@dataclass(frozen=True)
class _RasterPixels:
    """What a PNG or TIFF stores per pixel, as its header says.

    Attributes:
        format: ``"PNG"`` or ``"TIFF"``.
        colour: ``"grayscale"``, ``"palette"``, or what else the pixels are
            (``"RGB colour"``, ``"grayscale with alpha"``, ...).
        bits: bits per sample.
        samples: samples (values) per pixel.
        kind: numpy kind of the samples: ``"u"``, ``"i"`` or ``"f"``.
        pages: more than one image (a multi-page TIFF, read as 3-D).
        shifted_to: a grayscale PNG's significant bits (its sBIT chunk) when fewer
            than ``bits``: SimpleITK (libpng) then shifts the values right to them.
    """

    format: str
    colour: str
    bits: int
    samples: int
    kind: str
    pages: bool = False
    shifted_to: int | None = None


def _read_raster_prediction(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """The channel-first float32 probabilities ``(C, x, y, z)`` and the affine."""
    pixels = _raster_pixels(path)
    if pixels.colour == "palette":
        raise InputError(
            path,
            f"is a palette (indexed-colour) {pixels.format}, whose pixels are colours, not "
            "probabilities; save the probability map as a grayscale image",
        )
    _check_bits(path, pixels)
    floats = pixels.kind == "f" and pixels.colour in ("grayscale", "RGB colour")
    if pixels.colour != "grayscale" and not floats:
        raise InputError(path, _colour_problem(pixels, prediction=True))
    if pixels.samples > 1 and not floats:
        raise InputError(path, _samples_problem(pixels, prediction=True))
    if pixels.kind != "f" and not (pixels.kind == "u" and pixels.bits <= 16):
        kind = "signed" if pixels.kind == "i" else "unsigned"
        raise InputError(
            path,
            f"stores {pixels.bits}-bit {kind} integers; a {pixels.format} probability map "
            "must store 8- or 16-bit unsigned codes (k/255, k/65535) or floats",
        )
    codes, affine = _read_sitk(path, as_float32=False)
    _check_sample_count(path, pixels, codes, prediction=True)
    return _channel_first(_probabilities(codes), path), affine


def _read_raster_label(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """The label values in ITK's axis order, ``(z, y, x)``, and the affine."""
    pixels = _raster_pixels(path)
    if pixels.colour == "palette":
        return _palette_indices(path, pixels)
    _check_bits(path, pixels)
    if pixels.colour != "grayscale":
        raise InputError(path, _colour_problem(pixels, prediction=False))
    if pixels.samples > 1:
        raise InputError(path, _samples_problem(pixels, prediction=False))
    values, affine = _read_sitk(path, as_float32=False)
    _check_sample_count(path, pixels, values, prediction=False)
    if pixels.format == "PNG" and pixels.bits < 8:
        # libpng scales 1-, 2- and 4-bit values up to 8 bits (k * 255 / (2**bits - 1)).
        values = values // np.uint8(255 // (2**pixels.bits - 1))
    return values, affine


def _probabilities(codes: np.ndarray) -> np.ndarray:
    """Stored codes as float32 probabilities: unsigned ``k / (2**bits - 1)``, floats as stored.

    ``k`` and ``2**bits - 1`` are exact in float32, so one IEEE division gives the
    correctly rounded quotient. 1-, 2- and 4-bit PNG codes arrive scaled to 8 bits
    (``k * 255 / (2**bits - 1)``), which gives the same quotient over 255.
    """
    if codes.dtype.kind == "f":
        return codes.astype(np.float32, copy=False)
    full_scale = np.float32(np.iinfo(codes.dtype).max)
    probabilities: np.ndarray = np.divide(codes, full_scale, dtype=np.float32)
    return probabilities


def _check_bits(path: Path, pixels: _RasterPixels) -> None:
    """Refuse TIFF samples of other than 8, 16, 32 or 64 bits (a 1-bit TIFF reads as RGBA),
    and a PNG whose sBIT chunk makes SimpleITK shift its values."""
    if pixels.shifted_to is not None:
        raise InputError(
            path,
            f"has an sBIT chunk ({pixels.shifted_to} significant bits of {pixels.bits}), "
            "which SimpleITK applies by shifting the values right and other readers ignore; "
            "save it without the sBIT chunk",
        )
    if pixels.format == "TIFF" and pixels.bits not in (8, 16, 32, 64):
        raise InputError(
            path,
            f"stores {pixels.bits}-bit samples, which SimpleITK does not read as numbers "
            "(a 1-bit TIFF reads as RGBA colour); save it with 8 bits per pixel",
        )


def _colour_problem(pixels: _RasterPixels, *, prediction: bool) -> str:
    if pixels.colour == "white-is-zero grayscale":
        return (
            "stores white-is-zero grayscale (TIFF photometric 0), which readers disagree on; "
            "save it as ordinary (black-is-zero) grayscale"
        )
    return (
        f"is a {pixels.format} image in {pixels.colour} ({pixels.samples} values per pixel), "
        f"{_HINTS[prediction]}"
    )


def _samples_problem(pixels: _RasterPixels, *, prediction: bool) -> str:
    return f"stores {pixels.samples} {pixels.bits}-bit values per pixel, {_HINTS[prediction]}"


def _check_sample_count(
    path: Path, pixels: _RasterPixels, array: np.ndarray, *, prediction: bool
) -> None:
    """SimpleITK read as many values per pixel as the header declares (one: no last axis)."""
    read = 1 if array.ndim == 3 else int(array.shape[-1])
    if read != pixels.samples:
        raise InputError(
            path,
            f"declares {pixels.samples} value(s) per pixel but SimpleITK reads {read}, "
            f"{_HINTS[prediction]}",
        )


def _palette_indices(path: Path, pixels: _RasterPixels) -> tuple[np.ndarray, np.ndarray]:
    """A palette image's indices ``(1, y, x)`` (Pillow) and its affine (SimpleITK's header)."""
    from PIL import Image

    affine = _sitk_affine(_sitk_header(path))
    with _read_errors(path, f"{pixels.format} (Pillow)"):
        with Image.open(path) as image:
            pages = int(getattr(image, "n_frames", 1))
            if pages > 1:
                raise InputError(
                    path,
                    f"is a palette TIFF of {pages} pages; a palette label mask "
                    "must be one 2-D image (save a 3-D label map as NIfTI or .mha)",
                )
            if image.mode != "P":
                raise InputError(
                    path, f"is a palette {pixels.format} that Pillow reads as {image.mode}"
                )
            indices = np.asarray(image)
    return indices[np.newaxis], affine


def _raster_pixels(path: Path) -> _RasterPixels:
    """Read what a PNG or TIFF stores per pixel from its header.

    Raises:
        InputError: the file is neither a PNG nor a TIFF, or its header is damaged.
    """
    kind = split_suffix(path)[1][1:].upper()
    with _read_errors(path, kind), path.open("rb") as stream:
        head = stream.read(8)
        try:
            if head == _PNG_SIGNATURE:
                return _png_pixels(stream)
            if head[:4] in _TIFF_SIGNATURES:
                return _tiff_pixels(stream, head)
        except struct.error as error:  # a field cut short
            raise EOFError(f"the header ends early ({error})") from error
    raise InputError(
        path,
        f"is not a PNG or TIFF image (its first bytes are {head[:8]!r}); "
        "re-export or re-download it",
    )


def _png_pixels(stream: BinaryIO) -> _RasterPixels:
    """The IHDR chunk's bit depth and colour type, and the chunks that change what a
    gray value means (tRNS, sBIT) before the image data.

    Every chunk must fit in the file: libpng allocates the length a chunk claims (up to
    2 GiB) before it finds the file too short.
    """
    length, name = struct.unpack(">I4s", _exactly(stream, 8))
    if name != b"IHDR" or length != 13:
        raise ValueError("no IHDR chunk at the start of the PNG")
    _, _, bits, colour_type = struct.unpack(">IIBB", _exactly(stream, 10))
    samples = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}.get(colour_type)
    if samples is None:
        raise ValueError(f"PNG colour type {colour_type} does not exist")
    colour = _PNG_COLOURS.get(colour_type, "grayscale")
    shifted_to: int | None = None
    size = stream.seek(0, 2)
    position = stream.seek(8 + 8 + 13 + 4)
    image_data = False
    while position + 8 <= size:
        length, name = struct.unpack(">I4s", _exactly(stream, 8))
        if position + 12 + length > size:
            raise ValueError(
                f"its {name.decode('latin1')!r} chunk claims {length} bytes, more than the "
                f"{size - position - 12} left in the file"
            )
        image_data = image_data or name in (b"IDAT", b"IEND")
        # A tRNS makes one gray level transparent: SimpleITK reads an alpha channel it
        # then cannot handle.
        if name == b"tRNS" and colour_type == 0 and not image_data:
            colour, samples = "grayscale with a tRNS transparent colour", 2
        if name == b"sBIT" and colour_type == 0 and length >= 1 and not image_data:
            significant = _exactly(stream, 1)[0]
            shifted_to = significant if significant < bits else None
        if name == b"IEND":
            break
        position = stream.seek(position + 12 + length)
    return _RasterPixels("PNG", colour, int(bits), samples, "u", shifted_to=shifted_to)


def _tiff_pixels(stream: BinaryIO, head: bytes) -> _RasterPixels:
    """The first image file directory's sample layout and photometric interpretation."""
    order = "<" if head[:2] == b"II" else ">"
    big = head[2:4] in (b"+\0", b"\0+")
    if big:  # BigTIFF: 8-byte offsets and counts, 20-byte entries
        (offset,) = struct.unpack(order + "Q", _exactly(stream, 8))
        count_format, entry_format, inline = "Q", "HHQ8s", 8
    else:
        offset = struct.unpack(order + "I", head[4:8])[0]
        count_format, entry_format, inline = "H", "HHI4s", 4
    stream.seek(offset)
    (n_entries,) = struct.unpack(order + count_format, _exactly(stream, 8 if big else 2))
    entry_size = struct.calcsize(order + entry_format)
    entries = _exactly(stream, min(n_entries, 4096) * entry_size)
    if n_entries <= 4096:
        stream.seek(offset + (8 if big else 2) + n_entries * entry_size)
        next_page = struct.unpack(order + ("Q" if big else "I"), _exactly(stream, 8 if big else 4))
    else:
        next_page = (0,)
    found: dict[int, int] = {}
    for i in range(min(n_entries, 4096)):
        tag, kind, count, value = struct.unpack_from(order + entry_format, entries, i * entry_size)
        if tag not in (_BITS, _PHOTOMETRIC, _SAMPLES, _SAMPLE_FORMAT) or count < 1:
            continue
        size = 2 if kind == 3 else 4 if kind == 4 else 0  # SHORT or LONG
        if size == 0:
            raise ValueError(f"TIFF tag {tag} has type {kind}, expected SHORT or LONG")
        if count * size > inline:  # the values lie elsewhere; the first one is enough
            where = struct.unpack(order + ("Q" if big else "I"), value[: 8 if big else 4])[0]
            stream.seek(where)
            value = _exactly(stream, size)
        found[tag] = struct.unpack(order + ("H" if size == 2 else "I"), value[:size])[0]
    if _PHOTOMETRIC not in found:
        raise ValueError("the TIFF has no PhotometricInterpretation tag")
    photometric = found[_PHOTOMETRIC]
    colour = "grayscale" if photometric == 1 else _TIFF_PHOTOMETRIC.get(photometric, "")
    if not colour:
        colour = f"photometric {photometric} colour"
    kind = {1: "u", 2: "i", 3: "f"}.get(found.get(_SAMPLE_FORMAT, 1), "")
    if not kind:
        raise ValueError(f"TIFF sample format {found[_SAMPLE_FORMAT]} is not a number type")
    return _RasterPixels(
        "TIFF", colour, found.get(_BITS, 1), found.get(_SAMPLES, 1), kind, next_page[0] != 0
    )


def _exactly(stream: BinaryIO, n: int) -> bytes:
    data = stream.read(n)
    if len(data) < n:
        raise EOFError("the header ends early")
    return data
