"""Temperature scaling: the numeric core against scipy, and the folder fit / apply functions."""

from __future__ import annotations

import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import SAMPLE_DATA
from scipy.optimize import minimize_scalar
from scipy.special import log_expit, log_softmax, softmax

from calibkit.calibrate import apply_temperature_folder, channel_labels, fit_temperature_folder
from calibkit.cases import calibrated_probabilities, to_probabilities
from calibkit.classes import resolve_classes
from calibkit.errors import CalibkitError, InputError, OutputError
from calibkit.io.temperature import load_temperature, save_temperature
from calibkit.io.volumes import read_prediction
from calibkit.records import EvaluationOptions
from calibkit.temperature import (
    PROBABILITY_CLIP,
    TemperatureModel,
    apply_temperature,
    calibrate_logits,
    calibrate_probabilities,
    fit_temperature,
    logits_from_probabilities,
    temperature_nll,
)

AFFINE = np.array([[-1.0, 0, 0, 3.0], [0, -1.0, 0, -2.0], [0, 0, 1.0, 5.0], [0, 0, 0, 1]])
BRATS = EvaluationOptions(preset="brats")


# --------------------------------------------------------------------------- synthetic data


def softmax_data(
    t_true: float | np.ndarray, n: int = 60_000, c: int = 4, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Logits z and labels drawn from softmax(z / T*)."""
    rng = np.random.default_rng(seed)
    z = (rng.normal(size=(n, c)) * 3.0).astype(np.float32)
    p = softmax(z.astype(np.float64) / np.asarray(t_true), axis=1)
    y = (p.cumsum(axis=1) < rng.random((n, 1))).sum(axis=1)
    return z, np.minimum(y, c - 1)


def sigmoid_data(
    t_true: float | np.ndarray, shape: tuple[int, ...] = (60_000, 3), seed: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    z = (rng.normal(size=shape) * 4.0).astype(np.float32)
    p = 1.0 / (1.0 + np.exp(-z.astype(np.float64) / np.asarray(t_true)))
    return z, rng.random(shape) < p


def reference_nll(z: np.ndarray, y: np.ndarray, t: float | np.ndarray, activation: str) -> float:
    """Mean NLL by scipy in float64: an independent implementation."""
    x = z.astype(np.float64) / np.asarray(t, dtype=np.float64)
    if activation == "softmax":
        return float(-np.mean(log_softmax(x, axis=1)[np.arange(len(y)), y]))
    return float(-np.mean(y * log_expit(x) + (1 - y) * log_expit(-x)))


# --------------------------------------------------------------------------- the core


@pytest.mark.parametrize("activation", ["softmax", "sigmoid"])
def test_nll_equals_scipy(activation: str) -> None:
    z, y = softmax_data(1.7, n=5000) if activation == "softmax" else sigmoid_data(1.7, (5000, 3))
    for t in (0.3, 1.0, 2.5, np.array([0.5, 1.0, 2.0, 4.0][: z.shape[1]])):
        ours = temperature_nll(z, y, t, activation=activation)  # type: ignore[arg-type]
        assert ours == pytest.approx(reference_nll(z, y, t, activation), rel=1e-12)


@pytest.mark.parametrize("t_true", [0.5, 2.0, 4.0])
def test_recovers_a_known_softmax_temperature(t_true: float) -> None:
    z, y = softmax_data(t_true)
    fit = fit_temperature(z, y, activation="softmax")
    assert abs(fit.temperature_ / t_true - 1) < 0.05  # type: ignore[operator]
    assert fit.converged and not fit.at_bound and fit.n_voxels == len(y)
    assert fit.nll_after < fit.nll_before


@pytest.mark.parametrize("t_true", [0.5, 3.0])
@pytest.mark.parametrize("shape", [(60_000,), (30_000, 3)])
def test_recovers_a_known_sigmoid_temperature(t_true: float, shape: tuple[int, ...]) -> None:
    z, y = sigmoid_data(t_true, shape)
    fit = fit_temperature(z, y, activation="sigmoid")
    assert isinstance(fit.temperature_, float)
    assert abs(fit.temperature_ / t_true - 1) < 0.05
    assert fit.nll_after < fit.nll_before


def test_recovers_per_class_temperatures() -> None:
    t_true = np.array([0.7, 1.5, 3.0, 1.0])
    z, y = softmax_data(t_true, n=100_000)
    fit = fit_temperature(z, y, activation="softmax", per_class=True)
    assert fit.per_class and fit.converged
    np.testing.assert_allclose(fit.temperature_, t_true, rtol=0.05)
    t_sigmoid = np.array([0.5, 2.0, 6.0])
    z, y = sigmoid_data(t_sigmoid)
    fit = fit_temperature(z, y, activation="sigmoid", per_class=True)
    np.testing.assert_allclose(fit.temperature_, t_sigmoid, rtol=0.05)
    scalar = fit_temperature(z, y, activation="sigmoid")
    assert fit.nll_after <= scalar.nll_after  # more freedom, lower NLL


@pytest.mark.parametrize("activation", ["softmax", "sigmoid"])
def test_fit_is_the_minimum_scipy_finds(activation: str) -> None:
    z, y = softmax_data(2.2, n=8000) if activation == "softmax" else sigmoid_data(2.2, (8000, 2))
    fit = fit_temperature(z, y, activation=activation)  # type: ignore[arg-type]
    best = minimize_scalar(
        lambda u: reference_nll(z, y, math.exp(u), activation),
        bounds=(math.log(0.05), math.log(20.0)),
        method="bounded",
        options={"xatol": 1e-9},
    )
    assert fit.temperature_ == pytest.approx(math.exp(best.x), rel=1e-5)
    assert fit.nll_after == pytest.approx(best.fun, rel=1e-9)
    assert fit.nll_before == pytest.approx(reference_nll(z, y, 1.0, activation), rel=1e-12)


def test_per_class_softmax_reaches_a_stationary_point() -> None:
    z, y = softmax_data(np.array([0.8, 2.0, 1.2]), n=20_000, c=3)
    fit = fit_temperature(z, y, per_class=True)
    t = np.asarray(fit.temperature_)
    for c in range(3):  # nudging any one temperature raises the NLL
        for factor in (0.99, 1.01):
            nudged = t.copy()
            nudged[c] *= factor
            assert reference_nll(z, y, nudged, "softmax") > fit.nll_after


def test_temperature_stops_at_the_bounds() -> None:
    rng = np.random.default_rng(3)
    z = rng.normal(size=2000)
    separable = fit_temperature(z, z > 0, activation="sigmoid", bounds=(0.1, 10.0))
    assert separable.temperature_ == pytest.approx(0.1) and separable.at_bound
    noise = fit_temperature(z * 5, rng.random(2000) < 0.5, activation="sigmoid", bounds=(0.1, 10.0))
    assert noise.temperature_ == pytest.approx(10.0) and noise.at_bound


def test_calibrated_data_keeps_t_near_one_and_never_raises_nll() -> None:
    z, y = softmax_data(1.0, n=40_000)
    fit = fit_temperature(z, y)
    assert abs(fit.temperature_ - 1) < 0.05  # type: ignore[operator]
    assert fit.nll_after <= fit.nll_before


@pytest.mark.parametrize("activation", ["softmax", "sigmoid"])
def test_t_one_on_logits_is_exactly_the_evaluate_activation(activation: str) -> None:
    logits = np.random.default_rng(4).normal(0, 6, size=(4, 5, 6, 7)).astype(np.float32)
    options = EvaluationOptions(input_kind="logits", activation=activation)  # type: ignore[arg-type]
    expected = to_probabilities(logits.copy(), options, Path("x.nii.gz"))
    ours = apply_temperature(logits, 1.0, activation, axis=0)  # type: ignore[arg-type]
    np.testing.assert_array_equal(ours, expected)
    model = TemperatureModel((1.0,), activation, 4)
    np.testing.assert_array_equal(calibrate_logits(logits, model), expected)


@pytest.mark.parametrize("activation", ["softmax", "sigmoid"])
def test_t_one_leaves_probabilities_unchanged(activation: str) -> None:
    rng = np.random.default_rng(5)
    p = rng.dirichlet([0.3] * 4, size=(6, 7, 8)).astype(np.float32)
    p = np.moveaxis(np.round(p * 255) / 255, -1, 0).astype(np.float32)  # uint8-like: 0s and 1s
    p[:, 0, 0, 0] = [1.0, 0.0, 0.0, 0.0]
    if activation == "softmax":
        p /= p.sum(axis=0, keepdims=True)
    assert (p == 0).any() and (p == 1).any()
    out = calibrate_probabilities(p, TemperatureModel((1.0,), activation, 4))
    assert out.dtype == np.float32 and out.shape == p.shape
    np.testing.assert_allclose(out, p, atol=1e-6, rtol=0)


def test_logits_from_probabilities_clips() -> None:
    p = np.array([0.0, 1e-9, 0.25, 0.5, 1.0], dtype=np.float32)
    low = np.log(np.float32(PROBABILITY_CLIP))
    np.testing.assert_allclose(
        logits_from_probabilities(p, "softmax"),
        [low, low, np.log(0.25), np.log(0.5), 0.0],
        atol=1e-6,
    )
    sigmoid = logits_from_probabilities(p, "sigmoid")
    assert np.isfinite(sigmoid).all() and sigmoid[3] == 0.0
    np.testing.assert_allclose(sigmoid[:3], [-16.118, -16.118, np.log(1 / 3)], atol=1e-3)
    assert 15.9 < sigmoid[4] < 16.2


def test_apply_temperature_per_channel_axis() -> None:
    z = np.random.default_rng(6).normal(size=(3, 10)).astype(np.float32)
    t = np.array([0.5, 2.0, 4.0])
    np.testing.assert_allclose(
        apply_temperature(z, t, "softmax", axis=0), softmax(z / t[:, None], axis=0), atol=1e-6
    )
    np.testing.assert_allclose(
        apply_temperature(z.T, t, "sigmoid"), 1 / (1 + np.exp(-z.T / t)), atol=1e-6
    )


@pytest.mark.parametrize(
    ("logits", "targets", "kwargs"),
    [
        (np.zeros((5, 3)), np.array([0, 1, 2, 3, 0]), {}),  # class index out of range
        (np.zeros((5, 3)), np.zeros((5, 3)), {}),  # softmax needs indices
        (np.zeros(5), np.zeros(5, int), {}),  # softmax needs channels
        (np.zeros((5, 2)), np.full((5, 2), 2.0), {"activation": "sigmoid"}),
        (np.full((2, 2), np.nan), np.array([0, 1]), {}),
        (np.zeros((0, 2)), np.zeros(0, int), {}),
        (np.zeros((2, 2)), np.array([0, 1]), {"bounds": (2.0, 1.0)}),
        (np.zeros((2, 2)), np.array([0, 1]), {"activation": "tanh"}),
    ],
)
def test_bad_core_inputs_raise_value_error(
    logits: np.ndarray, targets: np.ndarray, kwargs: dict[str, object]
) -> None:
    with pytest.raises(ValueError):
        fit_temperature(logits, targets, **kwargs)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- classes


def test_channel_labels_of_the_plans() -> None:
    def labels(plan) -> list[list[int]]:  # type: ignore[no-untyped-def]
        return [sorted(values) for values in channel_labels(plan)]

    assert labels(resolve_classes(4, preset="brats")) == [[0], [1], [2], [3, 4]]
    assert labels(resolve_classes(3, preset="brats")) == [[3, 4], [1, 3, 4], [1, 2, 3, 4]]
    assert labels(resolve_classes(3)) == [[0], [1], [2]]
    assert labels(resolve_classes(3, classes=[5, 7])) == [[0], [5], [7]]
    assert labels(resolve_classes(1)) == [[1]]


# --------------------------------------------------------------------------- folders


def write_softmax_folder(
    root: Path, t_true: float, *, n_cases: int = 3, shape: tuple[int, int, int] = (24, 24, 24)
) -> tuple[Path, Path]:
    """Float32 softmax maps softmax(z) whose labels were drawn from softmax(z / T*)."""
    rng = np.random.default_rng(11)
    preds, labels = root / "preds", root / "labels"
    preds.mkdir(parents=True)
    labels.mkdir(parents=True)
    for i in range(n_cases):
        z = rng.normal(size=(*shape, 3)) * 3.0
        truth = softmax(z / t_true, axis=-1)
        label = (truth.cumsum(axis=-1) < rng.random((*shape, 1))).sum(axis=-1).astype(np.uint8)
        image = nib.Nifti1Image(softmax(z, axis=-1).astype(np.float32), AFFINE)
        nib.save(image, preds / f"case{i}_pred.nii.gz")
        nib.save(nib.Nifti1Image(np.minimum(label, 2), AFFINE), labels / f"case{i}_seg.nii.gz")
    return preds, labels


@pytest.fixture(scope="module")
def synthetic_folder(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return write_softmax_folder(tmp_path_factory.mktemp("synthetic"), 2.5)


def test_folder_fit_recovers_the_temperature(synthetic_folder: tuple[Path, Path]) -> None:
    preds, labels = synthetic_folder
    result = fit_temperature_folder(preds, labels, options=EvaluationOptions())
    assert result.activation == "softmax" and result.n_channels == 3
    assert result.class_names == ("1", "2")
    assert abs(result.temperature / 2.5 - 1) < 0.05  # type: ignore[operator]
    assert result.fit.n_voxels == 3 * 24**3  # budget above the volume: every voxel
    assert result.ace_after["mean"] < result.ace_before["mean"]
    assert result.ace_pooled_after["mean"] < result.ace_pooled_before["mean"]


def test_subsampling_is_seeded_and_bounded(synthetic_folder: tuple[Path, Path]) -> None:
    preds, labels = synthetic_folder
    options = EvaluationOptions()
    first = fit_temperature_folder(preds, labels, options=options, max_voxels=9000, seed=3)
    again = fit_temperature_folder(preds, labels, options=options, max_voxels=9000, seed=3)
    other = fit_temperature_folder(preds, labels, options=options, max_voxels=9000, seed=4)
    assert first.voxels_per_case == 3000 and first.fit.n_voxels == 9000
    assert first.temperature == again.temperature
    np.testing.assert_array_equal(first.bins_before.sum_p, again.bins_before.sum_p)
    assert first.temperature != other.temperature
    assert abs(first.temperature / other.temperature - 1) < 0.2  # type: ignore[operator]
    record = first.record()
    assert record["seed"] == 3 and record["max_voxels"] == 9000 and record["n_voxels"] == 9000


def test_sample_data_fit_lowers_ace() -> None:
    preds = SAMPLE_DATA / "synthetic" / "dsc"
    result = fit_temperature_folder(preds, SAMPLE_DATA / "brats", options=BRATS, max_voxels=240_000)
    assert result.activation == "softmax" and result.n_channels == 4
    assert result.class_names == ("ET", "TC", "WT")
    assert result.temperature > 1.5  # type: ignore[operator]  # the DSC model is over-confident
    assert result.fit.nll_after < result.fit.nll_before
    for name in ("ET", "TC", "WT", "mean"):
        assert result.ace_after[name] < result.ace_before[name]
        assert result.ace_pooled_after[name] < result.ace_pooled_before[name]


def test_region_maps_use_a_sigmoid(tmp_path: Path) -> None:
    preds = tmp_path / "regions"
    preds.mkdir()
    for case in ("BraTS2021_S000", "BraTS2021_S001"):
        volume = read_prediction(SAMPLE_DATA / "synthetic" / "dsc" / f"{case}_pred.nii.gz")
        p = volume.array
        regions = np.stack([p[3], p[1] + p[3], p[1] + p[2] + p[3]], axis=-1).clip(0, 1)
        nib.save(nib.Nifti1Image(regions, volume.affine), preds / f"{case}_pred.nii.gz")
    labels = SAMPLE_DATA / "brats"
    options = EvaluationOptions(preset="brats", allow_missing=True)
    result = fit_temperature_folder(preds, labels, options=options, max_voxels=100_000)
    assert result.activation == "sigmoid" and result.n_channels == 3
    assert result.temperature > 1.5  # type: ignore[operator]
    assert result.ace_after["mean"] < result.ace_before["mean"]
    with pytest.raises(InputError, match="--activation sigmoid"):
        fit_temperature_folder(preds, labels, options=options, activation="softmax")


def test_logit_maps(tmp_path: Path) -> None:
    rng = np.random.default_rng(12)
    preds, labels = tmp_path / "logits", tmp_path / "labels"
    preds.mkdir()
    labels.mkdir()
    z = rng.normal(size=(20, 20, 20, 2)) * 4.0
    label = (rng.random((20, 20, 20)) < 1 / (1 + np.exp(-z[..., 1] / 0.5))).astype(np.uint8)
    nib.save(nib.Nifti1Image(z.astype(np.float32), AFFINE), preds / "a_pred.nii.gz")
    nib.save(nib.Nifti1Image(label, AFFINE), labels / "a_seg.nii.gz")
    options = EvaluationOptions(input_kind="logits", activation="sigmoid", include_background=True)
    with pytest.raises(CalibkitError, match="--activation"):
        fit_temperature_folder(preds, labels, options=options, activation="softmax")
    result = fit_temperature_folder(preds, labels, options=options, per_class=True)
    assert abs(result.fit.temperatures[1] / 0.5 - 1) < 0.1  # the channel the labels came from
    model = result.model()
    volume = read_prediction(preds / "a_pred.nii.gz")
    np.testing.assert_array_equal(
        calibrated_probabilities(volume.array.copy(), model, options, volume.path),
        apply_temperature(volume.array, model.temperatures(), "sigmoid", axis=0),
    )
    softmax_options = EvaluationOptions(input_kind="logits", activation="softmax")
    with pytest.raises(InputError, match="--activation sigmoid"):
        calibrated_probabilities(volume.array, model, softmax_options, volume.path)


# --------------------------------------------------------------------------- files


def test_save_and_load_round_trip(synthetic_folder: tuple[Path, Path], tmp_path: Path) -> None:
    preds, labels = synthetic_folder
    result = fit_temperature_folder(preds, labels, per_class=True, max_voxels=6000)
    path = save_temperature(result, tmp_path / "t.json")
    record = json.loads(path.read_text())
    for key in (
        "temperature",
        "activation",
        "n_channels",
        "nll_before",
        "nll_after",
        "ace_before",
        "ace_after",
        "n_voxels",
        "options",
        "seed",
        "calibkit_version",
        "classes",
    ):
        assert key in record, key
    model = load_temperature(path)
    assert model.temperature == tuple(result.fit.temperatures)
    assert (model.activation, model.n_channels, model.class_names) == ("softmax", 3, ("1", "2"))
    assert model.per_class and model.source == path


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ("{not json", "not valid JSON"),
        ("[1.5]", "JSON object"),
        ('{"temperature": 1.5, "activation": "softmax"}', "n_channels"),
        ('{"activation": "softmax", "n_channels": 4}', "temperature"),
        ('{"temperature": 0, "activation": "softmax", "n_channels": 4}', "positive"),
        ('{"temperature": -2, "activation": "softmax", "n_channels": 4}', "positive"),
        ('{"temperature": NaN, "activation": "softmax", "n_channels": 4}', "finite"),
        ('{"temperature": "1.5", "activation": "softmax", "n_channels": 4}', "number"),
        ('{"temperature": [1, 2], "activation": "softmax", "n_channels": 4}', "2 temperatures"),
        ('{"temperature": 1.5, "activation": "relu", "n_channels": 4}', "activation"),
        ('{"temperature": 1.5, "activation": "softmax", "n_channels": 0}', "n_channels"),
        (
            '{"temperature": 1.5, "activation": "softmax", "n_channels": 1}',
            "a softmax over one channel is 1 everywhere",
        ),
    ],
)
def test_bad_temperature_files(tmp_path: Path, content: str, fragment: str) -> None:
    path = tmp_path / "t.json"
    path.write_text(content)
    with pytest.raises(InputError, match=fragment) as caught:
        load_temperature(path)
    assert str(caught.value).startswith(str(path))


def test_a_model_refuses_a_softmax_over_one_channel() -> None:
    with pytest.raises(ValueError, match="a softmax over one channel is 1 everywhere"):
        TemperatureModel((1.5,), "softmax", 1)
    with pytest.raises(ValueError, match="activation"):
        TemperatureModel((1.5,), "auto", 4)
    assert TemperatureModel((1.5,), "sigmoid", 1).n_channels == 1


def test_missing_temperature_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not found"):
        load_temperature(tmp_path / "nothing.json")


def test_minimal_hand_written_file(tmp_path: Path) -> None:
    path = tmp_path / "t.json"
    path.write_text('{"temperature": 1.5, "activation": "softmax", "n_channels": 4}')
    model = load_temperature(path)
    assert model.temperature == (1.5,) and not model.per_class and model.class_names == ()


def test_wrong_channel_count_names_both_files(tmp_path: Path) -> None:
    path = tmp_path / "t.json"
    path.write_text('{"temperature": 2.0, "activation": "softmax", "n_channels": 4}')
    model = load_temperature(path)
    with pytest.raises(InputError, match="3 channel") as caught:
        calibrate_probabilities(np.full((3, 2, 2, 2), 1 / 3, np.float32), model, path="p.nii.gz")
    message = str(caught.value)
    assert message.startswith("p.nii.gz") and str(path) in message


def write_map(path: Path, probabilities: np.ndarray, dtype: type) -> None:
    """(x, y, z, C) probabilities stored as float32 or uint8 with slope 1/255."""
    if dtype is np.uint8:
        image = nib.Nifti1Image(np.round(probabilities * 255).astype(np.uint8), AFFINE)
        image.header.set_slope_inter(1 / 255, 0)
    else:
        image = nib.Nifti1Image(probabilities.astype(np.float32), AFFINE)
    image.header.set_xyzt_units("mm", "sec")
    nib.save(image, path)


def test_apply_folder_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(13)
    preds = tmp_path / "preds"
    (preds / "sub").mkdir(parents=True)
    write_map(preds / "a_pred.nii.gz", rng.dirichlet([0.4] * 3, size=(5, 6, 7)), np.float32)
    write_map(preds / "sub" / "b_pred.nii.gz", rng.dirichlet([0.4] * 3, size=(5, 6, 7)), np.uint8)
    before = {p: p.read_bytes() for p in preds.rglob("*.nii.gz")}
    model = TemperatureModel((1.8,), "softmax", 3)
    applied = apply_temperature_folder(preds, model, tmp_path / "out")
    assert applied.storage == {"a": "float32", "b": "uint8"}
    assert applied.outputs["b"] == tmp_path / "out" / "sub" / "b_pred.nii.gz"
    for case, source in (("a", preds / "a_pred.nii.gz"), ("b", preds / "sub" / "b_pred.nii.gz")):
        original, written = nib.load(source), nib.load(applied.outputs[case])
        assert written.shape == original.shape
        assert written.get_data_dtype() == original.get_data_dtype()
        np.testing.assert_array_equal(written.affine, original.affine)
        assert written.header.get_xyzt_units() == ("mm", "sec")
        expected = calibrate_probabilities(read_prediction(source).array, model)
        got = read_prediction(applied.outputs[case]).array
        if case == "a":
            np.testing.assert_array_equal(got, expected)
        else:
            assert written.dataobj.slope == pytest.approx(1 / 255)
            np.testing.assert_allclose(got, expected, atol=0.5 / 255 + 1e-6)
    assert {p: p.read_bytes() for p in preds.rglob("*.nii.gz")} == before


def test_apply_folder_refuses_unsafe_outputs(tmp_path: Path) -> None:
    preds = tmp_path / "preds"
    preds.mkdir()
    rng = np.random.default_rng(14)
    write_map(preds / "a_pred.nii.gz", rng.dirichlet([1.0] * 3, size=(4, 4, 4)), np.float32)
    model = TemperatureModel((1.5,), "softmax", 3)
    for out in (preds, preds / "inner", tmp_path):
        with pytest.raises(OutputError, match="outside"):
            apply_temperature_folder(preds, model, out)
    apply_temperature_folder(preds, model, tmp_path / "out")
    with pytest.raises(OutputError, match="--overwrite"):
        apply_temperature_folder(preds, model, tmp_path / "out")
    apply_temperature_folder(preds, model, tmp_path / "out", overwrite=True)
    four = TemperatureModel((1.5,), "softmax", 4)
    with pytest.raises(InputError, match=r"a_pred\.nii\.gz"):
        apply_temperature_folder(preds, four, tmp_path / "out2")
    np.savez(preds / "c.npz", probabilities=np.full((3, 4, 4, 4), 1 / 3, np.float32))
    with pytest.raises(InputError, match="evaluate --temperature"):
        apply_temperature_folder(preds, model, tmp_path / "out3")
    assert not (tmp_path / "out3").exists()
