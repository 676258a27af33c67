"""Paper-style tables across runs: mean ± std over cases, per class and for the mean.

Mirrors Tables 1 and 2 of Barfoot et al. (MICCAI 2024): one table per metric,
runs as rows, one column per class (ET, TC, WT) and one for the per-case mean
over classes. Mean and std (ddof 1) are macro values over cases, NaN cases left
out (:func:`calibkit.metrics.macro_summary`), exactly as ``summary.csv``.

Rendering is plain text: Markdown, CSV (full precision, runs as rows) or LaTeX
(booktabs). Markdown and LaTeX cells keep the fixed ``decimals`` except where
those would erase a value: then the pair shows 3 significant figures
(:func:`calibkit.formatting.format_mean_std` with ``min_digits=1``), so
``0.13 ± 0.09`` stays as the paper prints it and a mean ECE of 4e-4 reads
``0.000412 ± 0.000234``, not ``0.00 ± 0.00``. pandas is imported inside the
functions.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from calibkit.formatting import MISSING, format_mean_std
from calibkit.metrics import METRICS, macro_summary
from calibkit.runs import MEAN_CLASS, load_runs

if TYPE_CHECKING:
    import pandas as pd

    from calibkit.runs import Run

__all__ = [
    "FORMATS",
    "METRIC_LABELS",
    "RunSummary",
    "render_summary",
    "summarize_folders",
    "summarize_runs",
    "summary_csv",
    "summary_latex",
    "summary_markdown",
]

TableFormat = Literal["markdown", "csv", "latex"]
FORMATS: tuple[TableFormat, ...] = ("markdown", "csv", "latex")
METRIC_LABELS = {"ace": "ACE", "ece": "ECE", "mce": "MCE", "dice": "Dice"}
_DIRECTION = {"ace": "lower", "ece": "lower", "mce": "lower", "dice": "higher"}


@dataclass(frozen=True, eq=False)
class RunSummary:
    """Mean ± std over cases of several runs.

    Attributes:
        runs: run names, in row order.
        metrics: metrics, in table order.
        classes: class columns, the per-case ``mean`` last.
        table: tidy table ``run, metric, class, mean, std, median, n``.
    """

    runs: tuple[str, ...]
    metrics: tuple[str, ...]
    classes: tuple[str, ...]
    table: pd.DataFrame

    def cell(self, run: str, metric: str, class_name: str) -> tuple[float, float, int]:
        """``(mean, std, n)`` of one cell; ``(nan, nan, 0)`` when the run lacks it."""
        rows = self.table[
            (self.table["run"] == run)
            & (self.table["metric"] == metric)
            & (self.table["class"] == class_name)
        ]
        if rows.empty:
            return float("nan"), float("nan"), 0
        row = rows.iloc[0]
        return float(row["mean"]), float(row["std"]), int(row["n"])


def summarize_runs(runs: Sequence[Run], metrics: Sequence[str] | None = None) -> RunSummary:
    """Summarise runs (see :func:`calibkit.runs.load_run`) metric by metric.

    Args:
        runs: the runs, in row order; their names must differ.
        metrics: metrics to summarise; by default every metric all runs hold.

    Returns:
        :class:`RunSummary`.

    Raises:
        InputError: a run lacks a requested metric.
        ValueError: no runs, or two runs share a name.
    """
    import pandas as pd

    if not runs:
        raise ValueError("no runs to summarise")
    names = [run.name for run in runs]
    if len(set(names)) != len(names):
        raise ValueError(f"run names repeat ({', '.join(names)}); give distinct --names")
    if metrics is None:
        metrics = [m for m in METRICS if all(m in run.metrics for run in runs)]
    for run in runs:
        run.require(metrics)
    classes = list(dict.fromkeys(c for run in runs for c in run.class_names))
    classes.append(MEAN_CLASS)
    rows = []
    for run in runs:
        for metric in metrics:
            for name in classes:
                values = run.series(metric, name).to_numpy(dtype=np.float64)
                if values.size == 0:
                    continue
                summary = macro_summary(values)
                rows.append(
                    {
                        "run": run.name,
                        "metric": metric,
                        "class": name,
                        "mean": float(summary.mean),
                        "std": float(summary.std),
                        "median": float(summary.median),
                        "n": int(summary.n),
                    }
                )
    table = pd.DataFrame(rows, columns=["run", "metric", "class", "mean", "std", "median", "n"])
    return RunSummary(tuple(names), tuple(metrics), tuple(classes), table)


def summarize_folders(
    folders: Sequence[Path | str],
    *,
    names: Sequence[str] | None = None,
    metrics: Sequence[str] | None = None,
) -> RunSummary:
    """Read run folders (either layout) and summarise them (:func:`summarize_runs`).

    Args:
        folders: run folders, in row order (:func:`calibkit.runs.load_run`).
        names: display names, one per folder; folder names by default.
        metrics: metrics to summarise; by default every metric all runs hold.
    """

    return summarize_runs(load_runs(folders, names), metrics)


def render_summary(summary: RunSummary, fmt: TableFormat, decimals: int = 2) -> str:
    """Render as ``"markdown"``, ``"csv"`` or ``"latex"``."""
    if fmt == "markdown":
        return summary_markdown(summary, decimals)
    if fmt == "csv":
        return summary_csv(summary)
    if fmt == "latex":
        return summary_latex(summary, decimals)
    raise ValueError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")


def _cell_text(mean: float, std: float, decimals: int, pm: str) -> str:
    # min_digits=1: the user's decimals hold unless they would erase the value.
    return format_mean_std(mean, std, decimals, pm=pm, min_digits=1)


def _n_note(summary: RunSummary, metric: str) -> str:
    counts = summary.table.loc[summary.table["metric"] == metric, "n"]
    if counts.empty:
        return "no cases"
    low, high = int(counts.min()), int(counts.max())
    if low == high:
        return f"n = {low} cases per run and class"
    return f"n = {low} to {high} cases per run and class (NaN values left out)"


def summary_markdown(summary: RunSummary, decimals: int = 2) -> str:
    """One Markdown table per metric: runs as rows, classes and the mean as columns.

    Example:
        >>> import pandas as pd
        >>> table = pd.DataFrame(
        ...     [["A", "ace", "mean", 0.247, 0.05, 0.24, 200]],
        ...     columns=["run", "metric", "class", "mean", "std", "median", "n"],
        ... )
        >>> print(summary_markdown(RunSummary(("A",), ("ace",), ("mean",), table)))
        **ACE**: mean ± std over cases (lower is better); n = 200 cases per run and class
        <BLANKLINE>
        | run | mean |
        |:---|---:|
        | A | 0.25 ± 0.05 |
        <BLANKLINE>
    """
    blocks = []
    for metric in summary.metrics:
        label = METRIC_LABELS.get(metric, metric)
        lines = [
            f"**{label}**: mean ± std over cases ({_DIRECTION.get(metric, 'lower')} is better); "
            f"{_n_note(summary, metric)}",
            "",
            "| run | " + " | ".join(_md_escape(c) for c in summary.classes) + " |",
            "|:---|" + "---:|" * len(summary.classes),
        ]
        for run in summary.runs:
            cells = [
                _cell_text(*summary.cell(run, metric, c)[:2], decimals, " ± ")
                for c in summary.classes
            ]
            lines.append(f"| {_md_escape(run)} | " + " | ".join(cells) + " |")
        blocks.append("\n".join(lines) + "\n")
    return "\n".join(blocks)


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|")


def summary_csv(summary: RunSummary) -> str:
    """Runs as rows, full precision: ``run`` then ``{metric}_{class}_{mean,std,n}``.

    Example:
        >>> import pandas as pd
        >>> table = pd.DataFrame(
        ...     [["A", "ace", "ET", 0.25, 0.07, 0.24, 200]],
        ...     columns=["run", "metric", "class", "mean", "std", "median", "n"],
        ... )
        >>> print(summary_csv(RunSummary(("A",), ("ace",), ("ET",), table)), end="")
        run,ace_ET_mean,ace_ET_std,ace_ET_n
        A,0.25,0.07,200
    """
    import pandas as pd

    records = []
    for run in summary.runs:
        record: dict[str, object] = {"run": run}
        for metric in summary.metrics:
            for name in summary.classes:
                mean, std, n = summary.cell(run, metric, name)
                record[f"{metric}_{name}_mean"] = mean
                record[f"{metric}_{name}_std"] = std
                record[f"{metric}_{name}_n"] = n
        records.append(record)
    buffer = io.StringIO()
    pd.DataFrame(records).to_csv(buffer, index=False, lineterminator="\n")
    return buffer.getvalue()


_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}


def _latex_escape(text: str) -> str:
    return "".join(_LATEX_SPECIAL.get(char, char) for char in text)


def summary_latex(summary: RunSummary, decimals: int = 2) -> str:
    r"""One booktabs ``table`` per metric, cells ``$0.13 \pm 0.09$``."""
    blocks = []
    for metric in summary.metrics:
        label = METRIC_LABELS.get(metric, metric)
        direction = _DIRECTION.get(metric, "lower")
        columns = "l" + "c" * len(summary.classes)
        lines = [
            r"\begin{table}",
            r"\centering",
            rf"\caption{{{label} across runs: mean $\pm$ std over cases, "
            rf"{direction} is better ({_latex_escape(_n_note(summary, metric))})}}",
            rf"\begin{{tabular}}{{{columns}}}",
            r"\toprule",
            "Run & " + " & ".join(_latex_escape(c) for c in summary.classes) + r" \\",
            r"\midrule",
        ]
        for run in summary.runs:
            cells = []
            for name in summary.classes:
                mean, std, _ = summary.cell(run, metric, name)
                text = _cell_text(mean, std, decimals, r" \pm ")
                cells.append(f"${text}$" if text != MISSING else "--")
            lines.append(_latex_escape(run) + " & " + " & ".join(cells) + r" \\")
        lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
        blocks.append("\n".join(lines) + "\n")
    return "\n".join(blocks)
