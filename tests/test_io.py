"""Volume reading, geometry checks and atomic writing (calibkit.io.volumes / writing / atomic)."""

from __future__ import annotations

import gzip
import os
import re
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest

from calibkit.errors import InputError, OutputError
from calibkit.io import atomic
from calibkit.io.atomic import atomic_path, atomic_write_bytes, atomic_write_text
from calibkit.io.simpleitk import _read_sitk
from calibkit.io.volumes import (
    Volume,
    check_geometry,
    read_label,
    read_prediction,
    split_suffix,
    write_prediction,
)


def _affine() -> np.ndarray:
    """Rotated, anisotropic, shifted: exercises every affine entry ITK can represent."""
    theta = 0.3
    rotation = np.array(
        [[np.cos(theta), -np.sin(theta), 0.0], [np.sin(theta), np.cos(theta), 0.0], [0, 0, 1]]
    )
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([0.8, 1.2, 2.5])
    affine[:3, 3] = [-10.0, 20.5, 33.0]
    return affine


def _save(path: Path, data: np.ndarray, affine: np.ndarray | None = None) -> Path:
    # explicit dtype: nibabel refuses int64 data otherwise
    image = nib.Nifti1Image(data, _affine() if affine is None else affine, dtype=data.dtype)
    nib.save(image, path)
    return path


def _probabilities(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    return rng.random(shape).astype(np.float32)


# --------------------------------------------------------------------------- names


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("CASE_001_seg.nii.gz", ("CASE_001_seg", ".nii.gz")),
        ("case.NII.GZ", ("case", ".nii.gz")),
        ("case.nii", ("case", ".nii")),
        ("case.nrrd", ("case", ".nrrd")),
        ("case.npz", ("case", ".npz")),
        ("notes.txt", ("notes", ".txt")),
    ],
)
def test_split_suffix(name: str, expected: tuple[str, str]) -> None:
    assert split_suffix(Path("some/folder") / name) == expected


# --------------------------------------------------------------------------- predictions


def test_read_3d_is_one_channel(tmp_path: Path, rng: np.random.Generator) -> None:
    data = _probabilities(rng, (4, 5, 6))
    volume = read_prediction(_save(tmp_path / "p.nii.gz", data))
    assert volume.array.shape == (1, 4, 5, 6)
    assert volume.array.dtype == np.float32
    np.testing.assert_array_equal(volume.array[0], data)
    np.testing.assert_allclose(volume.affine, _affine(), atol=1e-6)
    assert volume.path == tmp_path / "p.nii.gz"


def test_read_4d_is_channel_first(tmp_path: Path, rng: np.random.Generator) -> None:
    data = _probabilities(rng, (4, 5, 6, 3))
    volume = read_prediction(_save(tmp_path / "p.nii", data))
    assert volume.array.shape == (3, 4, 5, 6)
    for c in range(3):
        np.testing.assert_array_equal(volume.array[c], data[..., c])
    # channel-first is a view of the (x, y, z, C) data, not a copy
    assert volume.array.base is not None
    # the finiteness check's minimum and maximum travel with the volume
    assert volume.value_range == (float(data.min()), float(data.max()))


def test_read_5d_with_singleton_fourth_dim(tmp_path: Path, rng: np.random.Generator) -> None:
    data = _probabilities(rng, (4, 5, 6, 1, 3))
    volume = read_prediction(_save(tmp_path / "p.nii.gz", data))
    assert volume.array.shape == (3, 4, 5, 6)
    np.testing.assert_array_equal(volume.array[2], data[..., 0, 2])


def test_read_5d_with_time_axis_is_rejected(tmp_path: Path, rng: np.random.Generator) -> None:
    path = _save(tmp_path / "p.nii.gz", _probabilities(rng, (4, 5, 6, 2, 3)))
    with pytest.raises(InputError, match=r"4th dimension.*\(x, y, z, 1, C\)"):
        read_prediction(path)


@pytest.mark.parametrize("shape", [(4,), (2, 2, 2, 1, 2, 2)])
def test_read_wrong_dimensionality(tmp_path: Path, shape: tuple[int, ...]) -> None:
    path = _save(tmp_path / "p.nii.gz", np.zeros(shape, np.float32))
    with pytest.raises(InputError, match=rf"{len(shape)}-D image.*expected \(x, y\), \(x, y, z\)"):
        read_prediction(path)


def test_read_2d_nifti_is_one_slice(tmp_path: Path) -> None:
    data = np.arange(20, dtype=np.float32).reshape(4, 5) / 20
    volume = read_prediction(_save(tmp_path / "p.nii.gz", data))
    np.testing.assert_array_equal(volume.array, data[np.newaxis, :, :, np.newaxis])


@pytest.mark.parametrize(
    ("dtype", "scale"), [(np.uint8, 255), (np.uint16, 65535)], ids=["uint8", "uint16"]
)
def test_scaled_integer_storage_gives_probabilities(
    tmp_path: Path, dtype: type[np.integer], scale: int
) -> None:
    stored = np.linspace(0, scale, 2 * 3 * 4 * 2).round().astype(dtype).reshape(2, 3, 4, 2)
    stored.flat[-1] = scale
    img = nib.Nifti1Image(stored, np.eye(4))
    img.set_data_dtype(dtype)
    img.header.set_slope_inter(1.0 / scale, 0.0)
    nib.save(img, tmp_path / "p.nii.gz")
    array = read_prediction(tmp_path / "p.nii.gz").array
    assert array.dtype == np.float32
    # what nibabel-based loaders (MONAI LoadImage) give: float64 scaling, then float32
    expected = np.moveaxis(nib.load(tmp_path / "p.nii.gz").get_fdata().astype(np.float32), -1, 0)
    np.testing.assert_array_equal(array, expected)
    assert array.max() == np.float32(1.0)
    assert array.min() == np.float32(0.0)


def test_uint8_scaling_equals_nibabel_bit_for_bit(tmp_path: Path) -> None:
    stored = np.arange(256, dtype=np.uint8).reshape(4, 4, 4, 4, order="F")
    img = nib.Nifti1Image(stored, np.eye(4))
    img.set_data_dtype(np.uint8)
    img.header.set_slope_inter(1.0 / 255, 0.0)
    nib.save(img, tmp_path / "p.nii.gz")
    array = read_prediction(tmp_path / "p.nii.gz").array
    nibabel_values = nib.load(tmp_path / "p.nii.gz").get_fdata().astype(np.float32)
    np.testing.assert_array_equal(np.moveaxis(array, 0, -1), nibabel_values)
    # 51 * float32(1/255) is 0.20000002, not float32(0.2): the same value MONAI sees.
    assert stored[3, 0, 3, 0] == 51
    assert array[0, 3, 0, 3] == np.float32(51 * np.float64(np.float32(1 / 255)))


def test_scaled_read_has_no_float64_copy(tmp_path: Path) -> None:
    import tracemalloc

    stored = np.zeros((64, 64, 64, 4), np.uint8)
    img = nib.Nifti1Image(stored, np.eye(4))
    img.set_data_dtype(np.uint8)
    img.header.set_slope_inter(1.0 / 255, 0.0)
    nib.save(img, tmp_path / "p.nii")  # uncompressed: no gzip buffers in the count
    tracemalloc.start()
    try:
        read_prediction(tmp_path / "p.nii")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    float32_bytes = stored.size * 4
    assert peak < 1.5 * float32_bytes  # uint8 + float32 is 1.25x; a float64 copy alone 2x


def test_float64_storage_gives_float32(tmp_path: Path, rng: np.random.Generator) -> None:
    data = rng.random((4, 5, 6, 3))
    volume = read_prediction(_save(tmp_path / "p.nii.gz", data))
    assert volume.array.dtype == np.float32
    np.testing.assert_array_equal(volume.array, np.moveaxis(data.astype(np.float32), -1, 0))
    data3 = rng.random((4, 5, 6))
    volume3 = read_prediction(_save(tmp_path / "q.nii", data3))
    assert volume3.array.dtype == np.float32
    np.testing.assert_array_equal(volume3.array[0], data3.astype(np.float32))


def test_big_endian_storage(tmp_path: Path, rng: np.random.Generator) -> None:
    data = _probabilities(rng, (3, 4, 5, 2)).astype(">f4")
    volume = read_prediction(_save(tmp_path / "p.nii.gz", data))
    assert volume.array.dtype == np.dtype(np.float32)
    np.testing.assert_array_equal(volume.array, np.moveaxis(data, -1, 0))


def test_npz_transpose(tmp_path: Path, rng: np.random.Generator) -> None:
    probabilities = np.zeros((3, 6, 5, 4), np.float16)  # (C, z, y, x)
    probabilities[2, 5, 1, 3] = 0.75  # channel 2, x=3, y=1, z=5
    np.savez_compressed(tmp_path / "p.npz", probabilities=probabilities, other=np.ones(2))
    volume = read_prediction(tmp_path / "p.npz")
    assert volume.array.shape == (3, 4, 5, 6)
    assert volume.array.dtype == np.float32
    assert volume.affine is None
    assert volume.array[2, 3, 1, 5] == np.float32(0.75)
    assert np.count_nonzero(volume.array) == 1


def test_npz_missing_key_lists_keys(tmp_path: Path) -> None:
    np.savez(tmp_path / "p.npz", softmax=np.zeros((2, 2, 2, 2)), seg=np.zeros(2))
    with pytest.raises(InputError, match=r"no 'probabilities' array.*'softmax', 'seg'"):
        read_prediction(tmp_path / "p.npz")


def test_npz_wrong_dimensionality(tmp_path: Path) -> None:
    np.savez(tmp_path / "p.npz", probabilities=np.zeros((2, 2, 2)))
    with pytest.raises(InputError, match=r"expected 4-D \(C, z, y, x\)"):
        read_prediction(tmp_path / "p.npz")


# --------------------------------------------------------------------------- SimpleITK


def test_sitk_reads_nifti_with_nibabel_affine(tmp_path: Path, rng: np.random.Generator) -> None:
    data = _probabilities(rng, (5, 6, 7))
    path = _save(tmp_path / "p.nii.gz", data)
    array, affine = _read_sitk(path, as_float32=True)
    np.testing.assert_allclose(affine, nib.load(path).affine, atol=1e-4)
    np.testing.assert_array_equal(array.transpose(2, 1, 0), data)


@pytest.mark.parametrize("suffix", [".nrrd", ".mha", ".nhdr", ".mhd"])
def test_sitk_scalar_round_trip(tmp_path: Path, rng: np.random.Generator, suffix: str) -> None:
    import SimpleITK as sitk

    data = _probabilities(rng, (5, 6, 7))
    source = _save(tmp_path / "p.nii.gz", data)
    sitk.WriteImage(sitk.ReadImage(str(source)), str(tmp_path / f"p{suffix}"))
    volume = read_prediction(tmp_path / f"p{suffix}")
    reference = read_prediction(source)
    assert volume.array.shape == (1, 5, 6, 7)
    np.testing.assert_array_equal(volume.array, reference.array)
    np.testing.assert_allclose(volume.affine, reference.affine, atol=1e-4)


@pytest.mark.parametrize("suffix", [".nrrd", ".mha"])
def test_sitk_vector_round_trip(tmp_path: Path, rng: np.random.Generator, suffix: str) -> None:
    import SimpleITK as sitk

    data = _probabilities(rng, (5, 6, 7, 3))  # (x, y, z, C)
    reference = read_prediction(_save(tmp_path / "p.nii.gz", data))
    image = sitk.GetImageFromArray(data.transpose(2, 1, 0, 3), isVector=True)
    lps = reference.affine.copy()
    lps[:2] *= -1
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    image.SetSpacing(spacing.tolist())
    image.SetDirection((lps[:3, :3] / spacing).ravel().tolist())
    image.SetOrigin(lps[:3, 3].tolist())
    sitk.WriteImage(image, str(tmp_path / f"p{suffix}"))
    volume = read_prediction(tmp_path / f"p{suffix}")
    assert volume.array.shape == (3, 5, 6, 7)
    assert volume.array.dtype == np.float32
    np.testing.assert_array_equal(volume.array, reference.array)
    np.testing.assert_allclose(volume.affine, reference.affine, atol=1e-4)


def test_sitk_label_round_trip(tmp_path: Path, rng: np.random.Generator) -> None:
    import SimpleITK as sitk

    labels = rng.integers(0, 5, (5, 6, 7)).astype(np.uint8)
    source = _save(tmp_path / "l.nii.gz", labels)
    sitk.WriteImage(sitk.ReadImage(str(source)), str(tmp_path / "l.nrrd"))
    volume = read_label(tmp_path / "l.nrrd")
    assert volume.array.dtype.kind in "iu"
    np.testing.assert_array_equal(volume.array, labels)
    np.testing.assert_allclose(volume.affine, read_label(source).affine, atol=1e-4)


def test_sitk_corrupt_file(tmp_path: Path) -> None:
    path = tmp_path / "p.mha"
    path.write_text("ObjectType = Image\nNDims = 3\nDimSize = 4 4 4\nElementType = MET_FLOAT\n")
    with pytest.raises(InputError, match=r"p\.mha: cannot be read as MHA"):
        read_prediction(path)


# --------------------------------------------------------------------------- bad values


def test_nan_and_inf_are_reported(tmp_path: Path) -> None:
    data = np.full((3, 3, 3, 3), 0.5, np.float32)
    data[0, 1, 2, 1] = np.nan
    data[1, 1, 2, 1] = np.nan
    data[2, 2, 2, 1] = np.nan
    data[0, 0, 0, 2] = np.inf
    path = _save(tmp_path / "p.nii.gz", data)
    with pytest.raises(InputError) as info:
        read_prediction(path)
    message = str(info.value)
    assert message.startswith(str(path))
    assert "3 NaN values in channel 1" in message
    assert "1 infinite values in channel 2" in message
    assert "(0, 1, 2)" in message
    assert "\n" not in message


def test_truncated_gzip(tmp_path: Path, rng: np.random.Generator) -> None:
    path = _save(tmp_path / "p.nii.gz", _probabilities(rng, (10, 10, 10, 2)))
    content = path.read_bytes()
    path.write_bytes(content[: len(content) // 2])
    with pytest.raises(InputError, match=r"cannot be read as NIfTI \(truncated or corrupt") as info:
        read_prediction(path)
    assert str(path) in str(info.value)
    assert "\n" not in str(info.value)


def test_truncated_uncompressed(tmp_path: Path, rng: np.random.Generator) -> None:
    path = _save(tmp_path / "p.nii", _probabilities(rng, (10, 10, 10)))
    content = path.read_bytes()
    path.write_bytes(content[: len(content) // 2])
    with pytest.raises(InputError, match="truncated or corrupt"):
        read_prediction(path)


def test_corrupt_gzip_stream(tmp_path: Path, rng: np.random.Generator) -> None:
    path = _save(tmp_path / "p.nii.gz", _probabilities(rng, (10, 10, 10)))
    content = bytearray(path.read_bytes())
    for i in range(len(content) // 2, len(content) - 10):
        content[i] ^= 0x5A
    path.write_bytes(bytes(content))
    with pytest.raises(InputError, match="truncated or corrupt"):
        read_prediction(path)


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "p.nii.gz"
    path.touch()
    with pytest.raises(InputError, match=r"p\.nii\.gz: file is empty \(0 bytes\)"):
        read_prediction(path)
    with pytest.raises(InputError, match="empty"):
        read_label(path)


@pytest.mark.parametrize("name", ["p.nii.gz", "p.nii"])
def test_text_file_with_nifti_name(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_text("this is not an image\n" * 30)
    with pytest.raises(InputError, match="cannot be read as NIfTI") as info:
        read_prediction(path)
    assert str(path) in str(info.value)


def test_gzipped_text_file(tmp_path: Path) -> None:
    path = tmp_path / "p.nii.gz"
    path.write_bytes(gzip.compress(b"hello" * 100))
    with pytest.raises(InputError, match="cannot be read as NIfTI"):
        read_prediction(path)


def test_missing_file_and_unknown_suffix(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="file not found"):
        read_prediction(tmp_path / "absent.nii.gz")
    (tmp_path / "p.jpg").write_bytes(b"x")  # lossy JPEG: never a probability map
    with pytest.raises(InputError, match=r"unsupported file type '\.jpg'"):
        read_prediction(tmp_path / "p.jpg")
    (tmp_path / "l.npz").write_bytes(b"x")
    with pytest.raises(InputError, match=r"unsupported file type '\.npz'"):
        read_label(tmp_path / "l.npz")


# --------------------------------------------------------------------------- labels


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.int32, np.int64, np.uint16])
def test_integer_labels(tmp_path: Path, dtype: type[np.integer]) -> None:
    labels = np.arange(60).reshape(3, 4, 5).astype(dtype) % 5
    volume = read_label(_save(tmp_path / "l.nii.gz", labels))
    # 8- and 16-bit labels keep their type (no copy); wider ones shrink to int16.
    small = np.dtype(dtype).itemsize <= 2
    assert volume.array.dtype == (np.dtype(dtype) if small else np.int16)
    np.testing.assert_array_equal(volume.array, labels)


def test_large_label_values_use_int32(tmp_path: Path) -> None:
    labels = np.zeros((3, 4, 5), np.int32)
    labels[0, 0, 0] = 40000
    assert read_label(_save(tmp_path / "l.nii.gz", labels)).array.dtype == np.int32


def test_float_labels_with_integer_values(tmp_path: Path) -> None:
    labels = np.array([0.0, 1.0, 2.0, 4.0] * 15, np.float64).reshape(3, 4, 5)
    volume = read_label(_save(tmp_path / "l.nii.gz", labels))
    assert volume.array.dtype == np.int16
    np.testing.assert_array_equal(volume.array, labels.astype(np.int16))


@pytest.mark.parametrize(("bad", "shown"), [(0.5, "0.5"), (np.nan, "nan")])
def test_float_labels_with_fractions(tmp_path: Path, bad: float, shown: str) -> None:
    labels = np.zeros((3, 4, 5), np.float32)
    labels[1, 2, 3] = bad
    with pytest.raises(InputError, match=rf"non-integer values \(e\.g\. {shown}\)"):
        read_label(_save(tmp_path / "l.nii.gz", labels))


def test_label_trailing_singletons_squeezed(tmp_path: Path) -> None:
    labels = np.ones((3, 4, 5, 1), np.uint8)
    assert read_label(_save(tmp_path / "l.nii.gz", labels)).array.shape == (3, 4, 5)
    # A fourth axis longer than 1 is a multi-label ground truth, read channel-first.
    multi = read_label(_save(tmp_path / "m.nii.gz", np.ones((3, 4, 5, 2), np.uint8)))
    assert multi.array.shape == (2, 3, 4, 5)
    assert read_label(
        _save(tmp_path / "v.nii.gz", np.ones((3, 4, 5, 1, 2), np.uint8))
    ).array.shape == (
        2,
        3,
        4,
        5,
    )
    with pytest.raises(InputError, match=r"expected a 3-D \(x, y, z\) .*multi-label"):
        read_label(_save(tmp_path / "w.nii.gz", np.ones((3, 4, 5, 2, 2), np.uint8)))
    # A 2-D label map is one slice.
    assert read_label(_save(tmp_path / "n.nii.gz", np.ones((3, 4), np.uint8))).array.shape == (
        3,
        4,
        1,
    )
    with pytest.raises(InputError, match="expected a 3-D"):
        read_label(_save(tmp_path / "o.nii.gz", np.ones((3,), np.uint8)))


# --------------------------------------------------------------------------- geometry


def _volume(shape: tuple[int, ...], affine: np.ndarray | None, name: str) -> Volume:
    return Volume(array=np.zeros(shape, np.float32), affine=affine, path=Path(name))


def test_geometry_ok() -> None:
    pred = _volume((2, 3, 4, 5), _affine(), "p.nii.gz")
    label = _volume((3, 4, 5), _affine() + 1e-4, "l.nii.gz")
    assert check_geometry(pred, label) is None
    assert check_geometry(pred, _volume((3, 4, 5), None, "l.nii.gz")) is None


def test_geometry_shape_mismatch_raises() -> None:
    pred = _volume((2, 3, 4, 5), None, "p.nii.gz")
    label = _volume((3, 4, 6), None, "l.nii.gz")
    with pytest.raises(InputError, match=r"p\.nii\.gz: shape \(3, 4, 5\) does not match label"):
        check_geometry(pred, label)


@pytest.mark.parametrize(
    ("name", "fragment"),
    [
        ("p.nii.gz", "the file's shape (2, 3, 4, 5) looks channel-first"),
        ("p.nii", "move the channel axis last"),
        # nnU-Net's .npz has its own fixed layout: no NIfTI channel axis to move.
        ("p.npz", "resample them first"),
    ],
)
def test_geometry_channel_first_hint_for_nifti(name: str, fragment: str) -> None:
    # A NIfTI (2, 3, 4, 5) is read channels-last: 5 channels on the grid (2, 3, 4).
    pred = _volume((5, 2, 3, 4), None, name)
    label = _volume((3, 4, 5), None, "l.nii.gz")
    with pytest.raises(InputError, match=re.escape(fragment)):
        check_geometry(pred, label)


def test_geometry_affine_mismatch_returns_message() -> None:
    shifted = _affine()
    shifted[0, 3] += 0.5
    pred = _volume((2, 3, 4, 5), shifted, "p.nii.gz")
    label = _volume((3, 4, 5), _affine(), "l.nii.gz")
    message = check_geometry(pred, label)
    assert message is not None
    assert "affine differs from label l.nii.gz by up to 0.5 mm" in message
    assert "--ignore-geometry" in message
    assert check_geometry(pred, label, tolerance_mm=1.0) is None


# --------------------------------------------------------------------------- writing


def _no_temporaries(folder: Path) -> bool:
    return not [p for p in folder.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize(("storage", "atol"), [("uint8", 0.5 / 255 + 1e-7), ("float32", 0)])
def test_write_prediction_round_trip(
    tmp_path: Path, rng: np.random.Generator, storage: str, atol: float
) -> None:
    reference = _save(tmp_path / "label.nii.gz", np.zeros((4, 5, 6), np.uint8))
    probabilities = _probabilities(rng, (3, 4, 5, 6))
    probabilities[0, 0, 0, 0], probabilities[1, 0, 0, 0] = 0.0, 1.0
    out = tmp_path / "out" / "case.nii.gz"
    out.parent.mkdir()
    write_prediction(out, probabilities, reference, storage=storage)
    img = nib.load(out)
    assert img.shape == (4, 5, 6, 3)
    assert img.get_data_dtype() == np.dtype(storage)
    np.testing.assert_allclose(img.affine, nib.load(reference).affine)
    volume = read_prediction(out)
    np.testing.assert_allclose(volume.array, probabilities, rtol=0, atol=atol)
    assert volume.array[1, 0, 0, 0] == 1.0
    assert _no_temporaries(out.parent)


def test_write_uint8_values_are_rounded_k_over_255(tmp_path: Path) -> None:
    values = np.array([0.0, 0.5 / 255 - 1e-4, 0.5 / 255 + 1e-4, 0.4, 1.0, 1.00005, -0.00005])
    array = values.astype(np.float32).reshape(1, 7, 1, 1)
    write_prediction(tmp_path / "p.nii", array, storage="uint8")
    img = nib.load(tmp_path / "p.nii")
    assert img.shape == (7, 1, 1)  # one channel -> 3-D
    np.testing.assert_array_equal(
        np.asarray(img.dataobj.get_unscaled()).ravel(), [0, 0, 1, 102, 255, 255, 0]
    )
    assert img.dataobj.slope == pytest.approx(1 / 255)


def test_write_uint16_storage(tmp_path: Path, rng: np.random.Generator) -> None:
    probabilities = _probabilities(rng, (2, 3, 4, 5))
    write_prediction(tmp_path / "p.nii.gz", probabilities, storage="uint16")
    assert nib.load(tmp_path / "p.nii.gz").get_data_dtype() == np.uint16
    array = read_prediction(tmp_path / "p.nii.gz").array
    np.testing.assert_allclose(array, probabilities, rtol=0, atol=0.5 / 65535 + 1e-7)


def test_write_rejects_out_of_range_and_nan(tmp_path: Path) -> None:
    array = np.full((1, 2, 2, 2), 0.5, np.float32)
    array[0, 0, 0, 0] = 1.5
    with pytest.raises(InputError, match=r"outside \[0, 1\].*float32 storage"):
        write_prediction(tmp_path / "p.nii.gz", array)
    write_prediction(tmp_path / "p.nii.gz", array, storage="float32")  # logits-like values ok
    array[0, 0, 0, 0] = np.nan
    with pytest.raises(InputError, match="NaN"):
        write_prediction(tmp_path / "q.nii.gz", array, storage="float32")
    assert not (tmp_path / "q.nii.gz").exists()


def test_write_refuses_to_overwrite_reference(tmp_path: Path) -> None:
    reference = _save(tmp_path / "case.nii.gz", np.zeros((2, 3, 4), np.float32))
    before = reference.read_bytes()
    with pytest.raises(InputError, match="refusing to overwrite the reference"):
        write_prediction(tmp_path / "." / "case.nii.gz", np.zeros((1, 2, 3, 4)), reference)
    assert reference.read_bytes() == before


def test_write_reference_shape_mismatch(tmp_path: Path) -> None:
    reference = _save(tmp_path / "label.nii.gz", np.zeros((2, 3, 4), np.uint8))
    with pytest.raises(InputError, match=r"shape \(2, 3, 4\) does not match"):
        write_prediction(tmp_path / "p.nii.gz", np.zeros((1, 2, 3, 5)), reference)


def test_write_with_sitk_reference(tmp_path: Path) -> None:
    import SimpleITK as sitk

    source = _save(tmp_path / "label.nii.gz", np.zeros((2, 3, 4), np.uint8))
    sitk.WriteImage(sitk.ReadImage(str(source)), str(tmp_path / "label.nrrd"))
    write_prediction(tmp_path / "p.nii.gz", np.zeros((2, 2, 3, 4)), tmp_path / "label.nrrd")
    np.testing.assert_allclose(nib.load(tmp_path / "p.nii.gz").affine, _affine(), atol=1e-4)


def test_write_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="must be a NIfTI"):
        write_prediction(tmp_path / "p.nrrd", np.zeros((1, 2, 2, 2)))
    with pytest.raises(ValueError, match="storage"):
        write_prediction(tmp_path / "p.nii.gz", np.zeros((1, 2, 2, 2)), storage="int8")
    with pytest.raises(ValueError, match=r"\(C, x, y, z\)"):
        write_prediction(tmp_path / "p.nii.gz", np.zeros((2, 2, 2)))


def test_write_failure_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "p.nii.gz"

    def broken_replace(src: object, dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(atomic.os, "replace", broken_replace)
    with pytest.raises(OutputError, match=r"p\.nii\.gz: cannot write \(no space left on device\)"):
        write_prediction(out, np.zeros((1, 2, 2, 2)))
    assert list(tmp_path.iterdir()) == []


def test_write_failure_keeps_previous_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "p.nii.gz"
    write_prediction(out, np.full((1, 2, 2, 2), 0.25))
    before = out.read_bytes()

    def broken_save(img: object, file_map: dict[str, Any]) -> None:
        file_map["image"].fileobj.write(b"half a file")
        raise KeyboardInterrupt

    monkeypatch.setattr(nib.Nifti1Image, "to_file_map", broken_save)
    with pytest.raises(KeyboardInterrupt):
        write_prediction(out, np.full((1, 2, 2, 2), 0.75))
    assert out.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["p.nii.gz"]


# --------------------------------------------------------------------------- atomic helpers


def test_atomic_write_text_and_bytes(tmp_path: Path) -> None:
    atomic_write_text(tmp_path / "a.json", '{"ok": true}\n')
    atomic_write_bytes(tmp_path / "b.bin", b"\x00\x01")
    atomic_write_text(tmp_path / "a.json", "replaced")
    assert (tmp_path / "a.json").read_text() == "replaced"
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.bin"]


def test_atomic_file_permissions_follow_umask(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
    finally:
        os.umask(old)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o644


def test_atomic_path_temporary_name_and_cleanup(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), atomic_path(tmp_path / "x.nii.gz") as tmp:
        assert tmp.parent == tmp_path
        assert tmp.name.startswith(".")
        assert tmp.name.endswith(".nii.gz")
        tmp.write_bytes(b"partial")
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_atomic_path_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(OutputError, match="cannot create a file"):
        atomic_write_text(tmp_path / "absent" / "a.txt", "x")
