"""Temperature scaling: fit a temperature ``T`` that divides logits, and apply it (pure numpy).

The temperature minimises the mean negative log-likelihood (NLL) of the targets:

* ``activation="softmax"`` (mutually exclusive classes): softmax cross-entropy of
  ``softmax(z / T)`` against one class index per voxel;
* ``activation="sigmoid"`` (independent channels, such as BraTS ET/TC/WT regions):
  binary cross-entropy of ``sigmoid(z / T)`` per channel, averaged over voxels and channels.

Both NLLs are convex in ``b = 1 / T`` (a log-sum-exp or softplus of a linear function of
``b``, minus a linear term), hence unimodal in ``log T``. A scalar ``T`` (and, for the
sigmoid, one ``T`` per channel: the channels do not interact) is found by Newton steps on
``b`` inside a shrinking bracket, falling back to geometric bisection (halving the bracket
in ``log T``) whenever a step would leave it: convergence in a handful of passes over the
data, and never outside ``bounds``. One softmax ``T`` per channel (``per_class=True``) is
found by L-BFGS-B over ``log T`` with the analytic gradient, started from the scalar fit.
Every pass works in chunks with a max-shifted log-sum-exp and sums in float64; the
Newton passes compute element-wise in float32 (the precision of the stored maps), the
reported NLLs and the L-BFGS-B passes in float64.

Maps stored as probabilities are turned back into logits by :func:`logits_from_probabilities`
(``log p`` for a softmax, ``logit p`` for a sigmoid) after clipping ``p`` to
``[PROBABILITY_CLIP, 1 - PROBABILITY_CLIP]``: a stored 0 becomes ``log 1e-7 ≈ -16.1``.
Softmax is shift-invariant, so ``softmax(log p / T)`` equals ``softmax(z / T)`` for the
logits ``z`` that gave ``p``, up to that clipping.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from calibkit.errors import InputError

Activation = Literal["softmax", "sigmoid"]
ACTIVATIONS: tuple[str, ...] = ("softmax", "sigmoid")
DEFAULT_BOUNDS = (0.05, 20.0)
# Probabilities are clipped to [PROBABILITY_CLIP, 1 - PROBABILITY_CLIP] before log / logit:
# finite logits for stored 0 and 1 (|logit| <= 16.1), and T = 1 changes a probability by
# at most about 1e-7 per channel.
PROBABILITY_CLIP = 1e-7
# Voxels per float64 evaluation step: bounded temporaries whatever the sample size.
_CHUNK = 1 << 16
# A fitted T this close (relative) to a bound is reported as lying on it.
_BOUND_TOLERANCE = 1e-6
# Newton stops when a step changes 1 / T by less than this, relative.
_RTOL = 1e-7
_MAX_STEPS = 100

__all__ = [
    "ACTIVATIONS",
    "DEFAULT_BOUNDS",
    "PROBABILITY_CLIP",
    "TemperatureFit",
    "TemperatureModel",
    "apply_temperature",
    "calibrate_logits",
    "calibrate_probabilities",
    "fit_temperature",
    "logits_from_probabilities",
    "temperature_nll",
]


@dataclass(frozen=True, eq=False)
class TemperatureFit:
    """A fitted temperature and how well it fits.

    Attributes:
        temperature_: the fitted ``T``: a float, or a float64 array with one value per
            channel (``per_class=True`` with 2-D logits).
        nll_before: mean NLL at ``T = 1``.
        nll_after: mean NLL at the fitted ``T`` (never above ``nll_before`` when 1 lies
            within the bounds).
        converged: whether the optimiser reported success.
        at_bound: whether a fitted ``T`` lies on a bound (the data asked for more).
        n_voxels: number of voxels (rows of the logits) fitted.
        activation: ``"softmax"`` or ``"sigmoid"``.
        per_class: whether one ``T`` per channel was fitted.
        bounds: the ``(low, high)`` bounds on ``T``.
    """

    temperature_: float | npt.NDArray[np.float64]
    nll_before: float
    nll_after: float
    converged: bool
    at_bound: bool
    n_voxels: int
    activation: str
    per_class: bool
    bounds: tuple[float, float] = DEFAULT_BOUNDS

    @property
    def temperatures(self) -> npt.NDArray[np.float64]:
        """The temperature as a 1-D array (one value, or one per channel)."""
        return np.atleast_1d(np.asarray(self.temperature_, dtype=np.float64))


def fit_temperature(
    logits: npt.ArrayLike,
    targets: npt.ArrayLike,
    *,
    activation: Activation = "softmax",
    per_class: bool = False,
    bounds: tuple[float, float] = DEFAULT_BOUNDS,
) -> TemperatureFit:
    """Fit the temperature ``T`` minimising the NLL of ``targets`` under ``act(logits / T)``.

    Args:
        logits: ``(N, C)`` logits (float32 is enough; evaluated in float64), or ``(N,)``
            binary logits (``activation="sigmoid"``).
        targets: softmax: ``(N,)`` class indices in ``[0, C)``; sigmoid: an array shaped
            like ``logits`` of binary targets (or frequencies in ``[0, 1]``).
        activation: ``"softmax"`` (exclusive classes) or ``"sigmoid"`` (per channel).
        per_class: one ``T`` per channel (``(N, C)`` logits only) instead of one ``T``.
        bounds: ``(low, high)`` with ``0 < low < high``: the search interval for ``T``.

    Returns:
        :class:`TemperatureFit`.

    Raises:
        ValueError: on shapes, target values or bounds that do not fit.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> z = rng.normal(0.0, 4.0, size=20000)
        >>> y = rng.random(20000) < 1.0 / (1.0 + np.exp(-z / 2.0))  # made with T = 2
        >>> fit = fit_temperature(z, y, activation="sigmoid")
        >>> round(fit.temperature_, 1), fit.nll_after < fit.nll_before
        (2.0, True)
    """
    low, high = _check_bounds(bounds)
    z, y = _check_inputs(logits, targets, activation)
    objective = _Objective(z, y, activation)
    n_channels = objective.n_channels
    fit_each = per_class and z.ndim == 2
    if fit_each and activation == "softmax":
        inverse_t, converged = _fit_softmax_per_class(objective, low, high)
    elif fit_each:
        # Sigmoid channels do not interact: one bracketed search per channel.
        results = [
            _convex_minimum(_Objective(z[:, [c]], y[:, [c]], activation).derivatives, low, high)
            for c in range(n_channels)
        ]
        inverse_t = np.array([value for value, _ in results])
        converged = all(ok for _, ok in results)
    else:
        value, converged = _convex_minimum(objective.derivatives, low, high)
        inverse_t = np.full(n_channels, value)

    ones = np.ones(n_channels)
    nll_before = objective.value(ones)
    nll_after = objective.value(inverse_t)
    if low <= 1.0 <= high and nll_before < nll_after:
        # Within the optimiser's tolerance of T = 1: no scaling is at least as good.
        inverse_t, nll_after = ones, nll_before
    temperatures = 1.0 / inverse_t
    at_bound = bool(
        np.any(temperatures <= low * (1 + _BOUND_TOLERANCE))
        or np.any(temperatures >= high * (1 - _BOUND_TOLERANCE))
    )
    return TemperatureFit(
        temperature_=temperatures if fit_each else float(temperatures[0]),
        nll_before=nll_before,
        nll_after=nll_after,
        converged=bool(converged),
        at_bound=at_bound,
        n_voxels=int(z.shape[0]),
        activation=activation,
        per_class=fit_each,
        bounds=(low, high),
    )


def temperature_nll(
    logits: npt.ArrayLike,
    targets: npt.ArrayLike,
    temperature: float | npt.ArrayLike = 1.0,
    *,
    activation: Activation = "softmax",
) -> float:
    """Mean NLL of ``targets`` under ``act(logits / temperature)`` (the fitted objective).

    Softmax: mean over voxels of ``-log softmax(z / T)[y]``. Sigmoid: mean over voxels
    and channels of the binary cross-entropy. ``temperature`` is a scalar or one value
    per channel.

    Example:
        >>> round(temperature_nll([[0.0, 0.0]], [1]), 6)  # log 2
        0.693147
    """
    z, y = _check_inputs(logits, targets, activation)
    objective = _Objective(z, y, activation)
    t = np.broadcast_to(np.asarray(temperature, dtype=np.float64), (objective.n_channels,))
    if not np.all(np.isfinite(t) & (t > 0)):
        raise ValueError(f"temperatures must be positive and finite, got {t.tolist()}")
    return objective.value(1.0 / t)


def logits_from_probabilities(
    probabilities: npt.ArrayLike, activation: Activation
) -> npt.NDArray[np.float32]:
    """Logits that give back ``probabilities``: ``log p`` (softmax) or ``logit p`` (sigmoid).

    ``p`` is clipped to ``[PROBABILITY_CLIP, 1 - PROBABILITY_CLIP]`` (1e-7) first, so a
    stored 0 or 1 gives a finite logit (about ∓16). Element by element (any shape), in
    float32 with in-place steps, so a full volume needs one float32 copy and one temporary.

    Example:
        >>> [round(float(v), 2) for v in logits_from_probabilities([0.5, 0.0], "sigmoid")]
        [0.0, -16.12]
    """
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be 'softmax' or 'sigmoid', got {activation!r}")
    low, high = np.float32(PROBABILITY_CLIP), np.float32(1 - PROBABILITY_CLIP)
    p = np.clip(np.asarray(probabilities, dtype=np.float32), low, high)
    if activation == "softmax":
        return np.log(p, out=p)
    log_complement = np.log1p(-p)
    np.log(p, out=p)
    p -= log_complement
    return p


def apply_temperature(
    logits: npt.ArrayLike,
    temperature: float | npt.ArrayLike,
    activation: Activation,
    *,
    axis: int = -1,
) -> npt.NDArray[np.float32]:
    """Probabilities ``act(logits / T)`` in float32.

    With ``T = 1`` the result equals, bit for bit, the activation ``calibkit evaluate
    --input logits`` applies (float32 ``1 / (1 + exp(-z))``, or a max-shifted softmax).

    Args:
        logits: logits with the channels along ``axis`` (``(N, C)``; ``(C, *spatial)``
            with ``axis=0``); any shape for a sigmoid with a scalar ``T``.
        temperature: a scalar, or one positive value per channel.
        activation: ``"softmax"`` (over ``axis``) or ``"sigmoid"`` (element-wise).
        axis: the channel axis.

    Returns:
        float32 probabilities shaped like ``logits``.

    Example:
        >>> [round(float(v), 4) for v in apply_temperature([[2.0, 0.0]], 2.0, "softmax")[0]]
        [0.7311, 0.2689]
    """
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be 'softmax' or 'sigmoid', got {activation!r}")
    z = np.asarray(logits, dtype=np.float32)
    t = np.asarray(temperature, dtype=np.float32)
    if not np.all(np.isfinite(t) & (t > 0)):
        raise ValueError(f"temperatures must be positive and finite, got {t.tolist()}")
    if t.ndim > 1:
        raise ValueError(f"temperature must be a scalar or 1-D, got shape {t.shape}")
    if t.ndim == 1 and t.size > 1:
        if z.ndim == 0 or z.shape[axis] != t.size:
            raise ValueError(f"{t.size} temperatures for logits of shape {z.shape} (axis {axis})")
        shape = [1] * z.ndim
        shape[axis] = t.size
        t = t.reshape(shape)
    elif t.ndim == 1:
        t = t.reshape(())
    scaled = np.divide(z, t, dtype=np.float32)
    if activation == "sigmoid":
        np.negative(scaled, out=scaled)
        np.exp(scaled, out=scaled)
        scaled += np.float32(1.0)
        np.reciprocal(scaled, out=scaled)
        return scaled
    if z.ndim == 0:
        raise ValueError("softmax needs a channel axis")
    scaled -= scaled.max(axis=axis, keepdims=True)
    np.exp(scaled, out=scaled)
    scaled /= scaled.sum(axis=axis, keepdims=True)
    return scaled


# --------------------------------------------------------------------------- internals


def _check_bounds(bounds: tuple[float, float]) -> tuple[float, float]:
    low, high = (float(value) for value in bounds)
    if not (np.isfinite(low) and np.isfinite(high) and 0.0 < low < high):
        raise ValueError(f"bounds must satisfy 0 < low < high, got {bounds}")
    return low, high


def _check_inputs(
    logits: npt.ArrayLike, targets: npt.ArrayLike, activation: str
) -> tuple[npt.NDArray[np.floating], npt.NDArray[Any]]:
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be 'softmax' or 'sigmoid', got {activation!r}")
    z = np.asarray(logits)
    if z.dtype.kind not in "fiu":
        raise ValueError(f"logits must be real numbers, got dtype {z.dtype}")
    if z.dtype.kind != "f":
        z = z.astype(np.float64)
    if z.ndim not in (1, 2) or z.shape[0] == 0 or z.size == 0:
        raise ValueError(f"logits must be (N, C) or (N,) with N, C >= 1, got shape {z.shape}")
    if not np.isfinite(np.sum(z, dtype=np.float64)):
        raise ValueError("logits hold NaN or infinite values")
    y = np.asarray(targets)
    if activation == "softmax":
        if z.ndim != 2 or z.shape[1] < 2:
            raise ValueError(f"softmax needs (N, C) logits with C >= 2, got shape {z.shape}")
        if y.shape != (z.shape[0],):
            raise ValueError(f"softmax targets must be (N,) = ({z.shape[0]},), got {y.shape}")
        if y.dtype.kind not in "iu" or y.min() < 0 or y.max() >= z.shape[1]:
            raise ValueError(f"softmax targets must be integer class indices in [0, {z.shape[1]})")
        return z, y.astype(np.intp, copy=False)
    if y.shape != z.shape:
        raise ValueError(f"sigmoid targets must be shaped like the logits {z.shape}, got {y.shape}")
    if y.dtype.kind not in "biuf" or not (y.min() >= 0 and y.max() <= 1):
        raise ValueError("sigmoid targets must be binary (or frequencies in [0, 1])")
    return z, y


class _Objective:
    """The mean NLL as a function of ``b = 1 / T`` (one value per channel), and derivatives.

    Softmax: ``f(b) = [sum_i lse(b * z_i) - sum_c b_c L_c] / N`` with ``L_c`` the sum of
    ``z_ic`` over voxels of class ``c``. Sigmoid: ``f(b) = [sum_ic softplus(b_c z_ic) -
    sum_c b_c L_c] / (N C)`` with ``L_c = sum_i y_ic z_ic``. The linear terms are computed
    once; each pass then needs only the non-linear part. Arrays are kept channel-first
    ``(C, N)``: reductions over channels become element-wise operations between rows.
    """

    def __init__(self, z: npt.NDArray[np.floating], y: npt.NDArray[Any], activation: str) -> None:
        self.softmax = activation == "softmax"
        self.z = np.ascontiguousarray(z.T if z.ndim == 2 else z[None])
        c, n = self.z.shape
        self.n_channels = c
        self.norm = float(n if self.softmax else n * c)
        if self.softmax:
            self.y = y
            self.linear = np.array([np.sum(self.z[k][y == k], dtype=np.float64) for k in range(c)])
        else:
            self.y = np.ascontiguousarray(y.T if y.ndim == 2 else y[None])
            linear = np.zeros(c)
            for start in range(0, n, _CHUNK):
                chunk = np.asarray(self.z[:, start : start + _CHUNK], dtype=np.float64)
                linear += np.sum(chunk * self.y[:, start : start + _CHUNK], axis=1)
            self.linear = linear

    def _chunks(self, dtype: type[np.floating]) -> Iterator[npt.NDArray[np.floating]]:
        for start in range(0, self.z.shape[1], _CHUNK):
            yield np.asarray(self.z[:, start : start + _CHUNK], dtype=dtype)

    def value(self, inverse_t: npt.NDArray[np.float64]) -> float:
        """``f(b)`` in float64."""
        total = 0.0
        b = np.asarray(inverse_t, dtype=np.float64)[:, None]
        for chunk in self._chunks(np.float64):
            x = chunk * b
            if self.softmax:
                peak = x.max(axis=0)
                x -= peak
                np.exp(x, out=x)
                total += float(np.sum(peak) + np.sum(np.log(x.sum(axis=0))))
            else:
                total += float(np.sum(_softplus(x)))
        return (total - float(inverse_t @ self.linear)) / self.norm

    def derivatives(self, b: float) -> tuple[float, float]:
        """First and second derivative of ``f`` along a common ``b`` (float32 passes)."""
        first, second = 0.0, 0.0
        scale = np.float32(b)
        for chunk in self._chunks(np.float32):
            x = chunk * scale
            if self.softmax:
                x -= x.max(axis=0)
                s = np.exp(x, out=x)
                s /= s.sum(axis=0)
                mean_z = np.sum(s * chunk, axis=0)
                first += float(np.sum(mean_z, dtype=np.float64))
                # Variance of z under s: non-negative, no cancellation.
                second += float(np.sum(s * np.square(chunk - mean_z), dtype=np.float64))
            else:
                sigma = _sigmoid(x)
                first += float(np.sum(sigma * chunk, dtype=np.float64))
                sigma *= 1 - sigma
                second += float(np.sum(sigma * np.square(chunk), dtype=np.float64))
        return (first - float(self.linear.sum())) / self.norm, second / self.norm

    def value_and_gradient(
        self, inverse_t: npt.NDArray[np.float64]
    ) -> tuple[float, npt.NDArray[np.float64]]:
        """Softmax ``f(b)`` and ``d f / d b_c = [sum_i s_ic z_ic - L_c] / N`` in float64."""
        total = 0.0
        gradient = np.zeros(self.n_channels)
        b = inverse_t[:, None]
        for chunk in self._chunks(np.float64):
            x = chunk * b
            peak = x.max(axis=0)
            x -= peak
            s = np.exp(x, out=x)
            norm = s.sum(axis=0)
            total += float(np.sum(peak) + np.sum(np.log(norm)))
            s /= norm
            gradient += np.sum(s * chunk, axis=1)
        value = (total - float(inverse_t @ self.linear)) / self.norm
        return value, (gradient - self.linear) / self.norm


def _softplus(x: npt.NDArray[np.floating]) -> npt.NDArray[np.floating]:
    out: npt.NDArray[np.floating] = np.maximum(x, 0) + np.log1p(np.exp(-np.abs(x)))
    return out


def _sigmoid(x: npt.NDArray[np.floating]) -> npt.NDArray[np.floating]:
    out: npt.NDArray[np.floating] = np.exp(-x)
    out += 1
    np.reciprocal(out, out=out)
    return out


def _convex_minimum(
    derivatives: Callable[[float], tuple[float, float]], low: float, high: float
) -> tuple[float, bool]:
    """Minimise a convex ``f(b)`` over ``b = 1 / T`` in ``[1 / high, 1 / low]``.

    Newton steps from ``b = 1`` (clipped to the interval) inside a bracket ``[a, c]`` that
    holds the minimiser; a step leaving the bracket first tries the untested interval end
    (the minimum may lie on a bound), else bisects the bracket geometrically.

    Returns:
        ``(b, converged)``.
    """
    lo, hi = 1.0 / high, 1.0 / low
    a, c = lo, hi
    b = min(max(1.0, lo), hi)
    for _ in range(_MAX_STEPS):
        first, second = derivatives(b)
        if first == 0.0:
            return b, True
        if first > 0.0:
            if b <= lo:
                return lo, True
            c = b
        else:
            if b >= hi:
                return hi, True
            a = b
        step = b - first / second if second > 0.0 else np.nan
        if not a < step < c:
            if step <= a and a == lo:
                step = lo
            elif step >= c and c == hi:
                step = hi
            else:
                step = float(np.sqrt(a * c))
        if abs(step - b) <= _RTOL * b or c - a <= _RTOL * b:
            return step, True
        b = step
    return b, False


def _fit_softmax_per_class(
    objective: _Objective, low: float, high: float
) -> tuple[npt.NDArray[np.float64], bool]:
    from scipy.optimize import minimize

    def in_log_t(log_t: npt.NDArray[np.float64]) -> tuple[float, npt.NDArray[np.float64]]:
        inverse_t = np.exp(-log_t)
        value, gradient = objective.value_and_gradient(inverse_t)
        return value, -inverse_t * gradient  # chain rule: d b / d log T = -b

    # Start from the best common temperature: the per-class search only refines it.
    common, _ = _convex_minimum(objective.derivatives, low, high)
    n = objective.n_channels
    result = minimize(
        in_log_t,
        np.full(n, -np.log(common)),
        jac=True,
        method="L-BFGS-B",
        bounds=[(np.log(low), np.log(high))] * n,
        options={"maxiter": 500, "ftol": 1e-13, "gtol": 1e-9},
    )
    return np.exp(-np.asarray(result.x, dtype=np.float64)), bool(result.success)


# --------------------------------------------------------------------------- the model


@dataclass(frozen=True)
class TemperatureModel:
    """A temperature ready to apply (from :func:`load_temperature` or a fit).

    Attributes:
        temperature: one value, or one per prediction channel.
        activation: ``"softmax"`` (over two or more channels) or ``"sigmoid"`` (per
            channel).
        n_channels: channel count of the predictions it was fitted for.
        class_names: the evaluated classes of the fit (informative).
        input_kind: what the fitted maps held (informative: ``T`` acts on logits either way).
        source: the file it was read from, if any.
    """

    temperature: tuple[float, ...]
    activation: str
    n_channels: int
    class_names: tuple[str, ...] = ()
    input_kind: str = "probabilities"
    source: Path | None = None

    def __post_init__(self) -> None:
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be 'softmax' or 'sigmoid', got {self.activation!r}")
        if self.activation == "softmax" and self.n_channels < 2:
            raise ValueError(
                "a softmax over one channel is 1 everywhere; a one-channel map is binary: "
                "use the sigmoid"
            )

    @property
    def per_class(self) -> bool:
        """Whether each channel has its own temperature."""
        return len(self.temperature) > 1

    def temperatures(self) -> npt.NDArray[np.float32]:
        """``T`` as float32: a 0-d array, or one value per channel."""
        values = np.asarray(self.temperature, dtype=np.float32)
        return values if self.per_class else values.reshape(())

    def describe(self) -> str:
        """``T = 1.5 (softmax, 4 channels)`` style one-liner."""
        values = ", ".join(f"{t:.4g}" for t in self.temperature)
        return f"T = {values} ({self.activation}, {self.n_channels} channels)"

    def check_channels(self, n_channels: int, path: Path | str | None = None) -> None:
        """Raise :class:`InputError` when a prediction's channel count does not fit.

        Args:
            n_channels: the prediction's channel count.
            path: the prediction file, named in the error (else the temperature file).
        """
        if n_channels == self.n_channels:
            return
        fitted = (
            f"{self.n_channels} ({', '.join(self.class_names)})"
            if self.class_names
            else (str(self.n_channels))
        )
        where = f" in {self.source}" if self.source is not None else ""
        problem = (
            f"has {n_channels} channel(s) but the temperature{where} was fitted for {fitted}; "
            "fit a temperature on predictions of the same kind"
        )
        raise InputError(path if path is not None else (self.source or "temperature"), problem)


def calibrate_probabilities(
    probabilities: npt.ArrayLike,
    model: TemperatureModel,
    *,
    path: Path | str | None = None,
) -> npt.NDArray[np.float32]:
    """Calibrated probabilities ``act(logits(p) / T)`` of a channel-first map.

    Logits are ``log p`` (softmax) or ``logit p`` (sigmoid) after clipping ``p`` to
    ``[1e-7, 1 - 1e-7]``, so ``T = 1`` changes values by about 1e-7 at most.

    Args:
        probabilities: ``(C, *spatial)`` probabilities in [0, 1].
        model: the temperature; ``C`` must equal ``model.n_channels``.
        path: the prediction file, named in errors.

    Returns:
        float32 ``(C, *spatial)`` probabilities.

    Raises:
        InputError: the channel count does not fit the model.
    """
    array = np.asarray(probabilities)
    model.check_channels(int(array.shape[0]) if array.ndim else 0, path)
    logits = logits_from_probabilities(array, model.activation)  # type: ignore[arg-type]
    return apply_temperature(logits, model.temperatures(), model.activation, axis=0)  # type: ignore[arg-type]


def calibrate_logits(
    logits: npt.ArrayLike,
    model: TemperatureModel,
    *,
    path: Path | str | None = None,
) -> npt.NDArray[np.float32]:
    """Calibrated probabilities ``act(z / T)`` of channel-first logits ``(C, *spatial)``.

    Raises:
        InputError: the channel count does not fit the model.
    """
    array = np.asarray(logits)
    model.check_channels(int(array.shape[0]) if array.ndim else 0, path)
    return apply_temperature(array, model.temperatures(), model.activation, axis=0)  # type: ignore[arg-type]
