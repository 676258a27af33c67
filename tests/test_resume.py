"""Interrupted runs resume to the same tables; a lock keeps two writers apart."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from calibkit.cli import app
from calibkit.io.checkpoint import LOCK_FILE, PARTIAL_DIR, CaseStore
from calibkit.records import CaseResult

AFFINE = np.eye(4)
N_CASES = 16


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("resume")
    preds, labels = root / "preds", root / "labels"
    preds.mkdir()
    labels.mkdir()
    rng = np.random.default_rng(5)
    shape = (48, 48, 48)
    for i in range(N_CASES):
        logits = rng.normal(size=(*shape, 3)).astype(np.float32) * 4
        probs = np.exp(logits) / np.exp(logits).sum(axis=-1, keepdims=True)
        nib.save(nib.Nifti1Image(probs, AFFINE), preds / f"case{i:02d}_pred.nii.gz")
        label = rng.integers(0, 3, shape).astype(np.uint8)
        nib.save(nib.Nifti1Image(label, AFFINE), labels / f"case{i:02d}_seg.nii.gz")
    return preds, labels


def evaluate(*args: str | Path) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["evaluate", *map(str, args), "--quiet"])
    return result.exit_code, result.stderr


def test_killed_run_resumes_to_identical_tables(dataset: tuple[Path, Path], tmp_path: Path) -> None:
    preds, labels = dataset
    reference, interrupted = tmp_path / "reference", tmp_path / "interrupted"
    assert evaluate(preds, labels, "--out", reference)[0] == 0

    # The run kills itself (SIGKILL, as kill -9 would) right after storing its third
    # case: a kill at a known point, whatever the load of the machine (a watcher that
    # polls for files and then kills can be outrun by the remaining cases).
    crash_after_three = (
        "import os, signal, sys\n"
        "from calibkit.io.checkpoint import CaseStore\n"
        "save = CaseStore.save\n"
        "def save_then_die(self, result):\n"
        "    save(self, result)\n"
        "    if len(self.done_ids()) == 3:\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "CaseStore.save = save_then_die\n"
        "from calibkit.cli import main\n"
        "sys.argv[0] = 'calibkit'\n"
        "main()\n"
    )
    completed = subprocess.run(
        [
            sys.executable,
            "-c",
            crash_after_three,
            "evaluate",
            str(preds),
            str(labels),
            "--out",
            str(interrupted),
            "--quiet",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        timeout=300,
    )
    assert completed.returncode == -signal.SIGKILL
    partial = interrupted / PARTIAL_DIR
    kept = len(list(partial.glob("*.npz")))
    assert kept == 3
    assert not (interrupted / "per_image.csv").exists()

    code, stderr = evaluate(preds, labels, "--out", interrupted)
    assert code == 1 and "--resume" in stderr  # an unfinished run is not overwritten silently
    code, stderr = evaluate(preds, labels, "--out", interrupted, "--n-bins", "10", "--resume")
    assert code == 1 and "other inputs or options" in stderr
    code, stderr = evaluate(preds, labels, "--out", interrupted, "--resume")  # stale lock: dead pid
    assert code == 0, stderr
    for name in ("per_image.csv", "summary.csv", "summary.json"):
        assert (interrupted / name).read_bytes() == (reference / name).read_bytes()
    assert not partial.exists() and not (interrupted / LOCK_FILE).exists()


def test_live_lock_refuses_a_second_writer(dataset: tuple[Path, Path], tmp_path: Path) -> None:
    preds, labels = dataset
    out = tmp_path / "out"
    out.mkdir()
    (out / LOCK_FILE).write_text(f"{socket.gethostname()} {os.getpid()}\n")
    code, stderr = evaluate(preds, labels, "--out", out)
    assert code == 1 and "another calibkit process" in stderr
    assert sorted(p.name for p in out.iterdir()) == [LOCK_FILE]


def test_bad_input_leaves_no_partial_results(dataset: tuple[Path, Path], tmp_path: Path) -> None:
    preds, labels = dataset
    broken = tmp_path / "preds"
    broken.mkdir()
    for path in sorted(preds.iterdir())[:4]:
        (broken / path.name).write_bytes(path.read_bytes())
    (broken / "case03_pred.nii.gz").write_bytes(b"not a nifti")
    out = tmp_path / "out"
    code, stderr = evaluate(broken, labels, "--out", out, "--allow-missing")
    assert code == 1 and "case03_pred.nii.gz" in stderr
    assert not out.exists()


def test_resume_without_an_unfinished_run(dataset: tuple[Path, Path], tmp_path: Path) -> None:
    preds, labels = dataset
    code, stderr = evaluate(preds, labels, "--out", tmp_path / "fresh", "--resume")
    assert code == 1 and "no unfinished run" in stderr
    assert not (tmp_path / "fresh").exists()


def test_a_save_cut_short_is_recomputed_on_resume(
    dataset: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A kill or Ctrl-C in the middle of a save leaves the save's hidden, empty temporary file."""
    preds, labels = dataset
    reference, out = tmp_path / "reference", tmp_path / "out"
    assert evaluate(preds, labels, "--out", reference)[0] == 0
    saved: list[str] = []
    save = CaseStore.save

    def save_cut_short(self: CaseStore, result: CaseResult) -> None:
        if len(saved) == 2:
            (self.partial / f".{result.case_id}.1f2e3d4c.tmp.npz").touch()
            raise KeyboardInterrupt
        saved.append(result.case_id)
        save(self, result)

    monkeypatch.setattr(CaseStore, "save", save_cut_short)
    assert evaluate(preds, labels, "--out", out)[0] == 130
    monkeypatch.undo()
    code, stderr = evaluate(preds, labels, "--out", out, "--resume")
    assert code == 0, stderr
    for name in ("per_image.csv", "summary.csv", "summary.json"):
        assert (out / name).read_bytes() == (reference / name).read_bytes()
