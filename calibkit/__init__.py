"""calibkit: measure, show and improve the calibration of segmentation models.

The public API is importable from here; heavy libraries (torch, MONAI,
matplotlib, pandas) are imported only by the functions that use them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from calibkit._version import __version__

__all__ = [
    "BinStats",
    "CalibrationErrors",
    "HardL1ACELoss",
    "SoftL1ACELoss",
    "__version__",
    "average_calibration_error",
    "bin_edges",
    "bin_statistics",
    "build_loss",
    "calibration_errors",
    "compare_runs",
    "dice_score",
    "evaluate_folders",
    "expected_calibration_error",
    "fit_temperature",
    "fit_temperature_folder",
    "gate_folder",
    "maximum_calibration_error",
    "summarize_folders",
]

_LAZY = {
    "BinStats": "calibkit.binning",
    "bin_edges": "calibkit.binning",
    "bin_statistics": "calibkit.binning",
    "CalibrationErrors": "calibkit.metrics",
    "average_calibration_error": "calibkit.metrics",
    "calibration_errors": "calibkit.metrics",
    "dice_score": "calibkit.metrics",
    "expected_calibration_error": "calibkit.metrics",
    "maximum_calibration_error": "calibkit.metrics",
    "evaluate_folders": "calibkit.evaluate",
    "compare_runs": "calibkit.runs",
    "summarize_folders": "calibkit.tables",
    "gate_folder": "calibkit.gate",
    "fit_temperature": "calibkit.temperature",
    "fit_temperature_folder": "calibkit.calibrate",
    "HardL1ACELoss": "calibkit.losses",
    "SoftL1ACELoss": "calibkit.losses",
    "build_loss": "calibkit.losses",
}

if TYPE_CHECKING:
    from calibkit.binning import BinStats, bin_edges, bin_statistics
    from calibkit.calibrate import fit_temperature_folder
    from calibkit.evaluate import evaluate_folders
    from calibkit.gate import gate_folder
    from calibkit.losses import HardL1ACELoss, SoftL1ACELoss, build_loss
    from calibkit.metrics import (
        CalibrationErrors,
        average_calibration_error,
        calibration_errors,
        dice_score,
        expected_calibration_error,
        maximum_calibration_error,
    )
    from calibkit.runs import compare_runs
    from calibkit.tables import summarize_folders
    from calibkit.temperature import fit_temperature


def __getattr__(name: str) -> Any:
    # Lazy attribute access keeps `import calibkit` (and `calibkit --help`) fast.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'calibkit' has no attribute {name!r}")
