"""``metrics.csv``: the run's history, one row per epoch.

:func:`metric_columns` names the columns (train loss and its terms, validation
metrics per region, best, lr, seconds); :func:`_write_metrics` rewrites the file
from the history kept in the checkpoint, atomically.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from calibkit.io.atomic import atomic_write_text
from calibkit.train.validation import REGIONS, VAL_METRICS

__all__ = ["METRICS_FILE", "metric_columns"]

METRICS_FILE = "metrics.csv"


def metric_columns(term_names: Sequence[str]) -> list[str]:
    """The columns of ``metrics.csv`` for a loss with these terms.

    Example:
        >>> metric_columns(["dsc", "soft-ace"])[:4]
        ['epoch', 'train_loss', 'train_dsc', 'train_soft_ace']
    """
    columns = ["epoch", "train_loss", *(f"train_{_column(name)}" for name in term_names)]
    for metric in VAL_METRICS:
        columns += [f"val_{metric}_{region}" for region in (*REGIONS, "mean")]
    return [*columns, "best", "lr", "seconds", "seconds_per_iteration"]


def _column(term: str) -> str:
    return term.replace("-", "_")


def _write_metrics(run_dir: Path, history: Sequence[Mapping[str, Any]], loss_fn: Any) -> None:
    columns = metric_columns([term.name for term in loss_fn.terms])
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in history:
        writer.writerow([_cell(row.get(column)) for column in columns])
    atomic_write_text(run_dir / METRICS_FILE, buffer.getvalue())


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "nan" if math.isnan(value) else repr(value)
    return str(value)
