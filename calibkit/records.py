"""Result records: what an evaluation is asked to do and what it found, as plain data.

The lowest layer above the numerics: :class:`EvaluationOptions` (everything that
changes the numbers), :class:`CaseResult` (one case's bins and Dice counts),
:class:`Evaluation` (the tables of a whole run) and :class:`SavedBins` (what
``bins.npz`` holds). The case pipeline, the executors, ``io`` (result folders, the
partial store), the plots and the integrations all import them from here, so none
of them needs the workflows that produce them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import numpy.typing as npt

from calibkit._version import __version__
from calibkit.binning import DEFAULT_N_BINS, BinStats, bin_edges
from calibkit.classes import DICE_MODES, PRESETS, Region
from calibkit.errors import CalibkitError, InputError
from calibkit.io.pairing import DEFAULT_CASE_SUFFIXES
from calibkit.metrics import OverlapCounts

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "ACTIVATION_CHOICES",
    "Activation",
    "Backend",
    "CaseResult",
    "Evaluation",
    "EvaluationOptions",
    "InputKind",
    "SavedBins",
]

Backend = Literal["auto", "numpy", "torch"]
InputKind = Literal["probabilities", "logits"]
Activation = Literal["auto", "softmax", "sigmoid"]
ACTIVATION_CHOICES: tuple[str, ...] = ("auto", "softmax", "sigmoid")


@dataclass(frozen=True)
class EvaluationOptions:
    """Everything that changes the numbers of an evaluation (recorded in ``summary.json``).

    Attributes:
        n_bins: number of probability bins ``M``.
        dice_threshold: a voxel is predicted positive when ``p >= dice_threshold``.
        dice_mode: ``"threshold"`` (marginal, per class) or ``"argmax"`` (exclusive classes).
        classes: label values to evaluate (None: from the channel count).
        class_names: names of the evaluated classes, in order.
        include_background: evaluate label 0 / channel 0 too.
        preset: a region preset (``"brats"`` for ET/TC/WT, ``"kits"``; see
            :data:`calibkit.classes.PRESET_TABLE`).
        regions: regions to evaluate (``--region NAME=VALUES``, or the regions of an
            nnU-Net ``dataset.json``); None: classes.
        input_kind: ``"probabilities"`` or ``"logits"``.
        activation: turns logits into probabilities: ``"auto"`` (chosen from the
            channels by :func:`calibkit.cases.choose_activation`: the softmax for
            mutually exclusive channels, the sigmoid for one channel or region maps),
            ``"softmax"`` or ``"sigmoid"``.
        ignore_geometry: downgrade affine mismatches to warnings.
        allow_missing: skip (and list) cases without a partner.
        suffixes: case-id suffixes stripped from file names.
        backend: ``"numpy"``, ``"torch"`` or ``"auto"`` (torch when a GPU is usable).
        device: torch device for the torch backend (``"cpu"``, ``"cuda"``, ``"cuda:1"``).
        strict: fail (instead of warning) when a softmax map's channels do not sum to 1.
        temperature: a ``t.json`` from ``calibkit fit-temperature``, applied to every
            prediction before evaluation.
    """

    n_bins: int = DEFAULT_N_BINS
    dice_threshold: float = 0.5
    dice_mode: str = "threshold"
    classes: tuple[int, ...] | None = None
    class_names: tuple[str, ...] | None = None
    include_background: bool = False
    preset: str | None = None
    regions: tuple[Region, ...] | None = None
    input_kind: InputKind = "probabilities"
    activation: Activation = "auto"
    ignore_geometry: bool = False
    allow_missing: bool = False
    suffixes: tuple[str, ...] = DEFAULT_CASE_SUFFIXES
    backend: Backend = "auto"
    device: str | None = None
    strict: bool = False
    temperature: str | None = None

    def __post_init__(self) -> None:
        if int(self.n_bins) != self.n_bins or self.n_bins < 1:
            raise CalibkitError(f"--n-bins must be a positive integer, got {self.n_bins}")
        if not 0.0 < self.dice_threshold <= 1.0:
            raise CalibkitError(f"--dice-threshold must lie in (0, 1], got {self.dice_threshold}")
        if self.preset is not None and self.preset not in PRESETS:
            raise CalibkitError(
                f"unknown preset {self.preset!r}; choose one of: {', '.join(PRESETS)}"
            )
        if self.dice_mode not in DICE_MODES:
            raise CalibkitError(f"--dice-mode must be one of {', '.join(DICE_MODES)}")
        if self.input_kind not in ("probabilities", "logits"):
            raise CalibkitError("--input must be 'probabilities' or 'logits'")
        if self.activation not in ACTIVATION_CHOICES:
            raise CalibkitError("--activation must be 'auto', 'softmax' or 'sigmoid'")
        if self.backend not in ("auto", "numpy", "torch"):
            raise CalibkitError("--backend must be 'auto', 'numpy' or 'torch'")


@dataclass(frozen=True)
class CaseResult:
    """Bin statistics and overlap counts of one case, per evaluated class."""

    case_id: str
    source: Path
    class_names: tuple[str, ...]
    stats: BinStats
    overlap: OverlapCounts
    n_voxels: int
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class Evaluation:
    """The result of :func:`evaluate_folders`.

    Attributes:
        per_image: one row per (case, class): ``case_id, class, ace, ece, mce, dice,
            n_voxels, gt_voxels, gt_empty, pred_voxels, intersection``.
        summary: one row per (class, metric), classes in order then ``mean``:
            ``class, metric, mean, std, median, n, pooled``.
        bins: per-case, per-class bin statistics, shape ``(cases, classes, M)``.
        case_ids: case ids in table order (sorted).
        class_names: evaluated classes in table order.
        options: the options used.
        warnings: warnings raised on the way (geometry, skipped cases).
        missing_label: case ids skipped for want of a label (``allow_missing``).
        missing_prediction: case ids skipped for want of a prediction.
    """

    per_image: pd.DataFrame
    summary: pd.DataFrame
    bins: BinStats
    overlap: OverlapCounts
    case_ids: tuple[str, ...]
    class_names: tuple[str, ...]
    options: EvaluationOptions
    warnings: tuple[str, ...] = ()
    missing_label: tuple[str, ...] = ()
    missing_prediction: tuple[str, ...] = ()
    sources: dict[str, str] = field(default_factory=dict)

    def summary_record(self) -> dict[str, Any]:
        """Everything ``summary.json`` holds, as plain JSON-ready data."""
        table: dict[str, dict[str, dict[str, float | int | None]]] = {}
        for row in self.summary.to_dict(orient="records"):
            entry = {
                "mean": _json_float(row["mean"]),
                "std": _json_float(row["std"]),
                "median": _json_float(row["median"]),
                "n": int(row["n"]),
                "pooled": _json_float(row["pooled"]),
            }
            table.setdefault(str(row["class"]), {})[str(row["metric"])] = entry
        options = asdict(self.options)
        return {
            "calibkit_version": __version__,
            "inputs": self.sources,
            "options": options,
            "n_cases": len(self.case_ids),
            "case_ids": list(self.case_ids),
            "classes": list(self.class_names),
            "n_bins": self.options.n_bins,
            "bin_edges": [float(edge) for edge in bin_edges(self.options.n_bins)],
            "summary": table,
            "missing_label": list(self.missing_label),
            "missing_prediction": list(self.missing_prediction),
            "warnings": list(self.warnings),
        }


@dataclass(frozen=True)
class SavedBins:
    """The content of ``bins.npz``: everything plots and pooled numbers need.

    Attributes:
        stats: per-case, per-class bins, shape ``(cases, classes, M)``.
        overlap: per-case, per-class Dice counts, shape ``(cases, classes)``.
        case_ids: case ids along the first axis.
        class_names: class names along the second axis.
        bin_edges: the ``M + 1`` float32 edges.
    """

    stats: BinStats
    overlap: OverlapCounts
    case_ids: tuple[str, ...]
    class_names: tuple[str, ...]
    bin_edges: npt.NDArray[np.float32]

    def case(self, case_id: str) -> BinStats:
        """Bins of one case, shape ``(classes, M)``."""
        try:
            return self.stats[self.case_ids.index(case_id)]
        except ValueError:
            raise InputError(case_id, "no such case in bins.npz") from None


def _json_float(value: Any) -> float | None:
    return None if value is None or np.isnan(value) else float(value)
