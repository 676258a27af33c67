"""Reading the arguments of ``from_evaluation``: result folders, run labels, classes, cases.

Each helper checks one thing about the ``calibkit evaluate`` folders a display is
drawn from and raises a one-line :class:`~calibkit.errors.CalibkitError` naming
the folder when it is wrong. The folders' files are read by
:mod:`calibkit.io.results`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Union

from calibkit.errors import CalibkitError, InputError
from calibkit.plots.style import PathLike

ResultDirs = Union[PathLike, Sequence[PathLike]]


def _as_dirs(result_dirs: ResultDirs) -> list[Path]:
    if isinstance(result_dirs, (str, os.PathLike)):
        return [Path(result_dirs)]
    dirs = [Path(folder) for folder in result_dirs]
    if not dirs:
        raise CalibkitError("no result folder given")
    return dirs


def _labels(labels: Sequence[str] | None, dirs: Sequence[Path]) -> tuple[str, ...]:
    if labels is None:
        return tuple(folder.resolve().name or str(folder) for folder in dirs)
    labels = tuple(label.strip() for label in labels)
    if len(labels) != len(dirs):
        raise CalibkitError(
            f"{len(labels)} label(s) ({', '.join(labels)}) for {len(dirs)} result folder(s); "
            "give one label per folder"
        )
    return labels


def _class_indices(
    folder: Path, available: Sequence[str], classes: Sequence[str] | None
) -> list[int]:
    if classes is None:
        return list(range(len(available)))
    indices = []
    for name in classes:
        if name not in available:
            raise InputError(
                folder, f"no class {name!r} in these results; classes here: {_listed(available)}"
            )
        indices.append(list(available).index(name))
    if not indices:
        raise InputError(folder, "no class selected")
    return indices


def _listed(names: Sequence[str], shown: int = 20) -> str:
    """``names`` joined by commas; past ``shown``, the first ones and how many in all."""
    if len(names) <= shown:
        return ", ".join(names)
    return f"{', '.join(names[:shown])}, ... ({len(names)} in all)"


def _check_same_bins(folders: Sequence[Path], n_bins: Sequence[int]) -> None:
    for folder, m in zip(folders[1:], n_bins[1:], strict=True):
        if m != n_bins[0]:
            raise InputError(
                folder,
                f"has {m} bins but {folders[0]} has {n_bins[0]}; "
                "evaluate every run with the same --n-bins",
            )


def _case_index(folder: Path, case_ids: Sequence[str], case_id: str) -> int:
    if case_id not in case_ids:
        shown = ", ".join(case_ids[:5]) + (", ..." if len(case_ids) > 5 else "")
        raise InputError(
            folder, f"no case {case_id!r} in bins.npz ({len(case_ids)} cases: {shown})"
        )
    return list(case_ids).index(case_id)
