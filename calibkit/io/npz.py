"""nnU-Net ``.npz`` probability maps (array ``probabilities``, axes ``(C, z, y, x)``),
read with numpy."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from calibkit.errors import InputError
from calibkit.io.claims import _checked_npz_member
from calibkit.io.read_errors import _read_errors


def _read_npz_prediction(path: Path) -> np.ndarray:
    from numpy.lib import format as npy

    with _read_errors(path, "nnU-Net .npz"), zipfile.ZipFile(path) as archive:
        info = _checked_npz_member(archive, path)
        with archive.open(info) as member:
            probabilities: np.ndarray = npy.read_array(member, allow_pickle=False)
    if probabilities.ndim != 4:
        raise InputError(
            path,
            f"'probabilities' has shape {probabilities.shape}; expected 4-D (C, z, y, x) "
            "as nnU-Net writes it",
        )
    if probabilities.dtype.kind not in "biuf":
        raise InputError(
            path, f"'probabilities' stores {probabilities.dtype} values; expected floats"
        )
    if probabilities.dtype != np.dtype(np.float32):
        with np.errstate(over="ignore"):  # beyond float32: inf, refused by _check_finite
            probabilities = probabilities.astype(np.float32)
    return probabilities.transpose(0, 3, 2, 1)
