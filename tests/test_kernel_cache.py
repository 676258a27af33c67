"""The compiled kernels compile once per install: where they are cached, and what is compiled.

Nothing here times anything (benchmarks/bench_first_use.py does): the tests check
where numba's cache goes when the package folder is or is not writable, that a
second process loads the kernels from it, and that ``calibkit prebuild`` compiles
every version the wrappers can ask for.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import threading
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, run_cli

numba = pytest.importorskip("numba")

from calibkit import _kernel_cache  # noqa: E402

UNWRITABLE_MESSAGE = "a file where the folder should be: not writable, even for root"


def blocked(tmp_path: Path, name: str) -> Path:
    """A folder path that cannot be made: its parent is a file (root cannot either)."""
    (tmp_path / name).write_text(UNWRITABLE_MESSAGE)
    return tmp_path / name / "__pycache__"


def test_numba_keeps_its_own_place_where_it_works(tmp_path: Path) -> None:
    fallback = tmp_path / "user"
    assert _kernel_cache.choose_cache_dir(None, tmp_path / "pkg", [fallback]) is None
    assert _kernel_cache.choose_cache_dir("/set/by/user", blocked(tmp_path, "a"), []) is None
    assert not fallback.exists()


def test_read_only_package_caches_in_the_first_writable_fallback(tmp_path: Path) -> None:
    package = blocked(tmp_path, "pkg")
    first, second = blocked(tmp_path, "home") / "calibkit", tmp_path / "temp" / "calibkit"
    assert _kernel_cache.choose_cache_dir(None, package, [first, second]) == second
    with pytest.raises(LookupError):
        _kernel_cache.choose_cache_dir(None, package, [first])


def test_user_cache_follows_xdg_and_the_kernel_source(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = tmp_path / "_kernels.py"
    source.write_text("a = 1\n")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    first = _kernel_cache.user_cache_dirs(source, "0.60.0")
    assert first[0].parent == tmp_path / "xdg" / "calibkit"
    assert first[-1].parent.parent == Path(tempfile.gettempdir())
    source.write_text("a = 2\n")  # an upgrade: a new folder, seeded from the new package
    assert _kernel_cache.user_cache_dirs(source, "0.60.0")[0] != first[0]
    assert _kernel_cache.user_cache_dirs(source, "0.61.0")[0] != first[0]


def test_seed_copies_prebuilt_kernels_only_into_a_cache_without_them(tmp_path: Path) -> None:
    prebuilt, cache = tmp_path / "pkg" / "__pycache__", tmp_path / "user"
    prebuilt.mkdir(parents=True)
    for name in ("_kernels.f-1.py311.nbi", "_kernels.f-1.py311.1.nbc", "other.g-2.py311.nbi"):
        (prebuilt / name).write_bytes(name.encode())
    assert _kernel_cache.seed(prebuilt, cache, "_kernels") == 2
    assert sorted(path.name for path in cache.iterdir()) == [
        "_kernels.f-1.py311.1.nbc",
        "_kernels.f-1.py311.nbi",
    ]
    (cache / "_kernels.f-1.py311.nbi").write_bytes(b"numba's own entries")
    assert _kernel_cache.seed(prebuilt, cache, "_kernels") == 0  # never over numba's files
    assert (cache / "_kernels.f-1.py311.nbi").read_bytes() == b"numba's own entries"


# A fresh process that bins a little and prints where its kernels came from. The
# first argument says which folders report as writable (all, none, or all but the
# package's cache), as a read-only install would.
PROBE = """
import sys
from pathlib import Path
from calibkit import _kernel_cache
writable = _kernel_cache.writable
if sys.argv[1] == "none":
    _kernel_cache.writable = lambda folder: False
elif sys.argv[1] == "read-only package":
    _kernel_cache.writable = lambda folder: folder.name != "__pycache__" and writable(folder)
import numpy as np
from calibkit import _kernels
assert _kernels.values_present(np.array([0, 2], np.uint8), 3).tolist() == [True, False, True]
stats = _kernels._values_present.stats
print(stats.cache_path, sum(stats.cache_hits.values()), sum(stats.cache_misses.values()))
"""


@pytest.fixture
def installed(tmp_path: Path) -> Path:
    """A copy of the package without any cache, as a fresh install."""
    shutil.copytree(
        REPO / "calibkit",
        tmp_path / "site" / "calibkit",
        ignore=shutil.ignore_patterns("__pycache__", "*.nbi", "*.nbc"),
    )
    (tmp_path / "home").mkdir()
    return tmp_path


def probe(root: Path, writable: str) -> tuple[str, int, int]:
    """(cache folder, versions loaded, versions compiled) of one fresh process."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("NUMBA_CACHE_DIR", "XDG_CACHE_HOME", "PYTHONPATH")
    }
    env.update(HOME=str(root / "home"), PYTHONPATH=str(root / "site"))
    done = subprocess.run(
        [sys.executable, "-c", PROBE, writable],
        capture_output=True,
        text=True,
        env=env,
        cwd=root,
        check=True,
    )
    where, loaded, compiled = done.stdout.split()
    return where, int(loaded), int(compiled)


def test_second_process_loads_the_kernel_from_the_package_cache(installed: Path) -> None:
    package_cache = str(installed / "site" / "calibkit" / "__pycache__")
    assert probe(installed, "all") == (package_cache, 0, 1)
    assert probe(installed, "all") == (package_cache, 1, 0)


def test_read_only_install_reads_kernels_prebuilt_into_the_package(installed: Path) -> None:
    """Compiled once by whoever installed it; a user who cannot write there loads them."""
    probe(installed, "all")  # the install step (calibkit prebuild), package writable
    where, loaded, compiled = probe(installed, "read-only package")
    assert Path(where).is_relative_to(installed / "home" / ".cache" / "calibkit")
    assert (loaded, compiled) == (1, 0)


def test_read_only_install_without_prebuild_compiles_once_per_user(installed: Path) -> None:
    where, loaded, compiled = probe(installed, "read-only package")
    assert Path(where).is_relative_to(installed / "home" / ".cache" / "calibkit")
    assert (loaded, compiled) == (0, 1)
    assert probe(installed, "read-only package") == (where, 1, 0)


def test_nothing_writable_still_bins_without_a_cache(installed: Path) -> None:
    """numba itself fails at import there ('no locator available'); calibkit compiles."""
    assert probe(installed, "none") == ("None", 0, 1)
    assert probe(installed, "none") == ("None", 0, 1)  # and again: nothing was kept


def test_kernel_threads_are_daemons_and_fork_safe() -> None:
    """The CLI ends without waiting for helper threads; a forked child makes its own."""
    from calibkit import _kernels

    rng = np.random.default_rng(0)
    p = rng.random((3, 3 * _kernels.KERNEL_CHUNK), dtype=np.float32)
    y = p > 0.5
    threads = numba.get_num_threads()
    numba.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))
    try:
        expected = _kernels.bin_rows(p, y, 20)
        helpers = [t for t in threading.enumerate() if t.name.startswith("calibkit-kernel")]
        assert all(t.daemon for t in helpers)
        with ProcessPoolExecutor(1, mp_context=get_context("fork")) as pool:
            forked = pool.submit(_kernels.bin_rows, p, y, 20).result(timeout=120)
    finally:
        numba.set_num_threads(threads)
    for one, other in zip(expected, forked, strict=True):
        np.testing.assert_array_equal(one.count, other.count)
        np.testing.assert_array_equal(one.sum_p, other.sum_p)


def test_rows_in_any_order_of_memory_bin_as_their_copies(rng: np.random.Generator) -> None:
    """One flat view serves rows at any distance, reversed, repeated or read-only."""
    from calibkit import _kernels

    wide = rng.random((3, 150_000), dtype=np.float32)
    labels = (wide * 5).astype(np.int16)
    read_only = wide.copy()
    read_only.flags.writeable = False
    layouts = {
        "rows of a wider array": (wide[:, :140_000], labels[:, :140_000]),
        "reversed rows": (wide[::-1], labels[::-1]),
        "one row repeated": (np.broadcast_to(wide[1], (3, 150_000)), labels),
        "read-only": (read_only, labels),
        "one row": (wide[2:], labels[2:]),
        "no voxels": (wide[:, :0], labels[:, :0]),
    }
    for name, (p, codes) in layouts.items():
        copies = (np.ascontiguousarray(p), np.ascontiguousarray(codes))
        for options in ({"target_labels": (1, 3), "threshold": 0.5}, {}):
            targets = codes if options else codes > 2
            copied_targets = copies[1] if options else copies[1] > 2
            got = _kernels.bin_rows(p, targets, 20, **options)
            expected = _kernels.bin_rows(copies[0], copied_targets, 20, **options)
            for one, other in zip(got, expected, strict=True):
                np.testing.assert_array_equal(one.count, other.count, err_msg=name)
                np.testing.assert_array_equal(one.sum_p, other.sum_p, err_msg=name)
                assert (one.predicted, one.intersection) == (
                    other.predicted,
                    other.intersection,
                ), name


@pytest.mark.slow
def test_prebuild_compiles_every_version_the_wrappers_ask_for(rng: np.random.Generator) -> None:
    """After ``calibkit prebuild``, no layout, write flag or dtype compiles anything new."""
    from calibkit import _kernels
    from calibkit.binning import bin_statistics

    code, out, err = run_cli("prebuild")
    assert code == 0, err
    assert "cache:" in out
    prebuilt = {kernel: set(kernel.signatures) for kernel in _kernels._CACHED}

    channel_last = np.asfortranarray(rng.random((10, 12, 14, 3), dtype=np.float32))
    read_only = np.ascontiguousarray(np.moveaxis(channel_last, -1, 0))
    read_only.flags.writeable = False
    layouts = {
        "C": np.ascontiguousarray(np.moveaxis(channel_last, -1, 0)),
        "F, channel-first view": np.moveaxis(channel_last, -1, 0),
        "reversed classes": np.ascontiguousarray(np.moveaxis(channel_last, -1, 0))[::-1],
        "one class repeated": np.broadcast_to(channel_last[..., :1], (10, 12, 14, 3)).transpose(
            3, 0, 1, 2
        ),
        "read-only": read_only,
    }
    for name, p in layouts.items():
        mask = p > 0.5
        reference = bin_statistics(p, mask, 20, kernel="numpy")
        for y in (mask, mask.astype(np.int8), mask.astype(np.int64), mask.astype(np.float64)):
            compiled = bin_statistics(p, y, 20, kernel="numba")
            np.testing.assert_array_equal(compiled.count, reference.count, err_msg=name)
            np.testing.assert_allclose(compiled.sum_p, reference.sum_p, rtol=1e-12, err_msg=name)
    flat = layouts["C"][0].ravel()
    for dtype in (np.uint8, np.int16, np.int32, np.int64, np.uint16):
        labels = (flat * 4).astype(dtype)
        _kernels.bin_flat(flat, labels, 20, target_labels=(1, 2), threshold=0.5)
        _kernels.values_present(labels, 4)
    _kernels.bin_rows(flat[:0][None], flat[:0][None] > 0.5, 20)  # no voxels: nothing to run
    _kernels.values_present(flat[:0].astype(np.int8), 4)
    assert {kernel: set(kernel.signatures) for kernel in _kernels._CACHED} == prebuilt


SOFT_PROBE = """
import sys
from calibkit import _kernel_cache
writable = _kernel_cache.writable
_kernel_cache.writable = lambda folder: folder.name != "__pycache__" and writable(folder)
from calibkit.losses import _soft_kernel
_soft_kernel.compile_all()
kernels = list(_soft_kernel._SIGNATURES)
print(
    kernels[0].stats.cache_path,
    sum(sum(k.stats.cache_hits.values()) for k in kernels),
    sum(sum(k.stats.cache_misses.values()) for k in kernels),
)
"""


@pytest.mark.slow
def test_soft_loss_kernels_cache_on_a_read_only_install(installed: Path) -> None:
    """The soft loss's kernels use the same cache places: compiled once, then loaded."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("NUMBA_CACHE_DIR", "XDG_CACHE_HOME", "PYTHONPATH")
    }
    env.update(HOME=str(installed / "home"), PYTHONPATH=str(installed / "site"))
    runs = [
        subprocess.run(
            [sys.executable, "-c", SOFT_PROBE],
            capture_output=True,
            text=True,
            env=env,
            cwd=installed,
            check=True,
        ).stdout.split()
        for _ in range(2)
    ]
    versions = 5  # float32 and float64 of two kernels, and the block adder
    assert runs[0][1:] == ["0", str(versions)] and runs[1][1:] == [str(versions), "0"]
    assert Path(runs[0][0]).is_relative_to(installed / "home" / ".cache" / "calibkit")
