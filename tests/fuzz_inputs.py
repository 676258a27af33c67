"""Seeded mutations of valid prediction / label files, and an independent oracle.

Shared by ``tests/test_fuzz_readers.py`` (a small count in the normal suite) and
``benchmarks/fuzz_readers.py`` (a large count). One *trial* is a format and a seed:
:func:`make_trial` writes a valid two-case data set in that format and spoils one
file with one seeded mutation; :func:`check_trial` runs ``calibkit evaluate`` (or
``fit-temperature``) in-process on it and returns the problems found (none when the
command either refused with one line naming a case file, or succeeded with the
numbers of an evaluation of the data an independent decoder reads).

The oracle decodes with nibabel / numpy / SimpleITK directly (``get_fdata``,
``np.load``, ``ReadImage``), after its own size check so that it cannot be the one to
allocate a "memory bomb", re-encodes what it read as a clean float32 / int32 NIfTI
and evaluates that. calibkit must succeed exactly when the clean copy does, with the
same numbers.
"""

from __future__ import annotations

import gzip
import io
import json
import logging
import math
import os
import random
import re
import struct
import sys
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

FORMATS = ("nii", "nii.gz", "npz", "mha", "png")
SHAPE = (5, 6, 7)  # (x, y, z)
PLANE = (9, 7)  # (x, y) of the 2-D PNG data set: one-channel 8-bit codes k (k / 255)
CHANNELS = 3
CASES = ("case0", "case1")
# The oracle refuses to decode more than this (the data sets are a few kB).
ORACLE_LIMIT = 64 << 20

# NIfTI-1 header fields: (offset, struct format, count).
NIFTI_FIELDS: dict[str, tuple[int, str, int]] = {
    "sizeof_hdr": (0, "i", 1),
    "dim": (40, "h", 8),
    "intent_code": (68, "h", 1),
    "datatype": (70, "h", 1),
    "bitpix": (72, "h", 1),
    "pixdim": (76, "f", 8),
    "vox_offset": (108, "f", 1),
    "scl_slope": (112, "f", 1),
    "scl_inter": (116, "f", 1),
    "qform_code": (252, "h", 1),
    "sform_code": (254, "h", 1),
    "quatern": (256, "f", 6),
    "srow": (280, "f", 12),
    "magic": (344, "4s", 1),
}
EXTREME_INTS = (0, -1, 1, 2, 3, 4, 5, 7, 8, 9, 255, 32767, -32768)
EXTREME_FLOATS = (0.0, -0.0, math.nan, math.inf, -math.inf, 1e38, -1e38, 1e-38, 1e-45, 3.0)
DATATYPES = (0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 768, 1024, 1280, 1536, 1792, 2048, 2304)


# --------------------------------------------------------------------------- valid data


def _probabilities(rng: np.random.Generator) -> np.ndarray:
    logits = rng.normal(size=(*SHAPE, CHANNELS)) * 3
    probs = np.exp(logits) / np.exp(logits).sum(axis=-1, keepdims=True)
    return probs.astype(np.float32)  # (x, y, z, C)


AFFINE = np.diag([-1.0, -1.0, 1.0, 1.0])  # what SimpleITK's identity LPS geometry reads as


def write_valid(root: Path, fmt: str, seed: int) -> dict[str, Path]:
    """A valid two-case data set in ``root/preds`` and ``root/labels``.

    Returns:
        ``{"pred0", "label0", "pred1", "label1"}`` paths.
    """
    import nibabel as nib
    import SimpleITK as sitk

    rng = np.random.default_rng(seed)
    preds, labels = root / "preds", root / "labels"
    preds.mkdir(parents=True)
    labels.mkdir(parents=True)
    paths: dict[str, Path] = {}
    for i, case in enumerate(CASES):
        probs = _probabilities(rng)
        label = rng.integers(0, CHANNELS, SHAPE).astype(np.uint8)
        if fmt in ("nii", "nii.gz"):
            pred_path = preds / f"{case}_pred.{fmt}"
            label_path = labels / f"{case}_seg.{fmt}"
            if i == 1 and fmt == "nii.gz":  # scaled uint8 storage, as calibkit writes
                stored = np.rint(probs * 255).astype(np.uint8)
                image = nib.Nifti1Image(stored, AFFINE)
                image.header.set_slope_inter(1 / 255, 0)
                nib.save(image, pred_path)
            else:
                nib.save(nib.Nifti1Image(probs, AFFINE), pred_path)
            nib.save(nib.Nifti1Image(label, AFFINE), label_path)
        elif fmt == "npz":
            pred_path = preds / f"{case}.npz"
            label_path = labels / f"{case}.nii.gz"
            np.savez_compressed(pred_path, probabilities=probs.transpose(3, 2, 1, 0))
            nib.save(nib.Nifti1Image(label, AFFINE), label_path)
        elif fmt == "png":
            pred_path = preds / f"{case}_pred.png"
            label_path = labels / f"{case}_seg.png"
            codes = rng.integers(0, 256, PLANE).astype(np.uint8)
            mask = (rng.random(PLANE) * 255 < codes).astype(np.uint8)
            sitk.WriteImage(sitk.GetImageFromArray(codes.T.copy()), str(pred_path))
            sitk.WriteImage(sitk.GetImageFromArray(mask.T.copy()), str(label_path))
        elif fmt == "mha":
            pred_path = preds / f"{case}_pred.mha"
            label_path = labels / f"{case}_seg.mha"
            vector = sitk.GetImageFromArray(probs.transpose(2, 1, 0, 3), isVector=True)
            sitk.WriteImage(vector, str(pred_path), useCompression=i == 1)
            sitk.WriteImage(sitk.GetImageFromArray(label.transpose(2, 1, 0)), str(label_path))
        else:
            raise ValueError(fmt)
        paths[f"pred{i}"] = pred_path
        paths[f"label{i}"] = label_path
    return paths


# --------------------------------------------------------------------------- mutations


def _flip(data: bytes, start: int, stop: int, rnd: random.Random, count: int) -> bytes:
    buffer = bytearray(data)
    stop = min(stop, len(buffer))
    if stop <= start:
        return data
    for _ in range(count):
        i = rnd.randrange(start, stop)
        buffer[i] ^= 1 << rnd.randrange(8) if rnd.random() < 0.5 else rnd.randrange(1, 256)
    return bytes(buffer)


def _gunzip(raw: bytes) -> bytes:
    return gzip.decompress(raw)


def _gzip(payload: bytes) -> bytes:
    return gzip.compress(payload, compresslevel=1, mtime=0)


def _set_nifti_field(payload: bytes, name: str, index: int, value: Any) -> bytes:
    offset, fmt, _ = NIFTI_FIELDS[name]
    size = struct.calcsize("<" + fmt)
    buffer = bytearray(payload)
    struct.pack_into("<" + fmt, buffer, offset + index * size, value)
    return bytes(buffer)


def _nifti_field_value(name: str, index: int, rnd: random.Random, payload: bytes) -> Any:
    if name == "magic":
        return rnd.choice([b"n+2\0", b"ni1\0", b"\0\0\0\0", b"n+1\x01"])
    if name == "sizeof_hdr":
        return rnd.choice([0, 540, 349, -348, 1_543_569_408])  # last: 348 byte-swapped
    if name == "datatype":
        return rnd.choice((*DATATYPES, 9999, -1, 3, 2304))
    if name == "vox_offset":
        return rnd.choice(
            (
                0.0,
                348.0,
                351.0,
                352.5,
                353.0,
                -1.0,
                1e10,
                float(len(payload)),
                float(len(payload) - 4),
                math.nan,
                math.inf,
            )
        )
    if NIFTI_FIELDS[name][1] == "h":
        return rnd.choice(EXTREME_INTS)
    return rnd.choice(EXTREME_FLOATS)


def mutate_nifti(raw: bytes, compressed: bool, rnd: random.Random) -> tuple[str, bytes]:
    payload = _gunzip(raw) if compressed else raw
    ops = ["flip-header", "flip-data", "truncate", "field", "field", "field", "fields", "bomb"]
    if compressed:
        ops += ["gzip-cut", "gzip-corrupt", "gzip-trailer", "gzip-tail"]
    op = rnd.choice(ops)
    if op == "truncate":
        return op, raw[: rnd.randrange(1, len(raw))]
    if op == "gzip-cut":
        return op, raw[: rnd.randrange(len(raw) // 4, len(raw))]
    if op == "gzip-corrupt":
        return op, _flip(raw, 10, len(raw) - 8, rnd, rnd.randint(1, 4))
    if op == "gzip-trailer":
        return op, _flip(raw, len(raw) - 8, len(raw), rnd, 1)
    if op == "gzip-tail":  # garbage or a second member after the stream
        extra = rnd.choice([b"\0" * 7, b"garbage!", _gzip(b"x" * 100)])
        return op, raw + extra
    if op == "flip-header":
        payload = _flip(payload, 0, 348, rnd, rnd.randint(1, 3))
    elif op == "flip-data":
        payload = _flip(payload, 352, len(payload), rnd, rnd.randint(1, 8))
    elif op in ("field", "fields"):
        for _ in range(1 if op == "field" else rnd.randint(2, 4)):
            name = rnd.choice(list(NIFTI_FIELDS))
            index = rnd.randrange(NIFTI_FIELDS[name][2])
            name_value = _nifti_field_value(name, index, rnd, payload)
            payload = _set_nifti_field(payload, name, index, name_value)
            op += f":{name}[{index}]={name_value!r}"
    elif op == "bomb":
        ndim = rnd.choice([3, 4, 5, 7])
        dims = [ndim] + [rnd.choice([32767, 20000, 1000]) for _ in range(ndim)] + [1] * (7 - ndim)
        for i, n in enumerate(dims):
            payload = _set_nifti_field(payload, "dim", i, n)
        op += f":{dims[: ndim + 1]}"
    return op, _gzip(payload) if compressed else payload


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=True)
    return buffer.getvalue()


def _npz(members: dict[str, bytes], compressed: bool = True) -> bytes:
    buffer = io.BytesIO()
    method = zipfile.ZIP_DEFLATED if compressed else zipfile.ZIP_STORED
    with zipfile.ZipFile(buffer, "w", method) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def _with_npy_header(member: bytes, header: str) -> bytes:
    """Replace the header dict of a version-1 ``.npy`` member, keeping its data."""
    (header_len,) = struct.unpack("<H", member[8:10])
    data = member[10 + header_len :]
    text = header.encode("latin1")
    padded = text + b" " * ((-(10 + len(text) + 1)) % 64) + b"\n"
    return member[:8] + struct.pack("<H", len(padded)) + padded + data


def mutate_npz(raw: bytes, rnd: random.Random) -> tuple[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(raw)) as archive:
        member = archive.read("probabilities.npy")
    array = np.load(io.BytesIO(member))  # (C, z, y, x) float32
    op = rnd.choice(
        [
            "truncate",
            "flip-zip",
            "flip-header",
            "flip-data",
            "rename",
            "dtype",
            "dtype",
            "shape",
            "bomb",
            "header-text",
            "extra-member",
            "stored",
        ]
    )
    if op == "truncate":
        return op, raw[: rnd.randrange(1, len(raw))]
    if op == "flip-zip":
        return op, _flip(raw, 0, len(raw), rnd, rnd.randint(1, 4))
    if op == "flip-header":
        return op, _npz({"probabilities.npy": _flip(member, 0, 128, rnd, rnd.randint(1, 3))})
    if op == "flip-data":
        return op, _npz({"probabilities.npy": _flip(member, 128, len(member), rnd, 4)})
    if op == "rename":
        name = rnd.choice(
            [
                "probs.npy",
                "arr_0.npy",
                "Probabilities.npy",
                "probabilities",
                "probabilities.npy/",
                "../probabilities.npy",
            ]
        )
        return f"{op}:{name}", _npz({name: member})
    if op == "dtype":
        kind = rnd.choice(
            [
                "float64",
                "float16",
                "int8",
                "uint8",
                "bool",
                "complex64",
                "object",
                "str",
                "structured",
                "datetime",
                ">f4",
                "int64",
            ]
        )
        converted: np.ndarray
        if kind == "object":
            converted = array.astype(object)
        elif kind == "str":
            converted = array.astype(str)
        elif kind == "structured":
            converted = np.zeros(array.shape, dtype=[("p", "f4"), ("q", "i2")])
        elif kind == "datetime":
            converted = np.zeros(array.shape, dtype="datetime64[s]")
        elif kind in ("int8", "uint8", "int64"):
            converted = np.rint(array).astype(kind)
        else:
            converted = array.astype(kind)
        return f"{op}:{kind}", _npz({"probabilities.npy": _npy_bytes(converted)})
    if op == "shape":
        shape = rnd.choice(
            [
                array.shape[:3],
                (*array.shape, 1),
                (0, *array.shape[1:]),
                (1, *array.shape),
                array.shape[::-1],
            ]
        )
        reshaped = np.resize(array, shape)
        return f"{op}:{shape}", _npz({"probabilities.npy": _npy_bytes(reshaped)})
    if op == "bomb":
        shape = rnd.choice(
            [
                (1_000_000, 7, 6, 5),
                (3, 100_000, 100_000, 100_000),
                (2**40, 1, 1, 1),
                (3, 7, 6, 2**62),
            ]
        )
        header = f"{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}"
        return f"{op}:{shape}", _npz(
            {"probabilities.npy": _with_npy_header(member, header)}, compressed=rnd.random() < 0.5
        )
    if op == "header-text":
        header = rnd.choice(
            [
                "{'descr': '<f4', 'fortran_order': True, 'shape': (3, 7, 6, 5), }",
                "{'descr': '<f4', 'fortran_order': False, 'shape': (3, 7, 6, -5), }",
                "{'descr': '|O', 'fortran_order': False, 'shape': (3, 7, 6, 5), }",
                "{'descr': '<f8', 'fortran_order': False, 'shape': (3, 7, 6, 5), }",
                "{'descr': 'xx', 'fortran_order': False, 'shape': (3, 7, 6, 5), }",
                "{'descr': '<f4', 'shape': (3, 7, 6, 5), }",
                "{'descr': '<f4', 'fortran_order': False, 'shape': 'abc', }",
                "[1, 2, 3]",
                "{'descr': '<f4', 'fortran_order': False, 'shape': (3, 7, 6, 5.0), }",
            ]
        )
        return f"{op}:{header}", _npz({"probabilities.npy": _with_npy_header(member, header)})
    if op == "extra-member":
        return op, _npz({"probabilities.npy": member, "other.npy": _npy_bytes(array[:1])})
    return op, _npz({"probabilities.npy": member}, compressed=False)  # "stored"


MHA_FIELDS = {
    "NDims": ["0", "1", "2", "4", "5", "9", "-3", "x", "99999999999"],
    "DimSize": [
        "0 0 0",
        "7 6",
        "100000 100000 100000",
        "5 6 7 1000000",
        "-1 6 7",
        "4294967297 6 7",
        "5 6 7",
        "7 6 5",
        "99999999999999999999 1 1",
        "1 1",
    ],
    "ElementNumberOfChannels": ["0", "1", "2", "4", "1000000", "-1", "x"],
    "ElementType": [
        "MET_UCHAR",
        "MET_DOUBLE",
        "MET_LONG_LONG",
        "MET_OTHER",
        "MET_STRING",
        "MET_FLOAT_ARRAY",
        "nonsense",
        "MET_NONE",
    ],
    "ElementSpacing": ["0 0 0", "nan nan nan", "inf 1 1", "-1 1 1", "1e308 1e308 1e308", "1"],
    "TransformMatrix": ["0 0 0 0 0 0 0 0 0", "nan 0 0 0 1 0 0 0 1", "1 0 0", "x"],
    "Offset": ["nan nan nan", "1e308 0 0", "1"],
    "CompressedData": ["True", "False"],
    "CompressedDataSize": ["0", "1", "99999999999", "-5"],
    "BinaryDataByteOrderMSB": ["True"],
    "HeaderSize": ["0", "-1", "100000", "5"],
    "ElementDataFile": ["missing.raw", "LIST", "/dev/zero", ""],
}


def mutate_mha(raw: bytes, rnd: random.Random) -> tuple[str, bytes]:
    marker = b"ElementDataFile = LOCAL\n"
    end = raw.index(marker) + len(marker)
    header, data = raw[:end].decode("latin1"), raw[end:]
    op = rnd.choice(
        ["flip-header", "flip-data", "truncate", "field", "field", "field", "fields", "bomb"]
    )
    if op == "truncate":
        return op, raw[: rnd.randrange(1, len(raw))]
    if op == "flip-header":
        return op, _flip(raw, 0, end, rnd, rnd.randint(1, 3))
    if op == "flip-data":
        return op, _flip(raw, end, len(raw), rnd, rnd.randint(1, 8))
    names = (
        ["DimSize"]
        if op == "bomb"
        else [
            rnd.choice(list(MHA_FIELDS)) for _ in range(1 if op == "field" else rnd.randint(2, 3))
        ]
    )
    for name in names:
        value = (
            rnd.choice(["100000 100000 100000", "5 6 7 1000000", "32767 32767 32767"])
            if op == "bomb"
            else rnd.choice(MHA_FIELDS[name])
        )
        line = f"{name} = {value}\n"
        if re.search(rf"^{name} = .*$", header, flags=re.M):
            header = re.sub(rf"^{name} = .*\n", line.replace("\\", "\\\\"), header, flags=re.M)
        else:
            header = line + header
        op += f":{name}={value}"
    if op.startswith("bomb") and "5 6 7 1000000" in op:
        header = header.replace("NDims = 3", "NDims = 4")
    return op, header.encode("latin1") + data


def _png_chunk(name: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + name + data + struct.pack(">I", zlib.crc32(name + data))


# IHDR fields (offset in the file, struct format) and the values tried.
PNG_FIELDS: dict[str, tuple[int, str, tuple[int, ...]]] = {
    "width": (16, ">I", (0, 1, 2, 100_000, 2**31 - 1, 2**32 - 1)),
    "height": (20, ">I", (0, 1, 6, 100_000, 2**31 - 1)),
    "bit_depth": (24, ">B", (1, 2, 3, 4, 16, 255)),
    "colour_type": (25, ">B", (1, 2, 3, 4, 6, 7)),
    "compression": (26, ">B", (1, 255)),
    "filter": (27, ">B", (1,)),
    "interlace": (28, ">B", (1, 2)),
}


def mutate_png(raw: bytes, rnd: random.Random) -> tuple[str, bytes]:
    """Byte flips, cuts, IHDR fields (with a valid CRC or not) and added chunks."""
    op = rnd.choice(["flip-header", "flip-data", "truncate", "field", "field", "bomb", "chunk"])
    if op == "truncate":
        return op, raw[: rnd.randrange(1, len(raw))]
    if op == "flip-header":
        return op, _flip(raw, 0, 33, rnd, rnd.randint(1, 3))
    if op == "flip-data":
        return op, _flip(raw, 33, len(raw), rnd, rnd.randint(1, 8))
    if op == "chunk":  # ancillary chunks that change what a pixel means, before IDAT
        name, data = rnd.choice(
            [
                (b"tRNS", b"\x00\x00"),  # gray 0 transparent
                (b"PLTE", bytes(range(9))),  # a palette in a gray image
                (b"pHYs", struct.pack(">IIB", 3937, 3937, 1)),  # 0.254 mm pixels
                (b"sBIT", b"\x04"),
                (b"zzZZ", b"critical? no: lower-case first letter"),
            ]
        )
        return f"{op}:{name.decode()}", raw[:33] + _png_chunk(name, data) + raw[33:]
    buffer = bytearray(raw)
    names = ["width", "height"] if op == "bomb" else [rnd.choice(list(PNG_FIELDS))]
    for name in names:
        offset, fmt, values = PNG_FIELDS[name]
        value = 100_000 if op == "bomb" else rnd.choice(values)
        struct.pack_into(fmt, buffer, offset, value)
        op += f":{name}={value}"
    if rnd.random() < 0.7:  # a valid CRC, so that readers look further than the checksum
        struct.pack_into(">I", buffer, 29, zlib.crc32(bytes(buffer[12:29])))
        op += ":crc"
    return op, bytes(buffer)


def mutate(path: Path, fmt: str, rnd: random.Random) -> str:
    """Spoil ``path`` in place with one seeded mutation; return its description."""
    raw = path.read_bytes()
    name = path.name
    if name.endswith(".npz"):
        op, spoiled = mutate_npz(raw, rnd)
    elif name.endswith(".png"):
        op, spoiled = mutate_png(raw, rnd)
    elif name.endswith(".mha"):
        op, spoiled = mutate_mha(raw, rnd)
    else:
        op, spoiled = mutate_nifti(raw, name.endswith(".gz"), rnd)
    path.write_bytes(spoiled)
    return op


# --------------------------------------------------------------------------- the oracle


@contextmanager
def fd2_captured() -> Iterator[list[str]]:
    """Collect what is written to file descriptor 2 (C++ libraries too) meanwhile."""
    printed: list[str] = []
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield printed
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            printed.extend(sink.read().decode("utf-8", "replace").splitlines())


def run_in_process(args: list[str]) -> tuple[int, str, str, BaseException | None]:
    """``calibkit ARGS`` in this process: exit code, stdout, everything written to
    stderr (also below Python, by C++ libraries) and the exception that ended it."""
    from typer.testing import CliRunner

    from calibkit.cli import app

    with fd2_captured() as printed:
        result = CliRunner().invoke(app, args)
    stderr = result.stderr + "".join(line + "\n" for line in printed)
    return result.exit_code, result.stdout, stderr, result.exception


class Undecodable(Exception):
    """The independent decoder cannot read the file (calibkit must refuse it)."""


def _nifti_claim_ok(path: Path) -> None:
    """Refuse (as the oracle) headers that claim more data than the file can hold."""
    import nibabel as nib

    try:
        image = nib.load(path, mmap=False)
        shape = tuple(int(n) for n in image.shape)
        itemsize = np.dtype(image.get_data_dtype()).itemsize
        offset = int(image.dataobj.offset)
    except Exception as error:  # the oracle's verdict, any failure is "undecodable"
        raise Undecodable(repr(error)) from error
    claimed = math.prod(shape) * itemsize
    size = path.stat().st_size
    bound = size * 1032 if path.name.endswith(".gz") else size - offset
    if claimed > min(bound, ORACLE_LIMIT):
        raise Undecodable(f"claims {claimed} bytes")


def decode_png(path: Path, prediction: bool) -> np.ndarray:
    """Pillow's reading of a PNG, ``(x, y)``: a prediction's codes ``k`` as float32
    ``k / (2**bits - 1)``, a label's values as stored (a palette's indices).

    Raises:
        Undecodable: Pillow fails, or the PNG is not one value per pixel (colour,
            alpha, a transparent colour, a palette for a prediction).
    """
    from PIL import Image

    raw = path.read_bytes()
    try:
        width, height, bits, colour, method, filtering, interlace = struct.unpack(
            ">IIBBBBB", raw[16:29]
        )
        if width * height * 2 > ORACLE_LIMIT:
            raise Undecodable(f"claims {width} x {height} pixels")
        # What the PNG specification allows (Pillow is lenient where libpng is not).
        depths = {0: (1, 2, 4, 8, 16), 3: (1, 2, 4, 8)}.get(colour, (8, 16))
        if not (0 < width < 2**31 and 0 < height < 2**31) or bits not in depths:
            raise Undecodable(f"IHDR {width} x {height}, {bits} bits, colour {colour}")
        if method != 0 or filtering != 0 or interlace > 1:
            raise Undecodable(f"IHDR methods {method}, {filtering}, {interlace}")
        if colour == 3 and b"PLTE" not in raw[: max(0, raw.find(b"IDAT"))]:
            raise Undecodable("a palette image without a palette before its data")
        if not raw.endswith(b"\0\0\0\0IEND\xaeB`\x82"):
            raise Undecodable("no complete IEND chunk at the end")
        samples = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}.get(colour, 1)
        if _png_image_data(raw) < _png_data_needed(width, height, bits * samples, interlace):
            raise Undecodable("the image data are shorter than the image")
        significant = raw.find(b"sBIT", 0, max(0, raw.find(b"IDAT")))
        if colour == 0 and significant > 0 and raw[significant + 4] < bits:
            raise Undecodable("sBIT: libpng shifts the values, Pillow does not")
        with Image.open(path) as image:
            image.verify()  # every chunk's CRC, and the end of the file
        with Image.open(path) as image:
            image.load()
            values = np.asarray(image)
            transparent = "transparency" in image.info
    except Undecodable:
        raise
    except Exception as error:  # the oracle's verdict: any failure is "undecodable"
        raise Undecodable(repr(error)) from error
    if transparent or colour not in (0, 3) or (colour == 3 and prediction):
        raise Undecodable(f"colour type {colour}, transparency {transparent}")
    codes = values.astype(np.int64).T
    if colour == 0 and bits in (2, 4):  # Pillow, like libpng, scales them up to 8 bits
        codes //= 255 // (2**bits - 1)
    if not prediction:
        return codes
    return codes.astype(np.float32) / np.float32(2 ** min(bits, 16) - 1)


def _png_image_data(raw: bytes) -> int:
    """Length of the inflated IDAT stream (at most ORACLE_LIMIT + 1)."""
    data, position = b"", 8
    while position + 8 <= len(raw):
        length, name = struct.unpack(">I4s", raw[position : position + 8])
        if name == b"IDAT":
            data += raw[position + 8 : position + 8 + length]
        position += 12 + length
    try:
        return len(zlib.decompressobj().decompress(data, ORACLE_LIMIT + 1))
    except zlib.error as error:
        raise Undecodable(f"image data: {error}") from error


def _png_data_needed(width: int, height: int, pixel_bits: int, interlace: int) -> int:
    """Bytes of filtered scanlines a PNG's image needs (Adam7 passes when interlaced)."""
    passes = [(0, 0, 1, 1)]
    if interlace:
        passes = [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4)]
        passes += [(0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)]
    needed = 0
    for x0, y0, dx, dy in passes:
        columns, rows = (width - x0 + dx - 1) // dx, (height - y0 + dy - 1) // dy
        if columns > 0 and rows > 0:
            needed += rows * (1 + (columns * pixel_bits + 7) // 8)
    return needed


def decode(path: Path, prediction: bool = True) -> np.ndarray:
    """The array an independent reader gets: NIfTI ``(x, y, z[, ...])`` float64 via
    nibabel's ``get_fdata``; ``.npz`` ``probabilities`` transposed to ``(x, y, z, C)``;
    SimpleITK images to ``(x, y, z[, C])``; PNG as :func:`decode_png` reads it.

    Raises:
        Undecodable: the reader fails, or the file claims implausibly much data.
    """
    name = path.name
    if name.endswith(".png"):
        return decode_png(path, prediction)
    logging.getLogger("nibabel.global").disabled = True  # its header "fixes" are noise here
    try:
        if name.endswith((".nii", ".nii.gz")):
            import nibabel as nib

            _nifti_claim_ok(path)
            return np.asarray(nib.load(path, mmap=False).get_fdata())
        if name.endswith(".npz"):
            with zipfile.ZipFile(path) as archive:
                info = archive.getinfo("probabilities.npy")
                if info.file_size > ORACLE_LIMIT:
                    raise Undecodable("member too large")
                with archive.open(info) as member:
                    version = np.lib.format.read_magic(member)
                    read_header = (
                        np.lib.format.read_array_header_1_0
                        if version == (1, 0)
                        else np.lib.format.read_array_header_2_0
                    )
                    shape, _, dtype = read_header(member)
                if math.prod(shape) * dtype.itemsize > info.file_size:
                    raise Undecodable("claims more than the member holds")
            with np.load(path, allow_pickle=False) as archive:
                array = np.asarray(archive["probabilities"])
            if array.ndim != 4:
                raise Undecodable(f"shape {array.shape}")
            return array.transpose(3, 2, 1, 0)
        import SimpleITK as sitk

        head = path.read_bytes()[:4096]
        ndims = re.search(rb"^NDims = ([+-]?\d+)", head, re.M)
        if ndims and not 1 <= int(ndims.group(1)) <= 5:
            raise Undecodable("NDims that crashes SimpleITK")
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        with fd2_captured() as printed:
            reader.ReadImageInformation()
        claimed = (
            math.prod(reader.GetSize())
            * reader.GetNumberOfComponents()
            * _sitk_bytes(sitk.GetPixelIDValueAsString(reader.GetPixelID()))
        )
        if claimed > min(path.stat().st_size * 1032, ORACLE_LIMIT):
            raise Undecodable(f"claims {claimed} bytes")
        data_file = re.search(rb"^ElementDataFile = (.*)$", head, re.M)
        flag = re.search(rb"^CompressedData = (\S*)", head, re.M)
        compressed = flag and flag.group(1)[:1] in (b"T", b"t", b"1")  # as MetaIO reads it
        if data_file and data_file.group(1) == b"LOCAL" and compressed:
            # MetaIO silently leaves what a short stream lacks uninitialised
            stream = path.read_bytes()[data_file.end() + 1 :]
            given = re.search(rb"^CompressedDataSize = (\d+)", head, re.M)
            if given and int(given.group(1)) > 0:  # MetaIO reads that many bytes
                stream = stream[: int(given.group(1))]
            try:
                inflated = zlib.decompressobj(wbits=47).decompress(stream, claimed + 1)
            except zlib.error as error:
                raise Undecodable(f"compressed data: {error}") from error
            if len(inflated) < claimed:
                raise Undecodable(f"{len(inflated)} bytes inflated, {claimed} claimed")
        if data_file and data_file.group(1) != b"LOCAL":
            if not (path.parent / data_file.group(1).decode("latin1")).is_file():
                raise Undecodable("its data file is not a regular file")  # could block
        with fd2_captured() as printed:
            image = sitk.ReadImage(str(path))
        if printed:  # MetaIO prints "Uncompress failed" and returns uninitialised memory
            raise Undecodable(" ".join(printed))
        array = sitk.GetArrayFromImage(image)
        if image.GetDimension() == 2:  # one slice: (y, x[, C]) -> (x, y, 1[, C])
            array = array[np.newaxis]
        elif image.GetDimension() != 3:
            raise Undecodable(f"{image.GetDimension()}-D")
        return array.transpose(2, 1, 0, 3) if array.ndim == 4 else array.transpose(2, 1, 0)
    except Undecodable:
        raise
    except Exception as error:  # the oracle's verdict: any failure is "undecodable"
        raise Undecodable(repr(error)) from error


def _sitk_bytes(pixel_type: str) -> int:
    for word, size in (("8-bit", 1), ("16-bit", 2), ("32-bit", 4), ("64-bit", 8)):
        if word in pixel_type:
            return size * (2 if "complex" in pixel_type else 1)
    return 8


def write_clean_copy(paths: dict[str, Path], root: Path) -> tuple[Path, Path]:
    """Decode every case file and write it again as plain float32 / int32 NIfTI.

    Raises:
        Undecodable: a file cannot be decoded, or does not hold finite data that
            NIfTI float32 / int32 storage keeps exactly.
    """
    import nibabel as nib

    preds, labels = root / "clean_preds", root / "clean_labels"
    preds.mkdir()
    labels.mkdir()
    for i, case in enumerate(CASES):
        pred = decode(paths[f"pred{i}"])
        label = decode(paths[f"label{i}"], prediction=False)
        if pred.dtype.kind not in "biuf" or label.dtype.kind not in "biuf":
            raise Undecodable("not numbers")
        if not np.all(np.isfinite(pred)):
            raise Undecodable("non-finite prediction")
        if label.dtype.kind == "f" and not np.all(label == np.floor(label)):
            raise Undecodable("non-integer label")
        if label.size and (label.min() < -(2**31) or label.max() >= 2**31):
            raise Undecodable("label beyond int32")
        with np.errstate(over="ignore"):  # beyond float32: inf, refused like calibkit's
            stored = pred.astype(np.float32)  # calibkit rounds float64 data to float32 too
        nib.save(nib.Nifti1Image(stored, AFFINE), preds / f"{case}_pred.nii.gz")
        nib.save(nib.Nifti1Image(label.astype(np.int32), AFFINE), labels / f"{case}_seg.nii.gz")
    return preds, labels


# --------------------------------------------------------------------------- one trial


@dataclass
class Trial:
    fmt: str
    seed: int
    command: str
    root: Path
    paths: dict[str, Path]
    target: Path
    mutation: str


def make_trial(root: Path, fmt: str, seed: int, command: str = "evaluate") -> Trial:
    """Write a valid data set under ``root`` and spoil one file of it (seeded)."""
    rnd = random.Random(f"{fmt}/{seed}")
    paths = write_valid(root, fmt, seed)
    key = rnd.choice(["pred1", "pred1", "pred0", "label1"])
    if fmt == "npz" and key.startswith("label"):
        key = "pred1"
    mutation = mutate(paths[key], fmt, rnd)
    return Trial(fmt, seed, command, root, paths, paths[key], mutation)


Runner = Callable[[list[str]], tuple[int, str, str, BaseException | None]]


def cli_args(trial: Trial, out: Path) -> list[str]:
    preds, labels = trial.paths["pred0"].parent, trial.paths["label0"].parent
    if trial.command == "evaluate":
        return [
            "evaluate",
            str(preds),
            str(labels),
            "--out",
            str(out),
            "--quiet",
            "--ignore-geometry",
            "--backend",
            "numpy",
        ]
    return [
        "fit-temperature",
        str(preds),
        str(labels),
        "--out",
        str(out),
        "--quiet",
        "--ignore-geometry",
        "--max-voxels",
        "1000",
    ]


def _numbers(command: str, out: Path) -> Any:
    if command == "evaluate":
        import pandas as pd

        table = pd.read_csv(out / "per_image.csv")
        return table.select_dtypes("number")
    record = json.loads(out.read_text())
    return {key: record[key] for key in ("temperature", "nll_before", "nll_after")}


def check_trial(trial: Trial, run: Runner) -> tuple[str, list[str]]:
    """Run the command on the spoiled data set; return ``(outcome, problems)``.

    ``outcome`` is ``"refused"`` or ``"accepted"``; ``problems`` is empty when calibkit
    behaved: one ``error:`` line naming a case file and no output, or success with
    the numbers of the clean copy.
    """
    out = trial.root / ("out" if trial.command == "evaluate" else "t.json")
    code, _, stderr, exception = run(cli_args(trial, out))
    problems: list[str] = []
    if exception is not None and not isinstance(exception, SystemExit):
        problems.append(f"exception {type(exception).__name__}: {exception}"[:300])
    if "Traceback" in stderr:
        problems.append("traceback on stderr")
    try:
        clean_preds, clean_labels = write_clean_copy(trial.paths, trial.root)
        clean_out = trial.root / ("clean_out" if trial.command == "evaluate" else "clean_t.json")
        clean_args = cli_args(trial, clean_out)
        clean_args[1:3] = [str(clean_preds), str(clean_labels)]
        clean_code, _, clean_stderr, _ = run(clean_args)
        expected_ok = clean_code == 0
        why = clean_stderr.strip()[:200]
    except Undecodable as error:
        expected_ok, why = False, f"undecodable: {error}"[:200]
    if code == 0:
        if not expected_ok:
            problems.append(f"accepted, but the oracle refuses ({why})")
        else:
            # Exact equality, no tolerance: both runs bin the same float32 values (the
            # clean copy stores the decoded data as float32, the value calibkit's reader
            # computes: nibabel's float64 scaling rounded once), so every count, sum
            # and metric is computed from identical inputs in the same order.
            mine, theirs = _numbers(trial.command, out), _numbers(trial.command, clean_out)
            if trial.command == "evaluate":
                same = mine.shape == theirs.shape and np.array_equal(
                    mine.to_numpy(float), theirs.to_numpy(float), equal_nan=True
                )
            else:
                same = mine == theirs
            if not same:
                problems.append("accepted with numbers that differ from the clean copy's")
        return "accepted", problems
    lines = [line for line in stderr.splitlines() if line.strip()]
    if code != 1:
        problems.append(f"exit code {code}")
    if len(lines) != 1 or not lines[0].startswith("error:"):
        problems.append(f"stderr is not one error line: {stderr[-300:]!r}")
    elif not any(str(p) in lines[0] for p in trial.paths.values()):
        problems.append(f"message names no case file: {lines[0]}")
    if out.exists():
        problems.append("output left after a failure")
    if expected_ok and code == 1:
        problems.append(f"refused, but the clean copy is accepted: {lines[:1]}")
    return "refused", problems
