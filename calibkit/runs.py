"""Runs: per-case results of one model, read from a folder into one tidy table.

A *run* folder is either

* a result folder of ``calibkit evaluate`` (``per_image.csv``), or
* the paper authors' layout (``sample_data/reference/ace-dliris/RUN/``): files
  ``ace_raw.csv``, ``ece_raw.csv``, ``mce_raw.csv``, ``mean_dice_raw.csv`` with
  columns ``filename, class0, class1, class2, mean``; three classes are named
  ET, TC, WT (BraTS regions), and ``mean_dice`` is the metric ``dice``.

Either way :func:`load_run` gives a long table ``case_id, class, metric, value``
with one row per case, class and metric, plus the class ``mean``: the per-case
mean over classes (NaN-mean, as ``summary.csv``'s ``mean`` row; for the paper's
layout, the file's own ``mean`` column, which is that same NaN-mean).

This module also holds :func:`compare_runs`, the library side of ``calibkit compare``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import numpy.typing as npt

from calibkit.errors import InputError
from calibkit.io.results import load_per_image
from calibkit.metrics import METRICS, per_image_mean
from calibkit.stats import compare_tables

if TYPE_CHECKING:
    import pandas as pd

    from calibkit.stats import CorrectionName, TestName

__all__ = [
    "MEAN_CLASS",
    "PAPER_CLASS_NAMES",
    "PAPER_FILES",
    "Comparison",
    "Run",
    "compare_runs",
    "load_run",
    "load_runs",
]

MEAN_CLASS = "mean"
PAPER_CLASS_NAMES = ("ET", "TC", "WT")
# metric -> file name in the paper authors' layout
PAPER_FILES = {
    "ace": "ace_raw.csv",
    "ece": "ece_raw.csv",
    "mce": "mce_raw.csv",
    "dice": "mean_dice_raw.csv",
}
Layout = Literal["calibkit", "paper"]


@dataclass(frozen=True, eq=False)
class Run:
    """Per-case results of one run.

    Attributes:
        name: display name (the folder name unless given).
        path: the folder it was read from.
        layout: ``"calibkit"`` (``per_image.csv``) or ``"paper"`` (``*_raw.csv``).
        class_names: the classes, in file order (``"mean"`` not included).
        metrics: the metrics the folder holds, in :data:`calibkit.metrics.METRICS` order.
        values: tidy table ``case_id, class, metric, value``; ``class`` includes ``"mean"``.
    """

    name: str
    path: Path
    layout: Layout
    class_names: tuple[str, ...]
    metrics: tuple[str, ...]
    values: pd.DataFrame

    @property
    def case_ids(self) -> tuple[str, ...]:
        """Every case id of the run, sorted."""
        return tuple(sorted(set(self.values["case_id"])))

    def require(self, metrics: Sequence[str]) -> None:
        """Raise :class:`InputError` naming the folder if a metric is missing."""
        missing = [metric for metric in metrics if metric not in self.metrics]
        if missing:
            found = ", ".join(self.metrics) or "none"
            hint = (
                f"add {', '.join(PAPER_FILES[m] for m in missing)}"
                if self.layout == "paper"
                else "re-run calibkit evaluate"
            )
            raise InputError(
                self.path, f"has no {', '.join(missing)} values (found: {found}); {hint}"
            )

    def series(self, metric: str, class_name: str) -> pd.Series:
        """Per-case values of one metric and class, indexed by case id."""
        rows = self.values[(self.values["metric"] == metric) & (self.values["class"] == class_name)]
        return rows.set_index("case_id")["value"]


def load_run(folder: Path | str, name: str | None = None) -> Run:
    """Read a run folder of either layout (see the module docstring).

    Args:
        folder: a ``calibkit evaluate`` result folder or a paper-layout folder.
        name: display name; defaults to the folder name.

    Returns:
        :class:`Run`.

    Raises:
        InputError: the folder is missing, holds neither layout, or a file is malformed.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(folder, "no such folder; give a calibkit evaluate result folder")
    display = name if name is not None else (folder.resolve().name or str(folder))
    if (folder / "per_image.csv").is_file():
        return _load_calibkit(folder, display)
    if any((folder / file).is_file() for file in PAPER_FILES.values()):
        return _load_paper(folder, display)
    raise InputError(
        folder,
        "neither per_image.csv (calibkit evaluate) nor "
        f"{', '.join(PAPER_FILES.values())} (paper layout) found here",
    )


def load_runs(folders: Sequence[Path | str], names: Sequence[str] | None = None) -> list[Run]:
    """Read several run folders; ``names`` (if given) must have one entry per folder.

    Raises:
        InputError: as :func:`load_run`.
        ValueError: the number of names differs from the number of folders.
    """
    if names is not None and len(names) != len(folders):
        raise ValueError(f"{len(names)} names for {len(folders)} folders; give one per folder")
    return [
        load_run(folder, None if names is None else names[i]) for i, folder in enumerate(folders)
    ]


def _load_calibkit(folder: Path, name: str) -> Run:
    import pandas as pd

    table = load_per_image(folder)
    path = folder / "per_image.csv"
    _check_unique(table, ["case_id", "class"], path)
    class_names = tuple(dict.fromkeys(str(c) for c in table["class"]))
    if MEAN_CLASS in class_names:
        raise InputError(path, f"a class is named {MEAN_CLASS!r}, which is reserved for the mean")
    parts = []
    for metric in METRICS:
        values = _numeric(table[metric], path, metric)
        wide = (
            pd.DataFrame({"case_id": table["case_id"], "class": table["class"], "value": values})
            .pivot(index="case_id", columns="class", values="value")
            .reindex(columns=list(class_names))
        )
        long = pd.DataFrame({"case_id": table["case_id"], "class": table["class"], "value": values})
        mean = pd.DataFrame(
            {
                "case_id": wide.index.astype(str),
                "class": MEAN_CLASS,
                "value": per_image_mean(wide.to_numpy(dtype=np.float64)),
            }
        )
        parts.append(pd.concat([long, mean], ignore_index=True).assign(metric=metric))
    return Run(name, folder, "calibkit", class_names, tuple(METRICS), _tidy(parts))


def _load_paper(folder: Path, name: str) -> Run:
    import pandas as pd

    parts = []
    class_names: tuple[str, ...] | None = None
    metrics = []
    for metric, file in PAPER_FILES.items():
        path = folder / file
        if not path.is_file():
            continue
        try:
            table = pd.read_csv(path, dtype={"filename": str})
        except (OSError, ValueError) as error:
            raise InputError(path, f"cannot read this CSV ({error})") from None
        class_columns = [c for c in table.columns if str(c).startswith("class")]
        if "filename" not in table.columns or not class_columns:
            raise InputError(
                path,
                "expected columns filename, class0, class1, ... (and mean); "
                f"found {', '.join(map(str, table.columns))}",
            )
        names = PAPER_CLASS_NAMES if len(class_columns) == len(PAPER_CLASS_NAMES) else class_columns
        if class_names is None:
            class_names = tuple(names)
        elif tuple(names) != class_names:
            raise InputError(
                path,
                f"has classes {', '.join(names)}, other files of this run "
                f"have {', '.join(class_names)}",
            )
        table["case_id"] = [_case_id(value) for value in table["filename"]]
        _check_unique(table, ["case_id"], path)
        values = np.column_stack([_numeric(table[c], path, str(c)) for c in class_columns])
        if "mean" in table.columns:
            mean = _numeric(table["mean"], path, "mean")
        else:
            mean = per_image_mean(values)
        wide = pd.DataFrame(np.column_stack([values, mean]), columns=[*names, MEAN_CLASS])
        wide.insert(0, "case_id", table["case_id"].to_numpy())
        long = wide.melt(id_vars="case_id", var_name="class", value_name="value")
        parts.append(long.assign(metric=metric))
        metrics.append(metric)
    return Run(name, folder, "paper", class_names or (), tuple(metrics), _tidy(parts))


# calibkit.io.formats.PREDICTION_SUFFIXES, repeated so that reading CSVs needs no nibabel.
_VOLUME_SUFFIXES = (
    ".nii.gz",
    ".nrrd",
    ".nhdr",
    ".nii",
    ".mha",
    ".mhd",
    ".png",
    ".tiff",
    ".tif",
    ".npz",
)


def _case_id(filename: object) -> str:
    text = str(filename).strip()
    for suffix in _VOLUME_SUFFIXES:
        if text.lower().endswith(suffix):
            return text[: -len(suffix)]
    return text


def _numeric(column: pd.Series, path: Path, name: str) -> npt.NDArray[np.float64]:
    import pandas as pd

    values = pd.to_numeric(column, errors="coerce")
    bad = values.isna() & column.notna() & (column.astype(str).str.strip().str.lower() != "nan")
    if bad.any():
        first = column[bad].iloc[0]
        raise InputError(path, f"column {name} holds a non-number ({first!r})")
    return values.to_numpy(dtype=np.float64)


def _check_unique(table: pd.DataFrame, keys: list[str], path: Path) -> None:
    repeated = table.duplicated(subset=keys, keep=False)
    if repeated.any():
        first = table.loc[repeated, keys].iloc[0].tolist()
        raise InputError(path, f"{' / '.join(map(str, first))} appears more than once")
    if "case_id" in table.columns and (table["case_id"].astype(str).str.len() == 0).any():
        raise InputError(path, "a row has an empty case id")


def _tidy(parts: list[pd.DataFrame]) -> pd.DataFrame:
    import pandas as pd

    table = pd.concat(parts, ignore_index=True)[["case_id", "class", "metric", "value"]]
    return table.astype({"case_id": str, "class": str, "metric": str, "value": np.float64})


@dataclass(frozen=True, eq=False)
class Comparison:
    """Result of :func:`compare_runs`.

    Attributes:
        run_a: the reference run A.
        run_b: the run B compared against A (differences are B - A).
        test: ``"wilcoxon"`` or ``"ttest"``.
        correction: ``"holm"`` or ``"none"``.
        table: one row per (metric, class), see :func:`calibkit.stats.compare_tables`.
        only_in_a: case ids that run A has and run B lacks (any metric).
        only_in_b: case ids that run B has and run A lacks.
    """

    run_a: Run
    run_b: Run
    test: TestName
    correction: CorrectionName
    table: pd.DataFrame
    only_in_a: tuple[str, ...]
    only_in_b: tuple[str, ...]

    def record(self) -> dict[str, object]:
        """JSON-ready content (NaN as ``None``)."""
        rows = [
            {key: _json_value(value) for key, value in row.items()}
            for row in self.table.to_dict("records")
        ]
        return {
            "run_a": {"name": self.run_a.name, "path": str(self.run_a.path)},
            "run_b": {"name": self.run_b.name, "path": str(self.run_b.path)},
            "test": self.test,
            "correction": self.correction,
            "difference": "B - A",
            "only_in_a": list(self.only_in_a),
            "only_in_b": list(self.only_in_b),
            "rows": rows,
        }


def _json_value(value: object) -> object:
    if isinstance(value, (float, np.floating)):
        return None if np.isnan(value) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


def compare_runs(
    folder_a: Path | str,
    folder_b: Path | str,
    *,
    metrics: Sequence[str] | None = None,
    test: TestName = "wilcoxon",
    correction: CorrectionName = "holm",
    names: Sequence[str] | None = None,
) -> Comparison:
    """Paired tests of run B against run A, per class and for the per-case mean.

    Args:
        folder_a: run A (either layout).
        folder_b: run B (either layout).
        metrics: metrics to test; by default every metric both runs hold.
        test: ``"wilcoxon"`` (default) or ``"ttest"``.
        correction: ``"holm"`` (across all metrics and classes of the call) or ``"none"``.
        names: display names of A and B.

    Returns:
        :class:`Comparison`.

    Raises:
        InputError: a folder cannot be read, lacks a requested metric, the runs'
            classes differ, or the runs share no case id.
    """

    run_a, run_b = load_runs([folder_a, folder_b], names)
    if metrics is None:
        metrics = [m for m in run_a.metrics if m in run_b.metrics]
        if not metrics:
            raise InputError(run_b.path, f"shares no metric with {run_a.path}")
    run_a.require(metrics)
    run_b.require(metrics)
    if run_a.class_names != run_b.class_names:
        raise InputError(
            run_b.path,
            f"has classes {', '.join(run_b.class_names)} but {run_a.path} has "
            f"{', '.join(run_a.class_names)}; compare runs of the same classes",
        )
    ids_a, ids_b = set(run_a.case_ids), set(run_b.case_ids)
    if not ids_a & ids_b:
        raise InputError(run_b.path, _no_shared_cases(run_b, run_a))
    table = compare_tables(
        run_a.values,
        run_b.values,
        metrics=metrics,
        classes=[*run_a.class_names, MEAN_CLASS],
        test=test,
        correction=correction,
    )
    return Comparison(
        run_a=run_a,
        run_b=run_b,
        test=test,
        correction=correction,
        table=table,
        only_in_a=tuple(sorted(ids_a - ids_b)),
        only_in_b=tuple(sorted(ids_b - ids_a)),
    )


def _no_shared_cases(run: Run, other: Run) -> str:
    """Why two runs cannot be paired: no case id in common (with an example of each)."""

    def some(ids: tuple[str, ...]) -> str:
        return f"{len(ids)} case(s), e.g. {', '.join(ids[:2])}" if ids else "no cases"

    return (
        f"the runs share no case ids ({run.name}: {some(run.case_ids)}; {other.name}: "
        f"{some(other.case_ids)}); pair runs evaluated on the same cases, with the same "
        "file names"
    )
