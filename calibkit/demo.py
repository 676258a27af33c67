"""``calibkit demo``: the whole pipeline on the bundled sample data.

Evaluates two models' predictions (an over-confident Dice-trained model and a
calibrated one), fits and applies a temperature to the first, compares the runs
with paired tests, writes the paper-style summary table and draws the figures:
everything a user would do with their own folders, in one call.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from calibkit.calibrate import fit_temperature_folder
from calibkit.errors import OutputError
from calibkit.evaluate import EvaluationOptions, evaluate_to_folder
from calibkit.io.atomic import atomic_write_text
from calibkit.io.temperature import save_temperature
from calibkit.plots import (
    write_calibration_scatter,
    write_evaluation_figures,
    write_reliability_histogram,
)
from calibkit.runs import compare_runs
from calibkit.sample_data import cached_sample_data, sample_data_dir
from calibkit.tables import render_summary, summarize_folders

if TYPE_CHECKING:
    import pandas as pd

MARKER = ".calibkit-demo"
RUNS = {"dsc": "DSC", "dsc_ace": "DSC+ACE"}


@dataclass
class DemoResult:
    """Where the demo put everything, and its headline numbers.

    Attributes:
        out: the results folder.
        outputs: labelled paths of what was written, in order.
        mean_ace: per-case mean ACE (mean over cases) by run name.
        temperature: the temperature fitted on the DSC model.
    """

    out: Path
    outputs: list[tuple[str, Path]] = field(default_factory=list)
    mean_ace: dict[str, float] = field(default_factory=dict)
    temperature: float = 1.0


def run_demo(
    out: str | os.PathLike[str] = "results/demo",
    *,
    data: str | os.PathLike[str] | None = None,
    step: Callable[[str], None] | None = None,
) -> DemoResult:
    """Run evaluate, fit-temperature, compare, summarize and the plots on sample data.

    Args:
        out: results folder; a folder from an earlier demo is replaced, any other
            non-empty folder is refused.
        data: the sample data folder (``brats/`` and ``predictions/`` or ``synthetic/``);
            default: the repository's ``sample_data/``; where calibkit is installed
            without the repository, a seeded copy generated once into the user's cache
            (:func:`calibkit.sample_data.cached_sample_data`).
        step: called with a short description before each step.

    Returns:
        :class:`DemoResult`.
    """

    def announce(text: str) -> None:
        if step is not None:
            step(text)

    out_dir = _prepare(Path(out))
    labels, predictions = _demo_inputs(data, announce)
    options = EvaluationOptions(preset="brats")
    result = DemoResult(out=out_dir)

    for run in RUNS:
        announce(f"evaluate predictions/{run}")
        evaluation, _ = evaluate_to_folder(
            predictions / run, labels, out_dir / run, options, overwrite=True
        )
        result.outputs.append((f"tables of {RUNS[run]}", out_dir / run))
        result.mean_ace[RUNS[run]] = _mean_ace(evaluation.summary)

    announce("fit a temperature to the DSC model")
    fitted = fit_temperature_folder(predictions / "dsc", labels, options=options)
    t_json = save_temperature(fitted, out_dir / "temperature.json")
    result.outputs.append(("fitted temperature", t_json))
    result.temperature = float(fitted.fit.temperatures[0])

    announce("evaluate the DSC model after temperature scaling")
    scaled_options = EvaluationOptions(preset="brats", temperature=str(t_json))
    scaled, _ = evaluate_to_folder(
        predictions / "dsc", labels, out_dir / "dsc_ts", scaled_options, overwrite=True
    )
    result.outputs.append(("tables of DSC+Ts (temperature)", out_dir / "dsc_ts"))
    result.mean_ace["DSC+Ts"] = _mean_ace(scaled.summary)

    announce("compare DSC with DSC+ACE (paired Wilcoxon tests)")
    comparison = compare_runs(out_dir / "dsc", out_dir / "dsc_ace", names=["DSC", "DSC+ACE"])
    compare_csv = out_dir / "compare_dsc_vs_dsc_ace.csv"
    atomic_write_text(compare_csv, comparison.table.to_csv(index=False))
    result.outputs.append(("paired tests", compare_csv))

    announce("summarize the three runs")
    run_dirs = [out_dir / "dsc", out_dir / "dsc_ts", out_dir / "dsc_ace"]
    summary_md = out_dir / "summary.md"
    table = summarize_folders(run_dirs, names=["DSC", "DSC+Ts", "DSC+ACE"])
    atomic_write_text(summary_md, render_summary(table, "markdown"))
    result.outputs.append(("paper-style table", summary_md))

    announce("draw the figures")
    figures = out_dir / "figures"
    labels_of_runs = ["DSC", "DSC+Ts", "DSC+ACE"]
    histogram = write_reliability_histogram(
        run_dirs, figures / "reliability_histogram.png", labels=labels_of_runs
    )
    scatter = write_calibration_scatter(
        run_dirs, figures / "dice_vs_ace.png", labels=labels_of_runs, metrics=("ace", "mce")
    )
    result.outputs.append(("dataset reliability histograms", histogram))
    result.outputs.append(("Dice against ACE and MCE", scatter))
    for run in RUNS:
        for path in write_evaluation_figures(out_dir / run, n_worst=2):
            if "diagram" in path.name:
                result.outputs.append((f"reliability diagram, {RUNS[run]}", path))
    return result


def _mean_ace(summary: pd.DataFrame) -> float:
    row = summary[(summary["class"] == "mean") & (summary["metric"] == "ace")]
    return float(row["mean"].iloc[0])


def _prepare(out: Path) -> Path:
    if out.exists():
        if not out.is_dir():
            raise OutputError(f"{out}: exists and is not a folder")
        if any(out.iterdir()) and not (out / MARKER).exists():
            raise OutputError(
                f"{out}: is not empty and was not written by calibkit demo; choose another --out"
            )
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("written by calibkit demo; the demo replaces this folder\n")
    return out


def _demo_inputs(
    data: str | os.PathLike[str] | None, announce: Callable[[str], None]
) -> tuple[Path, Path]:
    """The label folder and the folder holding the ``dsc/`` and ``dsc_ace/`` predictions."""
    if data is None and (sample_data_dir() / "predictions").is_dir():
        data = sample_data_dir()
    if data is None:
        # An installed (non-editable) package has no sample_data/: rebuild the seeded part.
        folder = cached_sample_data(
            on_generate=lambda where: announce(
                f"generate the sample data (seed 0, synthetic models) into {where}"
            )
        )
    else:
        folder = Path(data)
    predictions = folder / "predictions"
    if not predictions.is_dir() and (folder / "synthetic").is_dir():
        predictions = folder / "synthetic"  # a folder written by python -m calibkit.sample_data
    return folder / "brats", predictions
