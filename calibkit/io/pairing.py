"""Find prediction and label files and pair them by case id.

Layouts understood (SPEC §2):

- nnU-Net: ``labelsTr/CASE.nii.gz``; predictions ``CASE.nii.gz`` (argmax) next to
  ``CASE.npz`` (probabilities; preferred), or ``CASE.png`` etc. for 2-D data sets.
- BraTS: ``CASE/CASE_seg.nii.gz`` next to ``CASE_t1.nii.gz`` etc. (ignored), and the
  BraTS 2023 spelling ``BraTS-GLI-00000-000-seg.nii.gz``.
- Predictions and labels in one folder: ``CASE_pred.nii.gz`` next to ``CASE_seg.nii.gz``.

Folders are searched recursively; hidden files and folders (``.name``) are skipped.
Case ids are compared in Unicode NFC form, so a name written with a decomposed ``é``
(macOS, some archives) pairs with the same name written with a composed one.

A file that is an input by its name but cannot be read (a broken symlink, a symlink
loop, a pipe, no read permission) is never dropped silently: it is an error, or with
``allow_missing`` its case is skipped and listed (:attr:`Pairing.unreadable`).
"""

from __future__ import annotations

import errno
import os
import stat
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from calibkit.errors import InputError, PairingError
from calibkit.io.atomic import os_error_reason
from calibkit.io.formats import LABEL_SUFFIXES, PREDICTION_SUFFIXES, split_suffix

__all__ = [
    "DEFAULT_CASE_SUFFIXES",
    "CasePair",
    "Pairing",
    "UnreadableFile",
    "case_id_from_path",
    "find_labels",
    "find_predictions",
    "pair_cases",
]

DEFAULT_CASE_SUFFIXES = ("_seg", "_pred", "_prob", "_probs", "_probabilities", "_0000")
# A label file in a folder that also holds images (BraTS) carries this marker.
_LABEL_MARKERS = ("_seg",)
# A prediction file sitting in the label folder carries one of these (or is .npz).
_PREDICTION_MARKERS = ("_pred", "_prob", "_probs", "_probabilities")
_MAX_LISTED = 10


@dataclass(frozen=True)
class CasePair:
    """One case: its id, prediction file and label file."""

    case_id: str
    prediction: Path
    label: Path


@dataclass(frozen=True)
class UnreadableFile:
    """An input file of one case that cannot be read (skipped with ``allow_missing``).

    Attributes:
        case_id: the case the file belongs to.
        path: the file.
        problem: why it cannot be read and what to do about it.
    """

    case_id: str
    path: Path
    problem: str

    @property
    def note(self) -> str:
        """The warning printed for the skipped case."""
        return f"skipped case {self.case_id}: {self.path}: {self.problem}"


@dataclass(frozen=True)
class Pairing:
    """Result of ``pair_cases``.

    Attributes:
        pairs: matched cases, sorted by case id.
        missing_label: case ids without a readable label (sorted): a prediction but no
            label file, or a label file that cannot be read.
        missing_prediction: case ids without a readable prediction (sorted): a label
            but no prediction file, or a prediction file that cannot be read.
        unreadable: input files that cannot be read, by case id (``allow_missing``);
            their cases are in the missing lists.
    """

    pairs: tuple[CasePair, ...]
    missing_label: tuple[str, ...]
    missing_prediction: tuple[str, ...]
    unreadable: tuple[UnreadableFile, ...] = ()

    @property
    def notes(self) -> list[str]:
        """Warnings about the skipped cases: the counts, then each unreadable file."""
        notes = []
        if self.missing_label:
            notes.append(f"skipped {len(self.missing_label)} case(s) without a label")
        if self.missing_prediction:
            notes.append(f"skipped {len(self.missing_prediction)} case(s) without a prediction")
        return notes + [skipped.note for skipped in self.unreadable]


def case_id_from_path(path: Path | str, suffixes: Sequence[str] = DEFAULT_CASE_SUFFIXES) -> str:
    """Case id of a file: its name without extension and without ONE known suffix.

    Suffixes match case-insensitively, and ``_x`` also matches ``-x`` (BraTS 2023).
    The id is in Unicode NFC form: names that differ only in how an accented letter
    is encoded (``é`` as one code point or as ``e`` and a combining accent) give
    the same id.

    Args:
        path: a file path.
        suffixes: name endings to strip (``_seg``, ``_pred``, ...).

    Returns:
        The case id.

    Example:
        >>> case_id_from_path(Path("BraTS-GLI-00000-000-seg.nii.gz"))
        'BraTS-GLI-00000-000'
        >>> case_id_from_path(Path("CASE_001_0000_seg.nii.gz"))
        'CASE_001_0000'
    """
    stem = unicodedata.normalize("NFC", split_suffix(path)[0])
    ending = _matching_suffix(stem, suffixes)
    return stem[: -len(ending)] if ending else stem


def find_predictions(
    folder: Path | str, suffixes: Sequence[str] = DEFAULT_CASE_SUFFIXES
) -> dict[str, Path]:
    """Prediction files under ``folder`` by case id.

    When one case has both an image file and an ``.npz`` (nnU-Net writes both, the
    image in the data set's format: NIfTI, PNG, TIFF, ...), the ``.npz`` probabilities
    are used.

    Args:
        folder: folder searched recursively.
        suffixes: name endings stripped to get case ids.

    Returns:
        ``{case_id: path}``.

    Raises:
        InputError: the folder is missing or holds no prediction file, or a prediction
            file cannot be read (a broken symlink, say).
        PairingError: two files give the same case id.
    """
    folder = Path(folder)
    files = _scan(folder, PREDICTION_SUFFIXES)
    if not files:
        raise InputError(folder, _nothing_found("prediction", PREDICTION_SUFFIXES))
    cases = _predictions_by_case(files, suffixes)
    _refuse_unreadable(_unreadable(cases), hint="")
    return cases


def find_labels(
    folder: Path | str, suffixes: Sequence[str] = DEFAULT_CASE_SUFFIXES
) -> dict[str, Path]:
    """Label files under ``folder`` by case id.

    If any file is named ``*_seg.*`` (or ``*-seg.*``), only those are labels: BraTS
    case folders also hold the t1/t1ce/t2/flair images. Otherwise every volume file
    is a label (nnU-Net ``labelsTr``).

    Args:
        folder: folder searched recursively.
        suffixes: name endings stripped to get case ids.

    Returns:
        ``{case_id: path}``.

    Raises:
        InputError: the folder is missing or holds no label file, or a label file
            cannot be read (a broken symlink, say).
        PairingError: two files give the same case id.
    """
    folder = Path(folder)
    files = _select_labels(_scan(folder, LABEL_SUFFIXES))
    if not files:
        raise InputError(folder, _nothing_found("label", LABEL_SUFFIXES))
    cases = _by_case(files, suffixes, "label")
    _refuse_unreadable(_unreadable(cases), hint="")
    return cases


def pair_cases(
    pred_dir: Path | str,
    label_dir: Path | str,
    *,
    suffixes: Sequence[str] = DEFAULT_CASE_SUFFIXES,
    allow_missing: bool = False,
) -> Pairing:
    """Pair prediction and label files by case id.

    ``pred_dir`` and ``label_dir`` may be the same folder; then predictions are the
    ``.npz`` files and those named ``*_pred`` / ``*_prob*``, and the rest are labels.
    When one folder lies inside the other, the inner one's files are not searched
    as part of the outer one.

    Args:
        pred_dir: folder of predictions.
        label_dir: folder of label maps.
        suffixes: name endings stripped to get case ids.
        allow_missing: return cases without a partner, or with a file that cannot be
            read, in ``Pairing`` instead of failing.

    Returns:
        The pairs and the unmatched case ids.

    Raises:
        InputError: a folder is missing or holds no volume file, or an input file
            cannot be read (unless ``allow_missing``; always when no case is left).
        PairingError: duplicate case ids, unmatched cases (unless ``allow_missing``),
            or no case in common.
    """
    pred_dir, label_dir = Path(pred_dir), Path(label_dir)
    pred_files = _scan(pred_dir, PREDICTION_SUFFIXES)
    label_files = _scan(label_dir, LABEL_SUFFIXES)
    pred_root, label_root = pred_dir.resolve(), label_dir.resolve()
    if pred_root == label_root:
        pred_files = [f for f in pred_files if _looks_like_prediction(f)]
        label_files = [f for f in label_files if not _looks_like_prediction(f)]
        if not pred_files:
            raise InputError(
                pred_dir,
                "no prediction files next to the labels; name them CASE_pred.nii.gz or "
                "CASE_prob.nii.gz, use .npz, or put them in a separate folder",
            )
    elif pred_root.is_relative_to(label_root):
        label_files = [f for f in label_files if not _real_folder(f).is_relative_to(pred_root)]
    elif label_root.is_relative_to(pred_root):
        pred_files = [f for f in pred_files if not _real_folder(f).is_relative_to(label_root)]
    label_files = _select_labels(label_files)
    if not pred_files:
        raise InputError(pred_dir, _nothing_found("prediction", PREDICTION_SUFFIXES))
    if not label_files:
        raise InputError(label_dir, _nothing_found("label", LABEL_SUFFIXES))

    predictions = _predictions_by_case(pred_files, suffixes)
    labels = _by_case(label_files, suffixes, "label")
    bad_predictions, bad_labels = _unreadable(predictions), _unreadable(labels)
    unreadable = tuple(sorted(bad_predictions + bad_labels, key=lambda f: (f.case_id, f.path)))
    if not allow_missing:
        _refuse_unreadable(unreadable, hint=" (or use --allow-missing to skip the case)")
    readable_predictions = predictions.keys() - {f.case_id for f in bad_predictions}
    readable_labels = labels.keys() - {f.case_id for f in bad_labels}
    every_case = predictions.keys() | labels.keys()
    common = sorted(readable_predictions & readable_labels)
    missing_label = tuple(sorted(every_case - readable_labels))
    missing_prediction = tuple(sorted(every_case - readable_predictions))
    if not common and unreadable:
        _refuse_unreadable(unreadable, hint="; no other case pairs up")
    if not common:
        raise PairingError(
            f"no case id is shared by {pred_dir} ({len(predictions)} predictions, e.g. "
            f"{_first(predictions)}) and {label_dir} ({len(labels)} labels, e.g. "
            f"{_first(labels)}); check that the file names carry the same case ids"
        )
    if not allow_missing and (missing_label or missing_prediction):
        problems = []
        if missing_label:
            problems.append(
                f"{len(missing_label)} case(s) have no label in {label_dir}: "
                f"{_list_ids(missing_label)}"
            )
        if missing_prediction:
            problems.append(
                f"{len(missing_prediction)} case(s) have no prediction in {pred_dir}: "
                f"{_list_ids(missing_prediction)}"
            )
        raise PairingError(f"{'; '.join(problems)} (use --allow-missing to skip them)")
    pairs = tuple(CasePair(case, predictions[case], labels[case]) for case in common)
    return Pairing(
        pairs=pairs,
        missing_label=missing_label,
        missing_prediction=missing_prediction,
        unreadable=unreadable,
    )


# --------------------------------------------------------------------------- helpers


def _variants(suffixes: Iterable[str]) -> list[str]:
    """Lower-case suffixes plus their ``_`` <-> ``-`` twins, longest first."""
    out: set[str] = set()
    for suffix in suffixes:
        lower = suffix.lower()
        if not lower:
            continue
        lower = unicodedata.normalize("NFC", lower)
        out.add(lower)
        if lower[0] in "_-":
            out.add(("-" if lower[0] == "_" else "_") + lower[1:])
    return sorted(out, key=len, reverse=True)


def _matching_suffix(stem: str, suffixes: Sequence[str]) -> str:
    if isinstance(suffixes, str):
        suffixes = (suffixes,)
    lower = unicodedata.normalize("NFC", stem).lower()
    for suffix in _variants(suffixes):
        if lower.endswith(suffix) and len(stem) > len(suffix):
            return suffix
    return ""


def _looks_like_prediction(path: Path) -> bool:
    stem, suffix = split_suffix(path)
    return suffix == ".npz" or bool(_matching_suffix(stem, _PREDICTION_MARKERS))


def _is_marked_label(path: Path) -> bool:
    return bool(_matching_suffix(split_suffix(path)[0], _LABEL_MARKERS))


def _select_labels(files: list[Path]) -> list[Path]:
    marked = [f for f in files if _is_marked_label(f)]
    return marked if marked else files


def _scan(folder: Path, allowed: tuple[str, ...]) -> list[Path]:
    """Files under ``folder`` whose names have an ``allowed`` suffix, sorted.

    Recursive; hidden entries are skipped. Files that cannot be read (broken
    symlinks, ...) are listed too: :func:`_unreadable` reports them.

    Raises:
        InputError: ``folder`` is missing, a file, or holds a sub-folder that cannot
            be listed (its cases are unknown, so it cannot be skipped as one case).
    """
    if not folder.exists():
        raise InputError(folder, "folder not found; check the path")
    if not folder.is_dir():
        raise InputError(folder, "is a file, expected a folder")

    def unlisted(error: OSError) -> None:
        where = error.filename or folder
        raise InputError(
            where, f"folder cannot be read ({os_error_reason(error)}); fix its permissions"
        )

    found: list[Path] = []
    seen: set[tuple[int, int]] = set()
    for root, dirs, names in os.walk(folder, onerror=unlisted, followlinks=True):
        info = os.stat(root)
        if (info.st_dev, info.st_ino) in seen:  # a symlink loop
            dirs[:] = []
            continue
        seen.add((info.st_dev, info.st_ino))
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        # ``names`` holds everything that is not a folder: files, and broken links.
        found.extend(
            Path(root) / name
            for name in sorted(names)
            if not name.startswith(".") and split_suffix(name)[1] in allowed
        )
    return found


def _real_folder(path: Path) -> Path:
    """``path`` with its folder's symlinks resolved (the file itself may be a link)."""
    return Path(os.path.realpath(path.parent)) / path.name


def _unreadable_problem(path: Path) -> str | None:
    """Why the file at ``path`` cannot be read, or None when it can."""
    try:
        info = path.stat()
    except OSError as error:
        if error.errno == errno.ELOOP:
            return "is a symlink loop (it leads back to itself); fix or remove the link"
        if error.errno == errno.ENOENT and path.is_symlink():
            target = os.path.realpath(path)
            return (
                f"is a broken symlink (its target {target} does not exist); fix or remove the link"
            )
        return f"cannot be read ({os_error_reason(error)})"
    if not stat.S_ISREG(info.st_mode):
        return "is not a regular file (a pipe, socket or device); replace it with the file itself"
    if not os.access(path, os.R_OK):
        return "cannot be read (permission denied); fix its permissions"
    return None


def _unreadable(cases: dict[str, Path]) -> list[UnreadableFile]:
    """The files of ``cases`` that cannot be read, sorted by case id."""
    found = []
    for case in sorted(cases):
        problem = _unreadable_problem(cases[case])
        if problem is not None:
            found.append(UnreadableFile(case, cases[case], problem))
    return found


def _refuse_unreadable(unreadable: Sequence[UnreadableFile], hint: str) -> None:
    """Raise the InputError of the first unreadable file (naming how many more there are)."""
    if not unreadable:
        return
    first = unreadable[0]
    more = (
        f"; {len(unreadable) - 1} more input file(s) cannot be read" if len(unreadable) > 1 else ""
    )
    raise InputError(first.path, f"{first.problem}{more}{hint}")


def _by_case(files: list[Path], suffixes: Sequence[str], what: str) -> dict[str, Path]:
    cases: dict[str, Path] = {}
    for path in files:
        case = case_id_from_path(path, suffixes)
        if case in cases:
            raise PairingError(
                f"{cases[case]} and {path} both give case id '{case}'; keep one {what} file "
                "per case (move or rename the other)"
            )
        cases[case] = path
    return cases


def _predictions_by_case(files: list[Path], suffixes: Sequence[str]) -> dict[str, Path]:
    groups: dict[str, list[Path]] = {}
    for path in files:
        groups.setdefault(case_id_from_path(path, suffixes), []).append(path)
    cases: dict[str, Path] = {}
    for case, paths in groups.items():
        if len(paths) > 1:
            kinds = [split_suffix(p)[1] for p in paths]
            npz = [p for p, kind in zip(paths, kinds, strict=True) if kind == ".npz"]
            # nnU-Net writes the argmax segmentation in the data set's format
            # (CASE.nii.gz; CASE.png for 2-D data) next to the CASE.npz probabilities.
            if len(npz) == 1:
                paths = npz
            else:
                raise PairingError(
                    f"{paths[0]} and {paths[1]} both give case id '{case}'; keep one "
                    "prediction file per case (move or rename the other)"
                )
        cases[case] = paths[0]
    return cases


def _nothing_found(what: str, suffixes: tuple[str, ...]) -> str:
    return f"no {what} files ({', '.join(suffixes)}) found; check the folder"


def _list_ids(ids: Sequence[str]) -> str:
    listed = ", ".join(ids[:_MAX_LISTED])
    if len(ids) > _MAX_LISTED:
        listed += f" and {len(ids) - _MAX_LISTED} more"
    return listed


def _first(cases: dict[str, Path]) -> str:
    return min(cases) if cases else "none"
