"""Maps stored as uint8 / uint16 codes are binned from their codes, equal to the float path.

The code path makes each chunk of a class's float32 probabilities from the codes
and bins it as the float path bins the decoded map's chunk: the same float32
values, in the same chunks and the same order. So counts, Dice counts *and* float64
sums are equal bit for bit (``array_equal``, tighter than the 1e-12 the issue
allows), and so are the warnings and errors.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from calibkit import cases
from calibkit.binning import (
    bin_codes_with_label_map,
    bin_with_label_map,
    coded_channel_sum_error,
    coded_pass_applies,
)
from calibkit.classes import ClassSpec, class_probability
from calibkit.errors import InputError
from calibkit.io.pairing import CasePair
from calibkit.io.volumes import decode_prediction, read_prediction
from calibkit.records import CaseResult, EvaluationOptions

pytest.importorskip("numba")

SHAPE = (20, 18, 15)


def _save_map(
    path: Path, codes: np.ndarray, slope: float, inter: float = 0.0, big_endian: bool = False
) -> Path:
    header = nib.Nifti1Header(endianness=">" if big_endian else "<")
    header.set_data_dtype(codes.dtype)
    img = nib.Nifti1Image(codes, np.eye(4), header=header)
    img.header.set_slope_inter(slope, inter)
    nib.save(img, path)
    return path


def _case(
    tmp_path: Path,
    codes: np.ndarray,
    label: np.ndarray,
    slope: float,
    inter: float = 0.0,
    big_endian: bool = False,
) -> CasePair:
    prediction = _save_map(tmp_path / "c_pred.nii.gz", codes, slope, inter, big_endian)
    nib.save(nib.Nifti1Image(label, np.eye(4)), tmp_path / "c_seg.nii.gz")
    return CasePair("c", prediction, tmp_path / "c_seg.nii.gz")


def _float_path(pair: CasePair, options: EvaluationOptions, monkeypatch: pytest.MonkeyPatch):
    """``evaluate_case`` with the code path switched off: the map is decoded to float32."""
    with monkeypatch.context() as patch:
        patch.setattr(cases, "_coded_pass_applies", lambda case, options: False)
        return cases.evaluate_case(pair, options)


def _assert_same(coded: CaseResult, decoded: CaseResult) -> None:
    for name in ("count", "sum_p", "sum_y"):
        np.testing.assert_array_equal(getattr(coded.stats, name), getattr(decoded.stats, name))
    for name in ("intersection", "predicted", "truth"):
        np.testing.assert_array_equal(getattr(coded.overlap, name), getattr(decoded.overlap, name))
    assert coded.warnings == decoded.warnings


def _took_code_path(pair: CasePair, options: EvaluationOptions) -> bool:
    return cases._coded_pass_applies(cases.load_case(pair, options, keep_codes=True), options)


def _softmax_codes(rng: np.random.Generator, channels: int, full: int) -> np.ndarray:
    """Codes of a softmax map whose channels sum to about ``full`` (within rounding)."""
    weights = rng.dirichlet(np.full(channels, 0.3), size=SHAPE)
    return np.round(weights * full).astype(np.uint8 if full < 256 else np.uint16)


def test_big_endian_uint16_takes_the_float_path_alike(
    tmp_path: Path, rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch
) -> None:
    codes = rng.integers(0, 1001, size=SHAPE).astype(np.uint16)
    pair = _case(tmp_path, codes, np.ones(SHAPE, np.uint8), 1 / 1000, big_endian=True)
    options = EvaluationOptions()
    assert not _took_code_path(pair, options)
    _assert_same(cases.evaluate_case(pair, options), _float_path(pair, options, monkeypatch))


def test_brats_softmax_map_equals_float_path(
    tmp_path: Path, rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Single-channel (ET) and summed classes (TC, WT: clipped sums of codes' values)."""
    codes = _softmax_codes(rng, 4, 255)
    label = rng.choice(np.array([0, 1, 2, 4], np.uint8), size=SHAPE)
    pair = _case(tmp_path, codes, label, 1 / 255)
    options = EvaluationOptions(preset="brats")
    assert _took_code_path(pair, options)
    _assert_same(cases.evaluate_case(pair, options), _float_path(pair, options, monkeypatch))


@pytest.mark.parametrize(
    ("dtype", "full"), [(np.uint8, 20), (np.uint8, 255), (np.uint16, 20), (np.uint16, 40)]
)
def test_codes_on_bin_edges(
    tmp_path: Path,
    rng: np.random.Generator,
    monkeypatch: pytest.MonkeyPatch,
    dtype: type[np.unsignedinteger],
    full: int,
) -> None:
    """Scale 1/20 or 1/40 puts codes exactly on (or one rounding off) the 20 bin edges
    k/20, and on the Dice threshold 0.5; 1/255 on none."""
    codes = rng.integers(0, full + 1, size=(*SHAPE, 3)).astype(dtype)
    label = rng.integers(0, 3, size=SHAPE).astype(np.uint8)
    pair = _case(tmp_path, codes, label, 1 / full)
    options = EvaluationOptions(classes=(1, 2), include_background=True)
    assert _took_code_path(pair, options)
    coded = cases.evaluate_case(pair, options)
    _assert_same(coded, _float_path(pair, options, monkeypatch))
    assert coded.stats.count.sum() == 3 * codes[..., 0].size


def test_uint16_every_code(
    tmp_path: Path, rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """All 65,536 codes of uint16 storage with slope 1/65535, against a label map."""
    shape = (64, 64, 32)  # 131,072 voxels: each code twice, then shuffled
    codes = rng.permutation(np.tile(np.arange(65536, dtype=np.uint16), 2)).reshape(shape)
    label = rng.integers(0, 2, size=shape).astype(np.uint8)
    pair = _case(tmp_path, codes, label, 1 / 65535)
    options = EvaluationOptions(n_bins=15, dice_threshold=0.3)
    assert _took_code_path(pair, options)
    _assert_same(cases.evaluate_case(pair, options), _float_path(pair, options, monkeypatch))


@pytest.mark.parametrize(
    ("slope", "inter"),
    [(1 / 510, 0.25), (1 / 255, -0.00004), (1 / 254.99, 0.0), (-1 / 255, 1.0)],
    ids=["intercept", "clipped-below", "clipped-above", "negative-slope"],
)
def test_intercept_and_clipping(
    tmp_path: Path,
    rng: np.random.Generator,
    monkeypatch: pytest.MonkeyPatch,
    slope: float,
    inter: float,
) -> None:
    """An intercept (float64 scaling), and values a little outside [0, 1] that are clipped."""
    codes = rng.integers(0, 256, size=SHAPE).astype(np.uint8)
    codes.flat[:2] = (0, 255)
    label = rng.integers(0, 2, size=SHAPE).astype(np.uint8)
    pair = _case(tmp_path, codes, label, slope, inter)
    options = EvaluationOptions()
    assert _took_code_path(pair, options)
    _assert_same(cases.evaluate_case(pair, options), _float_path(pair, options, monkeypatch))


def test_out_of_range_values_are_refused_alike(
    tmp_path: Path, rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch
) -> None:
    codes = rng.integers(0, 256, size=SHAPE).astype(np.uint8)
    pair = _case(tmp_path, codes, np.zeros(SHAPE, np.uint8), 1 / 200)  # up to 1.275
    options = EvaluationOptions()
    assert _took_code_path(pair, options)
    with pytest.raises(InputError) as coded:
        cases.evaluate_case(pair, options)
    with pytest.raises(InputError) as decoded:
        _float_path(pair, options, monkeypatch)
    assert str(coded.value) == str(decoded.value)
    assert "outside [0, 1]" in str(coded.value)


def test_softmax_sum_warning_alike(
    tmp_path: Path, rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch
) -> None:
    codes = _softmax_codes(rng, 3, 255)
    codes[3, 4, 5] = (200, 100, 0)  # sums to 300/255
    label = rng.integers(0, 3, size=SHAPE).astype(np.uint8)
    pair = _case(tmp_path, codes, label, 1 / 255)
    options = EvaluationOptions()
    coded = cases.evaluate_case(pair, options)
    assert any("do not sum to 1" in warning for warning in coded.warnings)
    _assert_same(coded, _float_path(pair, options, monkeypatch))


def test_channel_sum_error_equals_numpy(rng: np.random.Generator) -> None:
    """The largest |sum - 1| equals numpy's float32 sum over the channel axis exactly."""
    codes = rng.integers(0, 256, size=(4, *SHAPE)).astype(np.uint8)
    values = (np.arange(256, dtype=np.float32) * np.float32(1 / 255)).astype(np.float32)
    decoded = values[codes]
    expected = np.abs(decoded.sum(axis=0, dtype=np.float32) - np.float32(1)).max()
    assert coded_channel_sum_error(codes, values) == float(expected)


def test_multi_label_ground_truth(
    tmp_path: Path, rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch
) -> None:
    codes = rng.integers(0, 256, size=(*SHAPE, 2)).astype(np.uint8)
    label = rng.integers(0, 2, size=(*SHAPE, 2)).astype(np.uint8)
    pair = _case(tmp_path, codes, label, 1 / 255)
    options = EvaluationOptions()
    assert _took_code_path(pair, options)
    _assert_same(cases.evaluate_case(pair, options), _float_path(pair, options, monkeypatch))


@pytest.mark.parametrize(
    "options",
    [
        EvaluationOptions(dice_mode="argmax"),
        EvaluationOptions(input_kind="logits", activation="softmax"),
        EvaluationOptions(n_bins=10**6),  # beyond the compiled kernel: numpy path
    ],
    ids=["argmax", "logits", "numpy-kernel"],
)
def test_what_needs_floats_decodes(
    tmp_path: Path,
    rng: np.random.Generator,
    monkeypatch: pytest.MonkeyPatch,
    options: EvaluationOptions,
) -> None:
    codes = _softmax_codes(rng, 3, 255)
    label = rng.integers(0, 3, size=SHAPE).astype(np.uint8)
    pair = _case(tmp_path, codes, label, 1 / 255)
    assert not _took_code_path(pair, options)
    _assert_same(cases.evaluate_case(pair, options), _float_path(pair, options, monkeypatch))


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
@pytest.mark.parametrize("ndim", [2, 3, 4, 5])
def test_decoded_codes_equal_the_float_read(
    tmp_path: Path, rng: np.random.Generator, dtype: type[np.unsignedinteger], ndim: int
) -> None:
    """Value for value and in memory layout (the float path's summation order)."""
    shape = {2: (6, 5), 3: (6, 5, 4), 4: (6, 5, 4, 3), 5: (6, 5, 4, 1, 3)}[ndim]
    codes = rng.integers(0, np.iinfo(dtype).max, size=shape, endpoint=True).astype(dtype)
    path = _save_map(tmp_path / "m.nii.gz", codes, 1 / 255.0, 0.125)
    kept, read = read_prediction(path, keep_codes=True), read_prediction(path)
    assert kept.code_values is not None and kept.array.dtype == dtype
    assert kept.value_range == read.value_range
    decoded = decode_prediction(kept).array
    assert decoded.dtype == np.float32 and _layout(decoded) == _layout(read.array)
    np.testing.assert_array_equal(decoded, read.array)


def _layout(array: np.ndarray) -> list[int]:
    """The strides of the axes longer than 1 (a length-1 axis has no stride that matters)."""
    return [stride for stride, n in zip(array.strides, array.shape, strict=True) if n > 1]


def test_big_endian_and_float_storage_are_read_as_floats(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    codes = rng.integers(0, 256, size=SHAPE).astype(np.uint16)
    big = _save_map(tmp_path / "big.nii.gz", codes, 1 / 255, big_endian=True)
    assert nib.load(big).get_data_dtype() == np.dtype(">u2")
    assert read_prediction(big, keep_codes=True).code_values is None
    floats = tmp_path / "f.nii.gz"
    nib.save(nib.Nifti1Image(rng.random(SHAPE, dtype=np.float32), np.eye(4)), floats)
    assert read_prediction(floats, keep_codes=True).code_values is None


def test_huge_slope_is_reported_as_infinite(tmp_path: Path) -> None:
    codes = np.zeros(SHAPE, np.uint8)
    codes[1, 2, 3] = 200
    path = _save_map(tmp_path / "m.nii.gz", codes, 1e38)
    with pytest.raises(InputError, match="1 infinite values in channel 0"):
        read_prediction(path, keep_codes=True)


@pytest.mark.parametrize("threshold", [0.5, 0.3, 0.0])
def test_binning_from_codes_equals_binning_the_class_map(
    rng: np.random.Generator, threshold: float
) -> None:
    """The kernel entry directly: C-ordered arrays, a region of three channels."""
    codes = rng.integers(0, 21, size=(4, 30, 31, 7)).astype(np.uint8)
    values = np.arange(256, dtype=np.float32) * np.float32(1 / 20)
    values = np.minimum(values, np.float32(1))  # the clipped table
    label = rng.integers(0, 5, size=codes.shape[1:]).astype(np.uint8)
    assert coded_pass_applies(codes, label)
    for channels in ((2,), (1, 2, 3)):
        spec = ClassSpec("x", channels, (1, 3))
        expected = bin_with_label_map(
            class_probability(values[codes], spec),
            label,
            20,
            target_labels=spec.labels,
            threshold=threshold,
        )
        got = bin_codes_with_label_map(
            codes, values, channels, label, 20, target_labels=spec.labels, threshold=threshold
        )
        assert (got.predicted, got.intersection) == (expected.predicted, expected.intersection)
        for name in ("count", "sum_p", "sum_y"):
            np.testing.assert_array_equal(getattr(got.stats, name), getattr(expected.stats, name))
