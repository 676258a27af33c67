"""Regenerate the README figures in ``docs/figures/`` from ``sample_data/``.

Run from the repository root: ``python benchmarks/make_figures.py [--out docs/figures]``.

Evaluates the two bundled runs (``predictions/dsc`` and ``predictions/dsc_ace``,
BraTS regions ET / TC / WT), then draws with the same functions the
``calibkit plot-*`` commands call:

* ``reliability_diagram.png`` — the worst-calibrated DSC case (largest per-case
  mean ACE) with every region present, DSC and DSC+ACE as rows (paper Fig. 1);
* ``reliability_histogram.png`` — dataset reliability histograms, rows DSC and
  DSC+ACE, columns ET / TC / WT (paper Fig. 2);
* ``dice_vs_ace.png`` — per-case Dice against ACE and MCE for both runs (paper Fig. 3).

Output is deterministic: running it twice gives byte-identical files.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RUNS = {"DSC": "dsc", "DSC+ACE": "dsc_ace"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "figures")
    parser.add_argument("--format", default="png", choices=["png", "pdf", "svg"])
    parser.add_argument(
        "--results", type=Path, default=None, help="Keep the evaluation results in this folder."
    )
    args = parser.parse_args()

    from calibkit.evaluate import EvaluationOptions, evaluate_folders
    from calibkit.io.results import load_per_image, save_evaluation
    from calibkit.plots import (
        worst_calibrated_cases,
        write_calibration_scatter,
        write_reliability_diagram,
        write_reliability_histogram,
    )

    with tempfile.TemporaryDirectory() as scratch:
        root = args.results or Path(scratch)
        folders = []
        for run in RUNS.values():
            evaluation = evaluate_folders(
                REPO / "sample_data" / "predictions" / run,
                REPO / "sample_data" / "brats",
                EvaluationOptions(preset="brats"),
            )
            save_evaluation(evaluation, root / run)
            folders.append(root / run)
        labels = list(RUNS)
        # The worst DSC case among those with every region in the ground truth, so that
        # all three panels show a real comparison (an absent region is all gap by design).
        table = load_per_image(folders[0])
        partial = set(table.loc[table["gt_empty"], "case_id"])
        ranked = worst_calibrated_cases(table, len(table))
        worst = next(case for case in ranked if case not in partial)
        suffix = "." + args.format
        written = [
            write_reliability_diagram(
                folders, args.out / f"reliability_diagram{suffix}", case_id=worst, labels=labels
            ),
            write_reliability_histogram(
                folders, args.out / f"reliability_histogram{suffix}", labels=labels
            ),
            write_calibration_scatter(
                folders, args.out / f"dice_vs_ace{suffix}", labels=labels, metrics=["ace", "mce"]
            ),
        ]
    print(f"worst-calibrated DSC case: {worst}")
    for path in written:
        print(f"wrote {path} ({path.stat().st_size / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
