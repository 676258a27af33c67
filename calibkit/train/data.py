"""Training data: case discovery, label mapping, the recorded split, and the augmentations.

Layouts (found automatically):

- **BraTS 2021**: case folders ``CASE/CASE_{t1,t1ce,t2,flair,seg}.nii.gz`` anywhere
  under the data folder (``.nii`` too).
- **MSD** (``Task01_BrainTumour``): ``dataset.json``, ``imagesTr/CASE.nii.gz`` holding
  the four modalities as a 4-D image, ``labelsTr/CASE.nii.gz``.
- **nnU-Net raw**: ``dataset.json``, ``imagesTr/CASE_000{0..3}.nii.gz``, ``labelsTr/CASE.nii.gz``.

The network always sees the modalities in the order t1, t1ce, t2, flair (MSD / nnU-Net
channels are reordered by the names in ``dataset.json``) and learns the classes
0 BG, 1 NCR, 2 ED, 3 ET: BraTS labels 0, 1, 2, 4 (3 also counts as ET); for MSD and
nnU-Net the mapping is read from the ``labels`` of ``dataset.json`` (MSD's 1 is oedema).

Every training sample is a pure function of ``(seed, epoch, sample index)``: the case
(a seeded permutation per epoch) and the seed of every random transform. A resumed
run therefore draws exactly the samples an uninterrupted run would, whatever the
number of workers or processes.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from calibkit.errors import CalibkitError, InputError
from calibkit.io.formats import NIFTI_SUFFIXES, split_suffix

if TYPE_CHECKING:
    import torch

__all__ = [
    "BRATS_LABEL_MAP",
    "CLASS_NAMES",
    "MODALITIES",
    "Case",
    "CaseData",
    "DataSet",
    "SampleBatches",
    "Split",
    "TrainingSamples",
    "find_cases",
    "load_case",
    "make_split",
    "read_split",
    "sample_key",
    "train_transforms",
    "val_transforms",
]

MODALITIES: tuple[str, ...] = ("t1", "t1ce", "t2", "flair")
CLASS_NAMES: tuple[str, ...] = ("BG", "NCR", "ED", "ET")
BRATS_LABEL_MAP: dict[int, int] = {0: 0, 1: 1, 2: 2, 3: 3, 4: 3}
_MAX_LISTED = 8
_MODALITY_ALIASES = {
    "t1": "t1",
    "t1w": "t1",
    "t1n": "t1",
    "native": "t1",
    "t1ce": "t1ce",
    "t1c": "t1ce",
    "t1gd": "t1ce",
    "t1post": "t1ce",
    "t1contrast": "t1ce",
    "t2": "t2",
    "t2w": "t2",
    "flair": "flair",
    "t2flair": "flair",
    "t2f": "flair",
}


@dataclass(frozen=True)
class Case:
    """One case on disk.

    Attributes:
        case_id: the id (folder name for BraTS, file stem for MSD / nnU-Net).
        images: one 4-D file (MSD) or four 3-D files in the order t1, t1ce, t2, flair.
        label: the label map, or None (prediction-only folders).
        channels: for a 4-D file, its channel index of t1, t1ce, t2, flair.
    """

    case_id: str
    images: tuple[Path, ...]
    label: Path | None
    channels: tuple[int, ...] = (0, 1, 2, 3)


@dataclass(frozen=True)
class DataSet:
    """The cases of a data folder and how their labels map to training classes.

    Attributes:
        root: the data folder.
        layout: ``"brats"``, ``"msd"`` or ``"nnunet"``.
        cases: the cases, sorted by id.
        label_map: label value -> training class (0 BG, 1 NCR, 2 ED, 3 ET).
        notes: remarks worth showing the user (e.g. channel order assumed).
    """

    root: Path
    layout: str
    cases: tuple[Case, ...]
    label_map: dict[int, int]
    notes: tuple[str, ...] = ()

    @property
    def case_ids(self) -> tuple[str, ...]:
        return tuple(case.case_id for case in self.cases)

    def subset(self, case_ids: Sequence[str]) -> tuple[Case, ...]:
        by_id = {case.case_id: case for case in self.cases}
        return tuple(by_id[case_id] for case_id in case_ids)


def find_cases(
    data: Path | str,
    *,
    require_labels: bool = True,
    label_map: dict[int, int] | None = None,
) -> DataSet:
    """Find the cases of a BraTS, MSD or nnU-Net raw data folder.

    Args:
        data: the folder (for MSD / nnU-Net: the one with ``dataset.json``, or an
            ``imagesTr`` / ``imagesTs`` folder itself).
        require_labels: every case needs a label map (training); without it, cases
            without labels are kept (prediction).
        label_map: overrides the label mapping (see :func:`parse_label_map`).

    Returns:
        :class:`DataSet`.

    Raises:
        InputError: no cases, a missing modality or label, an unreadable ``dataset.json``.
    """
    root = Path(data)
    if not root.is_dir():
        raise InputError(root, "data folder not found; give a BraTS or MSD / nnU-Net raw folder")
    description = _dataset_json(root)
    if description is not None:
        return _find_decathlon(root, description, require_labels, label_map)
    return _find_brats(root, require_labels, label_map)


def _dataset_json(root: Path) -> Path | None:
    for folder in (root, root.parent):
        candidate = folder / "dataset.json"
        if candidate.is_file() and (
            folder == root or root.name.lower().startswith(("imagestr", "imagests"))
        ):
            return candidate
    return None


def _find_brats(root: Path, require_labels: bool, label_map: dict[int, int] | None) -> DataSet:
    flair_files = _find_flair(root)
    if not flair_files:
        raise InputError(
            root,
            "no cases found: expected BraTS case folders CASE/CASE_{t1,t1ce,t2,flair,seg}.nii.gz "
            "or an MSD / nnU-Net raw folder with dataset.json, imagesTr and labelsTr",
        )
    cases: list[Case] = []
    seen: dict[str, Path] = {}
    for flair in flair_files:
        case_id, suffix = split_suffix(flair)
        case_id = case_id[: -len("_flair")]
        folder = flair.parent
        if case_id in seen:
            raise InputError(folder, f"case id {case_id!r} also appears in {seen[case_id]}")
        seen[case_id] = folder
        images = []
        for modality in MODALITIES:
            path = _existing(folder, f"{case_id}_{modality}")
            if path is None:
                raise InputError(
                    folder,
                    f"missing {case_id}_{modality}{suffix}; each BraTS case folder needs "
                    f"{', '.join(MODALITIES)} (and seg for training)",
                )
            images.append(path)
        label = _existing(folder, f"{case_id}_seg")
        if label is None and require_labels:
            raise InputError(folder, f"missing the label map {case_id}_seg{suffix}")
        cases.append(Case(case_id, tuple(images), label))
    cases.sort(key=lambda case: case.case_id)
    mapping = dict(label_map) if label_map is not None else dict(BRATS_LABEL_MAP)
    return DataSet(root, "brats", tuple(cases), mapping)


def _find_flair(root: Path) -> list[Path]:
    """``*_flair.nii(.gz)`` files under ``root``: hidden entries skipped, links followed."""
    found: list[Path] = []
    seen: set[tuple[int, int]] = set()
    for folder, dirs, names in os.walk(root, followlinks=True):
        info = os.stat(folder)
        if (info.st_dev, info.st_ino) in seen:  # a symlink loop
            dirs[:] = []
            continue
        seen.add((info.st_dev, info.st_ino))
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in names:
            path = Path(folder) / name
            stem, suffix = split_suffix(path)
            if not name.startswith(".") and stem.endswith("_flair") and suffix in NIFTI_SUFFIXES:
                found.append(path)
    return sorted(found)


def _existing(folder: Path, stem: str) -> Path | None:
    for suffix in NIFTI_SUFFIXES:
        path = folder / f"{stem}{suffix}"
        if path.is_file():
            return path
    return None


def _find_decathlon(
    root: Path, description_path: Path, require_labels: bool, label_map: dict[int, int] | None
) -> DataSet:
    try:
        description = json.loads(description_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputError(description_path, f"cannot read dataset.json ({error})") from None
    if not isinstance(description, dict):
        raise InputError(description_path, "dataset.json must hold a JSON object")
    base = description_path.parent
    if root != base:
        image_dir = root
        label_dir = base / ("labelsTr" if root.name.lower() == "imagestr" else "labelsTs")
    else:
        image_dir = base / "imagesTr"
        label_dir = base / "labelsTr"
        if not require_labels and (base / "imagesTs").is_dir():
            image_dir, label_dir = base / "imagesTs", base / "labelsTs"
    if not image_dir.is_dir():
        raise InputError(base, f"dataset.json found but no {image_dir.name} folder")
    names = description.get("channel_names", description.get("modality"))
    nnunet = "channel_names" in description or any(
        split_suffix(path)[0].endswith("_0000") for path in _nifti_files(image_dir)
    )
    order, notes = _channel_order(names, description_path)
    mapping = (
        dict(label_map)
        if label_map is not None
        else _label_map_from_description(description.get("labels"), description_path)
    )
    cases = (
        _nnunet_cases(image_dir, label_dir, order, require_labels)
        if nnunet
        else _msd_cases(image_dir, label_dir, order, require_labels)
    )
    if not cases:
        raise InputError(image_dir, "no .nii.gz / .nii images found")
    return DataSet(root, "nnunet" if nnunet else "msd", tuple(cases), mapping, notes)


def _nifti_files(folder: Path) -> list[Path]:
    return sorted(
        path
        for path in folder.iterdir()
        if not path.name.startswith(".") and split_suffix(path)[1] in NIFTI_SUFFIXES
    )


def _channel_order(names: Any, path: Path) -> tuple[tuple[int, ...], tuple[str, ...]]:
    """Channel index of t1, t1ce, t2, flair from dataset.json's channel names."""
    if not isinstance(names, dict) or len(names) != len(MODALITIES):
        count = len(names) if isinstance(names, dict) else "no"
        raise InputError(
            path,
            f"expected four channels (t1, t1ce, t2, flair) in 'channel_names' / 'modality', "
            f"found {count}",
        )
    found: dict[str, int] = {}
    for index, name in names.items():
        key = "".join(ch for ch in str(name).lower() if ch.isalnum())
        modality = _MODALITY_ALIASES.get(key)
        if modality is not None and modality not in found:
            found[modality] = int(index)
    if len(found) == len(MODALITIES):
        return tuple(found[m] for m in MODALITIES), ()
    note = (
        f"{path}: channel names {list(names.values())} not recognised as t1, t1ce, t2, flair; "
        "using the file order"
    )
    return (0, 1, 2, 3), (note,)


def _label_map_from_description(labels: Any, path: Path) -> dict[int, int]:
    """Label value -> class (0 BG, 1 NCR, 2 ED, 3 ET) from dataset.json ``labels``."""
    hint = "give label_map (e.g. --label-map 0:0,1:2,2:1,3:3) to say which value is which"
    if not isinstance(labels, dict) or not labels:
        raise InputError(path, f"dataset.json has no 'labels'; {hint}")
    # MSD: {"0": "background", ...}; nnU-Net v2: {"background": 0, ...} or region lists.
    if all(str(key).strip().lstrip("-").isdigit() for key in labels):
        by_name = {str(name).lower(): [int(key)] for key, name in labels.items()}
    else:
        by_name = {}
        for name, value in labels.items():
            values = value if isinstance(value, list) else [value]
            try:
                by_name[str(name).lower()] = [int(v) for v in values]
            except (TypeError, ValueError):
                raise InputError(path, f"label {name!r} has a non-integer value; {hint}") from None
    mapping: dict[int, int] = {0: 0}
    if any(len(values) > 1 for values in by_name.values()):  # nnU-Net regions
        whole = _values_named(by_name, ("whole",))
        core = _values_named(by_name, ("core",))
        enhancing = _values_named(by_name, ("enhanc",))
        if not (whole and core and enhancing):
            raise InputError(
                path, f"cannot tell the whole / core / enhancing regions apart; {hint}"
            )
        for value in whole:
            mapping[value] = 3 if value in enhancing else 1 if value in core else 2
        return mapping
    for name, values in by_name.items():
        value = values[0]
        if value == 0:
            continue
        if "non" in name or "necro" in name or "ncr" in name or "net" in name.split():
            mapping[value] = 1
        elif "edema" in name or "oedema" in name or name in ("ed", "snfh"):
            mapping[value] = 2
        elif "enhanc" in name or name == "et":
            mapping[value] = 3
        else:
            raise InputError(path, f"label {value} ({name!r}) is not NCR, ED or ET; {hint}")
    return mapping


def _values_named(by_name: dict[str, list[int]], words: tuple[str, ...]) -> set[int]:
    for name, values in by_name.items():
        if any(word in name for word in words) and "non" not in name:
            return set(values)
    return set()


def _msd_cases(
    image_dir: Path, label_dir: Path, order: tuple[int, ...], require_labels: bool
) -> list[Case]:
    cases = []
    for image in _nifti_files(image_dir):
        case_id, suffix = split_suffix(image)
        label = _existing(label_dir, case_id) if label_dir.is_dir() else None
        if label is None and require_labels:
            raise InputError(image, f"no label {label_dir / (case_id + suffix)} for this image")
        cases.append(Case(case_id, (image,), label, order))
    return cases


def _nnunet_cases(
    image_dir: Path, label_dir: Path, order: tuple[int, ...], require_labels: bool
) -> list[Case]:
    groups: dict[str, dict[int, Path]] = {}
    for image in _nifti_files(image_dir):
        stem = split_suffix(image)[0]
        case_id, _, channel = stem.rpartition("_")
        if not case_id or len(channel) != 4 or not channel.isdigit():
            raise InputError(image, "nnU-Net images are named CASE_XXXX.nii.gz (XXXX: channel)")
        groups.setdefault(case_id, {})[int(channel)] = image
    cases = []
    for case_id, files in sorted(groups.items()):
        missing = [f"{case_id}_{c:04d}" for c in range(len(MODALITIES)) if c not in files]
        if missing:
            raise InputError(image_dir, f"case {case_id}: missing {', '.join(missing)}")
        label = _existing(label_dir, case_id) if label_dir.is_dir() else None
        if label is None and require_labels:
            raise InputError(label_dir, f"no label {case_id}.nii.gz for case {case_id}")
        cases.append(Case(case_id, tuple(files[c] for c in order), label))
    return cases


# --------------------------------------------------------------------------- reading


@dataclass(frozen=True, eq=False)
class CaseData:
    """A loaded case: ``image`` (4, x, y, z) float32 in t1, t1ce, t2, flair order,
    ``label`` (1, x, y, z) uint8 training classes (None without a label), and the
    file whose geometry predictions take."""

    case_id: str
    image: npt.NDArray[np.float32]
    label: npt.NDArray[np.uint8] | None
    reference: Path


def load_case(case: Case, label_map: dict[int, int], *, with_label: bool = True) -> CaseData:
    """Read a case's images (and label map) with nibabel.

    Raises:
        InputError: unreadable file, shapes that differ, or unknown label values.
    """
    import nibabel as nib

    channels: list[npt.NDArray[np.float32]] = []
    shape: tuple[int, ...] | None = None
    for path in case.images:
        data = _read(nib, path)
        if data.ndim == 4 and len(case.images) == 1:
            if data.shape[3] != len(MODALITIES):
                raise InputError(path, f"expected 4 channels in the 4th axis, got {data.shape}")
            channels.extend(data[..., index] for index in case.channels)
        elif data.ndim == 3:
            channels.append(data)
        else:
            raise InputError(path, f"expected a 3-D image, got shape {data.shape}")
        if shape is None:
            shape = channels[0].shape
        if channels[-1].shape != shape:
            raise InputError(path, f"shape {channels[-1].shape} differs from {shape}")
    image = np.stack(channels).astype(np.float32, copy=False)
    label = None
    if with_label and case.label is not None:
        raw = _read(nib, case.label, label=True)
        if raw.shape != image.shape[1:]:
            raise InputError(case.label, f"shape {raw.shape} differs from the images' {shape}")
        label = _map_labels(raw, label_map, case.label)[None]
    return CaseData(case.case_id, image, label, case.images[0])


def _read(nib: Any, path: Path, *, label: bool = False) -> npt.NDArray[Any]:
    try:
        img = nib.load(str(path))
        if label:
            return np.asarray(np.asanyarray(img.dataobj))
        return np.asarray(img.get_fdata(dtype=np.float32))
    except Exception as error:  # nibabel raises many kinds on a damaged file
        reason = " ".join(str(error).split()) or type(error).__name__
        raise InputError(path, f"cannot read this NIfTI file ({reason})") from None


def _map_labels(
    raw: npt.NDArray[Any], label_map: dict[int, int], path: Path
) -> npt.NDArray[np.uint8]:
    if not np.issubdtype(raw.dtype, np.integer):
        rounded = np.rint(raw)
        if not np.array_equal(rounded, raw):
            raise InputError(path, "label map holds non-integer values")
        raw = rounded.astype(np.int64)
    values = np.unique(raw)
    unknown = [int(v) for v in values if int(v) not in label_map]
    if unknown:
        raise InputError(
            path,
            f"label values {unknown} are not in the label map "
            f"{','.join(f'{k}:{v}' for k, v in sorted(label_map.items()))}; set --label-map",
        )
    lookup = np.zeros(int(values.max()) + 1 if values.size else 1, dtype=np.uint8)
    for value, target in label_map.items():
        if 0 <= value < lookup.size:
            lookup[value] = target
    return lookup[raw.astype(np.intp, copy=False)]


# --------------------------------------------------------------------------- split


@dataclass(frozen=True)
class Split:
    """Case ids used for training and for validation (recorded in ``split.json``)."""

    train: tuple[str, ...]
    val: tuple[str, ...]
    seed: int | None = None
    source: str = "val_fraction"
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "train": list(self.train),
            "val": list(self.val),
            "seed": self.seed,
            "source": self.source,
            **self.extra,
        }


def make_split(case_ids: Sequence[str], val_fraction: float, seed: int) -> Split:
    """A seeded random split: ``round(val_fraction * n)`` validation cases (at least one
    when ``val_fraction > 0`` and there are two or more cases), the rest for training.

    Example:
        >>> split = make_split([f"c{i}" for i in range(10)], 0.2, seed=0)
        >>> len(split.train), len(split.val), sorted(split.train + split.val)[:2]
        (8, 2, ['c0', 'c1'])
    """
    ids = sorted(case_ids)
    n_val = 0
    if val_fraction > 0 and len(ids) >= 2:
        n_val = min(len(ids) - 1, max(1, round(val_fraction * len(ids))))
    order = np.random.default_rng(seed).permutation(len(ids))
    val = sorted(ids[i] for i in order[:n_val])
    train = sorted(ids[i] for i in order[n_val:])
    return Split(tuple(train), tuple(val), seed=seed, source=f"val_fraction {val_fraction:g}")


def read_split(path: Path | str, case_ids: Sequence[str]) -> Split:
    """Read ``{"train": [...], "val": [...]}`` (other keys are kept, e.g. ``test``).

    Raises:
        InputError: unreadable file, missing keys, unknown case ids, a case in both lists.
    """
    path = Path(path)
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(path, "split file not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputError(path, f"cannot read the split file ({error})") from None
    if not isinstance(record, dict) or not isinstance(record.get("train"), list):
        raise InputError(path, 'expected a JSON object {"train": [case ids], "val": [case ids]}')
    train = [str(c) for c in record["train"]]
    val_list = record.get("val", record.get("validation")) or []
    if not isinstance(val_list, list):
        raise InputError(path, '"val" must be a list of case ids')
    val = [str(c) for c in val_list]
    known = set(case_ids)
    unknown = [c for c in train + val if c not in known]
    if unknown:
        raise InputError(path, f"case ids not in the data folder: {_listed(unknown)}")
    both = sorted(set(train) & set(val))
    if both:
        raise InputError(path, f"cases in both train and val: {_listed(both)}")
    if not train:
        raise InputError(path, "the train list is empty")
    extra = {k: v for k, v in record.items() if k not in ("train", "val", "validation", "seed")}
    return Split(tuple(train), tuple(val), seed=None, source=str(path), extra=extra)


def _listed(ids: Sequence[str]) -> str:
    shown = ", ".join(ids[:_MAX_LISTED])
    return shown + (f" and {len(ids) - _MAX_LISTED} more" if len(ids) > _MAX_LISTED else "")


# --------------------------------------------------------------------------- transforms


def train_transforms(patch_size: Sequence[int]) -> Any:
    """The paper's augmentations in SPEC.md §7 order (MONAI dictionary transforms).

    A ``SpatialPadd`` before the crop only acts on volumes smaller than the patch.
    """
    from monai.transforms.compose import Compose
    from monai.transforms.croppad.dictionary import RandSpatialCropd, SpatialPadd
    from monai.transforms.intensity.dictionary import (
        NormalizeIntensityd,
        RandAdjustContrastd,
        RandGaussianNoised,
        RandGaussianSmoothd,
    )
    from monai.transforms.spatial.dictionary import RandFlipd, RandRotated, RandZoomd
    from monai.transforms.utility.dictionary import EnsureTyped

    keys = ("image", "label")
    angle = math.radians(15.0)
    patch = tuple(int(s) for s in patch_size)
    return Compose(
        [
            RandZoomd(
                keys, prob=0.3, min_zoom=0.7, max_zoom=1.5, mode=("trilinear", "nearest"),
                keep_size=True,
            ),
            RandRotated(
                keys, range_x=angle, range_y=angle, range_z=angle, prob=0.3,
                mode=("bilinear", "nearest"), keep_size=True,
            ),
            RandGaussianNoised("image", prob=0.2, std=0.1),
            RandGaussianSmoothd(
                "image", sigma_x=(0.5, 1.15), sigma_y=(0.5, 1.15), sigma_z=(0.5, 1.15), prob=0.2
            ),
            RandAdjustContrastd("image", prob=0.3, gamma=(0.7, 1.5)),
            RandFlipd(keys, prob=0.5, spatial_axis=0),
            SpatialPadd(keys, spatial_size=patch),
            RandSpatialCropd(keys, roi_size=patch, random_size=False),
            NormalizeIntensityd("image", nonzero=True, channel_wise=True),
            EnsureTyped(keys, data_type="tensor", dtype=None, track_meta=False),
        ]
    )  # fmt: skip


def val_transforms() -> Any:
    """Validation / inference preprocessing: channel-wise normalisation of non-zero voxels."""
    from monai.transforms.compose import Compose
    from monai.transforms.intensity.dictionary import NormalizeIntensityd
    from monai.transforms.utility.dictionary import EnsureTyped

    return Compose(
        [
            NormalizeIntensityd("image", nonzero=True, channel_wise=True),
            EnsureTyped("image", data_type="tensor", track_meta=False),
        ]
    )


def sample_key(seed: int, epoch: int, index: int) -> int:
    """Seed of the random transforms of sample ``index`` of ``epoch``.

    Example:
        >>> sample_key(0, 0, 0) == sample_key(0, 0, 0) != sample_key(0, 0, 1)
        True
    """
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1)[0])


def _case_index(seed: int, epoch: int, index: int, n_cases: int) -> int:
    # Each block of n_cases samples visits every case once, in a seeded order.
    block, position = divmod(index, n_cases)
    order = np.random.default_rng([seed, epoch, block]).permutation(n_cases)
    return int(order[position])


class TrainingSamples:
    """Map-style dataset whose keys are ``(epoch, index)``: deterministic augmented patches.

    Args:
        cases: training cases.
        label_map: label value -> class.
        patch_size: crop size.
        seed: run seed.
        cache_mb: load every case up front when they fit in this budget; otherwise
            each sample reads its case from disk.
    """

    def __init__(
        self,
        cases: Sequence[Case],
        label_map: dict[int, int],
        patch_size: Sequence[int],
        seed: int,
        cache_mb: int,
    ) -> None:
        if not cases:
            raise CalibkitError("no training cases (check the split)")
        self.cases = tuple(cases)
        self.label_map = dict(label_map)
        self.seed = int(seed)
        self.transforms = train_transforms(patch_size)
        self.cache: dict[str, CaseData] = {}
        if _estimated_mb(self.cases) <= cache_mb:
            for case in self.cases:
                self.cache[case.case_id] = load_case(case, self.label_map)

    def case_for(self, epoch: int, index: int) -> Case:
        return self.cases[_case_index(self.seed, epoch, index, len(self.cases))]

    def __getitem__(self, key: tuple[int, int]) -> dict[str, torch.Tensor]:
        epoch, index = key
        case = self.case_for(epoch, index)
        data = self.cache.get(case.case_id) or load_case(case, self.label_map)
        assert data.label is not None  # training cases are found with require_labels
        self.transforms.set_random_state(seed=sample_key(self.seed, epoch, index))
        sample = self.transforms(
            {"image": data.image.copy(), "label": data.label.astype(np.float32)}
        )
        return {"image": sample["image"].float(), "label": sample["label"].float()}


def _estimated_mb(cases: Sequence[Case]) -> float:
    import nibabel as nib

    total = 0.0
    for case in cases:
        try:
            shape = nib.load(str(case.images[0])).shape  # type: ignore[attr-defined]
        except Exception:
            return math.inf
        total += float(np.prod(shape[:3])) * (len(MODALITIES) * 4 + 1)
    return total / 2**20


class SampleBatches:
    """Batch sampler over ``(epoch, index)`` keys: global batch ``b`` of step ``s`` holds
    indices ``s*b .. s*b+b-1``; process ``rank`` of ``world`` takes its contiguous share.

    Args:
        first_epoch: the epoch to start at (0-based; a resumed run starts later).
        epochs: total epochs.
        iters_per_epoch: steps per epoch.
        batch_size: the global batch size (divisible by ``world``).
        rank: this process's rank.
        world: number of processes.
    """

    def __init__(
        self,
        first_epoch: int,
        epochs: int,
        iters_per_epoch: int,
        batch_size: int,
        rank: int = 0,
        world: int = 1,
    ) -> None:
        if batch_size % world:
            raise CalibkitError(
                f"batch_size {batch_size} is not divisible by the {world} processes; "
                "choose a multiple of the process count"
            )
        self.first_epoch = first_epoch
        self.epochs = epochs
        self.iters = iters_per_epoch
        self.batch = batch_size
        self.local = batch_size // world
        self.rank = rank

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for epoch in range(self.first_epoch, self.epochs):
            for step in range(self.iters):
                start = step * self.batch + self.rank * self.local
                yield [(epoch, start + j) for j in range(self.local)]

    def __len__(self) -> int:
        return max(0, self.epochs - self.first_epoch) * self.iters
