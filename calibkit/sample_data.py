"""Seeded generator of a small synthetic BraTS-2021-style data set with two models' predictions.

The quick start, the demo and the tests run on this data with no download. Each case has four
MR-like modalities, a label map ``{0 background, 1 NCR, 2 ED, 4 ET}`` and two 4-channel softmax
probability maps (channels BG, NCR, ED, ET) from synthetic "models" that share the same spatial
error field:

- ``dsc``: sharp and strongly over-confident, as models trained with a Dice loss tend to be;
- ``dsc_ace``: the same borders, softer and better calibrated.

Layout written under ``out``::

    brats/CASE/CASE_{t1,t1ce,t2,flair}.nii.gz   int16 intensities
    brats/CASE/CASE_seg.nii.gz                  uint8 labels
    synthetic/{dsc,dsc_ace}/CASE_pred.nii.gz    uint8 probabilities, scl_slope = 1/255

Regenerate the committed copy with ``python -m calibkit.sample_data sample_data``. The
same command writes the non-BraTS sets of :mod:`calibkit.sample_sets` (an AMOS-style
abdomen, a KiTS-style kidney set): ``python -m calibkit.sample_data --set abdomen OUT``. The
committed ``sample_data/predictions/`` are not synthetic: they are the predictions of two
UNets that calibkit trained on these cases (``benchmarks/replicate.py``, then
``calibkit predict``); the synthetic maps stay for tests that need known behaviour.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

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
    quantise_softmax,
    save_nifti,
    signed_distance,
    smooth_field,
)
from calibkit._version import __version__
from calibkit.sample_sets import SET_N_CASES, generate_abdomen_set, generate_kits_set

__all__ = [
    "CASE_PREFIX",
    "MODALITIES",
    "MODELS",
    "NO_ET_CASE",
    "N_CASES",
    "SAMPLE_SETS",
    "SAMPLE_SHAPE",
    "case_ids",
    "generate_sample_data",
    "main",
    "sample_data_dir",
]

SAMPLE_SHAPE: tuple[int, int, int] = (64, 64, 64)
N_CASES = 12
CASE_PREFIX = "BraTS2021_S"
MODALITIES: tuple[str, ...] = ("t1", "t1ce", "t2", "flair")
# Logit scale per voxel of signed distance: large is over-confident; about 1.7 / (border error
# std) is calibrated.
MODELS: dict[str, float] = {"dsc": 16.0, "dsc_ace": 1.4}
NO_ET_CASE = 3
"""Index of the case whose tumour has no enhancing rim (label 4 absent)."""

_ERROR_STD = (1.2, 1.0, 1.0)  # std of the models' WT, TC, NCR border errors, in voxels
_ERROR_BIAS_STD = 0.3  # std of a case's systematic over/under-segmentation, in voxels
_ERROR_TC_NCR_CORRELATION = 0.7  # TC and NCR borders err together, so the ET rim mostly shifts
_MODEL_MARGIN = 12  # voxels around the tumour where the models' output is computed
_NOISE_STD = 4.0  # Gaussian noise of the modalities, in intensity units
# Mean intensity per tissue (rim, brain, ED, NCR, ET) for each modality.
# A narrow intensity range keeps the gzip files small (noise level matters far less).
_CONTRAST: dict[str, tuple[float, float, float, float, float]] = {
    "t1": (450.0, 310.0, 240.0, 150.0, 280.0),
    "t1ce": (475.0, 325.0, 270.0, 160.0, 625.0),
    "t2": (175.0, 260.0, 525.0, 625.0, 410.0),
    "flair": (125.0, 235.0, 550.0, 260.0, 400.0),
}


@dataclass(frozen=True)
class _Case:
    """One synthetic case: geometry, images and the signed distances the models start from."""

    affine: FloatArray
    labels: NDArray[np.uint8]
    images: dict[str, NDArray[np.int16]]
    box: tuple[slice, ...]  # the models' box; both models say background outside it
    distances: tuple[FloatArray, FloatArray, FloatArray]  # WT, TC, NCR in the box, + inside
    errors: tuple[FloatArray, FloatArray, FloatArray]  # the models' border errors in the box


def sample_data_dir() -> Path:
    """Return the repository's committed ``sample_data/`` folder."""
    return Path(__file__).parents[1] / "sample_data"


def cached_sample_data(*, seed: int = 0, on_generate: Callable[[Path], None] | None = None) -> Path:
    """Return a generated copy of the sample data in the user's cache, making it once.

    An installed package (``pip install .`` or a wheel) has no repository
    ``sample_data/``; this rebuilds the seeded part of it (labels and the two
    synthetic models' maps, not the trained models' maps) into
    ``$XDG_CACHE_HOME/calibkit/sample_data-VERSION-seedN`` (``~/.cache`` by default).
    The data is written into a temporary folder beside it and renamed into place
    when complete, so an interrupted or concurrent generation never leaves a
    partial copy under the final name.

    Args:
        seed: seed of the generator.
        on_generate: called with the destination before generating (not when cached).

    Returns:
        The folder holding ``brats/`` and ``synthetic/{dsc,dsc_ace}/``.
    """
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "calibkit"
    folder = cache / f"sample_data-{__version__}-seed{seed}"
    if folder.is_dir():
        return folder
    if on_generate is not None:
        on_generate(folder)
    cache.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=cache))
    try:
        generate_sample_data(building, seed=seed)
        os.rename(building, folder)
    except OSError:
        if not folder.is_dir():  # not a concurrent generation that finished first
            raise
    finally:
        shutil.rmtree(building, ignore_errors=True)
    return folder


def case_ids(n_cases: int = N_CASES) -> list[str]:
    """Return the case ids ``BraTS2021_S000`` ... of ``n_cases`` cases."""
    return [f"{CASE_PREFIX}{i:03d}" for i in range(n_cases)]


def _make_case(rng: np.random.Generator, shape: tuple[int, int, int], no_et: bool) -> _Case:
    """Draw one case: head, tumour, modalities and the models' error fields."""
    size = np.asarray(shape, dtype=np.float64)
    scale = float(size.min()) / 64.0
    coords = np.asarray(np.indices(shape), dtype=np.float64)

    # Head: a slightly irregular ellipsoid; brain inside a 3-voxel skull-ish rim.
    head_centre = size / 2.0 - 0.5 + rng.uniform(-1.5, 1.5, 3) * scale
    head_radii = size * np.array([0.40, 0.45, 0.38]) * rng.uniform(0.95, 1.05, 3)
    head_shape = smooth_field(rng, shape, 6.0 * scale)
    head = deformed_ellipsoid(coords, head_centre, head_radii, head_shape, 0.03)
    brain = deformed_ellipsoid(coords, head_centre, head_radii - 3.0 * scale, head_shape, 0.03)

    # Tumour: nested irregular regions WT ⊃ TC ⊃ NCR, ET = TC \ NCR (an enhancing rim).
    # Tumour fields live in a box around it (the radius modulation is bounded by ±3 std).
    wt_radii = float(size.min()) * rng.uniform(0.13, 0.21) * rng.uniform(0.85, 1.15, 3)
    room = np.maximum(head_radii - 3.0 * scale - wt_radii * 1.25 - 2.0 * scale, 0.0)
    direction = rng.standard_normal(3)
    direction *= rng.uniform(0.0, 1.0) ** (1.0 / 3.0) / np.linalg.norm(direction)
    centre = head_centre + direction * room
    reach = 1.6 * wt_radii
    near = box_slices(centre - reach, centre + reach, shape)
    near_shape = tuple(s.stop - s.start for s in near)
    wt_shape = np.clip(smooth_field(rng, near_shape, 4.0 * scale), -3.0, 3.0)
    wt = np.zeros(shape, dtype=bool)
    wt[near] = ndimage.binary_erosion(brain, iterations=2)[near] & deformed_ellipsoid(
        coords[(slice(None), *near)], centre, wt_radii, wt_shape, 0.18
    )
    wt[tuple(np.clip(np.rint(centre).astype(int), 0, size.astype(int) - 1))] = True  # never empty
    # The models' box: the tumour plus a margin beyond which both models say background.
    extent = np.argwhere(wt)
    # The margin is in voxels, not scaled: the border errors are in voxels too.
    box = box_slices(extent.min(axis=0) - _MODEL_MARGIN, extent.max(axis=0) + _MODEL_MARGIN, shape)
    box_shape = tuple(s.stop - s.start for s in box)
    box_coords = coords[(slice(None), *box)]
    wt_box = wt[box]

    tc_radii = wt_radii * rng.uniform(0.55, 0.75)
    tc_centre = centre + rng.uniform(-0.15, 0.15, 3) * wt_radii
    tc_box = ndimage.binary_erosion(wt_box, iterations=2) & deformed_ellipsoid(
        box_coords, tc_centre, tc_radii, smooth_field(rng, box_shape, 3.0 * scale), 0.15
    )
    rim_shape = smooth_field(rng, box_shape, 3.0 * scale)
    if no_et:
        ncr_box = tc_box
    else:
        ncr_radii = tc_radii * rng.uniform(0.5, 0.7)
        ncr_box = ndimage.binary_erosion(tc_box, iterations=1) & deformed_ellipsoid(
            box_coords, tc_centre, ncr_radii, rim_shape, 0.25
        )
    labels = np.zeros(shape, dtype=np.uint8)
    labels[box] = np.where(ncr_box, 1, np.where(tc_box, 4, np.where(wt_box, 2, 0)))

    images = _make_images(rng, shape, scale, head, brain, labels)

    distances = (signed_distance(wt_box), signed_distance(tc_box), signed_distance(ncr_box))
    bias = rng.normal(0.0, _ERROR_BIAS_STD, 3)
    fields = [smooth_field(rng, box_shape, 3.0 * scale) for _ in range(3)]
    rho = _ERROR_TC_NCR_CORRELATION
    fields[2] = rho * fields[1] + np.sqrt(1.0 - rho**2) * fields[2]
    errors = [std * f + b for std, f, b in zip(_ERROR_STD, fields, bias, strict=True)]

    translation = np.array([32.0, 56.0, -30.0]) * scale + rng.integers(-4, 5, 3)
    affine = np.diag([-1.0, -1.0, 1.0, 1.0])
    affine[:3, 3] = translation
    return _Case(affine, labels, images, box, distances, (errors[0], errors[1], errors[2]))


def _make_images(
    rng: np.random.Generator,
    shape: tuple[int, int, int],
    scale: float,
    head: BoolArray,
    brain: BoolArray,
    labels: NDArray[np.uint8],
) -> dict[str, NDArray[np.int16]]:
    """Return MR-like int16 modalities: tissue contrasts, texture, bias field and noise."""
    texture = np.tanh(smooth_field(rng, shape, 2.5 * scale))
    tissue = np.zeros(shape, dtype=np.int8)  # 0 air, 1 rim, 2 brain, 3 ED, 4 NCR, 5 ET
    tissue[head] = 1
    tissue[brain] = 2
    tissue[labels == 2] = 3
    tissue[labels == 1] = 4
    tissue[labels == 4] = 5
    images: dict[str, NDArray[np.int16]] = {}
    for modality in MODALITIES:
        means = np.array((0.0, *_CONTRAST[modality]))
        image = means[tissue] * (1.0 + 0.06 * texture * (tissue >= 2))
        image = ndimage.gaussian_filter(image, 0.6 * scale)  # partial-volume blur
        image *= _bias_field(rng, shape)
        image += rng.normal(0.0, _NOISE_STD, shape)
        image = np.where(head, np.clip(np.rint(image), 0, None), 0.0)
        images[modality] = image.astype(np.int16)
    return images


def _bias_field(rng: np.random.Generator, shape: tuple[int, int, int]) -> FloatArray:
    """Return a smooth multiplicative bias field: exp of a random polynomial of degree 2."""
    axes = [np.linspace(-1.0, 1.0, n) for n in shape]
    x, y, z = axes[0][:, None, None], axes[1][None, :, None], axes[2][None, None, :]
    terms = (x, y, z, x * y, x * z, y * z, x**2 - 0.5, y**2 - 0.5, z**2 - 0.5)
    log_field = sum(
        (c * t for c, t in zip(rng.normal(0.0, 0.08, len(terms)), terms, strict=True)),
        start=np.zeros(shape),
    )
    return np.asarray(np.exp(log_field), dtype=np.float64)


def _predict(case: _Case, logit_scale: float) -> NDArray[np.uint8]:
    """Return a model's softmax (x, y, z, 4) over BG, NCR, ED, ET as uint8 in 1/255 steps.

    The class logits are hierarchical: WT vs background, then TC vs ED inside WT, then NCR vs
    ET inside TC, each ``logit_scale * (signed distance + error)``, combined into one logit per
    class whose softmax is the product of the nested probabilities. Outside the tumour's box
    (at least ``_MODEL_MARGIN`` voxels away) the output is background with probability 1.
    """
    a_wt, a_tc, a_ncr = (
        logit_scale * (d + e) for d, e in zip(case.distances, case.errors, strict=True)
    )
    in_wt, in_tc = log_sigmoid(a_wt), log_sigmoid(a_tc)
    logits = np.stack(
        [
            log_sigmoid(-a_wt),
            in_wt + in_tc + log_sigmoid(a_ncr),
            in_wt + log_sigmoid(-a_tc),
            in_wt + in_tc + log_sigmoid(-a_ncr),
        ],
        axis=-1,
    )
    logits -= logits.max(axis=-1, keepdims=True)
    probs = np.exp(logits)
    probs /= probs.sum(axis=-1, keepdims=True)
    quantised = quantise_softmax(probs)
    probs_full = np.zeros((*case.labels.shape, 4), dtype=np.uint8)
    probs_full[..., 0] = 255
    probs_full[case.box] = quantised
    return probs_full


def generate_sample_data(
    out: Path,
    *,
    n_cases: int = N_CASES,
    shape: tuple[int, int, int] = SAMPLE_SHAPE,
    seed: int = 0,
) -> list[str]:
    """Write the synthetic BraTS-style sample data set under ``out``.

    Case ``i`` depends only on ``seed`` and ``i``, so fewer cases give a prefix of the full set.
    The same call reproduces identical decoded arrays and affines; the gzip bytes are written
    with a fixed level and no timestamp, but may still differ between zlib versions.

    Args:
        out: folder to write ``brats/`` and ``synthetic/{dsc,dsc_ace}/`` into.
        n_cases: number of cases; case ``NO_ET_CASE`` (if present) has no label 4.
        shape: volume shape (x, y, z); anatomy sizes scale with the smallest side.
        seed: seed of ``np.random.default_rng``.

    Returns:
        The case ids, ``BraTS2021_S000`` onwards.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     generate_sample_data(Path(tmp), n_cases=2, shape=(32, 32, 32))
        ['BraTS2021_S000', 'BraTS2021_S001']
    """
    check_size(n_cases, shape)
    out = Path(out)
    ids = case_ids(n_cases)
    children = np.random.SeedSequence(seed).spawn(n_cases)
    for index, (case_id, child) in enumerate(zip(ids, children, strict=True)):
        case = _make_case(np.random.default_rng(child), shape, no_et=index == NO_ET_CASE)
        case_dir = out / "brats" / case_id
        for modality, data in case.images.items():
            image = nifti_image(data, case.affine, f"calibkit synthetic {modality}")
            save_nifti(image, case_dir / f"{case_id}_{modality}.nii.gz")
        seg = nifti_image(
            case.labels, case.affine, "calibkit synthetic labels 0 BG,1 NCR,2 ED,4 ET"
        )
        seg.header.set_intent("label")
        save_nifti(seg, case_dir / f"{case_id}_seg.nii.gz")
        for model, logit_scale in MODELS.items():
            description = f"calibkit sample: {model} softmax probabilities BG,NCR,ED,ET"
            image = probability_image(_predict(case, logit_scale), case.affine, description)
            save_nifti(image, out / "synthetic" / model / f"{case_id}_pred.nii.gz")
    return ids


# The sets the command line writes: name -> (generator, default number of cases).
SAMPLE_SETS: dict[str, tuple[Callable[..., list[str]], int]] = {
    "brats": (generate_sample_data, N_CASES),
    "abdomen": (generate_abdomen_set, SET_N_CASES),
    "kits": (generate_kits_set, SET_N_CASES),
}


def main(argv: list[str] | None = None) -> None:
    """Command line: ``python -m calibkit.sample_data [OUT] [--set NAME] [--seed N] [--n-cases N]``.

    ``--set brats`` (the default) writes the BraTS-style sample data, by default into
    ``sample_data``; ``--set abdomen`` and ``--set kits`` write the sets of
    :mod:`calibkit.sample_sets` into the folder given.
    """
    parser = argparse.ArgumentParser(
        prog="python -m calibkit.sample_data",
        description="Write a seeded synthetic data set: brats (images, labels and the "
        "probability maps of two synthetic models; the default), abdomen (15 AMOS organs, "
        "16-channel softmax) or kits (kidney, tumor, cyst; region sigmoids and a softmax).",
    )
    parser.add_argument(
        "out",
        nargs="?",
        type=Path,
        default=None,
        help="output folder (default: sample_data for --set brats; required for the others)",
    )
    parser.add_argument(
        "--set",
        dest="data_set",
        choices=tuple(SAMPLE_SETS),
        default="brats",
        help="which data set (default brats)",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument(
        "--n-cases",
        type=int,
        default=None,
        help=f"number of cases (default {N_CASES} for brats, {SET_N_CASES} for the others)",
    )
    args = parser.parse_args(argv)
    generate, default_n_cases = SAMPLE_SETS[args.data_set]
    out = args.out
    if out is None:
        if args.data_set != "brats":
            parser.error(f"--set {args.data_set} needs an output folder")
        out = Path("sample_data")
    n_cases = default_n_cases if args.n_cases is None else args.n_cases
    try:
        ids = generate(out, n_cases=n_cases, seed=args.seed)
    except ValueError as error:
        parser.exit(1, f"{parser.prog}: error: {error}\n")
    print(f"wrote {len(ids)} cases to {out}")


if __name__ == "__main__":
    main()
