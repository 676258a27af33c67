"""Training losses from a spec: :func:`build_loss` and :class:`CombinedLoss`.

:func:`build_loss` turns a spec such as ``"dsc+ce+ace"`` or ``"dsc:1+ce:1+ace:0.3"``
(parsed by :func:`parse_loss_spec`) into a :class:`CombinedLoss`: a weighted sum of
cross-entropy, MONAI's Dice loss and the calibration losses of
:mod:`calibkit.losses.calibration`, for training.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F

from calibkit.binning import DEFAULT_N_BINS
from calibkit.errors import CalibkitError
from calibkit.losses.calibration import (
    DEFAULT_EMPTY_WEIGHT,
    CalibrationReduction,
    HardL1ACELoss,
    SoftL1ACELoss,
    _upcast_half,
)

Activation = Literal["softmax", "sigmoid"]

SEGMENTATION_TERMS: tuple[str, ...] = ("ce", "dsc")
CALIBRATION_TERMS: Mapping[str, tuple[bool, CalibrationReduction]] = {
    "ace": (False, "average"),
    "ece": (False, "expected"),
    "mce": (False, "maximum"),
    "soft-ace": (True, "average"),
    "soft-ece": (True, "expected"),
    "soft-mce": (True, "maximum"),
}
LOSS_TERMS: tuple[str, ...] = SEGMENTATION_TERMS + tuple(CALIBRATION_TERMS)
_TERM = re.compile(r"^(?P<name>[a-z][a-z-]*)(?::(?P<weight>[^:]+))?$")


@dataclass(frozen=True)
class LossTerm:
    """One weighted term of a combined loss (``name`` is one of :data:`LOSS_TERMS`)."""

    name: str
    weight: float


def parse_loss_spec(spec: str) -> tuple[LossTerm, ...]:
    """Parse a loss spec: terms joined by ``+``, each ``name`` or ``name:weight``.

    Without weights every term gets ``1 / n`` (the paper's equal weighting); with
    weights, every term needs one.

    Args:
        spec: e.g. ``"dsc+ce+ace"``, ``"ce+soft-ace"``, ``"dsc:1+ce:1+ace:0.3"``.

    Returns:
        The terms in the order given.

    Raises:
        CalibkitError: an unknown or repeated term, a bad weight, or weights on only
            some terms; the message lists the valid terms.

    Example:
        >>> [(t.name, round(t.weight, 3)) for t in parse_loss_spec("dsc+ce+ace")]
        [('dsc', 0.333), ('ce', 0.333), ('ace', 0.333)]
        >>> parse_loss_spec("dsc:1+ace:0.3")
        (LossTerm(name='dsc', weight=1.0), LossTerm(name='ace', weight=0.3))
    """
    valid = f"valid terms: {', '.join(LOSS_TERMS)}; e.g. 'dsc+ce+ace' or 'dsc:1+ce:1+ace:0.3'"
    parts = [part.strip() for part in str(spec).strip().lower().split("+")]
    if not any(parts):
        raise CalibkitError(f"empty loss spec {spec!r}; {valid}")
    names: list[str] = []
    weights: list[float | None] = []
    for part in parts:
        match = _TERM.match(part)
        if match is None or match["name"] not in LOSS_TERMS:
            raise CalibkitError(f"loss spec {spec!r}: unknown term {part!r}; {valid}")
        name = match["name"]
        if name in names:
            raise CalibkitError(f"loss spec {spec!r}: term {name!r} appears twice; {valid}")
        names.append(name)
        weights.append(None if match["weight"] is None else _parse_weight(spec, part, match))
    given = [weight for weight in weights if weight is not None]
    if given and len(given) != len(weights):
        raise CalibkitError(
            f"loss spec {spec!r}: give a weight to every term or to none "
            "(e.g. 'dsc:1+ce:1+ace:0.3')"
        )
    if not given:
        return tuple(LossTerm(name, 1.0 / len(names)) for name in names)
    if sum(given) <= 0:
        raise CalibkitError(f"loss spec {spec!r}: the weights sum to zero")
    return tuple(LossTerm(name, float(w)) for name, w in zip(names, given, strict=True))


def _parse_weight(spec: str, part: str, match: re.Match[str]) -> float:
    try:
        weight = float(match["weight"])
    except ValueError:
        weight = math.nan
    if not math.isfinite(weight) or weight < 0:
        raise CalibkitError(f"loss spec {spec!r}: weight in {part!r} must be a non-negative number")
    return weight


class CombinedLoss(torch.nn.Module):
    """Weighted sum of segmentation and calibration terms, built by :func:`build_loss`.

    ``input`` is the network's logits ``(B, C, *spatial)``; the activation is applied
    once and shared by the Dice and calibration terms, while the cross-entropy term
    takes the logits, as in MONAI's ``DiceCELoss``.

    Attributes:
        terms: the parsed :class:`LossTerm` tuple (names and weights, for logging).
    """

    def __init__(
        self,
        terms: Sequence[LossTerm],
        modules: Mapping[str, torch.nn.Module],
        activation: Activation,
        to_onehot_y: bool,
    ) -> None:
        super().__init__()
        self.terms = tuple(terms)
        self.activation: Activation = activation
        self.to_onehot_y = to_onehot_y
        self.parts = torch.nn.ModuleDict(dict(modules))

    @property
    def spec(self) -> str:
        """Canonical spec with explicit weights, e.g. ``dsc:0.5+ace:0.5``."""
        return "+".join(f"{term.name}:{term.weight:g}" for term in self.terms)

    def extra_repr(self) -> str:
        return f"spec={self.spec!r}, activation={self.activation!r}"

    def components(self, input: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        """Unweighted value of every term, keyed by term name (differentiable)."""
        probabilities: torch.Tensor | None = None
        values: dict[str, torch.Tensor] = {}
        for term in self.terms:
            if term.name == "ce":
                values["ce"] = self._cross_entropy(input, target)
                continue
            if probabilities is None:
                probabilities = _activate(input, self.activation)
            values[term.name] = self.parts[term.name](probabilities, target)
        return values

    def combine(self, components: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Weighted sum of :meth:`components` (so a training loop can log the parts)."""
        total: torch.Tensor | None = None
        for term in self.terms:
            value = components[term.name] * term.weight
            total = value if total is None else total + value
        assert total is not None  # a spec has at least one term
        return total

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The weighted sum of all terms (a scalar)."""
        return self.combine(self.components(input, target))

    def _cross_entropy(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        n_pred, n_target = input.shape[1], target.shape[1]
        if self.activation == "sigmoid" or n_pred == 1:
            if self.to_onehot_y and n_pred > 1 and n_target == 1:
                target = _one_hot(target, n_pred)
            return F.binary_cross_entropy_with_logits(input, target.to(input.dtype))
        # MONAI DiceCELoss.ce: a (B, 1, ...) label map becomes class indices.
        if n_pred != n_target and n_target == 1:
            return F.cross_entropy(input, target[:, 0].long())
        if not torch.is_floating_point(target):
            target = target.to(input.dtype)
        return F.cross_entropy(input, target)


def _activate(input: torch.Tensor, activation: Activation) -> torch.Tensor:
    if activation == "sigmoid":
        return _upcast_half(input).sigmoid()
    if input.shape[1] == 1:
        return input
    return torch.softmax(_upcast_half(input), dim=1)


def _one_hot(labels: torch.Tensor, n_classes: int) -> torch.Tensor:
    classes = torch.arange(n_classes, device=labels.device).view(1, -1, *[1] * (labels.dim() - 2))
    return (labels == classes.to(labels.dtype)).to(torch.float32)


def build_loss(
    spec: str,
    *,
    n_bins: int = DEFAULT_N_BINS,
    include_background: bool = True,
    to_onehot_y: bool = True,
    activation: Activation = "softmax",
    ignore_empty_classes: bool = False,
    empty_weight: float = DEFAULT_EMPTY_WEIGHT,
) -> CombinedLoss:
    """A training loss from a spec such as ``"dsc+ce+ace"`` (see :func:`parse_loss_spec`).

    Terms: ``ce`` (cross-entropy on the logits, MONAI ``DiceCELoss``'s CE part;
    binary cross-entropy per channel for ``activation="sigmoid"``), ``dsc`` (MONAI
    ``DiceLoss`` defaults), and the calibration terms ``ace`` / ``ece`` / ``mce``
    (:class:`HardL1ACELoss`) and ``soft-ace`` / ``soft-ece`` / ``soft-mce``
    (:class:`SoftL1ACELoss`). Defaults follow the paper: softmax, label-map targets
    ``(B, 1, *spatial)``, background included, 20 bins, equal weights.

    Args:
        spec: the loss spec.
        n_bins: bins of the calibration terms.
        include_background: passed to the Dice and calibration terms.
        to_onehot_y: targets are ``(B, 1, *spatial)`` label maps.
        activation: ``softmax`` or ``sigmoid`` applied to the logits.
        ignore_empty_classes: calibration terms skip pairs with an empty target.
        empty_weight: bin threshold of the soft terms.

    Returns:
        A :class:`CombinedLoss` taking ``(logits, target)``.

    Raises:
        CalibkitError: a bad spec or option; ``dsc`` without MONAI installed.

    Example:
        >>> loss = build_loss("dsc:1+ace:0.3")
        >>> loss.spec
        'dsc:1+ace:0.3'
    """
    if activation not in ("softmax", "sigmoid"):
        raise CalibkitError(f"activation must be softmax or sigmoid, got {activation!r}")
    terms = parse_loss_spec(spec)
    modules: dict[str, torch.nn.Module] = {}
    for term in terms:
        if term.name == "dsc":
            try:
                from monai.losses.dice import DiceLoss
            except ImportError as error:  # pragma: no cover - MONAI is a dev dependency
                raise CalibkitError(
                    "the 'dsc' loss term needs MONAI: pip install 'calibkit[train]'"
                ) from error
            modules["dsc"] = DiceLoss(
                include_background=include_background, to_onehot_y=to_onehot_y
            )
        elif term.name in CALIBRATION_TERMS:
            soft, calibration_reduction = CALIBRATION_TERMS[term.name]
            options: dict[str, Any] = {
                "n_bins": n_bins,
                "include_background": include_background,
                "to_onehot_y": to_onehot_y,
                "ignore_empty_classes": ignore_empty_classes,
                "calibration_reduction": calibration_reduction,
            }
            modules[term.name] = (
                SoftL1ACELoss(empty_weight=empty_weight, **options)
                if soft
                else HardL1ACELoss(**options)
            )
    return CombinedLoss(terms, modules, activation, to_onehot_y)
