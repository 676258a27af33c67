"""Reading, writing and pairing of prediction and label volumes (the I/O edge)."""

from __future__ import annotations

from calibkit.io.atomic import atomic_path, atomic_write_bytes, atomic_write_text
from calibkit.io.formats import LABEL_SUFFIXES, PREDICTION_SUFFIXES, split_suffix
from calibkit.io.pairing import (
    DEFAULT_CASE_SUFFIXES,
    CasePair,
    Pairing,
    case_id_from_path,
    find_labels,
    find_predictions,
    pair_cases,
)
from calibkit.io.volumes import Volume, check_geometry, read_label, read_prediction
from calibkit.io.writing import write_prediction

__all__ = [
    "DEFAULT_CASE_SUFFIXES",
    "LABEL_SUFFIXES",
    "PREDICTION_SUFFIXES",
    "CasePair",
    "Pairing",
    "Volume",
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_text",
    "case_id_from_path",
    "check_geometry",
    "find_labels",
    "find_predictions",
    "pair_cases",
    "read_label",
    "read_prediction",
    "split_suffix",
    "write_prediction",
]
