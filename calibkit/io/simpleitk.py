"""MetaImage and NRRD volumes (``.mha`` / ``.mhd`` / ``.nrrd`` / ``.nhdr``), read with
SimpleITK (imported only when such a file is read)."""

from __future__ import annotations

import os
import re
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from calibkit.errors import InputError
from calibkit.io.claims import _check_metaimage_dimension, _check_sitk_claim
from calibkit.io.formats import split_suffix
from calibkit.io.read_errors import _read_errors, _shorten

# What SimpleITK's MetaImage / NRRD code prints (on the C++ stderr) when it fails
# to read data, while still returning an image of uninitialised memory.
_SITK_FAILURES = re.compile(r"fail|error|cannot|not read|unable|exception", re.IGNORECASE)


def _read_sitk_prediction(path: Path) -> tuple[np.ndarray, np.ndarray]:
    array, affine = _read_sitk(path, as_float32=True)
    if array.ndim == 3:  # scalar (z, y, x)
        return array.transpose(2, 1, 0)[np.newaxis], affine
    if array.ndim == 4:  # (z, y, x, C)
        return array.transpose(3, 2, 1, 0), affine
    raise InputError(path, f"image of shape {array.shape} cannot be a prediction")


def _read_sitk(path: Path, *, as_float32: bool) -> tuple[np.ndarray, np.ndarray]:
    """Read with SimpleITK; return the numpy array in ITK's reversed axis order.

    3-D images give ``(z, y, x)``, vector images ``(z, y, x, C)``; a 4-D scalar image
    ``(C, z, y, x)`` is returned as ``(z, y, x, C)`` so that callers see one layout.
    """
    import SimpleITK as sitk

    kind = f"{split_suffix(path)[1][1:].upper()} (SimpleITK)"
    with _read_errors(path, kind):
        if path.suffix.lower() in (".mha", ".mhd"):
            _check_metaimage_dimension(path)
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        with _sitk_messages(path, kind):
            reader.ReadImageInformation()
        dimension = int(reader.GetDimension())
        components = int(reader.GetNumberOfComponents())
        size = tuple(int(n) for n in reader.GetSize())
        if dimension not in (3, 4) or (dimension == 4 and components > 1 and size[3] != 1):
            layout = f"{dimension}-D image of size {size} with {components} component(s)"
            raise InputError(
                path, f"{layout} is not supported; expected a 3-D scalar or vector image"
            )
        pixel_type = sitk.GetPixelIDValueAsString(reader.GetPixelID())
        _check_sitk_claim(path, size, components, pixel_type)
        with _sitk_messages(path, kind):
            image = reader.Execute()
        if as_float32:
            target = sitk.sitkVectorFloat32 if components > 1 else sitk.sitkFloat32
            if image.GetPixelID() != target:
                image = sitk.Cast(image, target)
        affine = _sitk_affine(image)
        array = sitk.GetArrayFromImage(image)
    del image
    if dimension == 4:
        array = array[0] if components > 1 else np.moveaxis(array, 0, -1)
    return array, affine


@contextmanager
def _sitk_messages(path: Path, kind: str) -> Iterator[None]:
    """Catch what SimpleITK's C++ readers print on stderr while reading ``path``.

    MetaImage and NRRD report damaged data ("Uncompress failed", "data not read
    completely") only by printing it, and then return an image of uninitialised
    memory; when they do raise, the exception says less than the printed lines.
    Such a message makes the read fail with that message; anything else printed
    meanwhile (a progress bar's refresh, say) is passed on.
    """
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):  # no usable stderr: nothing to catch
        yield
        return
    error: RuntimeError | None = None
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        except RuntimeError as raised:  # SimpleITK's exceptions
            error = raised
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        captured.seek(0)
        text = captured.read().decode("utf-8", "replace")
    if _SITK_FAILURES.search(text):
        reason = " ".join(line.strip() for line in text.splitlines() if line.strip())
        raise InputError(
            path,
            f"cannot be read as {kind} (truncated or corrupt file: {_shorten(reason)}); "
            "re-export or re-download it",
        ) from error
    if text:
        sys.stderr.write(text)
    if error is not None:
        raise error


def _sitk_affine(image: Any) -> np.ndarray:
    """RAS+ voxel-to-world affine from an ITK image (or reader) in LPS+."""
    dimension = int(image.GetDimension())
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(dimension, dimension)
    spacing = np.asarray(image.GetSpacing(), dtype=np.float64)[:3]
    affine = np.eye(4)
    affine[:3, :3] = direction[:3, :3] * spacing
    affine[:3, 3] = np.asarray(image.GetOrigin(), dtype=np.float64)[:3]
    affine[:2] *= -1.0  # LPS -> RAS
    return affine
