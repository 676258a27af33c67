"""Mutated NIfTI / .npz / .mha files: one error line or correct numbers, never a crash.

``test_mutated_inputs`` runs a few seeded mutations per format (the large count is
``benchmarks/fuzz_readers.py``). The named tests below are the problems that fuzzing
found, each with a minimal input built in the test.
"""

from __future__ import annotations

import gzip
import io
import logging
import struct
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from conftest import assert_user_error
from fuzz_inputs import FORMATS, check_trial, make_trial, run_in_process

from calibkit.errors import InputError
from calibkit.io import claims
from calibkit.io.volumes import read_label, read_prediction

# (format, command, seeds): a few seconds in all. The seeds are fixed, so every run
# tries the same inputs; benchmarks/fuzz_readers.py tries thousands.
SMALL_COUNT = [(fmt, "evaluate", range(5)) for fmt in FORMATS] + [
    (fmt, "fit-temperature", range(100, 102)) for fmt in FORMATS
]


@pytest.mark.parametrize(
    ("fmt", "command", "seed"),
    [(fmt, command, seed) for fmt, command, seeds in SMALL_COUNT for seed in seeds],
)
def test_mutated_inputs(fmt: str, command: str, seed: int, tmp_path: Path) -> None:
    trial = make_trial(tmp_path, fmt, seed, command)
    _, problems = check_trial(trial, run_in_process)
    assert not problems, (trial.mutation, trial.target.name, problems)


# --------------------------------------------------------------------------- helpers


def _nifti(path: Path, data: np.ndarray, version: int = 1) -> Path:
    image_type = nib.Nifti1Image if version == 1 else nib.Nifti2Image
    nib.save(image_type(data, np.eye(4)), path)
    return path


def _set_dims(path: Path, dims: list[int], version: int = 1) -> None:
    """Overwrite ``dim`` in a NIfTI header (int16 at byte 40, or int64 at 16 for NIfTI-2)."""
    compressed = path.name.endswith(".gz")
    payload = bytearray(gzip.decompress(path.read_bytes()) if compressed else path.read_bytes())
    fmt, offset = ("<8h", 40) if version == 1 else ("<8q", 16)
    struct.pack_into(fmt, payload, offset, *(dims + [1] * (8 - len(dims))))
    path.write_bytes(gzip.compress(bytes(payload)) if compressed else bytes(payload))


def _user_error(path: Path, reader: object = read_prediction) -> str:
    with pytest.raises(InputError) as caught:
        reader(path)  # type: ignore[operator]
    message = str(caught.value)
    assert message.startswith(f"{path}: ") and "\n" not in message
    return message


def _npz_with_header(path: Path, header: str, compressed: bool = False) -> Path:
    """An .npz whose 'probabilities' member has ``header`` and 840 bytes of data."""
    text = header.encode("latin1")
    padded = text + b" " * ((-(10 + len(text) + 1)) % 64) + b"\n"
    member = b"\x93NUMPY\x01\x00" + struct.pack("<H", len(padded)) + padded + bytes(840)
    method = zipfile.ZIP_DEFLATED if compressed else zipfile.ZIP_STORED
    with zipfile.ZipFile(path, "w", method) as archive:
        archive.writestr("probabilities.npy", member)
    return path


def _mha(path: Path, *, compressed: bool = False) -> Path:
    probs = np.full((7, 6, 5, 2), 0.5, np.float32)
    sitk.WriteImage(sitk.GetImageFromArray(probs, isVector=True), str(path), compressed)
    return path


def _edit_mha_header(path: Path, old: str, new: str) -> None:
    raw = path.read_bytes()
    end = raw.index(b"ElementDataFile = LOCAL\n") + len(b"ElementDataFile = LOCAL\n")
    header = raw[:end].decode("latin1")
    assert old in header, header
    path.write_bytes(header.replace(old, new).encode("latin1") + raw[end:])


# --------------------------------------------------------------------------- memory bombs


def test_nifti_claiming_32767_cubed_is_refused_before_allocation(tmp_path: Path) -> None:
    # Found by fuzzing: nibabel allocated the claimed 140 TB (MemoryError traceback).
    path = _nifti(tmp_path / "p.nii", np.zeros((2, 2, 2), np.float32))
    _set_dims(path, [3, 32767, 32767, 32767])
    message = _user_error(path)
    assert "header claims shape (32767, 32767, 32767) x 4 bytes" in message
    assert "1.4e+14 bytes (128.0 TiB) of data, but the file holds 32 bytes after" in message


def test_nifti_gz_claiming_many_channels_is_refused_before_allocation(tmp_path: Path) -> None:
    # Found by fuzzing: 4-D, 20000 channels of 20000 x 1000 x 1000: MemoryError.
    path = _nifti(tmp_path / "p.nii.gz", np.zeros((2, 2, 2, 2), np.float32))
    _set_dims(path, [4, 20000, 1000, 1000, 20000])
    size = path.stat().st_size
    message = _user_error(path)
    assert f"but the file holds {size} compressed bytes (at most" in message


def test_nifti2_claiming_100000_cubed_gives_the_size(tmp_path: Path) -> None:
    path = _nifti(tmp_path / "p.nii", np.zeros((2, 2, 2), np.float32), version=2)
    _set_dims(path, [3, 100_000, 100_000, 100_000], version=2)
    message = _user_error(path)
    assert "4.0e+15 bytes (3.6 PiB) of data, but the file holds 32 bytes" in message


def test_nifti_label_claiming_too_much_is_refused(tmp_path: Path) -> None:
    path = _nifti(tmp_path / "l.nii.gz", np.zeros((2, 2, 2), np.uint8))
    _set_dims(path, [3, 32767, 32767, 32767])
    assert "header claims" in _user_error(path, read_label)


def test_large_nifti_gz_claim_checked_by_trailer_and_by_counting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Claims above the unchecked size are compared with the real decompressed length.

    With the threshold at 0 every file takes that path: a valid file passes by its
    gzip trailer, a valid two-member file by counting, a cut stream is refused.
    """
    monkeypatch.setattr(claims, "_UNCHECKED_CLAIM", 0)
    data = np.random.default_rng(0).random((4, 5, 6)).astype(np.float32)
    path = _nifti(tmp_path / "p.nii.gz", data)
    np.testing.assert_array_equal(read_prediction(path).array[0], data)

    payload = gzip.decompress(path.read_bytes())
    two_members = gzip.compress(payload[:500]) + gzip.compress(payload[500:])
    path.write_bytes(two_members)
    np.testing.assert_array_equal(read_prediction(path).array[0], data)

    short = gzip.compress(payload[:-100])  # consistent trailer, 100 data bytes missing
    path.write_bytes(short)
    assert "holds 380 bytes after its header (uncompressed)" in _user_error(path)


def test_npz_claiming_huge_shape_is_refused_before_allocation(tmp_path: Path) -> None:
    # Found by fuzzing: numpy allocated 10.7 PiB (MemoryError traceback).
    header = "{'descr': '<f4', 'fortran_order': False, 'shape': (3, 100000, 100000, 100000), }"
    message = _user_error(_npz_with_header(tmp_path / "p.npz", header))
    assert "'probabilities' of shape (3, 100000, 100000, 100000)" in message
    assert "1.2e+16 bytes (10.7 PiB) of data, but the file holds 840 bytes for it" in message


def test_npz_corrupt_npy_header_is_one_line(tmp_path: Path) -> None:
    # Found by fuzzing: numpy's header parser raised tokenize.TokenError (traceback).
    header = "{'descr': '<f4', 'fortran_order': False, 'shape': (3, 7, 6, 5, }"
    message = _user_error(_npz_with_header(tmp_path / "p.npz", header))
    assert "cannot be read as nnU-Net .npz" in message and "corrupt .npy header" in message


def test_npz_object_array_is_refused_before_reading(tmp_path: Path) -> None:
    header = "{'descr': '|O', 'fortran_order': False, 'shape': (3, 7, 6, 5), }"
    message = _user_error(_npz_with_header(tmp_path / "p.npz", header))
    assert "'probabilities' stores object values; expected floats" in message


def test_mha_claiming_huge_size_is_refused_before_allocation(tmp_path: Path) -> None:
    path = _mha(tmp_path / "p.mha")
    _edit_mha_header(path, "DimSize = 5 6 7", "DimSize = 100000 100000 100000")
    message = _user_error(path)
    assert "header claims size (100000, 100000, 100000) x 2 x 4 bytes" in message
    assert "8.0e+15 bytes (7.1 PiB) of data, but the file holds 1680 bytes after" in message


def test_mha_uncompress_failure_is_refused_not_read_as_garbage(tmp_path: Path) -> None:
    # Found by fuzzing: MetaIO printed "Uncompress failed" and SimpleITK returned
    # uninitialised memory, which was evaluated (different numbers each run).
    path = _mha(tmp_path / "p.mha")
    _edit_mha_header(path, "CompressedData = False", "CompressedData = True")
    assert "while decompressing data" in _user_error(path)


def test_mha_truncated_compressed_data_is_refused(tmp_path: Path) -> None:
    path = _mha(tmp_path / "p.mha", compressed=True)
    path.write_bytes(path.read_bytes()[:-10])
    assert "bytes after its header (uncompressed) (truncated or corrupt" in _user_error(path)


def test_simpleitk_printed_read_failure_becomes_the_error(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    # Found by fuzzing: MetaIO's "data not read completely" went to stderr as extra
    # lines below the error line, which said "No such file or directory".
    path = _mha(tmp_path / "p.mha")
    _edit_mha_header(path, "ElementDataFile", "HeaderSize = 99999999\nElementDataFile")
    message = _user_error(path)
    assert "file: MetaImage: M_ReadElementsData: data not read completely ideal = 1680" in message
    assert capfd.readouterr().err == ""


def test_mha_truncated_raw_data_is_refused_by_size(tmp_path: Path) -> None:
    path = _mha(tmp_path / "p.mha")
    path.write_bytes(path.read_bytes()[:-100])
    message = _user_error(path)
    assert "1.7e+03 bytes (1.6 KiB) of data, but the file holds 1580 bytes after its" in message


def test_mha_data_file_that_is_not_a_regular_file_is_refused(tmp_path: Path) -> None:
    path = _mha(tmp_path / "p.mha")
    _edit_mha_header(path, "ElementDataFile = LOCAL", "ElementDataFile = /dev/zero")
    assert "its data file '/dev/zero' is missing or not a regular file" in _user_error(path)


@pytest.mark.parametrize("ndims", ["-3", "99999999999"])
def test_mha_ndims_that_crash_simpleitk_are_refused(tmp_path: Path, ndims: str) -> None:
    # Found by fuzzing: SimpleITK's ReadImageInformation segfaults on these (the
    # worker process died). A real CLI process, so that a regression is a failed
    # test rather than a crashed test run.
    preds, labels = tmp_path / "preds", tmp_path / "labels"
    preds.mkdir()
    labels.mkdir()
    path = _mha(preds / "c_pred.mha")
    _edit_mha_header(path, "NDims = 3", f"NDims = {ndims}")
    _nifti(labels / "c_seg.nii.gz", np.zeros((5, 6, 7), np.uint8))
    out = tmp_path / "out"
    completed = subprocess.run(
        [sys.executable, "-m", "calibkit", "evaluate", preds, labels, "--out", out],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert_user_error(
        completed.returncode, completed.stderr, f"{path}: header gives NDims = {ndims}, not a"
    )
    assert not out.exists()


def test_compressed_mha_stream_shorter_than_its_image_is_refused(tmp_path: Path) -> None:
    # Found by fuzzing: ElementType changed to MET_DOUBLE on compressed float data;
    # MetaIO inflated half the image, silently left the rest uninitialised, and the
    # NaNs or numbers there differed from run to run.
    path = _mha(tmp_path / "p.mha", compressed=True)
    _edit_mha_header(path, "ElementType = MET_FLOAT", "ElementType = MET_DOUBLE")
    message = _user_error(path)
    assert "3.4e+03 bytes (3.3 KiB) of data, but the file holds 1680 bytes after its" in message
    assert "header (uncompressed)" in message


def test_compressed_mha_reads_only_its_compressed_data_size(tmp_path: Path) -> None:
    # Found by fuzzing: with "CompressedDataSize = 1" MetaIO inflates one byte and
    # silently leaves the image uninitialised; the length check read the whole stream.
    path = _mha(tmp_path / "p.mha", compressed=True)
    raw = path.read_bytes()
    start = raw.index(b"CompressedDataSize = ")
    end = raw.index(b"\n", start)
    path.write_bytes(raw[:start] + b"CompressedDataSize = 1" + raw[end:])
    assert "holds 0 bytes after its header (uncompressed)" in _user_error(path)


def test_mha_compressed_flag_spelt_oddly_is_read_as_simpleitk_reads_it(tmp_path: Path) -> None:
    # Found by fuzzing: "CompressedData = Tpue" (a flipped byte) is compressed for
    # MetaIO, but calibkit's size check took the data as raw and refused the file.
    path = _mha(tmp_path / "p.mha", compressed=True)
    _edit_mha_header(path, "CompressedData = True", "CompressedData = Tpue")
    np.testing.assert_array_equal(read_prediction(path).array, np.full((2, 5, 6, 7), 0.5))


def test_mha_compressed_false_spelt_oddly_is_read_as_simpleitk_reads_it(tmp_path: Path) -> None:
    # Found by fuzzing: "CompressedData =!False" is raw data for MetaIO (only T, t or
    # 1 start a true value); calibkit tried to inflate it and refused the file.
    path = _mha(tmp_path / "p.mha")
    _edit_mha_header(path, "CompressedData = False", "CompressedData =!False")
    np.testing.assert_array_equal(read_prediction(path).array, np.full((2, 5, 6, 7), 0.5))


def test_nifti_infinite_vox_offset_is_one_line(tmp_path: Path) -> None:
    # Found by fuzzing: nibabel's int(vox_offset) raised OverflowError (traceback).
    path = _nifti(tmp_path / "p.nii", np.full((2, 2, 2), 0.5, np.float32))
    raw = bytearray(path.read_bytes())
    struct.pack_into("<f", raw, 108, float("inf"))
    path.write_bytes(bytes(raw))
    assert "cannot convert float infinity to integer" in _user_error(path)


def test_nibabel_header_fixes_stay_off_stderr(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Found by fuzzing: nibabel logged "vox offset -1 too low ...; setting to minimum
    # value of 352" through a stderr handler, below the one error line.
    caplog.set_level(logging.DEBUG, logger="nibabel.global")
    path = _nifti(tmp_path / "p.nii", np.full((2, 2, 2), 0.5, np.float32))
    raw = bytearray(path.read_bytes())
    struct.pack_into("<f", raw, 108, -1.0)  # vox_offset
    path.write_bytes(bytes(raw))
    assert "vox offset -1 too low" in _user_error(path)
    assert caplog.records == []


def test_scl_slope_overflow_is_one_error_without_warnings(tmp_path: Path) -> None:
    # Found by fuzzing: scl_slope 1e38 on uint8 data printed numpy's "overflow
    # encountered in multiply" RuntimeWarning (two lines) above the error line.
    image = nib.Nifti1Image(np.full((2, 2, 2, 2), 200, np.uint8), np.eye(4))
    image.header.set_slope_inter(1e38, 0.0)
    path = tmp_path / "p.nii.gz"
    nib.save(image, path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert "8 infinite values in channel 0" in _user_error(path)


def test_npz_float64_beyond_float32_is_one_error_without_warnings(tmp_path: Path) -> None:
    path = tmp_path / "p.npz"
    np.savez(path, probabilities=np.full((1, 2, 2, 2), 1e300))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert "8 infinite values in channel 0" in _user_error(path)


def test_cli_error_for_a_bomb_is_one_line_and_leaves_no_output(tmp_path: Path) -> None:
    preds, labels = tmp_path / "preds", tmp_path / "labels"
    preds.mkdir()
    labels.mkdir()
    _nifti(labels / "c_seg.nii.gz", np.zeros((2, 2, 2), np.uint8))
    path = _nifti(preds / "c_pred.nii.gz", np.full((2, 2, 2), 0.5, np.float32))
    _set_dims(path, [3, 32767, 32767, 32767])
    out = tmp_path / "out"
    code, _, stderr, _ = run_in_process(["evaluate", str(preds), str(labels), "--out", str(out)])
    assert_user_error(code, stderr, f"error: {path}: header claims")
    assert not out.exists()


def test_npz_member_without_npy_suffix_is_named(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    np.save(buffer, np.zeros((1, 2, 2, 2), np.float32))
    path = tmp_path / "p.npz"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("probabilities", buffer.getvalue())
    assert "(a member without the .npy suffix)" in _user_error(path)
