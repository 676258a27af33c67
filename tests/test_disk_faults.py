"""Disk faults: a full disk, a file-size limit, a read-only folder.

Whatever fails, no half-written file appears under a final name, no temporary
file stays behind, an earlier complete result is left as it was, the error is one
line naming the file, and ``--resume`` finishes an evaluation once there is space
again, to the same bytes as an uninterrupted run.

The faults are genuine: a small tmpfs filled with ``posix_fallocate`` gives ENOSPC,
remounting it read-only gives EROFS (the tests run as root, which permission bits
do not stop), and ``RLIMIT_FSIZE`` in a child process gives EFBIG. Where a test
must choose the moment the disk fills, it wraps a calibkit function to fill the
disk just before it; the write that then fails is the real one. Mounting needs
root (CAP_SYS_ADMIN): without it the tmpfs tests skip, and the RLIMIT_FSIZE test,
which needs no privilege, still covers a failing write of ``calibkit evaluate``.
"""

from __future__ import annotations

import errno
import os
import resource
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
from conftest import REPO, SAMPLE_DATA, assert_user_error
from conftest import run_cli as run

import calibkit.calibrate
import calibkit.evaluate
import calibkit.io.writing
import calibkit.plots.files
from calibkit.errors import WriteError
from calibkit.io.atomic import STAGING_PREFIX, staged_folder
from calibkit.io.checkpoint import LOCK_FILE, PARTIAL_DIR, CaseStore

N_CASES = 12
SHAPE = (10, 11, 12)
DISK_SIZE = "8m"  # holds two result folders with figures (about 0.4 MB each)
PLOTS = ("--plots", "--plot-worst", "1")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Twelve small 3-class softmax cases and their labels, on the ordinary disk."""
    root = tmp_path_factory.mktemp("disk_faults")
    preds, labels = root / "preds", root / "labels"
    preds.mkdir()
    labels.mkdir()
    rng = np.random.default_rng(11)
    for i in range(N_CASES):
        logits = rng.normal(size=(*SHAPE, 3)).astype(np.float32) * 3
        probabilities = np.exp(logits) / np.exp(logits).sum(axis=-1, keepdims=True)
        nib.save(nib.Nifti1Image(probabilities, np.eye(4)), preds / f"case{i:02d}_pred.nii.gz")
        label = rng.integers(0, 3, SHAPE).astype(np.uint8)
        nib.save(nib.Nifti1Image(label, np.eye(4)), labels / f"case{i:02d}_seg.nii.gz")
    return preds, labels


class SmallDisk:
    """A mounted tmpfs whose free space the test controls.

    Filler files lie at its root; the outputs under test go into sub-folders.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.fillers: list[Path] = []

    def free(self) -> int:
        stats = os.statvfs(self.root)
        return stats.f_bavail * stats.f_frsize

    def fill(self, leave: int = 0) -> None:
        """Allocate all free space but ``leave`` bytes (a multiple of the 4 KiB page)."""
        filler = self.root / f"filler{len(self.fillers)}"
        descriptor = os.open(filler, os.O_CREAT | os.O_WRONLY, 0o600)
        try:
            if self.free() > leave:
                os.posix_fallocate(descriptor, 0, self.free() - leave)
        finally:
            os.close(descriptor)
        self.fillers.append(filler)
        assert self.free() == leave

    def make_room(self) -> None:
        for filler in self.fillers:
            filler.unlink()
        self.fillers.clear()

    def remount(self, mode: str) -> None:
        subprocess.run(["mount", "-o", f"remount,{mode}", str(self.root)], check=True)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[SmallDisk]:
    root = tmp_path / "disk"
    root.mkdir()
    try:
        mounted = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={DISK_SIZE}", "tmpfs", str(root)],
            capture_output=True,
            text=True,
        )
    except OSError as error:  # no mount program
        mounted = subprocess.CompletedProcess([], 1, "", str(error))
    if mounted.returncode != 0:
        pytest.skip(
            f"cannot mount a tmpfs here ({mounted.stderr.strip()}): the full-disk and "
            "read-only tests need root with CAP_SYS_ADMIN (test_file_size_limit runs without)"
        )
    try:
        yield SmallDisk(root)
    finally:
        if subprocess.run(["umount", str(root)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(root)], check=True)


def contents(folder: Path) -> dict[str, bytes]:
    """Every file below ``folder`` (hidden ones too) by relative path."""
    return {
        str(path.relative_to(folder)): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def assert_no_temporaries(folder: Path) -> None:
    left = [
        path
        for path in folder.rglob("*")
        if ".tmp" in path.name or path.name.startswith(STAGING_PREFIX)
    ]
    assert left == []


def fill_before(
    disk: SmallDisk, function: Callable[..., Any], *, call: int = 1, leave: int = 0
) -> Callable[..., Any]:
    """``function``, which fills ``disk`` just before its ``call``-th call."""
    calls = 0

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == call:
            disk.fill(leave)
        return function(*args, **kwargs)

    return wrapper


def evaluate(preds: Path, labels: Path, out: Path, *args: str) -> tuple[int, str, str]:
    return run("evaluate", preds, labels, "--out", out, "--quiet", *args)


# --------------------------------------------------------------------------- evaluate


def test_evaluate_on_a_full_disk_leaves_nothing(
    dataset: tuple[Path, Path], small_disk: SmallDisk
) -> None:
    out = small_disk.root / "out"
    small_disk.fill()
    code, _, stderr = evaluate(*dataset, out)
    assert_user_error(code, stderr, f"{out / LOCK_FILE}: cannot write (no space left on device)")
    assert not out.exists()  # created for the run, removed again


def test_full_disk_mid_run_resumes_to_identical_tables(
    dataset: tuple[Path, Path],
    small_disk: SmallDisk,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    reference, out = tmp_path / "reference", small_disk.root / "out"
    assert evaluate(*dataset, reference)[0] == 0
    monkeypatch.setattr(CaseStore, "save", fill_before(small_disk, CaseStore.save, call=3))
    code, _, stderr = evaluate(*dataset, out)
    assert_user_error(
        code,
        stderr,
        f"{out / PARTIAL_DIR / 'case02.npz'}: cannot write (no space left on device)",
        "the 2 finished case(s) are kept",
        "--resume",
    )
    kept = [f"{PARTIAL_DIR}/{name}" for name in ("case00.npz", "case01.npz", "run.json")]
    assert sorted(contents(out)) == kept
    monkeypatch.undo()

    small_disk.make_room()
    code, _, stderr = evaluate(*dataset, out, "--resume")
    assert code == 0, stderr
    assert contents(out) == contents(reference)  # the four tables, byte for byte; nothing else


def test_overwrite_on_a_full_disk_keeps_the_earlier_result(
    dataset: tuple[Path, Path],
    small_disk: SmallDisk,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Same folder name: the histogram names its run after the folder.
    reference, out = tmp_path / "reference" / "out", small_disk.root / "out"
    assert evaluate(*dataset, reference, *PLOTS)[0] == 0
    assert evaluate(*dataset, out, "--n-bins", "10", *PLOTS)[0] == 0
    earlier = contents(out)

    # The tables are staged; the disk fills as the first figure is written.
    # Patched where save_evaluation_figures looks it up.
    save_figure = fill_before(small_disk, calibkit.plots.files.save_figure)
    monkeypatch.setattr(calibkit.plots.files, "save_figure", save_figure)
    code, _, stderr = evaluate(*dataset, out, "--overwrite", *PLOTS)
    histogram = out / "figures" / "reliability_histogram.png"
    assert_user_error(
        code,
        stderr,
        f"{histogram}: cannot write (no space left on device)",
        f"nothing in {out} was replaced",
        f"the {N_CASES} finished case(s) are kept",
    )
    kept = contents(out)
    assert {name: data for name, data in kept.items() if PARTIAL_DIR not in name} == earlier
    assert_no_temporaries(out)
    monkeypatch.undo()

    small_disk.make_room()
    code, _, stderr = evaluate(*dataset, out, "--overwrite", "--resume", *PLOTS)
    assert code == 0, stderr
    now = contents(out)
    assert {name: now[name] for name in contents(reference)} == contents(reference)
    assert_no_temporaries(out)
    assert not (out / PARTIAL_DIR).exists() and not (out / LOCK_FILE).exists()


def test_evaluate_into_a_read_only_folder(
    dataset: tuple[Path, Path], small_disk: SmallDisk
) -> None:
    out = small_disk.root / "out"
    assert evaluate(*dataset, out)[0] == 0
    earlier = contents(out)
    small_disk.remount("ro")
    code, _, stderr = evaluate(*dataset, out, "--overwrite")
    assert_user_error(code, stderr, f"{out}: cannot write here (read-only file system")
    code, _, stderr = evaluate(*dataset, out / "new")
    assert_user_error(code, stderr, f"{out / 'new'}: cannot write here (read-only file system")
    small_disk.remount("rw")
    assert contents(out) == earlier


def test_file_size_limit(dataset: tuple[Path, Path], tmp_path: Path) -> None:
    """RLIMIT_FSIZE (EFBIG) in a child ``python -m calibkit``: needs no privilege.

    The limit lets every per-case file (3.8 kB, a little more for a longer path)
    and the first three tables (at most 3.9 kB) through, but not ``bins.npz`` (6.0 kB
    for 12 cases, checked below): the run fails writing the tables.
    """
    reference, out = tmp_path / "reference", tmp_path / "out"
    assert evaluate(*dataset, reference)[0] == 0  # also fills numba's cache for the child
    assert evaluate(*dataset, out, "--n-bins", "10")[0] == 0
    earlier = contents(out)
    limit = 5000
    assert (reference / "bins.npz").stat().st_size > limit

    def limit_file_size() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write gets EFBIG, not a kill
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    command = [sys.executable, "-m", "calibkit", "evaluate", *map(str, dataset)]
    child = subprocess.run(
        [*command, "--out", str(out), "--overwrite", "--quiet"],
        capture_output=True,
        text=True,
        preexec_fn=limit_file_size,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
        cwd=REPO,
    )
    assert_user_error(
        child.returncode,
        child.stderr,
        f"{out / 'bins.npz'}: cannot write (file too large)",
        "ulimit -f",
        f"nothing in {out} was replaced",
    )
    kept = contents(out)
    assert {name: data for name, data in kept.items() if PARTIAL_DIR not in name} == earlier
    assert len([name for name in kept if name.endswith(".npz") and PARTIAL_DIR in name]) == N_CASES
    assert_no_temporaries(out)

    code, _, stderr = evaluate(*dataset, out, "--overwrite", "--resume")  # no limit here
    assert code == 0, stderr
    assert contents(out) == contents(reference)


# --------------------------------------------------------------------------- temperature


def test_fit_temperature_on_a_full_or_read_only_disk(
    dataset: tuple[Path, Path], small_disk: SmallDisk
) -> None:
    out = small_disk.root / "fit" / "t.json"
    fit = ("fit-temperature", *dataset, "--out", out, "--max-voxels", "2000", "--quiet")
    assert run(*fit)[0] == 0
    earlier = contents(out.parent)

    small_disk.fill()
    code, _, stderr = run(*fit, "--overwrite", "--seed", "1")
    assert_user_error(
        code, stderr, f"{out}: cannot write (no space left on device)", "earlier file is unchanged"
    )
    assert contents(out.parent) == earlier  # no temporary file either
    small_disk.make_room()

    small_disk.remount("ro")
    code, _, stderr = run(*fit, "--overwrite")
    assert_user_error(code, stderr, f"{out}: cannot write here (read-only file system")
    small_disk.remount("rw")
    assert contents(out.parent) == earlier


def test_apply_temperature_on_a_full_disk(
    dataset: tuple[Path, Path],
    small_disk: SmallDisk,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    preds, _ = dataset
    t_json = tmp_path / "t.json"
    t_json.write_text('{"temperature": 2.0, "activation": "softmax", "n_channels": 3}')
    earlier_t = tmp_path / "earlier.json"
    earlier_t.write_text('{"temperature": 0.5, "activation": "softmax", "n_channels": 3}')
    reference, out = tmp_path / "reference", small_disk.root / "calibrated"
    apply = ("apply-temperature", preds, "--quiet")
    assert run(*apply, "--temperature", t_json, "--out", reference)[0] == 0
    assert run(*apply, "--temperature", earlier_t, "--out", out)[0] == 0
    earlier = contents(out)

    # The disk fills with one page left as the second map is written: its gzip
    # stream gets 4 KiB out before ENOSPC, a late failure inside nibabel.
    write = fill_before(small_disk, calibkit.io.writing.write_prediction, call=2, leave=4096)
    monkeypatch.setattr(calibkit.calibrate, "write_prediction", write)
    code, _, stderr = run(*apply, "--temperature", t_json, "--out", out, "--overwrite")
    assert_user_error(
        code,
        stderr,
        f"{out / 'case01_pred.nii.gz'}: cannot write (no space left on device)",
        f"1 of {N_CASES} calibrated map(s) were written before it",
    )
    now = contents(out)
    assert now["case00_pred.nii.gz"] == contents(reference)["case00_pred.nii.gz"]
    assert {name: now[name] for name in now if name != "case00_pred.nii.gz"} == {
        name: earlier[name] for name in earlier if name != "case00_pred.nii.gz"
    }
    monkeypatch.undo()

    small_disk.make_room()
    small_disk.remount("ro")
    code, _, stderr = run(*apply, "--temperature", t_json, "--out", out, "--overwrite")
    assert_user_error(code, stderr, f"{out}: cannot write here (read-only file system")
    small_disk.remount("rw")
    assert contents(out) == now


# --------------------------------------------------------------------------- predict


def test_predict_on_a_full_or_read_only_disk(small_disk: SmallDisk, tmp_path: Path) -> None:
    pytest.importorskip("monai")
    import torch
    from monai.networks.nets.unet import UNet

    from calibkit.train.model import PAPER_UNET

    torch.manual_seed(0)
    checkpoint = tmp_path / "unet.pt"
    torch.save({"state_dict": UNet(**PAPER_UNET).state_dict()}, checkpoint)
    data = tmp_path / "data"
    data.mkdir()
    case = "BraTS2021_S000"
    (data / case).symlink_to(SAMPLE_DATA / "brats" / case, target_is_directory=True)
    out = small_disk.root / "preds"
    predict = ("predict", "--checkpoint", checkpoint, "--data", data, "--out", out)
    options = ("--patch-size", "64,64,64", "--device", "cpu", "--save-logits", "--quiet")

    # One page free: the map's gzip stream fails part-way (it needs about 0.1 MB).
    small_disk.fill(leave=4096)
    code, _, stderr = run(*predict, *options)
    assert_user_error(
        code,
        stderr,
        f"{out / (case + '_pred.nii.gz')}: cannot write (no space left on device)",
        "0 of 1 case(s) were written before it",
    )
    assert contents(out) == {} and contents(out.with_name("preds_logits")) == {}
    small_disk.make_room()

    small_disk.remount("ro")
    code, _, stderr = run(*predict, "--out", small_disk.root / "other", *options)
    assert_user_error(code, stderr, "other: cannot write here (read-only file system)")
    small_disk.remount("rw")


# --------------------------------------------------------------------------- the pieces


def test_staged_folder_replaces_all_or_nothing(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("old a")
    (tmp_path / "b.txt").write_text("old b")
    with pytest.raises(WriteError) as raised, staged_folder(tmp_path) as staging:
        (staging / "a.txt").write_text("new a")
        raise WriteError(staging / "sub" / "b.txt", "cannot write (no space left on device)")
    assert raised.value.path == tmp_path / "sub" / "b.txt"  # the final name, not the staged one
    assert f"nothing in {tmp_path} was replaced" in str(raised.value)
    assert contents(tmp_path) == {"a.txt": b"old a", "b.txt": b"old b"}

    with staged_folder(tmp_path) as staging:
        (staging / "a.txt").write_text("new a")
        (staging / "sub").mkdir()
        (staging / "sub" / "c.txt").write_text("new c")
    assert contents(tmp_path) == {"a.txt": b"new a", "b.txt": b"old b", "sub/c.txt": b"new c"}


def test_an_os_error_is_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The command line's net for an OSError no writer turned into a WriteError."""

    def failing(*args: object, **kwargs: object) -> None:
        raise OSError(errno.EIO, "Input/output error", str(tmp_path / "x"))

    monkeypatch.setattr(calibkit.evaluate, "evaluate_to_folder", failing)
    code, _, stderr = run("evaluate", tmp_path, tmp_path, "--out", tmp_path / "out")
    assert_user_error(code, stderr, f"{tmp_path / 'x'}: input/output error")
    result = run("evaluate", tmp_path, tmp_path, "--out", tmp_path / "out", "--debug")
    assert result[0] == 1 and "error:" not in result[2]  # --debug: the exception itself


def test_error_line_keeps_brackets_in_paths(tmp_path: Path) -> None:
    """A path is printed as it is, not read as rich markup (which dropped ``[bold]``)."""
    blocker = tmp_path / "runs[red]" / "a[bold]file"
    blocker.parent.mkdir()
    blocker.write_text("x")
    inputs = tmp_path / "inputs"
    code, _, stderr = run("evaluate", inputs, inputs, "--out", blocker / "out")
    assert_user_error(code, stderr, f"{blocker / 'out'}: {blocker} is a file, not a folder")
