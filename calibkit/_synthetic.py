"""Shapes, model outputs and files shared by the seeded synthetic data sets.

The BraTS-style sample data (:mod:`calibkit.sample_data`) and the abdominal and
kidney sets (:mod:`calibkit.sample_sets`) draw their anatomy, their synthetic models'
probabilities and their NIfTI files with these helpers, so every set is built the
same way: smooth random fields deform ellipsoids, a model's logit is a scale times
(signed distance to the true border + a smooth border error), probabilities are
stored as uint8 with ``scl_slope = 1/255``, and files are gzip-compressed without a
timestamp and written atomically.
"""

from __future__ import annotations

import gzip
import os
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

__all__ = [
    "BoolArray",
    "FloatArray",
    "box_slices",
    "check_size",
    "deformed_ellipsoid",
    "log_sigmoid",
    "nifti_image",
    "probability_image",
    "quantise_probabilities",
    "quantise_softmax",
    "save_nifti",
    "signed_distance",
    "smooth_field",
    "write_file",
]

FloatArray = NDArray[np.float64]
BoolArray = NDArray[np.bool_]


def check_size(n_cases: int, shape: tuple[int, ...]) -> None:
    """Refuse a data set of no case, or with a volume side under 16 voxels.

    Raises:
        ValueError: naming the argument and its value.
    """
    if n_cases < 1:
        raise ValueError(f"n_cases must be at least 1, got {n_cases}")
    if len(shape) != 3 or min(shape) < 16:
        raise ValueError(f"shape must be three sides of at least 16 voxels, got {shape}")


def smooth_field(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> FloatArray:
    """Return a zero-mean, unit-std random field smoothed with a Gaussian of ``sigma`` voxels."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma, mode="wrap", truncate=3.0)
    field -= field.mean()
    return np.asarray(field / field.std(), dtype=np.float64)


def deformed_ellipsoid(
    coords: FloatArray,
    centre: FloatArray,
    radii: FloatArray,
    deformation: FloatArray,
    amplitude: float,
) -> BoolArray:
    """Return the points of an ellipsoid whose radius is modulated by a smooth field.

    ``coords`` is ``(3, *grid)`` in any unit (voxels, mm); ``centre`` and ``radii`` are
    in the same unit.
    """
    offsets = (coords - centre[:, None, None, None]) / radii[:, None, None, None]
    rho = np.sqrt(np.sum(offsets**2, axis=0))
    return np.asarray(rho <= 1.0 + amplitude * deformation)


def signed_distance(mask: BoolArray) -> FloatArray:
    """Return the distance to the mask border in voxels: positive inside, ±0.5 at the border."""
    inside = ndimage.distance_transform_edt(mask)
    outside = ndimage.distance_transform_edt(~mask)
    return np.asarray(np.where(mask, inside - 0.5, 0.5 - outside), dtype=np.float64)


def box_slices(lo: FloatArray, hi: FloatArray, shape: tuple[int, ...]) -> tuple[slice, ...]:
    """Return the slices of the box ``[lo, hi]`` (voxel coordinates), clipped to ``shape``."""
    return tuple(
        slice(max(int(np.floor(a)), 0), min(int(np.ceil(b)) + 1, n))
        for a, b, n in zip(lo, hi, shape, strict=True)
    )


def log_sigmoid(x: FloatArray) -> FloatArray:
    """Return ``log(sigmoid(x))`` without overflow."""
    return np.asarray(-np.logaddexp(0.0, -x), dtype=np.float64)


def quantise_probabilities(probs: FloatArray) -> NDArray[np.uint8]:
    """Return probabilities in ``[0, 1]`` as uint8 in 1/255 steps, each rounded to nearest.

    Rounding is monotone, so maps that are nested before (``p_a >= p_b`` per voxel)
    stay nested.
    """
    return np.rint(np.clip(probs, 0.0, 1.0) * 255.0).astype(np.uint8)


def quantise_softmax(probs: FloatArray) -> NDArray[np.uint8]:
    """Return softmax probabilities (channels last) as uint8 whose channels sum to 255.

    Each channel is rounded to the nearest 1/255; the rounding residue goes to the
    most likely channel, so every voxel's stored probabilities sum to exactly 1.
    """
    quantised = np.rint(probs * 255.0).astype(np.int16)
    residue = 255 - quantised.sum(axis=-1)
    top = np.argmax(quantised, axis=-1)[..., None]
    np.put_along_axis(
        quantised, top, np.take_along_axis(quantised, top, axis=-1) + residue[..., None], axis=-1
    )
    return quantised.astype(np.uint8)


def nifti_image(data: NDArray[np.generic], affine: FloatArray, description: str) -> nib.Nifti1Image:
    """Return a NIfTI image with both qform and sform set to ``affine`` (scanner, mm)."""
    image = nib.Nifti1Image(data, affine)
    header = image.header
    header.set_data_dtype(data.dtype)
    header.set_qform(affine, code=1)
    header.set_sform(affine, code=1)
    header.set_xyzt_units("mm", "sec")
    header["descrip"] = description.encode()[:79]
    return image


def probability_image(
    probs: NDArray[np.uint8], affine: FloatArray, description: str
) -> nib.Nifti1Image:
    """Return a 4-D probability image stored as uint8 with ``scl_slope = 1/255``."""
    image = nifti_image(probs, affine, description)
    image.header.set_intent("estimate", name="probabilities")
    # Set after construction: nibabel writes the uint8 values as they are when slope/inter are set.
    image.header.set_slope_inter(1.0 / 255.0, 0.0)
    return image


def write_file(path: Path, payload: bytes) -> None:
    """Write ``payload`` to ``path`` atomically (temporary file in the same folder, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
        os.chmod(tmp_name, 0o644)  # mkstemp creates 0600; data files are meant to be shared
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def save_nifti(image: nib.Nifti1Image, path: Path) -> None:
    """Write ``image`` to ``path`` (``.nii.gz``) atomically, with reproducible gzip bytes."""
    # mtime=0 and a fixed level make the gzip bytes depend on the data only.
    write_file(path, gzip.compress(image.to_bytes(), compresslevel=9, mtime=0))
