"""Which files hold images: the suffixes calibkit reads and writes, and the check
that a path is a non-empty file of an accepted kind."""

from __future__ import annotations

from pathlib import Path

from calibkit.errors import InputError

__all__ = [
    "LABEL_SUFFIXES",
    "NIFTI_SUFFIXES",
    "PREDICTION_SUFFIXES",
    "RASTER_SUFFIXES",
    "SITK_SUFFIXES",
    "split_suffix",
]

NIFTI_SUFFIXES = (".nii.gz", ".nii")
SITK_SUFFIXES = (".mha", ".mhd", ".nrrd", ".nhdr")
# 2-D PNG and TIFF images (read with SimpleITK): probability maps and label masks.
RASTER_SUFFIXES = (".png", ".tif", ".tiff")
PREDICTION_SUFFIXES = (*NIFTI_SUFFIXES, *SITK_SUFFIXES, *RASTER_SUFFIXES, ".npz")
LABEL_SUFFIXES = (*NIFTI_SUFFIXES, *SITK_SUFFIXES, *RASTER_SUFFIXES)

_KNOWN_SUFFIXES = sorted(set(PREDICTION_SUFFIXES), key=len, reverse=True)


def split_suffix(path: Path | str) -> tuple[str, str]:
    """Split a file name into its stem and volume suffix.

    Known suffixes (``PREDICTION_SUFFIXES``) match case-insensitively and are returned
    lower-case; ``.nii.gz`` counts as one suffix. Unknown names split at the last dot.

    Args:
        path: a file path or name.

    Returns:
        ``(stem, suffix)``.

    Example:
        >>> split_suffix(Path("BraTS/CASE_001_seg.NII.GZ"))
        ('CASE_001_seg', '.nii.gz')
    """
    name = Path(path).name
    lower = name.lower()
    for suffix in _KNOWN_SUFFIXES:
        if lower.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)], suffix
    return Path(name).stem, Path(name).suffix.lower()


def _check_file(path: Path, allowed: tuple[str, ...]) -> str:
    """Return the file's suffix after checking it exists, is non-empty and is allowed."""
    suffix = split_suffix(path)[1]
    if suffix not in allowed:
        raise InputError(
            path, f"unsupported file type '{suffix}'; expected one of {', '.join(allowed)}"
        )
    if not path.exists():
        raise InputError(path, "file not found; check the path")
    if path.is_dir():
        raise InputError(path, "is a folder, expected a file")
    if path.stat().st_size == 0:
        raise InputError(path, "file is empty (0 bytes); re-export or re-download it")
    return suffix
