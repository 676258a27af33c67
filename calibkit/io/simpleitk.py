"""MetaImage, NRRD, PNG and TIFF images (``.mha`` / ``.mhd`` / ``.nrrd`` / ``.nhdr`` /
``.png`` / ``.tif``), read with SimpleITK (imported only when such a file is read).

3-D images are volumes; 2-D images are read as volumes of one slice (``z = 1``).
"""

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
    return _channel_first(array, path), affine


def _channel_first(array: np.ndarray, path: Path) -> np.ndarray:
    """ITK's ``(z, y, x)`` or ``(z, y, x, C)`` as calibkit's ``(C, x, y, z)`` (a view)."""
    if array.ndim == 3:  # scalar (z, y, x)
        return array.transpose(2, 1, 0)[np.newaxis]
    if array.ndim == 4:  # (z, y, x, C)
        return array.transpose(3, 2, 1, 0)
    raise InputError(path, f"image of shape {array.shape} cannot be a prediction")


def _read_sitk(path: Path, *, as_float32: bool) -> tuple[np.ndarray, np.ndarray]:
    """Read with SimpleITK; return the numpy array in ITK's reversed axis order.

    3-D images give ``(z, y, x)``, vector images ``(z, y, x, C)``; a 4-D scalar image
    ``(C, z, y, x)`` is returned as ``(z, y, x, C)`` so that callers see one layout.
    A 2-D image is one slice: ``(1, y, x)`` or ``(1, y, x, C)``.
    """
    import SimpleITK as sitk

    kind = f"{split_suffix(path)[1][1:].upper()} (SimpleITK)"
    with _read_errors(path, kind):
        if path.suffix.lower() in (".mha", ".mhd"):
            _check_metaimage_dimension(path)
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        # One capture for header and data: warnings printed while the header is read
        # belong to the one error line when the data then fail.
        with _sitk_messages(path, kind):
            reader.ReadImageInformation()
            dimension = int(reader.GetDimension())
            components = int(reader.GetNumberOfComponents())
            size = tuple(int(n) for n in reader.GetSize())
            if dimension not in (2, 3, 4) or (dimension == 4 and components > 1 and size[3] != 1):
                layout = f"{dimension}-D image of size {size} with {components} component(s)"
                raise InputError(
                    path,
                    f"{layout} is not supported; expected a 2-D or 3-D scalar or vector image",
                )
            pixel_type = sitk.GetPixelIDValueAsString(reader.GetPixelID())
            _check_sitk_claim(path, size, components, pixel_type)
            image = reader.Execute()
        if as_float32:
            target = sitk.sitkVectorFloat32 if components > 1 else sitk.sitkFloat32
            if image.GetPixelID() != target:
                image = sitk.Cast(image, target)
        affine = _sitk_affine(image)
        array = sitk.GetArrayFromImage(image)
    del image
    if dimension == 2:
        array = array[np.newaxis]
    elif dimension == 4:
        array = array[0] if components > 1 else np.moveaxis(array, 0, -1)
    return array, affine


def _sitk_header(path: Path) -> Any:
    """A SimpleITK reader that has read the header of ``path`` (its messages caught).

    Raises:
        InputError: the header cannot be read.
    """
    import SimpleITK as sitk

    kind = f"{split_suffix(path)[1][1:].upper()} (SimpleITK)"
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    with _read_errors(path, kind), _sitk_messages(path, kind):
        reader.ReadImageInformation()
    return reader


@contextmanager
def _sitk_messages(path: Path, kind: str) -> Iterator[None]:
    """Catch what SimpleITK's C++ readers print on stderr while reading ``path``.

    MetaImage and NRRD report damaged data ("Uncompress failed", "data not read
    completely") only by printing it, and then return an image of uninitialised
    memory; when they do raise, the exception says less than the printed lines.
    Such a message, or anything printed by a read that raises (libpng's warnings
    before its error), makes the read fail with that message; anything else printed
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
    # A read that fails keeps what was printed on the way (libpng's warnings before
    # its error) in its one line; a read that succeeds passes warnings on.
    if _SITK_FAILURES.search(text) or (error is not None and text.strip()):
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
    """RAS+ voxel-to-world affine from an ITK image (or reader) in LPS+.

    A 2-D image's plane is the volume's first slice: its 2x2 direction, spacing and
    origin fill the x and y rows and columns, and z has spacing 1 and origin 0.
    """
    dimension = int(image.GetDimension())
    used = min(dimension, 3)
    direction = np.eye(3)
    full = np.asarray(image.GetDirection(), dtype=np.float64).reshape(dimension, dimension)
    direction[:used, :used] = full[:used, :used]
    spacing, origin = np.ones(3), np.zeros(3)
    spacing[:used] = np.asarray(image.GetSpacing(), dtype=np.float64)[:used]
    origin[:used] = np.asarray(image.GetOrigin(), dtype=np.float64)[:used]
    affine = np.eye(4)
    affine[:3, :3] = direction * spacing
    affine[:3, 3] = origin
    affine[:2] *= -1.0  # LPS -> RAS
    return affine
