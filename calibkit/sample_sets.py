"""Seeded non-BraTS data sets: an AMOS-style abdomen (15 organs) and a KiTS-style kidney set.

Each set is a small nnU-Net v2 raw data set with the probability maps of a synthetic,
over-confident model beside it, for trying calibkit on many classes and on regions
with no download. Cases are CT-like volumes of 64 x 64 x 40 voxels (5.5 x 5.5 x 7 mm)
through an abdomen whose organs sit where they sit in a patient, each one a smoothly
deformed ellipsoid, with per-case variation of position, size and shape.

- ``abdomen``: labels 0 background, 1-15 the AMOS organs (:data:`ABDOMEN_ORGANS`:
  large ones such as the liver, tiny ones such as the adrenal glands); predictions are
  a 16-channel softmax (background + 15 organs).
- ``kits``: labels 0 background, 1 kidney, 2 tumour, 3 cyst (tumour and cyst inside a
  kidney; cases with an odd index have no cyst); one model's output in two layouts:
  the three sigmoid region maps of an nnU-Net region model, in nnU-Net's order
  (kidney and masses = {1, 2, 3}, masses = {2, 3}, tumour = {2}; nested per voxel),
  and the equivalent 4-channel softmax over background, kidney, tumour and cyst
  (``predictions_softmax[..., 1:].sum(-1)`` is the first region map, up to rounding).

The model's logit for a structure is ``logit_scale * (signed distance to its true
border + a smooth border error)`` in voxels, as for the BraTS sample's models
(:mod:`calibkit.sample_data`): sharp and over-confident, and wrong more often, relative
to their size, on small structures.

Layout written under ``out``::

    dataset.json                     nnU-Net v2: channel_names, labels, numTraining, ...
    imagesTr/CASE_0000.nii.gz        int16 CT-like intensities (HU)
    labelsTr/CASE.nii.gz             uint8 labels
    predictions/CASE.nii.gz          abdomen: uint8 softmax (x, y, z, 16), scl_slope = 1/255
    predictions_regions/CASE.nii.gz  kits: uint8 region sigmoids (x, y, z, 3), scl_slope = 1/255
    predictions_softmax/CASE.nii.gz  kits: uint8 softmax (x, y, z, 4), scl_slope = 1/255

Write them with ``python -m calibkit.sample_data --set abdomen OUT`` (or ``--set kits``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from calibkit._synthetic import (
    BoolArray,
    FloatArray,
    box_slices,
    check_size,
    deformed_ellipsoid,
    log_sigmoid,
    nifti_image,
    probability_image,
    quantise_probabilities,
    quantise_softmax,
    save_nifti,
    signed_distance,
    smooth_field,
    write_file,
)

__all__ = [
    "ABDOMEN_CASE_PREFIX",
    "ABDOMEN_ORGANS",
    "KITS_CASE_PREFIX",
    "KITS_LABELS",
    "KITS_REGIONS",
    "SET_N_CASES",
    "SET_SHAPE",
    "abdomen_dataset_json",
    "generate_abdomen_set",
    "generate_kits_set",
    "kits_dataset_json",
    "set_case_ids",
]

SET_SHAPE: tuple[int, int, int] = (64, 64, 40)
SET_N_CASES = 8
ABDOMEN_CASE_PREFIX = "AMOS_S"
KITS_CASE_PREFIX = "KiTS_S"
KITS_LABELS: dict[str, int] = {"background": 0, "kidney": 1, "tumor": 2, "cyst": 3}
KITS_REGIONS: dict[str, tuple[int, ...]] = {
    "kidney": (1, 2, 3),
    "masses": (2, 3),
    "tumor": (2,),
}
"""The region model's channels, in nnU-Net's order: name -> the label values it covers."""

_FIELD_OF_VIEW_MM = (352.0, 352.0, 280.0)  # x (right-left), y (front-back), z (foot-head)
# Separate random streams per set, so case i of one set does not mirror case i of another.
_STREAM_ABDOMEN, _STREAM_KITS = 1, 2
# Logit per voxel of signed distance: about 1.7 / _ERROR_STD (2.8) would be calibrated, so
# this model is over-confident (fit-temperature finds T = 1.8 on the default abdomen set).
_LOGIT_SCALE = 8.0
_ERROR_STD = 0.6  # std of the model's border error, in voxels
_ERROR_BIAS_STD = 0.2  # std of a structure's systematic over/under-segmentation, in voxels
_ERROR_SMOOTHING = 2.0  # correlation length of the border error, in voxels
_MODEL_MARGIN = 8  # voxels around a structure beyond which the model rules it out
_FAR_LOGIT = -60.0  # a logit whose softmax weight is below 1e-25: "ruled out"
_ORGAN_DEFORMATION = 0.12  # relative radius modulation of the organs
_NOISE_HU = 6.0  # image noise; CT has more, but noise is what makes the gzip files large
_AIR_HU, _FAT_HU, _SOFT_TISSUE_HU, _BONE_HU = -1000.0, -90.0, 20.0, 450.0
_TUMOUR_HU, _CYST_HU = 35.0, 8.0
_BODY_SEMI_AXES_MM = (150.0, 115.0)  # elliptic cross-section of the trunk
_BODY_WALL_MM = 15.0  # subcutaneous fat and muscle: no organ lies in it
_SPINE_CENTRE_MM, _SPINE_RADIUS_MM = (0.0, -85.0), 20.0


@dataclass(frozen=True)
class _Organ:
    """One AMOS organ: mean position and size in an average patient, and its CT intensity."""

    name: str
    centre: tuple[float, float, float]  # mm from the volume centre: + left, + front, + head
    semi_axes: tuple[float, float, float]  # mm
    hounsfield: float


# Label = position + 1 (AMOS order). Tubes (aorta, vena cava) reach beyond the volume.
_ORGANS: tuple[_Organ, ...] = (
    _Organ("spleen", (90.0, -35.0, 75.0), (25.0, 38.0, 45.0), 50.0),
    _Organ("right kidney", (-60.0, -55.0, -5.0), (25.0, 22.0, 50.0), 160.0),
    _Organ("left kidney", (60.0, -55.0, 10.0), (25.0, 22.0, 50.0), 160.0),
    _Organ("gallbladder", (-50.0, 50.0, 25.0), (14.0, 14.0, 28.0), 10.0),
    _Organ("esophagus", (20.0, -20.0, 115.0), (8.0, 8.0, 30.0), 40.0),
    _Organ("liver", (-70.0, 15.0, 70.0), (65.0, 70.0, 55.0), 60.0),
    _Organ("stomach", (55.0, 45.0, 65.0), (40.0, 35.0, 40.0), 25.0),
    _Organ("aorta", (15.0, -50.0, 0.0), (11.0, 11.0, 400.0), 200.0),
    _Organ("inferior vena cava", (-22.0, -35.0, 0.0), (11.0, 13.0, 400.0), 140.0),
    _Organ("pancreas", (15.0, -10.0, 20.0), (55.0, 12.0, 12.0), 45.0),
    _Organ("right adrenal gland", (-40.0, -55.0, 50.0), (8.0, 12.0, 18.0), 30.0),
    _Organ("left adrenal gland", (35.0, -45.0, 45.0), (8.0, 12.0, 18.0), 30.0),
    _Organ("duodenum", (-35.0, 10.0, -5.0), (15.0, 16.0, 30.0), 30.0),
    _Organ("bladder", (0.0, 40.0, -110.0), (40.0, 35.0, 30.0), 5.0),
    _Organ("prostate/uterus", (0.0, -15.0, -115.0), (20.0, 16.0, 20.0), 45.0),
)
ABDOMEN_ORGANS: tuple[str, ...] = tuple(organ.name for organ in _ORGANS)
"""The 15 AMOS organs; organ ``ABDOMEN_ORGANS[i]`` has label ``i + 1``."""
_KIDNEY_LABELS = (ABDOMEN_ORGANS.index("right kidney") + 1, ABDOMEN_ORGANS.index("left kidney") + 1)
# Thin organs claim their voxels first, so that a large neighbour never swallows them.
_CLAIM_ORDER: tuple[int, ...] = tuple(
    sorted(range(len(_ORGANS)), key=lambda i: np.prod(sorted(_ORGANS[i].semi_axes)[:2]))
)


@dataclass(frozen=True)
class _Grid:
    """A volume's voxel grid and each voxel's position in the patient, in mm."""

    shape: tuple[int, int, int]
    spacing: FloatArray  # mm per voxel along x, y, z
    coords: FloatArray  # (3, *shape): mm from the volume centre, + left, + front, + head

    @classmethod
    def of(cls, shape: tuple[int, int, int]) -> _Grid:
        """The grid of ``shape`` voxels over the fixed field of view."""
        spacing = np.asarray(_FIELD_OF_VIEW_MM) / np.asarray(shape, dtype=np.float64)
        indices = np.asarray(np.indices(shape), dtype=np.float64)
        centre = (np.asarray(shape, dtype=np.float64) - 1.0) / 2.0
        # Voxel x and y run towards the patient's right and back (as RAS with a flipped
        # x and y axis: the usual CT orientation); z runs towards the head.
        signs = np.array([-1.0, -1.0, 1.0])
        coords = (signs * spacing)[:, None, None, None] * (indices - centre[:, None, None, None])
        return cls(shape, spacing, coords)

    def voxel(self, point_mm: FloatArray) -> FloatArray:
        """Voxel coordinates of a point given in patient mm."""
        centre = (np.asarray(self.shape, dtype=np.float64) - 1.0) / 2.0
        return centre + np.array([-1.0, -1.0, 1.0]) * point_mm / self.spacing

    def box(self, centre_mm: FloatArray, reach_mm: FloatArray) -> tuple[slice, ...]:
        """The voxels of the box ``centre ± reach`` (patient mm), clipped to the grid."""
        corners = np.stack([self.voxel(centre_mm - reach_mm), self.voxel(centre_mm + reach_mm)])
        return box_slices(corners.min(axis=0) - 1.0, corners.max(axis=0) + 1.0, self.shape)

    def affine(self, rng: np.random.Generator) -> FloatArray:
        """A scanner affine: the grid's axes and spacing, the table at a random position."""
        centre = (np.asarray(self.shape, dtype=np.float64) - 1.0) / 2.0
        axes = np.array([-1.0, -1.0, 1.0]) * self.spacing
        affine = np.diag([*axes, 1.0])
        affine[:3, 3] = -axes * centre + rng.integers(-20, 21, 3)
        return affine


@dataclass(frozen=True)
class _Anatomy:
    """One case's trunk: body, spine and the AMOS organ labels."""

    grid: _Grid
    affine: FloatArray
    body: BoolArray
    spine: BoolArray
    organs: NDArray[np.uint8]  # 0 background, 1-15 the AMOS organs


def set_case_ids(prefix: str, n_cases: int) -> list[str]:
    """Return the case ids ``PREFIX000`` ... of ``n_cases`` cases."""
    return [f"{prefix}{i:03d}" for i in range(n_cases)]


def _draw_anatomy(rng: np.random.Generator, shape: tuple[int, int, int]) -> _Anatomy:
    """Draw one trunk: an elliptic body, the spine and 15 organs that do not overlap."""
    grid = _Grid.of(shape)
    affine = grid.affine(rng)
    size = rng.uniform(0.93, 1.07)  # the patient's build scales everything
    x, y = grid.coords[0], grid.coords[1]
    body_semi = size * np.asarray(_BODY_SEMI_AXES_MM) * rng.uniform(0.95, 1.05, 2)
    body_shape = 0.03 * smooth_field(rng, shape, 6.0)
    body_rho = np.sqrt((x / body_semi[0]) ** 2 + (y / body_semi[1]) ** 2)
    body = body_rho <= 1.0 + body_shape
    inner = body_rho <= 1.0 - _BODY_WALL_MM / float(body_semi.min()) + body_shape
    spine_x, spine_y = (size * c for c in _SPINE_CENTRE_MM)
    spine = np.hypot(x - spine_x, y - spine_y) <= size * _SPINE_RADIUS_MM
    free = inner & ~spine

    organs = np.zeros(shape, dtype=np.uint8)
    placements = [
        (
            size * np.asarray(organ.centre) + rng.normal(0.0, 4.0, 3),
            size * np.asarray(organ.semi_axes) * rng.uniform(0.9, 1.1, 3),
        )
        for organ in _ORGANS
    ]
    for index in _CLAIM_ORDER:
        centre, semi_axes = placements[index]
        reach = semi_axes * (1.0 + 3.0 * _ORGAN_DEFORMATION)
        near = grid.box(centre, reach)
        near_shape = tuple(s.stop - s.start for s in near)
        deformation = np.clip(smooth_field(rng, near_shape, _ERROR_SMOOTHING), -3.0, 3.0)
        blob = deformed_ellipsoid(
            grid.coords[(slice(None), *near)], centre, semi_axes, deformation, _ORGAN_DEFORMATION
        )
        claimed = blob & free[near] & (organs[near] == 0)
        if not claimed.any():  # never empty: the voxel at the organ's centre
            claimed = np.zeros(near_shape, dtype=bool)
            voxel = np.clip(np.rint(grid.voxel(centre)).astype(int), 0, np.asarray(shape) - 1)
            claimed[tuple(voxel - np.array([s.start for s in near]))] = True
        organs[near][claimed] = index + 1
    return _Anatomy(grid, affine, body, spine, organs)


def _ct_image(
    rng: np.random.Generator, anatomy: _Anatomy, hounsfield: FloatArray
) -> NDArray[np.int16]:
    """Return a CT-like int16 image in HU from a per-voxel mean intensity.

    Soft tissue gets a smooth texture, everything a slight partial-volume blur and
    Gaussian noise; air outside the body is exactly -1000 HU.
    """
    texture = 12.0 * np.tanh(smooth_field(rng, anatomy.grid.shape, 1.5))
    image = hounsfield + texture * (anatomy.organs == 0) * (hounsfield == _SOFT_TISSUE_HU)
    image = ndimage.gaussian_filter(image, 0.6)
    image += rng.normal(0.0, _NOISE_HU, image.shape)
    image = np.where(anatomy.body, np.clip(np.rint(image), -1024.0, 3071.0), _AIR_HU)
    return image.astype(np.int16)


def _tissue_hounsfield(anatomy: _Anatomy) -> FloatArray:
    """Mean intensity per voxel: air, fat in the body wall, soft tissue, bone, organs."""
    organ_hu = np.array([_SOFT_TISSUE_HU, *(organ.hounsfield for organ in _ORGANS)])
    hounsfield = np.where(anatomy.body, organ_hu[anatomy.organs], _AIR_HU)
    inner = ndimage.binary_erosion(anatomy.body, iterations=2)
    hounsfield[anatomy.body & ~inner & (anatomy.organs == 0)] = _FAT_HU
    hounsfield[anatomy.spine & anatomy.body] = _BONE_HU
    return np.asarray(hounsfield, dtype=np.float64)


def _structure_logit(
    rng: np.random.Generator, mask: BoolArray, logit_scale: float
) -> tuple[tuple[slice, ...], FloatArray]:
    """The model's logit for one structure, in a box around it (``_FAR_LOGIT`` outside).

    Returns:
        The box and ``logit_scale * (signed distance + border error)`` in it.
    """
    extent = np.argwhere(mask)
    box = box_slices(
        extent.min(axis=0) - _MODEL_MARGIN, extent.max(axis=0) + _MODEL_MARGIN, mask.shape
    )
    box_shape = tuple(s.stop - s.start for s in box)
    error = _ERROR_STD * smooth_field(rng, box_shape, _ERROR_SMOOTHING)
    error += rng.normal(0.0, _ERROR_BIAS_STD)
    return box, logit_scale * (signed_distance(mask[box]) + error)


def _softmax_model(
    rng: np.random.Generator, labels: NDArray[np.uint8], n_classes: int, logit_scale: float
) -> FloatArray:
    """An over-confident model's softmax ``(x, y, z, n_classes)`` over the labels.

    Background has logit 0; label ``c`` has its structure logit (``_structure_logit``).
    """
    logits = np.full((n_classes, *labels.shape), _FAR_LOGIT)
    logits[0] = 0.0
    for label in range(1, n_classes):
        mask = labels == label
        if mask.any():
            box, logit = _structure_logit(rng, mask, logit_scale)
            logits[label][box] = logit
    logits -= logits.max(axis=0, keepdims=True)
    probs = np.exp(logits)
    probs /= probs.sum(axis=0, keepdims=True)
    return np.moveaxis(probs, 0, -1)


def _nested_region_model(
    rng: np.random.Generator, regions: list[BoolArray], logit_scale: float
) -> FloatArray:
    """A region model's nested sigmoids ``(len(regions), x, y, z)`` for nested regions.

    Region ``r``'s probability is region ``r - 1``'s times a sigmoid of its own
    structure logit, so ``p[0] >= p[1] >= ...`` per voxel, as the regions nest.
    """
    probs = np.empty((len(regions), *regions[0].shape))
    log_p = np.zeros(regions[0].shape)
    for index, region in enumerate(regions):
        conditional = np.full(region.shape, _FAR_LOGIT)
        if region.any():
            box, logit = _structure_logit(rng, region, logit_scale)
            conditional[box] = logit
        log_p += log_sigmoid(conditional)
        probs[index] = np.exp(log_p)
    return probs


def _draw_kidney_masses(
    rng: np.random.Generator, anatomy: _Anatomy, with_cyst: bool
) -> NDArray[np.uint8]:
    """KiTS labels: 1 kidney (both), 2 a tumour in one kidney, 3 a cyst (if ``with_cyst``)."""
    grid = anatomy.grid
    sides = [anatomy.organs == label for label in _KIDNEY_LABELS]
    labels = np.where(sides[0] | sides[1], 1, 0).astype(np.uint8)
    masses = (
        (KITS_LABELS["tumor"], rng.uniform(12.0, 24.0)),
        (KITS_LABELS["cyst"], rng.uniform(7.0, 12.0)),
    )
    for label, radius_mm in masses[: 2 if with_cyst else 1]:
        kidney = sides[int(rng.integers(2))] & (labels == 1)
        core = ndimage.binary_erosion(kidney)
        candidates = np.argwhere(core if core.any() else kidney)
        centre_voxel = candidates[rng.integers(len(candidates))]
        centre = grid.coords[(slice(None), *centre_voxel)]
        semi_axes = radius_mm * rng.uniform(0.85, 1.15, 3)
        near = grid.box(centre, 1.6 * semi_axes)
        near_shape = tuple(s.stop - s.start for s in near)
        deformation = np.clip(smooth_field(rng, near_shape, _ERROR_SMOOTHING), -3.0, 3.0)
        blob = deformed_ellipsoid(
            grid.coords[(slice(None), *near)], centre, semi_axes, deformation, 0.15
        )
        labels[near][blob & kidney[near]] = label
        labels[tuple(centre_voxel)] = label  # never empty
    return labels


def _write_dataset_json(out: Path, description: dict[str, Any]) -> None:
    """Write ``dataset.json`` as nnU-Net does (4-space indent, keys in order)."""
    write_file(out / "dataset.json", (json.dumps(description, indent=4) + "\n").encode())


def abdomen_dataset_json(n_cases: int) -> dict[str, Any]:
    """The nnU-Net v2 ``dataset.json`` of the abdominal set of ``n_cases`` cases."""
    labels = {"background": 0, **{name: i + 1 for i, name in enumerate(ABDOMEN_ORGANS)}}
    return {
        "channel_names": {"0": "CT"},
        "labels": labels,
        "numTraining": n_cases,
        "file_ending": ".nii.gz",
        "name": "calibkit synthetic AMOS-style abdomen",
        "description": "Seeded synthetic CT-like cases with the 15 AMOS organs, written by "
        "python -m calibkit.sample_data --set abdomen; predictions/ holds an over-confident "
        "model's softmax (background + 15 organs).",
    }


def kits_dataset_json(n_cases: int) -> dict[str, Any]:
    """The nnU-Net v2 ``dataset.json`` of the KiTS-style set, regions as for KiTS23."""
    labels: dict[str, int | list[int]] = {"background": 0}
    for name, values in KITS_REGIONS.items():
        labels[name] = list(values) if len(values) > 1 else values[0]
    return {
        "channel_names": {"0": "CT"},
        "labels": labels,
        "numTraining": n_cases,
        "file_ending": ".nii.gz",
        "regions_class_order": [1, 3, 2],
        "name": "calibkit synthetic KiTS-style kidneys",
        "description": "Seeded synthetic CT-like cases, labels 0 background, 1 kidney, "
        "2 tumor, 3 cyst, written by python -m calibkit.sample_data --set kits; "
        "predictions_regions/ holds an over-confident region model's sigmoids (kidney, "
        "masses, tumor), predictions_softmax/ the same model as a softmax over "
        "background, kidney, tumor, cyst.",
    }


def _save_case(
    out: Path, case_id: str, anatomy: _Anatomy, image: NDArray[np.int16], labels: NDArray[np.uint8]
) -> None:
    """Write one case's image (``imagesTr``) and label map (``labelsTr``)."""
    save_nifti(
        nifti_image(image, anatomy.affine, "calibkit synthetic CT (HU)"),
        out / "imagesTr" / f"{case_id}_0000.nii.gz",
    )
    label_image = nifti_image(labels, anatomy.affine, f"calibkit synthetic labels 0-{labels.max()}")
    label_image.header.set_intent("label")
    save_nifti(label_image, out / "labelsTr" / f"{case_id}.nii.gz")


def generate_abdomen_set(
    out: Path,
    *,
    n_cases: int = SET_N_CASES,
    shape: tuple[int, int, int] = SET_SHAPE,
    seed: int = 0,
) -> list[str]:
    """Write the AMOS-style abdominal set (15 organs) under ``out``.

    Case ``i`` depends only on ``seed`` and ``i``, so fewer cases give a prefix of the
    full set; the same call writes the same bytes (under the same zlib).

    Args:
        out: folder to write ``dataset.json``, ``imagesTr/``, ``labelsTr/`` and
            ``predictions/`` into.
        n_cases: number of cases.
        shape: volume shape (x, y, z) over a fixed field of view (352 x 352 x 280 mm).
        seed: seed of the generator.

    Returns:
        The case ids, ``AMOS_S000`` onwards.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     generate_abdomen_set(Path(tmp), n_cases=2, shape=(32, 32, 20))
        ['AMOS_S000', 'AMOS_S001']
    """
    check_size(n_cases, shape)
    out = Path(out)
    ids = set_case_ids(ABDOMEN_CASE_PREFIX, n_cases)
    children = np.random.SeedSequence([seed, _STREAM_ABDOMEN]).spawn(n_cases)
    for case_id, child in zip(ids, children, strict=True):
        rng = np.random.default_rng(child)
        anatomy = _draw_anatomy(rng, shape)
        image = _ct_image(rng, anatomy, _tissue_hounsfield(anatomy))
        _save_case(out, case_id, anatomy, image, anatomy.organs)
        probs = _softmax_model(rng, anatomy.organs, len(_ORGANS) + 1, _LOGIT_SCALE)
        description = "calibkit sample: softmax probabilities background + 15 AMOS organs"
        save_nifti(
            probability_image(quantise_softmax(probs), anatomy.affine, description),
            out / "predictions" / f"{case_id}.nii.gz",
        )
    _write_dataset_json(out, abdomen_dataset_json(n_cases))
    return ids


def generate_kits_set(
    out: Path,
    *,
    n_cases: int = SET_N_CASES,
    shape: tuple[int, int, int] = SET_SHAPE,
    seed: int = 0,
) -> list[str]:
    """Write the KiTS-style kidney set (kidney, tumour, cyst) under ``out``.

    Cases with an odd index have no cyst. Case ``i`` depends only on ``seed`` and
    ``i``; the same call writes the same bytes (under the same zlib).

    Args:
        out: folder to write ``dataset.json``, ``imagesTr/``, ``labelsTr/``,
            ``predictions_regions/`` and ``predictions_softmax/`` into.
        n_cases: number of cases.
        shape: volume shape (x, y, z) over a fixed field of view (352 x 352 x 280 mm).
        seed: seed of the generator.

    Returns:
        The case ids, ``KiTS_S000`` onwards.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     generate_kits_set(Path(tmp), n_cases=2, shape=(32, 32, 20))
        ['KiTS_S000', 'KiTS_S001']
    """
    check_size(n_cases, shape)
    out = Path(out)
    ids = set_case_ids(KITS_CASE_PREFIX, n_cases)
    children = np.random.SeedSequence([seed, _STREAM_KITS]).spawn(n_cases)
    for index, (case_id, child) in enumerate(zip(ids, children, strict=True)):
        rng = np.random.default_rng(child)
        anatomy = _draw_anatomy(rng, shape)
        labels = _draw_kidney_masses(rng, anatomy, with_cyst=index % 2 == 0)
        hounsfield = _tissue_hounsfield(anatomy)
        hounsfield[labels == KITS_LABELS["tumor"]] = _TUMOUR_HU
        hounsfield[labels == KITS_LABELS["cyst"]] = _CYST_HU
        _save_case(out, case_id, anatomy, _ct_image(rng, anatomy, hounsfield), labels)
        regions = [np.isin(labels, values) for values in KITS_REGIONS.values()]
        kidney, masses, tumour = _nested_region_model(rng, regions, _LOGIT_SCALE)
        region_maps = np.stack([quantise_probabilities(p) for p in (kidney, masses, tumour)], -1)
        description = "calibkit sample: region sigmoids kidney+masses, masses, tumor"
        save_nifti(
            probability_image(region_maps, anatomy.affine, description),
            out / "predictions_regions" / f"{case_id}.nii.gz",
        )
        # The same model as a softmax: each label's probability is a difference of regions.
        softmax = np.stack([1.0 - kidney, kidney - masses, tumour, masses - tumour], axis=-1)
        description = "calibkit sample: softmax probabilities background, kidney, tumor, cyst"
        save_nifti(
            probability_image(quantise_softmax(softmax), anatomy.affine, description),
            out / "predictions_softmax" / f"{case_id}.nii.gz",
        )
    _write_dataset_json(out, kits_dataset_json(n_cases))
    return ids
