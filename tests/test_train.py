"""calibkit train / predict: config precedence, data layouts, training, exact resume, DDP.

Training runs use 16^3 patches and a few steps so the whole file stays fast on a
2-core machine; the pipeline is the same as the paper's (only the sizes differ).
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
from conftest import REPO, SAMPLE_DATA
from typer.testing import CliRunner

pytest.importorskip("monai")
import torch

import calibkit.cli.train  # noqa: F401  (registers train and predict)
from calibkit.cli.app import app
from calibkit.errors import CalibkitError, InputError
from calibkit.train.config import (
    TrainConfig,
    config_to_toml,
    load_config_file,
    parse_label_map,
    resolve_config,
)
from calibkit.train.data import (
    SampleBatches,
    TrainingSamples,
    find_cases,
    load_case,
    make_split,
    read_split,
)

BRATS = SAMPLE_DATA / "brats"
runner = CliRunner()
TINY = {
    "patch_size": (16, 16, 16),
    "iters_per_epoch": 2,
    "batch_size": 2,
    "threads": 1,
    "val_fraction": 0.25,
    "workers": 0,
    "device": "cpu",
}


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    # Small convolutions are fastest on one thread, and a busy 2-core machine makes
    # OpenMP's spinning threads slower still.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def run(*args: Any) -> tuple[int, str, str]:
    result = runner.invoke(app, [str(a) for a in args])
    return result.exit_code, result.stdout, result.stderr


def assert_user_error(code: int, stderr: str, *fragments: str) -> None:
    assert code == 1, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    for fragment in fragments:
        assert fragment in stderr, (fragment, stderr)


def tiny_data(tmp_path: Path, cases: range) -> Path:
    """Links to some sample cases (a smaller data folder)."""
    data = tmp_path / "data"
    data.mkdir()
    for index in cases:
        case = f"BraTS2021_S{index:03d}"
        (data / case).symlink_to(BRATS / case, target_is_directory=True)
    return data


def weights(path: Path) -> dict[str, torch.Tensor]:
    state = torch.load(path, map_location="cpu", weights_only=True)
    return dict(state["model"])


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


# --------------------------------------------------------------------------- config


def test_config_precedence_cli_over_file_over_preset_over_defaults(tmp_path: Path) -> None:
    assert TrainConfig().patch_size == (224, 224, 144)
    assert (TrainConfig().batch_size, TrainConfig().epochs, TrainConfig().lr) == (8, 1000, 1e-3)
    preset = resolve_config(preset="cpu-small")
    assert preset.batch_size == 2 and preset.patch_size == (48, 48, 48)
    assert preset.lr == 1e-3  # not in the preset: the default

    toml = tmp_path / "run.toml"
    toml.write_text('preset = "cpu-small"\nbatch-size = 4\nlr = 0.01\nloss = "dsc+soft-ace"\n')
    from_file = resolve_config(config_file=toml)
    assert (from_file.batch_size, from_file.lr, from_file.loss) == (4, 0.01, "dsc+soft-ace")
    assert from_file.patch_size == (48, 48, 48) and from_file.preset == "cpu-small"

    cli = resolve_config({"lr": 0.5, "batch_size": None, "preset": None}, config_file=toml)
    assert (cli.lr, cli.batch_size) == (0.5, 4)  # None means "not given"
    paper = resolve_config({}, config_file=toml, preset="paper")
    assert paper.patch_size == (224, 224, 144) and paper.batch_size == 4

    yaml = tmp_path / "run.yaml"
    yaml.write_text("# comment\nepochs: 7\npatch_size: [32, 32, 16]  # x, y, z\namp: true\n")
    from_yaml = resolve_config(config_file=yaml)
    assert (from_yaml.epochs, from_yaml.patch_size, from_yaml.amp) == (7, (32, 32, 16), True)
    as_json = tmp_path / "run.json"
    as_json.write_text(json.dumps({"train": {"seed": 3, "label_map": {"0": 0, "4": 3}}}))
    assert resolve_config(config_file=as_json).label_map == "0:0,4:3"


def test_config_round_trips_through_toml(tmp_path: Path) -> None:
    config = resolve_config(
        {"data": 'a "quoted" dir', "split": None, "patch_size": "64,32,16", "label_map": "0:0,1:2"},
        preset="cpu-small",
    )
    path = tmp_path / "config.toml"
    path.write_text(config_to_toml(config))
    assert TrainConfig.from_dict(load_config_file(path)) == config


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        ({"epochs": 0}, "epochs must be at least 1"),
        ({"patch_size": (20, 16, 16)}, "multiples of 8"),
        ({"patch_size": "16,16"}, "three positive integers"),
        ({"val_fraction": 1.0}, "val_fraction"),
        ({"lr": "fast"}, "lr must be a finite number"),
        ({"amp": "maybe"}, "amp must be true or false"),
        ({"label_map": "1:7"}, "label:class pairs"),
    ],
)
def test_config_rejects_bad_values(options: dict[str, Any], fragment: str) -> None:
    with pytest.raises(CalibkitError, match=fragment):
        resolve_config(options)


def test_config_file_errors(tmp_path: Path) -> None:
    with pytest.raises(CalibkitError, match="unknown preset 'gpu-huge'"):
        resolve_config(preset="gpu-huge")
    bad_key = tmp_path / "bad.toml"
    bad_key.write_text("epochz = 3\n")
    with pytest.raises(CalibkitError, match="unknown option 'epochz'"):
        resolve_config(config_file=bad_key)
    broken = tmp_path / "broken.toml"
    broken.write_text("epochs = \n")
    with pytest.raises(InputError, match="invalid TOML"):
        load_config_file(broken)
    with pytest.raises(InputError, match=r"\.yaml, \.yml, \.toml or \.json"):
        load_config_file(bad_key.rename(tmp_path / "bad.ini"))
    assert parse_label_map({"0": "0", "4": "3"}) == {0: 0, 4: 3}


# --------------------------------------------------------------------------- data


def test_brats_cases_labels_and_missing_modality(tmp_path: Path) -> None:
    dataset = find_cases(BRATS)
    assert dataset.layout == "brats" and len(dataset.cases) == 12
    case = load_case(dataset.cases[0], dataset.label_map)
    label_path = dataset.cases[0].label
    assert label_path is not None
    raw_label = np.asarray(nib.load(label_path).dataobj)  # type: ignore[attr-defined]
    expected = np.where(raw_label == 4, 3, raw_label)
    assert case.label is not None and np.array_equal(case.label[0], expected)
    flair = nib.load(dataset.cases[0].images[3]).get_fdata(dtype=np.float32)  # type: ignore[attr-defined]
    assert case.image.shape == (4, 64, 64, 64) and np.array_equal(case.image[3], flair)

    broken = tmp_path / "broken"
    shutil.copytree(BRATS / "BraTS2021_S000", broken / "BraTS2021_S000")
    (broken / "BraTS2021_S000" / "BraTS2021_S000_t1ce.nii.gz").unlink()
    with pytest.raises(InputError, match=r"missing BraTS2021_S000_t1ce\.nii\.gz"):
        find_cases(broken)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no cases found"):
        find_cases(tmp_path / "empty")


def _volume(rng: np.random.Generator, value: float) -> np.ndarray:
    return (rng.random((8, 8, 8)) + value).astype(np.float32)


def test_msd_and_nnunet_layouts_reorder_channels_and_map_labels(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    modalities = {"t1": _volume(rng, 10), "t1ce": _volume(rng, 20), "t2": _volume(rng, 30)}
    modalities["flair"] = _volume(rng, 40)
    label = rng.integers(0, 4, size=(8, 8, 8)).astype(np.uint8)

    msd = tmp_path / "Task01_BrainTumour"
    (msd / "imagesTr").mkdir(parents=True)
    (msd / "labelsTr").mkdir()
    msd_order = ["flair", "t1", "t1ce", "t2"]  # MSD: FLAIR, T1w, t1gd, T2w
    stacked = np.stack([modalities[m] for m in msd_order], axis=-1)
    nib.save(nib.Nifti1Image(stacked, np.eye(4)), msd / "imagesTr" / "BRATS_001.nii.gz")
    nib.save(nib.Nifti1Image(label, np.eye(4)), msd / "labelsTr" / "BRATS_001.nii.gz")
    (msd / "dataset.json").write_text(
        json.dumps(
            {
                "modality": {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"},
                "labels": {
                    "0": "background",
                    "1": "edema",
                    "2": "non-enhancing tumor",
                    "3": "enhancing tumour",
                },
            }
        )
    )
    dataset = find_cases(msd)
    assert dataset.layout == "msd" and dataset.label_map == {0: 0, 1: 2, 2: 1, 3: 3}
    case = load_case(dataset.cases[0], dataset.label_map)
    for index, modality in enumerate(("t1", "t1ce", "t2", "flair")):
        assert np.array_equal(case.image[index], modalities[modality])
    assert case.label is not None
    assert np.array_equal(case.label[0], np.choose(label, [0, 2, 1, 3]))

    nnunet = tmp_path / "Dataset137_BraTS2021"
    (nnunet / "imagesTr").mkdir(parents=True)
    (nnunet / "labelsTr").mkdir()
    nnunet_order = ["t1", "t1ce", "t2", "flair"]
    for channel, modality in enumerate(nnunet_order):
        path = nnunet / "imagesTr" / f"BraTS2021_00000_{channel:04d}.nii.gz"
        nib.save(nib.Nifti1Image(modalities[modality], np.eye(4)), path)
    nib.save(nib.Nifti1Image(label, np.eye(4)), nnunet / "labelsTr" / "BraTS2021_00000.nii.gz")
    (nnunet / "dataset.json").write_text(
        json.dumps(
            {
                "channel_names": {"0": "T1", "1": "T1ce", "2": "T2", "3": "Flair"},
                "labels": {
                    "background": 0,
                    "whole tumor": [1, 2, 3],
                    "tumor core": [2, 3],
                    "enhancing tumor": [3],
                },
            }
        )
    )
    dataset = find_cases(nnunet)
    assert dataset.layout == "nnunet" and dataset.label_map == {0: 0, 1: 2, 2: 1, 3: 3}
    case = load_case(dataset.cases[0], dataset.label_map)
    assert np.array_equal(case.image[3], modalities["flair"])
    (nnunet / "imagesTr" / "BraTS2021_00000_0002.nii.gz").unlink()
    with pytest.raises(InputError, match="missing BraTS2021_00000_0002"):
        find_cases(nnunet)


def test_split_is_seeded_recorded_and_checked(tmp_path: Path) -> None:
    ids = [f"c{i:02d}" for i in range(20)]
    split = make_split(ids, 0.2, seed=5)
    assert split == make_split(list(reversed(ids)), 0.2, seed=5)
    assert len(split.val) == 4 and sorted(split.train + split.val) == ids
    assert make_split(ids, 0.2, seed=6).val != split.val
    assert make_split(ids[:2], 0.01, seed=0).val  # at least one validation case
    path = tmp_path / "split.json"
    path.write_text(json.dumps({"train": ["c00", "c01"], "val": ["c02"], "test": ["c03"]}))
    read = read_split(path, ids)
    assert (read.train, read.val, read.extra) == (("c00", "c01"), ("c02",), {"test": ["c03"]})
    path.write_text(json.dumps({"train": ["c00", "zz"], "val": []}))
    with pytest.raises(InputError, match="zz"):
        read_split(path, ids)
    path.write_text(json.dumps({"train": ["c00"], "val": ["c00"]}))
    with pytest.raises(InputError, match="both train and val"):
        read_split(path, ids)


def test_samples_depend_only_on_seed_epoch_and_index() -> None:
    dataset = find_cases(BRATS)
    cases = dataset.cases[:3]
    first = TrainingSamples(cases, dataset.label_map, (16, 16, 16), seed=1, cache_mb=100)
    second = TrainingSamples(cases, dataset.label_map, (16, 16, 16), seed=1, cache_mb=0)
    _ = [first[(0, i)] for i in range(4)]  # used transforms must not carry state over
    for key in [(1, 0), (1, 5), (3, 2)]:
        a, b = first[key], second[key]
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["label"], b["label"])
        assert a["image"].shape == (4, 16, 16, 16) and a["label"].shape == (1, 16, 16, 16)
    assert not torch.equal(first[(1, 0)]["image"], first[(1, 1)]["image"])
    # Each block of len(cases) samples visits every case once.
    assert {first.case_for(2, i).case_id for i in range(3)} == {c.case_id for c in cases}

    whole = list(SampleBatches(1, 3, 2, 4))
    shards = [list(SampleBatches(1, 3, 2, 4, rank=r, world=2)) for r in range(2)]
    assert len(whole) == 4 and whole[0] == [(1, 0), (1, 1), (1, 2), (1, 3)]
    assert [a + b for a, b in zip(*shards, strict=True)] == whole
    with pytest.raises(CalibkitError, match="not divisible"):
        SampleBatches(0, 1, 1, 3, world=2)


# --------------------------------------------------------------------------- training


def test_train_predict_evaluate_on_sample_data(tmp_path: Path) -> None:
    from calibkit.evaluate import EvaluationOptions, evaluate_folders
    from calibkit.io.volumes import read_prediction

    data = tiny_data(tmp_path, range(6))
    run_dir = tmp_path / "run"
    options = tmp_path / "options.yaml"
    options.write_text("n_bins: 10\nepochs: 5\niters_per_epoch: 2\n")
    code, stdout, stderr = run(
        "train", "--data", data, "--loss", "dsc+ace", "--out", run_dir, "--preset", "cpu-small",
        "--config", options, "--epochs", 2, "--patch-size", "32,32,32", "--val-every", 1,
        "--val-fraction", 0.34, "--threads", 1,
    )  # fmt: skip
    assert code == 0, stderr
    assert "epoch 2/2" in stdout and "best.pt from epoch" in stdout
    assert sorted(p.name for p in run_dir.iterdir()) == [
        "best.pt", "config.input.yaml", "config.toml", "last.pt", "metrics.csv", "split.json"
    ]  # fmt: skip
    saved = load_config_file(run_dir / "config.toml")
    assert (saved["n_bins"], saved["epochs"], saved["iters_per_epoch"]) == (10, 2, 2)
    split = json.loads((run_dir / "split.json").read_text())
    assert len(split["val"]) == 2 and len(split["train"]) == 4
    rows = read_rows(run_dir / "metrics.csv")
    assert [row["epoch"] for row in rows] == ["1", "2"]
    for column in ("train_loss", "train_dsc", "train_ace", "val_dice_ET", "val_ace_mean"):
        assert np.isfinite(float(rows[-1][column]))
    loss = float(rows[0]["train_loss"])
    assert loss == pytest.approx(
        0.5 * float(rows[0]["train_dsc"]) + 0.5 * float(rows[0]["train_ace"])
    )
    last = torch.load(run_dir / "last.pt", weights_only=True)
    assert last["epoch"] == 2 and last["config"]["patch_size"] == [32, 32, 32]
    assert {"python", "numpy", "torch"} <= set(last["rng"]) and last["optimizer"]["state"]
    best_epoch = next(int(row["epoch"]) for row in reversed(rows) if row["best"] == "1")
    best = torch.load(run_dir / "best.pt", weights_only=True)
    assert best["epoch"] == best_epoch

    # predict the validation cases with best.pt; float32 storage keeps the exact values
    val_data = tmp_path / "val"
    val_data.mkdir()
    for case in split["val"]:
        (val_data / case).symlink_to(BRATS / case, target_is_directory=True)
    preds = tmp_path / "preds"
    code, stdout, stderr = run(
        "predict", "--checkpoint", run_dir / "best.pt", "--data", val_data, "--out", preds,
        "--storage", "float32", "--device", "cpu",
    )  # fmt: skip
    assert code == 0, stderr
    written = sorted(p.name for p in preds.glob("*_pred.nii.gz"))
    assert written == [f"{case}_pred.nii.gz" for case in split["val"]]
    volume = read_prediction(preds / written[0])
    reference = nib.load(BRATS / split["val"][0] / f"{split['val'][0]}_t1.nii.gz")
    assert volume.array.shape == (4, 64, 64, 64) and volume.affine is not None
    np.testing.assert_allclose(volume.affine, reference.affine)  # type: ignore[attr-defined]
    np.testing.assert_allclose(volume.array.sum(axis=0), 1.0, atol=1e-5)

    # The numbers logged at the best epoch are calibkit evaluate's on these files.
    evaluation = evaluate_folders(preds, val_data, EvaluationOptions(n_bins=10, preset="brats"))
    summary = evaluation.summary.set_index(["class", "metric"])["mean"]
    best_row = rows[best_epoch - 1]
    for metric in ("dice", "ace", "ece", "mce"):
        for region in ("ET", "TC", "WT", "mean"):
            logged = float(best_row[f"val_{metric}_{region}"])
            assert summary[region, metric] == pytest.approx(logged, abs=1e-6, nan_ok=True)


def test_resume_continues_exactly(tmp_path: Path) -> None:
    from calibkit.train.loop import train_from_options

    data = tiny_data(tmp_path, range(4))
    options = {**TINY, "data": str(data), "loss": "dsc+soft-ace", "val_every": 2}
    full = train_from_options({**options, "out": str(tmp_path / "full"), "epochs": 3})
    assert (full.start_epoch, full.epochs_done) == (0, 3)
    stopped = tmp_path / "stopped"
    train_from_options({**options, "out": str(stopped), "epochs": 1})
    with pytest.raises(CalibkitError, match="cannot change loss"):
        train_from_options({"loss": "dsc"}, resume=stopped)
    resumed = train_from_options({"epochs": 3}, resume=stopped)
    assert (resumed.start_epoch, resumed.epochs_done) == (1, 3)

    a, b = weights(tmp_path / "full" / "last.pt"), weights(stopped / "last.pt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    state_a = torch.load(tmp_path / "full" / "last.pt", weights_only=True)["optimizer"]["state"]
    state_b = torch.load(stopped / "last.pt", weights_only=True)["optimizer"]["state"]
    assert all(torch.equal(state_a[i]["exp_avg_sq"], state_b[i]["exp_avg_sq"]) for i in state_a)
    rows_a, rows_b = (
        read_rows(tmp_path / "full" / "metrics.csv"),
        read_rows(stopped / "metrics.csv"),
    )
    assert len(rows_b) == 3
    for row_a, row_b in zip(rows_a, rows_b, strict=True):
        assert row_a["train_loss"] == row_b["train_loss"]
        assert row_a["train_soft_ace"] == row_b["train_soft_ace"]
    assert rows_a[2]["val_ace_mean"] == rows_b[2]["val_ace_mean"]


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_weights(tmp_path: Path) -> None:
    from calibkit.train.loop import train_from_options

    data = tiny_data(tmp_path, range(4))
    killed = tmp_path / "killed"
    script = tmp_path / "calibkit_cli.py"
    script.write_text(
        "import sys\nimport calibkit.cli.train\nfrom calibkit.cli.app import app\n"
        "app(sys.argv[1:], prog_name='calibkit')\n"
    )
    args = [
        sys.executable, script, "train", "--data", data, "--loss", "dsc+ace", "--out", killed,
        "--epochs", 1000, "--iters-per-epoch", 2, "--batch-size", 2, "--patch-size", "16,16,16",
        "--threads", 1, "--workers", 0, "--device", "cpu", "--val-every", 1000,
        "--val-fraction", 0.25, "--quiet",
    ]  # fmt: skip
    process = subprocess.Popen([str(a) for a in args], cwd=REPO, env=_env())
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and process.poll() is None:
            rows = read_rows(killed / "metrics.csv") if (killed / "metrics.csv").exists() else []
            if len(rows) >= 2:
                break
            time.sleep(0.05)
        assert process.poll() is None, "the run ended before it could be killed"
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    done = torch.load(killed / "last.pt", weights_only=True)["epoch"]
    assert done >= 1  # metrics.csv may already hold the row of an epoch not checkpointed
    target = done + 2
    train_from_options({"epochs": target}, resume=killed)
    reference = tmp_path / "reference"
    train_from_options(
        {**TINY, "data": str(data), "loss": "dsc+ace", "out": str(reference), "epochs": target,
         "val_every": 1000, "workers": 0, "device": "cpu"}
    )  # fmt: skip
    a, b = weights(killed / "last.pt"), weights(reference / "last.pt")
    ra, rb = read_rows(killed / "metrics.csv"), read_rows(reference / "metrics.csv")
    losses = [(x["train_loss"], y["train_loss"]) for x, y in zip(ra, rb, strict=True)]
    assert all(torch.equal(a[k], b[k]) for k in a), (done, losses)
    assert len(read_rows(killed / "metrics.csv")) == target


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = "1"
    return env


@pytest.mark.slow
def test_two_gloo_processes_write_one_run(tmp_path: Path) -> None:
    from calibkit.train.loop import train_from_options

    data = tiny_data(tmp_path, range(5))
    script = tmp_path / "calibkit_cli.py"
    script.write_text(
        "import sys\nimport calibkit.cli.train\nfrom calibkit.cli.app import app\n"
        "app(sys.argv[1:], prog_name='calibkit')\n"
    )
    ddp = tmp_path / "ddp"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        script, "train", "--data", data, "--loss", "dsc+ace", "--out", ddp, "--epochs", 2,
        "--iters-per-epoch", 1, "--batch-size", 4, "--patch-size", "16,16,16", "--threads", 1,
        "--workers", 0, "--device", "cpu", "--val-fraction", 0.4,
    ]  # fmt: skip
    env = {**_env(), "MASTER_ADDR": "127.0.0.1", "GLOO_SOCKET_IFNAME": "lo"}
    result = subprocess.run(
        [str(c) for c in command], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(p.name for p in ddp.iterdir()) == [
        "best.pt", "config.toml", "last.pt", "metrics.csv", "split.json"
    ]  # fmt: skip
    assert result.stdout.count("epoch 2/2") == 1  # one writer of the log too
    state = torch.load(ddp / "last.pt", weights_only=True)
    assert state["world_size"] == 2 and len(read_rows(ddp / "metrics.csv")) == 2

    # Two processes with 2 patches each = one process with 4: same samples, same gradients.
    single = tmp_path / "single"
    train_from_options(
        {**TINY, "data": str(data), "loss": "dsc+ace", "out": str(single), "epochs": 2,
         "iters_per_epoch": 1, "batch_size": 4, "workers": 0, "device": "cpu",
         "val_fraction": 0.4}
    )  # fmt: skip
    a, b = weights(ddp / "last.pt"), weights(single / "last.pt")
    from calibkit.train.model import build_model

    torch.manual_seed(0)
    start = build_model().state_dict()
    moved = sum(float(((a[k] - start[k]) ** 2).sum()) for k in a) ** 0.5
    apart = sum(float(((a[k] - b[k]) ** 2).sum()) for k in a) ** 0.5
    # Not bit-equal: the gradient of 4 patches is summed in another order than the
    # average of two gradients of 2, and Adam's first update, lr * g / (|g| + 1e-8) per
    # weight, turns rounding noise into up to lr wherever g is tiny; the gap then grows
    # from step to step (no bound is derivable for that growth). What is asserted is a
    # separation: measured apart / moved = 4.2e-4 after these 2 steps (one step per
    # epoch keeps the growth small: 7e-3 after 4 steps), while no gradient all-reduce,
    # or both processes training on the same patches, gives 0.99 (tried). 0.05 sits
    # 100x above the noise and 20x below those bugs.
    assert moved > 0.1 and apart < 0.05 * moved, (moved, apart)

    # Epoch 1 is one step from the same seeded weights on the same 4 patches, so its
    # train_loss differs only where reductions are reassociated. Each image's forward
    # pass and its per-(image, class) Dice and ACE values do not depend on the other
    # images of the batch (batch is the outer loop of the convolutions, instance norm
    # and both losses; both runs use one thread); what changes is how those B*C = 16 values in
    # [0, 1] are averaged: a float32 mean of 16 in one process, two float32 means of 8
    # averaged in float64 with two. A float32 sum of k terms >= 0 is off by at most
    # (k - 1) u times their sum (u = 2**-24), plus u for the division: (15 + 1) + (7 + 1)
    # = 24 u relative per term, + 1 u for adding 0.5 * dsc and 0.5 * ace: < 32 u.
    # (Measured: equal. Both processes on the same 2 patches: 1.4e-2 relative. Before,
    # with 2 steps per epoch, the second step's weights differed: 1.0e-6, over the
    # default rel=1e-6.) A missing all-reduce does not show here (same first step):
    # the weights above catch it.
    rows_ddp, rows_single = read_rows(ddp / "metrics.csv"), read_rows(single / "metrics.csv")
    first_step = float(rows_single[0]["train_loss"])
    assert float(rows_ddp[0]["train_loss"]) == pytest.approx(first_step, rel=32 * 2.0**-24)
    # Validation after 2 steps, on whole volumes thresholded at p >= 0.5: weights apart
    # by the noise above flip a few voxels; each flip moves one (case, region) Dice by
    # at most 2 / (its predicted + true voxels). Measured: 5.6e-7 apart; a wrong
    # validation shard (rank 0's case on both processes) moves it by 8.2e-3 (tried).
    assert float(rows_ddp[1]["val_dice_mean"]) == pytest.approx(
        float(rows_single[1]["val_dice_mean"]), abs=1e-3
    )


def test_predict_plain_state_dict_and_regions(tmp_path: Path) -> None:
    from monai.inferers.utils import sliding_window_inference
    from monai.networks.nets.unet import UNet

    from calibkit.io.volumes import read_prediction
    from calibkit.train.model import PAPER_UNET

    torch.manual_seed(0)
    model = UNet(**PAPER_UNET).eval()
    checkpoint = tmp_path / "unet.pt"
    torch.save(
        {"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, checkpoint
    )
    data = tiny_data(tmp_path, range(1))
    out = tmp_path / "regions"
    code, _, stderr = run(
        "predict", "--checkpoint", checkpoint, "--data", data, "--out", out, "--regions",
        "--patch-size", "64,64,64", "--storage", "float32", "--save-logits", "--quiet",
    )  # fmt: skip
    assert code == 0, stderr
    regions = read_prediction(out / "BraTS2021_S000_pred.nii.gz").array
    logits = read_prediction(tmp_path / "regions_logits" / "BraTS2021_S000_pred.nii.gz").array

    # Reference: MONAI directly on the normalised image (non-zero voxels, per channel).
    image = np.stack(
        [
            nib.load(BRATS / "BraTS2021_S000" / f"BraTS2021_S000_{m}.nii.gz").get_fdata()  # type: ignore[attr-defined]
            for m in ("t1", "t1ce", "t2", "flair")
        ]
    ).astype(np.float32)
    for channel in image:
        inside = channel != 0
        channel[inside] = (channel[inside] - channel[inside].mean()) / channel[inside].std()
    with torch.no_grad():
        expected = sliding_window_inference(torch.from_numpy(image)[None], (64, 64, 64), 1, model)
    expected_logits = expected[0].numpy()  # type: ignore[index]
    np.testing.assert_allclose(logits, expected_logits, atol=1e-4)
    p = torch.softmax(torch.from_numpy(expected_logits), 0).numpy()
    np.testing.assert_allclose(regions[0], p[3], atol=1e-5)
    np.testing.assert_allclose(regions[1], p[1] + p[3], atol=1e-5)
    np.testing.assert_allclose(regions[2], np.minimum(p[1] + p[2] + p[3], 1), atol=1e-5)

    wrong = tmp_path / "wrong.pt"
    torch.save(UNet(3, 4, 3, (8, 16), (2,)).state_dict(), wrong)
    code, _, stderr = run("predict", "--checkpoint", wrong, "--data", data, "--out", tmp_path / "w")
    assert_user_error(code, stderr, "wrong.pt", "do not fit the paper's UNet")


# --------------------------------------------------------------------------- bad inputs


def test_bad_inputs_are_one_line_errors(tmp_path: Path) -> None:
    data = tiny_data(tmp_path, range(2))
    out = tmp_path / "run"
    base = ["train", "--data", data, "--out", out, "--preset", "cpu-small", "--threads", 1]

    code, _, stderr = run(*base, "--loss", "dsc+acee")
    assert_user_error(code, stderr, "unknown term 'acee'")
    assert not out.exists()  # nothing written for a bad option
    code, _, stderr = run(*base[:-4], "--preset", "gpu-huge")
    assert_user_error(code, stderr, "unknown preset 'gpu-huge'", "cpu-small")
    (tmp_path / "empty").mkdir()
    code, _, stderr = run("train", "--data", tmp_path / "empty", "--out", out)
    assert_user_error(code, stderr, "no cases found")
    broken = tmp_path / "broken"
    shutil.copytree(BRATS / "BraTS2021_S002", broken / "BraTS2021_S002")
    (broken / "BraTS2021_S002" / "BraTS2021_S002_t2.nii.gz").unlink()
    code, _, stderr = run("train", "--data", broken, "--out", out, "--loss", "dsc")
    assert_user_error(code, stderr, "BraTS2021_S002_t2.nii.gz")
    code, _, stderr = run("train", "--data", data, "--loss", "dsc")
    assert_user_error(code, stderr, "--out")
    code, _, stderr = run("train", "--resume", tmp_path / "nothing")
    assert_user_error(code, stderr, "no run to resume")
    code, _, stderr = run(*base, "--config", tmp_path / "missing.yaml")
    assert_user_error(code, stderr, "missing.yaml", "not found")
    code, _, stderr = run(
        "predict", "--checkpoint", tmp_path / "none.pt", "--data", data, "--out", tmp_path / "p"
    )
    assert_user_error(code, stderr, "none.pt", "not found")
    code, _, stderr = run(
        "predict", "--checkpoint", tmp_path / "none.pt", "--data", data, "--out", data / "preds"
    )
    assert_user_error(code, stderr, "refusing to write predictions into the data folder")


def test_new_run_refuses_a_folder_with_a_run(tmp_path: Path) -> None:
    from calibkit.train.loop import train_from_options

    data = tiny_data(tmp_path, range(2))
    options = {**TINY, "data": str(data), "out": str(tmp_path / "run"), "epochs": 1}
    options["loss"] = "ce+ace"
    result = train_from_options(options)
    assert result.best_epoch == 1 and np.isfinite(result.best_dice)
    assert np.isfinite(result.seconds_per_iteration)
    with pytest.raises(CalibkitError, match="already holds a run"):
        train_from_options(options)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_amp_train_and_predict(tmp_path: Path) -> None:
    data = tiny_data(tmp_path, range(3))
    run_dir = tmp_path / "run"
    code, _, stderr = run(
        "train", "--data", data, "--loss", "dsc+ace", "--out", run_dir, "--preset", "cpu-small",
        "--device", "cuda", "--amp", "--epochs", 1, "--iters-per-epoch", 2,
    )  # fmt: skip
    assert code == 0, stderr
    code, _, stderr = run(
        "predict", "--checkpoint", run_dir / "last.pt", "--data", data, "--out",
        tmp_path / "preds", "--device", "cuda", "--amp",
    )  # fmt: skip
    assert code == 0, stderr
    assert len(list((tmp_path / "preds").glob("*_pred.nii.gz"))) == 3
