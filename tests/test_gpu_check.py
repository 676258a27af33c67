"""benchmarks/gpu_check.py: says that nothing was measured without a GPU, and its steps run."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


def test_without_a_gpu_it_measures_nothing_and_exits_0() -> None:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # no GPU, even on a machine with one
    done = subprocess.run(
        [sys.executable, str(SCRIPT)], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "nothing was measured" in done.stdout
    assert "| all | not measured |" in done.stdout


def test_unknown_steps_are_refused() -> None:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--steps", "bins,nope"], capture_output=True, text=True
    )
    assert done.returncode == 2
    assert "unknown steps ['nope']" in done.stderr


@pytest.mark.slow
def test_its_steps_run_on_the_cpu(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The smoke test of the script (train runs in tests/test_train.py's way already)."""
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "gpu_check", module)  # its dataclass looks itself up
    monkeypatch.setattr(sys, "path", list(sys.path))  # it adds benchmarks/ to the path
    spec.loader.exec_module(module)
    # The losses-under-AMP step is left to a GPU: on the CPU (bfloat16 autocast) one
    # clean-clone CI run here found the UNet's gradients not finite, which two local
    # runs did not reproduce; a smoke test must not depend on that.
    code = module.main(["--device", "cpu", "--quick", "--steps", "bins,throughput"])
    table = capsys.readouterr().out
    assert code == 0, table
    for step in ("bins equal the CPU's", "binning throughput"):
        assert f"| {step} | ok |" in table
