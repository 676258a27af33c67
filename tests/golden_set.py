"""The golden set: every output of the commands on the sample data, recorded once.

:func:`produce` runs ``evaluate`` (with figures), ``fit-temperature``,
``apply-temperature``, ``evaluate --temperature``, ``compare``, ``summarize`` (three
formats), ``gate --junit``, the three plot commands (SVG) and ``demo`` in-process,
from the repository root with relative input paths, into one folder. Text files
(and each command's console output) are kept verbatim in ``tests/golden_outputs/``
so that a difference reads as a diff; binary files (``bins.npz``, NIfTI maps,
PNG figures) by their SHA-256 in ``manifest.json``. Figures are byte-identical only
under the same matplotlib (its renderer and bundled fonts draw them), so the
manifest names the version they were recorded with.

``tests/test_golden.py`` reproduces the set and compares every file byte for byte.
Record it again only when a change of the numbers or files is intended, and say
why in the commit::

    python tests/golden_set.py            # rewrites tests/golden_outputs/
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GOLDEN = REPO / "tests" / "golden_outputs"
TEXT_SUFFIXES = (".csv", ".json", ".md", ".tex", ".xml", ".txt", ".svg")
PREDICTIONS = "sample_data/predictions"
LABELS = "sample_data/brats"
CASE = "BraTS2021_S009"

# (name of the console-output file, command line); OUT stands for the output folder.
COMMANDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("evaluate_dsc", ("evaluate", f"{PREDICTIONS}/dsc", LABELS, "--preset", "brats",
                      "--out", "OUT/dsc", "--plots", "--plot-worst", "2")),
    ("evaluate_dsc_ace", ("evaluate", f"{PREDICTIONS}/dsc_ace", LABELS, "--preset", "brats",
                          "--out", "OUT/dsc_ace")),
    ("fit_temperature", ("fit-temperature", f"{PREDICTIONS}/dsc", LABELS, "--preset", "brats",
                         "--out", "OUT/t.json")),
    ("apply_temperature", ("apply-temperature", f"{PREDICTIONS}/dsc", "--temperature",
                           "OUT/t.json", "--out", "OUT/dsc_scaled")),
    ("evaluate_dsc_ts", ("evaluate", f"{PREDICTIONS}/dsc", LABELS, "--preset", "brats",
                         "--temperature", "OUT/t.json", "--out", "OUT/dsc_ts")),
    ("compare", ("compare", "OUT/dsc", "OUT/dsc_ace", "--names", "DSC,DSC+ACE",
                 "--out", "OUT/compare.csv")),
    ("summarize_md", ("summarize", "OUT/dsc", "OUT/dsc_ts", "OUT/dsc_ace",
                      "--names", "DSC,DSC+Ts,DSC+ACE", "--out", "OUT/summary.md")),
    ("summarize_tex", ("summarize", "OUT/dsc", "OUT/dsc_ace", "--format", "latex",
                       "--out", "OUT/summary.tex")),
    ("summarize_csv", ("summarize", "OUT/dsc", "OUT/dsc_ace", "--format", "csv",
                       "--out", "OUT/summary_table.csv")),
    ("gate", ("gate", "OUT/dsc_ace", "--max", "ace=0.2", "--min", "dice=0.9",
              "--against", "OUT/dsc", "--max-increase", "mce=0.01", "--junit", "OUT/gate.xml")),
    ("plot_diagram", ("plot-diagram", "OUT/dsc", "OUT/dsc_ace", "--case", CASE,
                      "--labels", "DSC,DSC+ACE", "--out", "OUT/plots/diagram.svg")),
    ("plot_histogram", ("plot-histogram", "OUT/dsc", "OUT/dsc_ace", "--labels", "DSC,DSC+ACE",
                        "--out", "OUT/plots/histogram.svg")),
    ("plot_scatter", ("plot-scatter", "OUT/dsc", "OUT/dsc_ace", "--labels", "DSC,DSC+ACE",
                      "--metric", "ace,mce", "--out", "OUT/plots/scatter.svg")),
    ("demo", ("demo", "--out", "OUT/demo")),
)  # fmt: skip


@contextmanager
def _working_directory(path: Path) -> Iterator[None]:
    before = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


def produce(out: Path) -> dict[str, int]:
    """Run every command into ``out``; return each command's exit code.

    Console output goes to ``out/console/NAME.txt`` with ``out`` written as ``OUT``.
    """
    from typer.testing import CliRunner

    from calibkit.cli import app

    out = out.resolve()
    (out / "console").mkdir(parents=True, exist_ok=True)
    (out / "plots").mkdir(exist_ok=True)
    codes = {}
    with _working_directory(REPO):
        for name, command in COMMANDS:
            args = [part.replace("OUT", str(out)) for part in command]
            result = CliRunner().invoke(app, args)
            codes[name] = result.exit_code
            console = f"$ calibkit {' '.join(command)}\n{result.stdout}"
            (out / "console" / f"{name}.txt").write_text(console.replace(str(out), "OUT"))
    return codes


def outputs(out: Path) -> dict[str, Path]:
    """Every file in ``out`` by its relative path (POSIX), hidden files left out."""
    files = {}
    for path in sorted(out.rglob("*")):
        relative = path.relative_to(out)
        if path.is_file() and not any(part.startswith(".") for part in relative.parts):
            files[relative.as_posix()] = path
    return files


def content(path: Path, out: Path) -> bytes:
    """The file's bytes; in text files the output folder's and the repository's paths
    read ``OUT`` and ``REPO`` (the demo records the absolute sample data folder), so that
    the set holds in any clone."""
    data = path.read_bytes()
    if is_text(path.name):
        data = data.replace(str(out.resolve()).encode(), b"OUT")
        data = data.replace(str(REPO).encode(), b"REPO")
    return data


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def matplotlib_version() -> str:
    import matplotlib

    return str(matplotlib.__version__)


def is_figure(relative: str) -> bool:
    return relative.endswith((".png", ".svg", ".pdf"))


def is_text(relative: str) -> bool:
    return relative.endswith(TEXT_SUFFIXES)


def record() -> None:
    """Rewrite ``tests/golden_outputs/`` from a fresh run of every command."""
    with tempfile.TemporaryDirectory() as tmp:
        codes = produce(Path(tmp))
        failed = {name: code for name, code in codes.items() if code != 0}
        if failed:
            raise SystemExit(f"commands failed: {failed}")
        files = outputs(Path(tmp))
        shutil.rmtree(GOLDEN, ignore_errors=True)
        manifest = {}
        for relative, path in files.items():
            data = content(path, Path(tmp))
            manifest[relative] = digest(data)
            if is_text(relative):
                target = GOLDEN / "files" / relative
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data)
        record = {"matplotlib": matplotlib_version(), "files": manifest}
        (GOLDEN / "manifest.json").write_text(json.dumps(record, indent=1) + "\n")
    print(f"recorded {len(manifest)} files into {GOLDEN}", file=sys.stderr)


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    record()
