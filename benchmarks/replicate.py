"""Replicate the paper's comparison on the sample data: DSC vs DSC + mL1-ACE (hard / soft).

One command::

    python benchmarks/replicate.py                 # about 30 min of a 2-core CPU
    python benchmarks/replicate.py --quick         # a 2-minute smoke test of the same steps

What it does, with calibkit only:

1. **Data.** Training uses the 12 committed sample cases: ``BraTS2021_S000``-``S005``
   train, ``S006``-``S007`` validation (best checkpoint by mean validation Dice, as in
   the paper), ``S008``-``S011`` held out. More held-out cases come from the same
   generator (``calibkit.sample_data``, seed 0: cases ``S012`` onwards continue the
   committed set, which is a prefix of it), so the paired tests have enough cases;
   they are written to the work folder, not committed.
2. **Training.** ``calibkit train`` (the library call) for the losses ``dsc``,
   ``dsc+ace`` (hard-binned mL1-ACE) and ``dsc+soft-ace``, three seeds each, the same
   budget for every run: the ``cpu-small`` preset (48^3 patches, batch 2), ``--epochs``
   x ``--iters-per-epoch`` steps, one torch thread per run, two runs at a time.
3. **Prediction and evaluation.** ``calibkit predict`` with ``best.pt`` on the held-out
   cases (uint8 probability maps), ``calibkit evaluate --preset brats`` (regions ET,
   TC, WT; 20 bins).
4. **Report.** ``OUT/README.md``: Dice, ACE, ECE, MCE (per-case mean over the regions,
   averaged over held-out cases) as mean ± sd over the seeds; Wilcoxon signed-rank p
   against ``dsc`` over the held-out cases (each case's value averaged over the
   seeds first, paired by case id); the budget it took. ``OUT/histograms.png``:
   dataset reliability histograms of seed 0 of each loss. ``OUT/results.csv``,
   ``OUT/per_case.csv``, ``OUT/training/RUN/metrics.csv``, and the seed-0 predictions
   of the committed held-out cases, ``OUT/predictions/{dsc,dsc_ace}/`` (uint8).

Checkpoints, all predictions and the generated cases stay in ``--work``
(``results/replication``, git-ignored). ``--resume`` reuses finished runs there (and
reports the budget of the invocation that trained them).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from datetime import date
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "sample_data" / "brats"
LOSSES = {"dsc": "dsc", "dsc_ace": "dsc+ace", "dsc_soft_ace": "dsc+soft-ace"}
TRAIN = [f"BraTS2021_S{i:03d}" for i in range(6)]
VAL = ["BraTS2021_S006", "BraTS2021_S007"]
HELD_OUT_SAMPLE = [f"BraTS2021_S{i:03d}" for i in range(8, 12)]
METRICS = ("dice", "ace", "ece", "mce")
# Soft-binned models are less confident: their uint8 maps compress 4x worse. Keep these two.
COMMITTED_PREDICTIONS = ("dsc", "dsc_ace")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=REPO / "sample_data" / "trained")
    parser.add_argument("--work", type=Path, default=REPO / "results" / "replication")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    parser.add_argument("--epochs", type=int, default=28)
    parser.add_argument("--iters-per-epoch", type=int, default=16)
    parser.add_argument("--val-every", type=int, default=4)
    parser.add_argument("--extra-test-cases", type=int, default=20)
    parser.add_argument("--parallel", type=int, default=2, help="runs at a time")
    parser.add_argument("--resume", action="store_true", help="reuse finished runs in --work")
    parser.add_argument("--quick", action="store_true", help="tiny budget, a smoke test")
    args = parser.parse_args(argv)
    if args.quick:
        args.epochs, args.iters_per_epoch, args.val_every, args.extra_test_cases = 2, 2, 1, 2
        args.seeds = "0,1"
    seeds = [int(s) for s in args.seeds.split(",")]
    # One thread per run: two single-threaded runs use two cores better than one run
    # with two threads, and numba (in evaluate) must not widen torch's thread pool.
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ["NUMBA_NUM_THREADS"] = "1"
    started = time.perf_counter()
    work = args.work.resolve()
    if work.exists() and not args.resume:
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)

    test_data = _held_out_data(work, args.extra_test_cases)
    test_ids = sorted(p.name for p in test_data.iterdir())
    split = work / "split.json"
    split.write_text(json.dumps({"train": TRAIN, "val": VAL, "test": test_ids}, indent=2))
    jobs = [
        {
            "name": f"{name}_s{seed}",
            "loss_name": name,
            "loss": loss,
            "seed": seed,
            "epochs": args.epochs,
            "iters_per_epoch": args.iters_per_epoch,
            "val_every": args.val_every,
            "split": str(split),
            "work": str(work),
            "test_data": str(test_data),
        }
        for seed in seeds
        for name, loss in LOSSES.items()
    ]
    print(
        f"{len(jobs)} runs ({', '.join(LOSSES.values())} x seeds {args.seeds}), "
        f"{args.epochs} epochs x {args.iters_per_epoch} steps each, {args.parallel} at a time; "
        f"{len(test_ids)} held-out cases",
        flush=True,
    )
    results: list[dict[str, Any]] = []
    with ProcessPoolExecutor(max_workers=args.parallel) as pool:
        futures = {pool.submit(run_job, job, args.resume): job for job in jobs}
        for future in as_completed(futures):
            result = future.result()
            results.append(result)
            print(
                f"[{len(results)}/{len(jobs)}] {result['name']}: best epoch {result['best_epoch']}"
                f" (val Dice {result['best_dice']:.3f}), test Dice {result['dice']:.3f} "
                f"ACE {result['ace']:.3f}; {result['seconds']:.0f} s, "
                f"{result['seconds_per_iteration']:.2f} s/step  "
                f"[{time.perf_counter() - started:.0f} s elapsed]",
                flush=True,
            )
    results.sort(key=lambda r: (list(LOSSES).index(r["loss_name"]), r["seed"]))
    budget_file = work / "budget.json"
    if all(r["reused"] for r in results) and budget_file.is_file():
        budget = json.loads(budget_file.read_text())  # the invocation that trained them
    else:
        own = resource.getrusage(resource.RUSAGE_SELF)
        budget = {
            "wall_seconds": time.perf_counter() - started,
            "cpu_seconds": sum(r["cpu_seconds"] for r in results) + own.ru_utime + own.ru_stime,
        }
        budget_file.write_text(json.dumps(budget) + "\n")
    report = write_report(args, results, test_ids, budget["wall_seconds"], budget["cpu_seconds"])
    print(report)
    print(f"wrote {args.out}")


def _held_out_data(work: Path, extra: int) -> Path:
    """Links to the committed held-out cases plus freshly generated ones."""
    from calibkit.sample_data import N_CASES, generate_sample_data

    test_data = work / "test_data"
    if test_data.is_dir():
        shutil.rmtree(test_data)
    test_data.mkdir()
    for case in HELD_OUT_SAMPLE:
        (test_data / case).symlink_to(SAMPLE / case, target_is_directory=True)
    if extra > 0:
        generated = work / "generated"
        ids = [f"BraTS2021_S{i:03d}" for i in range(N_CASES, N_CASES + extra)]
        if not all((generated / "brats" / case).is_dir() for case in ids):
            shutil.rmtree(generated, ignore_errors=True)
            print(f"generating {extra} more held-out cases (seed 0) ...", flush=True)
            generate_sample_data(generated, n_cases=N_CASES + extra, seed=0)
        for case in ids:
            (test_data / case).symlink_to(generated / "brats" / case, target_is_directory=True)
    return test_data


def run_job(job: dict[str, Any], resume: bool) -> dict[str, Any]:
    """Train, predict the held-out cases and evaluate them (in a worker process)."""
    from calibkit.evaluate import EvaluationOptions, evaluate_folders
    from calibkit.io.results import load_summary, save_evaluation
    from calibkit.train.config import resolve_config
    from calibkit.train.loop import train
    from calibkit.train.predict import predict_folder

    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu_start = usage.ru_utime + usage.ru_stime
    started = time.perf_counter()
    work = Path(job["work"])
    run_dir = work / "runs" / job["name"]
    preds = work / "predictions" / job["name"]
    evaluation_dir = work / "evaluation" / job["name"]
    record = run_dir / "job.json"
    if resume and record.is_file() and (evaluation_dir / "summary.json").is_file():
        return {**json.loads(record.read_text()), "reused": True}
    for folder in (run_dir, preds, evaluation_dir):
        shutil.rmtree(folder, ignore_errors=True)
    config = resolve_config(
        {
            "data": str(SAMPLE),
            "out": str(run_dir),
            "loss": job["loss"],
            "seed": job["seed"],
            "epochs": job["epochs"],
            "iters_per_epoch": job["iters_per_epoch"],
            "val_every": job["val_every"],
            "split": job["split"],
            "threads": 1,
        },
        preset="cpu-small",
    )
    train(config)
    predict_folder(run_dir / "best.pt", job["test_data"], preds, device="cpu")
    evaluation = evaluate_folders(
        preds, job["test_data"], EvaluationOptions(preset="brats", backend="numpy")
    )
    save_evaluation(evaluation, evaluation_dir)
    state = _checkpoint_summary(run_dir / "last.pt")
    summary = load_summary(evaluation_dir)["summary"]["mean"]
    usage = resource.getrusage(resource.RUSAGE_SELF)
    result = {
        **{key: job[key] for key in ("name", "loss_name", "loss", "seed")},
        **{metric: summary[metric]["mean"] for metric in METRICS},
        **state,
        "seconds": time.perf_counter() - started,
        "cpu_seconds": usage.ru_utime + usage.ru_stime - cpu_start,
        "run_dir": str(run_dir),
        "evaluation": str(evaluation_dir),
        "predictions": str(preds),
    }
    record.write_text(json.dumps(result, indent=2) + "\n")
    return {**result, "reused": False}


def _checkpoint_summary(path: Path) -> dict[str, Any]:
    import torch

    state = torch.load(path, map_location="cpu", weights_only=True)
    history = state["history"]
    steps = [row["seconds_per_iteration"] for row in history]
    return {
        "best_epoch": state["best_epoch"],
        "best_dice": float(state["best_dice"]),
        "epochs": int(state["epoch"]),
        "seconds_per_iteration": sum(steps) / len(steps),
        "train_seconds": sum(row["seconds"] for row in history),
    }


def write_report(
    args: argparse.Namespace,
    results: list[dict[str, Any]],
    test_ids: list[str],
    wall: float,
    cpu: float,
) -> str:
    """Write OUT (tables, histograms, small predictions) and return the Markdown report."""
    import numpy as np
    import pandas as pd

    from calibkit.formatting import format_mean_std
    from calibkit.plots import write_reliability_histogram
    from calibkit.runs import load_run
    from calibkit.stats import align_pairs, paired_test

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    table = pd.DataFrame(results)
    columns = ["name", "loss", "seed", *METRICS, "best_epoch", "best_dice", "epochs"]
    table[[*columns, "seconds", "cpu_seconds", "seconds_per_iteration"]].to_csv(
        out / "results.csv", index=False, float_format="%.6g"
    )
    per_case = []
    for result in results:
        run = load_run(result["evaluation"])
        values = run.values[run.values["class"] == "mean"].copy()
        values.insert(0, "seed", result["seed"])
        values.insert(0, "loss", result["loss"])
        per_case.append(values)
    cases = pd.concat(per_case, ignore_index=True)
    cases.to_csv(out / "per_case.csv", index=False, float_format="%.6g")
    # Each case's value averaged over the seeds, then paired by case id against dsc.
    averaged = cases.groupby(["loss", "metric", "case_id"])["value"].mean()

    lines = [
        "| loss | Dice | ACE | ECE | MCE | ACE vs DSC | p ACE | p Dice |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, loss in LOSSES.items():
        rows = table[table["loss_name"] == name]
        cells = [format_mean_std(rows[m].mean(), rows[m].std(ddof=1)) for m in METRICS]
        change, p_ace, p_dice = "", "", ""
        if name != "dsc":
            tests = {}
            for metric in ("ace", "dice"):
                a = averaged["dsc", metric]
                b = averaged[loss, metric]
                pairs = align_pairs(list(a.index), a.to_numpy(), list(b.index), b.to_numpy())
                tests[metric] = paired_test(pairs.a, pairs.b, "wilcoxon")
            change = f"{tests['ace'].change_pct:+.0f} %"
            p_ace, p_dice = _p(tests["ace"].p), _p(tests["dice"].p)
        lines.append(f"| `{loss}` | {' | '.join(cells)} | {change} | {p_ace} | {p_dice} |")
    seed0 = [r for r in results if r["seed"] == min(r["seed"] for r in results)]
    histogram = write_reliability_histogram(
        [r["evaluation"] for r in seed0], out / "histograms.png", labels=[r["loss"] for r in seed0]
    )
    shutil.rmtree(out / "predictions", ignore_errors=True)
    for result in seed0:
        if result["loss_name"] not in COMMITTED_PREDICTIONS:
            continue
        target = out / "predictions" / result["loss_name"]
        target.mkdir(parents=True)
        for case in HELD_OUT_SAMPLE:
            shutil.copyfile(
                Path(result["predictions"]) / f"{case}_pred.nii.gz", target / f"{case}_pred.nii.gz"
            )
    for result in results:
        target = out / "training" / result["name"]
        target.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(Path(result["run_dir"]) / "metrics.csv", target / "metrics.csv")
    per_step = np.mean([r["seconds_per_iteration"] for r in results])
    n_seeds = len({r["seed"] for r in results})
    command = "python benchmarks/replicate.py" + (" --quick" if args.quick else "")
    report = "\n".join(
        [
            "# Replication on the sample data (calibkit train / predict / evaluate)",
            "",
            f"Measured {date.today()} on {platform.machine()}, {os.cpu_count()} CPU cores "
            f"(shared), Python {platform.python_version()}, by `{command}`.",
            "",
            f"Training: cases S000-S005, best checkpoint by mean validation Dice on S006-S007 "
            f"(checked every {args.val_every} epochs); `cpu-small` preset (48³ patches, batch 2, "
            f"Adam 1e-3, the paper's augmentations), {args.epochs} epochs x "
            f"{args.iters_per_epoch} steps = {args.epochs * args.iters_per_epoch} steps per run, "
            f"{n_seeds} seeds per loss. Test: {len(test_ids)} held-out cases "
            f"(S008-S011 and {len(test_ids) - len(HELD_OUT_SAMPLE)} more from the same "
            "generator), regions ET/TC/WT, 20 bins.",
            "",
            *lines,
            "",
            f"Values: per-case mean over ET/TC/WT, averaged over the {len(test_ids)} held-out "
            f"cases; mean ± sd over the {n_seeds} seeds. p: two-sided Wilcoxon signed-rank test "
            f"against `dsc` over the held-out cases, each case's value averaged over the seeds "
            f"first (n = {len(test_ids)}). ACE vs DSC: relative change of the mean.",
            "",
            f"Budget: {wall / 60:.1f} min wall clock, {cpu / 60:.1f} CPU-minutes "
            f"({len(results)} runs, {args.parallel} at a time, one thread each; "
            f"{per_step:.2f} s per training step on average, data augmentation included).",
            "",
            f"![dataset reliability histograms, seed {min(r['seed'] for r in results)}]"
            f"({histogram.name})",
            "",
        ]
    )
    (out / "README.md").write_text(report)
    return report


def _p(value: float) -> str:
    if value != value:  # NaN
        return "n/a"
    return f"{value:.2g}" if value >= 0.001 else f"{value:.1e}"


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    main()
