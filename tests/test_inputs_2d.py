"""2-D images as inputs: 2-D NIfTI, MetaImage, NRRD, PNG and TIFF maps and masks.

Each 2-D data set is evaluated next to the same numbers written as a 3-D NIfTI volume
of one slice, ``(x, y, 1, C)`` float32 and ``(x, y, 1)`` labels; every output must be
equal bit for bit (both runs bin identical float32 values in the same order, so no
tolerance applies). The PNG / TIFF conventions (``io.raster``) are checked through
the values the reference is written with: ``k / 255`` and ``k / 65535`` as float32.
"""

from __future__ import annotations

import hashlib
import json
import re
import zlib
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from conftest import assert_user_error, run_cli
from PIL import Image

from calibkit.errors import InputError
from calibkit.io import check_geometry, pair_cases, read_label, read_prediction

SHAPE = (13, 9)  # (x, y): not square, so that a transposition shows
CLASSES = 3
CASES = ("case_0001", "case_0002")
# What SimpleITK's LPS identity geometry reads as in calibkit's RAS affine.
ITK_IDENTITY = np.diag([-1.0, -1.0, 1.0, 1.0])

Written = dict[str, tuple[np.ndarray, np.ndarray]]  # case -> (probabilities (x, y, C), label)


# --------------------------------------------------------------------------- writers


def _itk(array: np.ndarray, vector: bool = False) -> sitk.Image:
    """An ITK image of an ``(x, y)`` or ``(x, y, C)`` array (ITK's numpy order is y first)."""
    return sitk.GetImageFromArray(np.swapaxes(array, 0, 1).copy(), isVector=vector)


def _softmax(rng: np.random.Generator) -> np.ndarray:
    logits = rng.normal(size=(*SHAPE, CLASSES)) * 2
    return (np.exp(logits) / np.exp(logits).sum(axis=-1, keepdims=True)).astype(np.float32)


def _labels(rng: np.random.Generator, probabilities: np.ndarray) -> np.ndarray:
    """Labels drawn from the map, so that the metrics are not trivial."""
    cumulative = np.cumsum(probabilities.astype(np.float64), axis=-1)
    draw = rng.random(SHAPE)[..., np.newaxis]
    return np.minimum((draw > cumulative).sum(axis=-1), probabilities.shape[-1] - 1).astype(
        np.uint8
    )


def _binary(
    rng: np.random.Generator, codes: np.ndarray, full_scale: int
) -> tuple[np.ndarray, np.ndarray]:
    """A one-channel map of ``codes / full_scale`` (float32) and labels drawn from it."""
    p = (codes.astype(np.float32) / np.float32(full_scale))[..., np.newaxis]
    return p, (rng.random(SHAPE) < p[..., 0]).astype(np.uint8)


def write_2d(root: Path, kind: str, seed: int = 5) -> tuple[Path, Path, Written]:
    """A two-case 2-D data set of ``kind`` in ``root/preds`` and ``root/labels``.

    Returns the folders and, per case, the probabilities ``(x, y, C)`` calibkit must
    read and the label values ``(x, y)``.
    """
    rng = np.random.default_rng(seed)
    preds, labels = root / "preds", root / "labels"
    preds.mkdir(parents=True)
    labels.mkdir(parents=True)
    written: Written = {}
    for case in CASES:
        pred, label = preds / case, labels / f"{case}_seg"
        if kind == "nii-2d":  # one channel: (x, y) NIfTI
            p = rng.random(SHAPE).astype(np.float32)[..., np.newaxis]
            y = (rng.random(SHAPE) < p[..., 0]).astype(np.uint8)
            nib.save(nib.Nifti1Image(p[..., 0], np.eye(4)), f"{pred}.nii.gz")
            nib.save(nib.Nifti1Image(y, np.eye(4)), f"{label}.nii")
        elif kind == "nii-2d-channels":  # (x, y, 1, C) next to a 2-D label
            p = _softmax(rng)
            y = _labels(rng, p)
            nib.save(nib.Nifti1Image(p[:, :, np.newaxis, :], np.eye(4)), f"{pred}.nii.gz")
            nib.save(nib.Nifti1Image(y, np.eye(4)), f"{label}.nii.gz")
        elif kind in ("mha", "mhd", "nrrd", "nhdr"):  # vector image, one component a class
            p = _softmax(rng)
            y = _labels(rng, p)
            geometry = _itk(p, vector=True)
            geometry.SetSpacing((0.7, 0.4))
            geometry.SetOrigin((3.0, -2.0))
            geometry.SetDirection((0.0, 1.0, 1.0, 0.0))
            sitk.WriteImage(geometry, f"{pred}.{kind}")
            mask = _itk(y)
            mask.CopyInformation(geometry)
            sitk.WriteImage(mask, f"{label}.{kind}")
        elif kind == "mha-scalar":
            p = rng.random(SHAPE).astype(np.float32)[..., np.newaxis]
            y = (rng.random(SHAPE) < p[..., 0]).astype(np.uint8)
            sitk.WriteImage(_itk(p[..., 0]), f"{pred}.mha", useCompression=True)
            sitk.WriteImage(_itk(y), f"{label}.mha")
        elif kind in ("png", "png-16", "tiff-uint8", "tif-uint16"):
            bits = 16 if kind in ("png-16", "tif-uint16") else 8
            suffix = ".png" if kind.startswith("png") else "." + kind.split("-")[0]
            codes = rng.integers(0, 2**bits, SHAPE).astype(np.uint8 if bits == 8 else np.uint16)
            codes[0, 0], codes[1, 0] = 0, 2**bits - 1
            p, y = _binary(rng, codes, 2**bits - 1)
            for array, path in ((codes, pred), (y.astype(codes.dtype), label)):
                image = _itk(array)
                image.SetSpacing((0.3, 0.6))  # PNG: SimpleITK's sCAL chunk; TIFF: resolution
                sitk.WriteImage(image, f"{path}{suffix}")
        elif kind == "tif-float":
            p = rng.random(SHAPE).astype(np.float32)[..., np.newaxis]
            y = (rng.random(SHAPE) < p[..., 0]).astype(np.uint8)
            image = _itk(p[..., 0])
            image.SetSpacing((0.25, 0.5))  # TIFF resolution
            sitk.WriteImage(image, f"{pred}.tif")
            mask = _itk(y)
            mask.SetSpacing((0.25, 0.5))
            sitk.WriteImage(mask, f"{label}.tif")
        elif kind == "tif-channels":  # float samples, one a class (SimpleITK's vector TIFF)
            p = _softmax(rng)
            y = _labels(rng, p)
            sitk.WriteImage(_itk(p, vector=True), f"{pred}.tif")
            sitk.WriteImage(_itk(y), f"{label}.tif")
        elif kind in ("palette-label", "palette-tif-label", "1-bit-label"):
            # Pillow writes what SimpleITK misreads: palettes (as colours), 1-bit PNG (as 255).
            codes = rng.integers(0, 256, SHAPE).astype(np.uint8)
            p, y = _binary(rng, codes, 255)
            Image.fromarray(codes.T).save(f"{pred}.png")
            if kind == "1-bit-label":
                Image.fromarray(y.T.astype(bool)).save(f"{label}.png")
            else:
                mask = Image.fromarray(y.T).convert("P")
                mask.putpalette([0, 0, 0, 255, 0, 0] + [9] * 762)  # index 1 shows red
                mask.save(f"{label}.{'tif' if 'tif' in kind else 'png'}")
        else:
            raise ValueError(kind)
        written[case] = (p, y)
    return preds, labels, written


def write_reference(root: Path, written: Written) -> tuple[Path, Path]:
    """The same numbers as a 3-D NIfTI volume of one slice, float32 and uint8."""
    preds, labels = root / "ref_preds", root / "ref_labels"
    preds.mkdir()
    labels.mkdir()
    for case, (p, y) in written.items():
        nib.save(nib.Nifti1Image(p[:, :, np.newaxis, :], ITK_IDENTITY), preds / f"{case}.nii.gz")
        label = y[:, :, np.newaxis].astype(np.uint8)
        nib.save(nib.Nifti1Image(label, ITK_IDENTITY), labels / f"{case}_seg.nii.gz")
    return preds, labels


def _evaluate(preds: Path, labels: Path, out: Path, *extra: str) -> None:
    code, stdout, stderr = run_cli("evaluate", preds, labels, "--out", out, "--quiet", *extra)
    assert code == 0, (stdout, stderr)


def _same_outputs(out: Path, reference: Path) -> None:
    for name in ("per_image.csv", "summary.csv"):
        assert (out / name).read_bytes() == (reference / name).read_bytes(), name
    with np.load(out / "bins.npz") as mine, np.load(reference / "bins.npz") as theirs:
        assert sorted(mine.files) == sorted(theirs.files)
        for key in mine.files:
            np.testing.assert_array_equal(mine[key], theirs[key], err_msg=key)


def _digest(folder: Path) -> dict[str, str]:
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


# --------------------------------------------------------------------------- reading

KINDS = (
    "nii-2d",
    "nii-2d-channels",
    "mha",
    "mhd",
    "nrrd",
    "nhdr",
    "mha-scalar",
    "png",
    "png-16",
    "tiff-uint8",
    "tif-uint16",
    "tif-float",
    "tif-channels",
    "palette-label",
    "palette-tif-label",
    "1-bit-label",
)


@pytest.mark.parametrize("kind", KINDS)
def test_read_as_one_slice(kind: str, tmp_path: Path) -> None:
    preds, labels, written = write_2d(tmp_path, kind)
    pairs = pair_cases(preds, labels).pairs
    assert [pair.case_id for pair in pairs] == list(CASES)
    for pair in pairs:
        p, y = written[pair.case_id]
        prediction, label = read_prediction(pair.prediction), read_label(pair.label)
        assert prediction.array.dtype == np.float32
        np.testing.assert_array_equal(prediction.array, np.moveaxis(p, -1, 0)[..., np.newaxis])
        np.testing.assert_array_equal(label.array, y[..., np.newaxis])
        assert check_geometry(prediction, label) is None


def test_itk_2d_geometry_becomes_a_3d_affine(tmp_path: Path) -> None:
    preds, _, _ = write_2d(tmp_path, "mha")
    volume = read_prediction(preds / "case_0001.mha")
    # Direction ((0, 1), (1, 0)) and spacing (0.7, 0.4) in LPS; z: spacing 1, origin 0.
    expected = np.array(
        [[0.0, -0.4, 0.0, -3.0], [-0.7, 0.0, 0.0, 2.0], [0.0, 0.0, 1.0, 0.0], [0, 0, 0, 1]]
    )
    np.testing.assert_array_equal(volume.affine, expected)


def test_png_codes_are_fractions_of_full_scale(tmp_path: Path) -> None:
    # float32(k) / float32(255) is the correctly rounded k/255 (torchvision's ToTensor).
    codes = np.arange(256, dtype=np.uint8).reshape(16, 16)
    Image.fromarray(codes).save(tmp_path / "p.png")
    read = read_prediction(tmp_path / "p.png").array[0, :, :, 0].T
    exact = np.arange(256, dtype=np.float64).reshape(16, 16) / 255
    np.testing.assert_array_equal(read, exact.astype(np.float32))
    assert read.ravel()[51] == np.float32(0.2)
    # 2-bit grayscale: k / 3 (libpng hands SimpleITK k * 85).
    Image.fromarray((codes % 4).astype(np.uint8)).save(tmp_path / "q.png", bits=2)
    quarter = read_prediction(tmp_path / "q.png").array[0, :, :, 0].T
    np.testing.assert_array_equal(quarter, (codes % 4).astype(np.float32) / np.float32(3))
    assert read_label(tmp_path / "q.png").array[:, :, 0].T.tolist() == (codes % 4).tolist()


# --------------------------------------------------------------------------- commands


@pytest.mark.parametrize("kind", KINDS)
def test_evaluate_equals_the_3d_volume(kind: str, tmp_path: Path) -> None:
    preds, labels, written = write_2d(tmp_path, kind)
    ref_preds, ref_labels = write_reference(tmp_path, written)
    _evaluate(preds, labels, tmp_path / "out")
    _evaluate(ref_preds, ref_labels, tmp_path / "ref_out")
    _same_outputs(tmp_path / "out", tmp_path / "ref_out")


@pytest.mark.parametrize("kind", ["png", "mha"])
def test_figures_equal_the_3d_volume(kind: str, tmp_path: Path) -> None:
    preds, labels, written = write_2d(tmp_path, kind)
    ref_preds, ref_labels = write_reference(tmp_path, written)
    # One folder name for both runs: the histogram names its run by it.
    out, ref_out = tmp_path / "2d" / "out", tmp_path / "3d" / "out"
    _evaluate(preds, labels, out, "--plots")
    _evaluate(ref_preds, ref_labels, ref_out, "--plots")
    figures = _digest(out / "figures")
    assert len(figures) == 3 and figures == _digest(ref_out / "figures")
    for folder in (out, ref_out):
        code, _, stderr = run_cli(
            "plot-diagram", folder, "--case", CASES[0], "--out", folder.parent / "diagram.png"
        )
        assert code == 0, stderr
    diagrams = [(folder.parent / "diagram.png").read_bytes() for folder in (out, ref_out)]
    assert diagrams[0] == diagrams[1]


@pytest.mark.parametrize("kind", ["png", "tif-float", "nii-2d", "nii-2d-channels", "mha"])
def test_temperature_equals_the_3d_volume(kind: str, tmp_path: Path) -> None:
    preds, labels, written = write_2d(tmp_path, kind)
    ref_preds, ref_labels = write_reference(tmp_path, written)
    fits = {}
    for name, folders in (("2d", (preds, labels)), ("3d", (ref_preds, ref_labels))):
        code, _, stderr = run_cli("fit-temperature", *folders, "--out", tmp_path / f"{name}.json")
        assert code == 0, stderr
        fits[name] = json.loads((tmp_path / f"{name}.json").read_text())
    fits["2d"].pop("inputs", None), fits["3d"].pop("inputs", None)
    assert fits["2d"] == fits["3d"]

    before = _digest(preds)
    outs = {}
    for name, folder in (("2d", preds), ("3d", ref_preds)):
        out = tmp_path / f"calibrated_{name}"
        code, _, stderr = run_cli(
            "apply-temperature", folder, "--temperature", tmp_path / "2d.json", "--out", out
        )
        assert code == 0, stderr
        outs[name] = out
    assert _digest(preds) == before  # inputs untouched
    for case in CASES:
        reference = np.asarray(nib.load(outs["3d"] / f"{case}.nii.gz").dataobj, np.float32)
        files = [p for p in outs["2d"].iterdir() if p.name.startswith(case)]
        assert len(files) == 1 and not any(p.name.startswith(".") for p in outs["2d"].iterdir())
        _check_calibrated(kind, files[0], reference, preds)


def _check_calibrated(kind: str, path: Path, reference: np.ndarray, preds: Path) -> None:
    """A 2-D output in its input's format: PNG codes rint(255 p), TIFF and NIfTI floats."""
    source = next(preds.glob(path.name.split(".")[0] + ".*"))
    if kind == "png":
        assert path.suffix == ".png"
        codes = np.asarray(Image.open(path)).T  # (x, y), read independently of calibkit
        expected = np.rint(np.clip(reference[:, :, 0] * np.float32(255), 0, 255))
        np.testing.assert_array_equal(codes, expected.astype(np.uint8))
        assert sitk.ReadImage(str(path)).GetSpacing() == (0.3, 0.6)
    elif kind == "tif-float":
        assert path.suffix == ".tif"
        image = sitk.ReadImage(str(path))
        assert image.GetPixelID() == sitk.sitkFloat32
        np.testing.assert_array_equal(sitk.GetArrayFromImage(image).T, reference[:, :, 0])
        # The pixel spacing survives (TIFF stores it as float32 pixels per cm).
        np.testing.assert_allclose(
            image.GetSpacing(), sitk.ReadImage(str(source)).GetSpacing(), rtol=1e-6
        )
    elif kind == "nii-2d":
        image = nib.load(path)
        assert path.name.endswith(".nii.gz") and image.shape == SHAPE
        np.testing.assert_array_equal(np.asarray(image.dataobj), reference[:, :, 0])
    else:  # several channels: NIfTI (x, y, 1, C), also for a .mha input
        image = nib.load(path)
        assert path.name.endswith(".nii.gz") and image.shape == (*SHAPE, 1, CLASSES)
        np.testing.assert_array_equal(np.asarray(image.dataobj), reference)
        if kind == "mha":
            np.testing.assert_allclose(image.affine, read_prediction(source).affine, atol=1e-6)


# --------------------------------------------------------------------------- pairing


def test_pairing_in_one_folder_and_nnunet_npz(tmp_path: Path) -> None:
    preds, labels, written = write_2d(tmp_path, "png")
    both = tmp_path / "both"
    both.mkdir()
    for case in CASES:
        (both / f"{case}_pred.png").write_bytes((preds / f"{case}.png").read_bytes())
        (both / f"{case}_seg.png").write_bytes((labels / f"{case}_seg.png").read_bytes())
    assert [pair.case_id for pair in pair_cases(both, both).pairs] == list(CASES)
    # nnU-Net 2-D: CASE.npz (C, 1, y, x) probabilities next to its CASE.png argmax.
    nnunet = tmp_path / "nnunet"
    nnunet.mkdir()
    for case, (p, _) in written.items():
        stacked = np.concatenate([1 - p, p], axis=-1)  # (x, y, 2)
        np.savez(nnunet / f"{case}.npz", probabilities=stacked.T[:, np.newaxis])
        (nnunet / f"{case}.png").write_bytes((preds / f"{case}.png").read_bytes())
    pairs = pair_cases(nnunet, labels).pairs
    assert [pair.prediction.suffix for pair in pairs] == [".npz", ".npz"]
    # Channel 1 of the .npz is the PNG's map: the same numbers for class 1.
    _evaluate(nnunet, labels, tmp_path / "npz_out")
    _evaluate(preds, labels, tmp_path / "png_out")
    npz_table = (tmp_path / "npz_out" / "per_image.csv").read_text()
    assert npz_table == (tmp_path / "png_out" / "per_image.csv").read_text()


def test_a_0_255_mask_is_label_255(tmp_path: Path) -> None:
    preds, labels, _ = write_2d(tmp_path, "png")
    for case in CASES:
        path = labels / f"{case}_seg.png"
        mask = sitk.ReadImage(str(path))
        sitk.WriteImage(mask * 255, str(path))
    code, _, stderr = run_cli("evaluate", preds, labels, "--out", tmp_path / "out")
    assert_user_error(
        code,
        stderr,
        "label values [255] have no prediction channel",
        "a mask stored as 0/255 is read with --classes 255",
    )
    _evaluate(preds, labels, tmp_path / "out", "--classes", "255")


def test_a_0_1_png_prediction_warns_that_it_reads_as_1_over_255(tmp_path: Path) -> None:
    preds, labels, _ = write_2d(tmp_path, "png")
    for case in CASES:
        path = preds / f"{case}.png"
        image = sitk.ReadImage(str(path))
        mask = sitk.GetImageFromArray((sitk.GetArrayFromImage(image) > 127).astype(np.uint8))
        mask.CopyInformation(image)  # keep the spacing the label has
        sitk.WriteImage(mask, str(path))
    code, _, stderr = run_cli("evaluate", preds, labels, "--out", tmp_path / "out")
    assert code == 0, stderr
    assert "holds only the codes 0 and 1, read as probabilities 0 and 1/255" in stderr
    assert stderr.count("warning:") == len(CASES)


# --------------------------------------------------------------------------- refusals


def _png_prediction_set(tmp_path: Path) -> tuple[Path, Path]:
    preds, labels, _ = write_2d(tmp_path, "png")
    return preds, labels


def _pil(mode: str, **save: object) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        channels = {"RGB": 3, "RGBA": 4, "LA": 2}.get(mode)
        shape = (SHAPE[1], SHAPE[0], channels) if channels else (SHAPE[1], SHAPE[0])
        Image.fromarray(np.ones(shape, np.uint8)).convert(mode).save(path, **save)

    return write


def _itk_file(array: np.ndarray, vector: bool = False) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        sitk.WriteImage(_itk(array, vector), str(path))

    return write


REFUSED: dict[str, tuple[str, Callable[[Path], None], str]] = {
    # name: (which file, writer, message fragment)
    "RGB PNG prediction": (
        "pred",
        _pil("RGB"),
        "is a PNG image in RGB colour (3 values per pixel), not a probability map of one "
        "value per pixel; save it as a grayscale image, or a multi-class map as .mha or .nrrd "
        "with one vector component per class",
    ),
    "RGBA PNG label": (
        "label",
        _pil("RGBA"),
        "is a PNG image in RGBA colour (4 values per pixel), not a mask of one label value "
        "per pixel; save the label values as a grayscale (or palette) image",
    ),
    "grayscale + alpha PNG": ("label", _pil("LA"), "is a PNG image in grayscale with alpha"),
    "grayscale PNG with a transparent colour": (
        "pred",
        _pil("L", transparency=0),
        "is a PNG image in grayscale with a tRNS transparent colour (2 values per pixel)",
    ),
    "palette PNG prediction": (
        "pred",
        _pil("P"),
        "is a palette (indexed-colour) PNG, whose pixels are colours, not probabilities",
    ),
    "RGB TIFF label": (
        "label",
        _itk_file(np.ones((*SHAPE, 3), np.uint8), vector=True),
        "is a TIFF image in RGB colour (3 values per pixel)",
    ),
    "int16 TIFF prediction": (
        "pred",
        _itk_file(np.ones(SHAPE, np.int16)),
        "stores 16-bit signed integers; a TIFF probability map must store 8- or 16-bit "
        "unsigned codes (k/255, k/65535) or floats",
    ),
    "1-bit TIFF mask": ("label", _pil("1"), "stores 1-bit samples"),
    "text named .png": ("pred", lambda path: path.write_text("case,ace\n"), "not a PNG or TIFF"),
    "PNG with an sBIT chunk": (
        "label",
        lambda path: _with_chunk(_pil("L"), path, b"sBIT", b"\x04"),
        "has an sBIT chunk (4 significant bits of 8), which SimpleITK applies by shifting "
        "the values right and other readers ignore; save it without the sBIT chunk",
    ),
    "white-is-zero TIFF": (
        "pred",
        lambda path: _white_is_zero(_itk_file(np.ones(SHAPE, np.uint8)), path),
        "stores white-is-zero grayscale (TIFF photometric 0), which readers disagree on",
    ),
    "PNG chunk longer than the file": (
        "pred",
        lambda path: _with_chunk(_pil("L"), path, b"tEXt", b"a\0b", claimed=1 << 30),
        "cannot be read as PNG (truncated or corrupt file: its 'tEXt' chunk claims "
        "1073741824 bytes",
    ),
}


def _with_chunk(
    write: Callable[[Path], None], path: Path, name: bytes, data: bytes, claimed: int = -1
) -> None:
    """Write with ``write``, then add a chunk after IHDR (its length field ``claimed``)."""
    write(path)
    raw = path.read_bytes()
    length = len(data) if claimed < 0 else claimed
    body = name + data
    chunk = length.to_bytes(4, "big") + body + zlib.crc32(body).to_bytes(4, "big")
    path.write_bytes(raw[:33] + chunk + raw[33:])


def _white_is_zero(write: Callable[[Path], None], path: Path) -> None:
    """Write a TIFF with ``write``, then set its PhotometricInterpretation to 0."""
    write(path)
    raw = bytearray(path.read_bytes())
    order = "little" if raw[:2] == b"II" else "big"
    offset = int.from_bytes(raw[4:8], order)
    for i in range(int.from_bytes(raw[offset : offset + 2], order)):
        entry = offset + 2 + 12 * i
        if int.from_bytes(raw[entry : entry + 2], order) == 262:
            raw[entry + 8 : entry + 10] = (0).to_bytes(2, order)
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("name", list(REFUSED))
def test_refused(name: str, tmp_path: Path) -> None:
    which, write, fragment = REFUSED[name]
    preds, labels = _png_prediction_set(tmp_path)
    folder, stem = (preds, CASES[1]) if which == "pred" else (labels, f"{CASES[1]}_seg")
    suffix = ".tif" if "TIFF" in name else ".png"
    (folder / f"{stem}.png").unlink()
    target = folder / f"{stem}{suffix}"
    write(target)
    out = tmp_path / "out"
    code, _, stderr = run_cli("evaluate", preds, labels, "--out", out)
    assert_user_error(code, stderr, f"{target}: ", fragment)
    assert not out.exists()


def _nifti(path: Path, data: np.ndarray, affine: np.ndarray = ITK_IDENTITY) -> None:
    nib.save(nib.Nifti1Image(data, affine), path)


SHAPES: dict[str, tuple[np.ndarray, str]] = {
    # name: (NIfTI prediction paired with the (13, 9) PNG label, message fragment)
    "channels on the slice axis": (
        np.full((*SHAPE, 3), 1 / 3, np.float32),
        "shape (13, 9, 3) does not match label {label} shape (13, 9, 1); the label is a 2-D "
        "image and this map has 3 slices: if they are 3 class channels, store them as "
        "channels (NIfTI keeps them last, (x, y, 1, C)); else pair it with its 3-D label",
    ),
    "channels first": (
        np.full((3, *SHAPE), 1 / 3, np.float32),
        "shape (3, 13, 9) does not match label {label} shape (13, 9, 1); the label is a 2-D "
        "image and this map looks channel-first, (C, x, y) with 3 channels: store them as "
        "channels (NIfTI keeps them last, (x, y, 1, C))",
    ),
    "a 3-D map": (
        np.full((*SHAPE, 4, 3), 1 / 3, np.float32),
        "the label is a 2-D image but this map is 3-D (4 slices of 3 channels): pair 2-D "
        "maps with 2-D labels",
    ),
    "x and y swapped": (
        np.full(SHAPE[::-1], 0.5, np.float32),
        "its axes are the label's in reverse order: numpy arrays are written x first by "
        "nibabel but y first (rows) by SimpleITK, PNG and TIFF writers",
    ),
}


@pytest.mark.parametrize("name", list(SHAPES))
def test_shape_mismatch_says_why(name: str, tmp_path: Path) -> None:
    data, fragment = SHAPES[name]
    preds, labels = _png_prediction_set(tmp_path)
    (preds / f"{CASES[1]}.png").unlink()
    target = preds / f"{CASES[1]}.nii.gz"
    _nifti(target, data)
    code, _, stderr = run_cli("evaluate", preds, labels, "--out", tmp_path / "out")
    label = labels / f"{CASES[1]}_seg.png"
    assert_user_error(code, stderr, f"{target}: ", fragment.format(label=label))


def test_multi_page_tiff_against_a_2d_label(tmp_path: Path) -> None:
    preds, labels = _png_prediction_set(tmp_path)
    (preds / f"{CASES[1]}.png").unlink()
    pages = np.full((*SHAPE, 3), 0.25, np.float32)
    sitk.WriteImage(
        sitk.GetImageFromArray(pages.transpose(2, 1, 0)), str(preds / f"{CASES[1]}.tif")
    )
    code, _, stderr = run_cli("evaluate", preds, labels, "--out", tmp_path / "out")
    assert_user_error(
        code,
        stderr,
        "this map has 3 slices: if they are 3 class channels, store them as channels (as "
        ".mha or .nrrd with one vector component per channel, a float TIFF with one sample "
        "per channel, or NIfTI (x, y, 1, C))",
    )


def test_2d_map_against_a_3d_label(tmp_path: Path) -> None:
    preds, labels = _png_prediction_set(tmp_path)
    (labels / f"{CASES[1]}_seg.png").unlink()
    _nifti(labels / f"{CASES[1]}_seg.nii.gz", np.zeros((*SHAPE, 5), np.uint8))
    code, _, stderr = run_cli("evaluate", preds, labels, "--out", tmp_path / "out")
    assert_user_error(
        code,
        stderr,
        "this map is a 2-D image but the label has 5 slices: pair 2-D maps with 2-D labels",
    )


def test_geometry_mismatch_names_spacing_and_orientation(tmp_path: Path) -> None:
    preds, labels = _png_prediction_set(tmp_path)
    label = labels / f"{CASES[1]}_seg.png"
    mask = sitk.ReadImage(str(label))
    label.unlink()
    # A TIFF label with a resolution of 0.25 mm against a PNG map of 0.3 x 0.6 mm.
    mask.SetSpacing((0.25, 0.25))
    sitk.WriteImage(mask, str(labels / f"{CASES[1]}_seg.tif"))
    code, _, stderr = run_cli("evaluate", preds, labels, "--out", tmp_path / "out")
    assert_user_error(
        code,
        stderr,
        "by up to 0.35 mm (voxel size 0.3 x 0.6 x 1 mm here, 0.25 x 0.25 x 1 mm in the label)",
    )
    # A 2-D NIfTI saved with nibabel's RAS affine against a PNG (ITK's LPS).
    (labels / f"{CASES[1]}_seg.tif").unlink()
    ras = np.diag([0.3, 0.6, 1.0, 1.0])
    _nifti(labels / f"{CASES[1]}_seg.nii.gz", np.zeros(SHAPE, np.uint8), ras)
    code, _, stderr = run_cli("evaluate", preds, labels, "--out", tmp_path / "out")
    assert_user_error(
        code, stderr, "x and y point the opposite ways: NIfTI's RAS against ITK's LPS"
    )


def test_apply_temperature_never_writes_colour_or_several_channels_to_png(tmp_path: Path) -> None:
    from calibkit.io import write_prediction

    target = tmp_path / "p.png"
    with pytest.raises(InputError, match=re.escape("a PNG holds one 2-D channel")):
        write_prediction(target, np.full((2, *SHAPE, 1), 0.5))
    with pytest.raises(InputError, match="PNG cannot store float32"):
        write_prediction(target, np.full((1, *SHAPE, 1), 0.5), storage="float32")
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("name", "dtype"),
    [("a.png", np.uint8), ("b.png", np.uint16), ("c.tif", np.uint8), ("d.tiff", np.uint16)],
)
def test_png_and_tiff_outputs_keep_bit_depth_and_spacing(
    name: str, dtype: type[np.unsignedinteger], tmp_path: Path
) -> None:
    from calibkit.io import write_prediction
    from calibkit.io.writing import rewrite_storage, rewrite_suffix

    reference = tmp_path / f"ref_{name}"
    image = sitk.GetImageFromArray(np.zeros(SHAPE[::-1], dtype))
    image.SetSpacing((0.3, 0.6))
    sitk.WriteImage(image, str(reference))
    storage = rewrite_storage(reference)
    assert storage == np.dtype(dtype).name and rewrite_suffix(reference) == reference.suffix
    p = np.random.default_rng(3).random((1, *SHAPE, 1)).astype(np.float32)
    write_prediction(tmp_path / name, p, reference, storage=storage)
    written = read_prediction(tmp_path / name)
    # Codes rint(p * (2**bits - 1)), read back as code / (2**bits - 1).
    full_scale = np.float32(np.iinfo(dtype).max)
    np.testing.assert_array_equal(written.array, np.rint(p * full_scale) / full_scale)
    assert sitk.ReadImage(str(tmp_path / name)).GetPixelID() == image.GetPixelID()
    # TIFF keeps the spacing as pixels per cm, which SimpleITK reads as float32: each of
    # the two files' 0.6 mm is off by at most half an ulp of float32, 0.6 * 2**-24.
    tolerance = 2 * 0.6 * 2.0**-24
    np.testing.assert_allclose(written.affine, read_prediction(reference).affine, atol=tolerance)
