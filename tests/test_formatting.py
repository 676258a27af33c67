"""Printed metric values: the one formatter and the commands that print through it."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from conftest import SAMPLE_DATA, run_cli

from calibkit.formatting import SIG_DIGITS, format_mean_std, format_number

NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize(
    ("value", "decimals", "options", "expected"),
    [
        # zero keeps the fixed decimals, a negative zero loses its sign
        (0.0, 3, {}, "0.000"),
        (-0.0, 4, {}, "0.0000"),
        (0.0, 4, {"sign": True}, "+0.0000"),
        # exactly 0.0005: fixed decimals would round it up to 0.001, twice its value
        (0.0005, 3, {}, "0.000500"),
        (0.0005, 3, {"min_digits": 1}, "0.000500"),
        (0.0005, 2, {"min_digits": 1}, "0.000500"),
        (0.0005, 4, {"min_digits": 1}, "0.0005"),
        # readable at fixed decimals: unchanged
        (0.20657, 3, {}, "0.207"),
        (0.0123, 3, {}, "0.012"),
        (0.01, 3, {}, "0.010"),
        (0.09, 2, {"min_digits": 1}, "0.09"),
        # one digit short (min_digits 2), or erased: 3 significant figures
        (0.00999, 3, {}, "0.00999"),
        (0.0009, 3, {}, "0.000900"),
        (0.09, 2, {}, "0.0900"),
        (0.004, 2, {"min_digits": 1}, "0.00400"),
        # rounding to 3 figures decides the exponent
        (0.009996, 3, {}, "0.010"),
        (9.9996e-05, 3, {}, "0.000100"),
        (9.99e-05, 3, {}, "9.99e-05"),
        # very small: scientific notation below 1e-4
        (1e-9, 3, {}, "1.00e-09"),
        (4.1e-06, 2, {"min_digits": 1}, "4.10e-06"),
        # differences, negative ones included
        (-0.0877, 4, {"sign": True}, "-0.0877"),
        (-0.000236, 4, {"sign": True}, "-0.000236"),
        (-1.19e-06, 4, {"sign": True}, "-1.19e-06"),
        (2.13e-05, 4, {"sign": True}, "+2.13e-05"),
        (0.05, 4, {"sign": True}, "+0.0500"),
        (-1e-9, 3, {}, "-1.00e-09"),
        # values of 1 and more (Dice, MCE)
        (1.0, 3, {}, "1.000"),
        (1.0, 2, {"min_digits": 1}, "1.00"),
        (0.99996, 4, {}, "1.0000"),
        (0.4736, 3, {}, "0.474"),
        (12.5, 3, {}, "12.500"),
        # not finite
        (NAN, 3, {}, "n/a"),
        (NAN, 4, {"sign": True}, "n/a"),
        (INF, 3, {}, "inf"),
        (-INF, 4, {"sign": True}, "-inf"),
        (INF, 4, {"sign": True}, "+inf"),
    ],
)
def test_format_number(value: float, decimals: int, options: dict[str, Any], expected: str) -> None:
    assert format_number(value, decimals, **options) == expected


def _significant_digits(text: str) -> int:
    mantissa = text.lstrip("+-").split("e")[0]
    return len(mantissa.replace(".", "").lstrip("0"))


def _last_place(text: str) -> float:
    """The unit of the last digit shown: 1e-3 for ``0.207``, 1e-7 for ``4.12e-05``."""
    mantissa, _, exponent = text.partition("e")
    decimals = len(mantissa.partition(".")[2])
    return 10.0 ** (int(exponent or 0) - decimals)


_GRID = np.concatenate(
    [np.logspace(-12, 3, 301), [0.0005, 0.005, 0.05, 0.5, 9.9996e-05, 0.0099996, 0.00995, 1.0]]
)


@pytest.mark.parametrize("min_digits", [1, 2, 3])
@pytest.mark.parametrize("decimals", range(7))
def test_format_number_keeps_the_value(decimals: int, min_digits: int) -> None:
    for value in np.concatenate([_GRID, -_GRID]).tolist():
        text = format_number(value, decimals, min_digits=min_digits)
        fixed = f"{value:.{decimals}f}"
        # at least min_digits significant digits, never fewer than the fixed text shows
        assert _significant_digits(text) >= min(min_digits, SIG_DIGITS), (value, text)
        assert _significant_digits(text) >= _significant_digits(fixed) or text == fixed
        # Python rounds correctly: the text is within half its last place of the value.
        # Parsing the text and computing the power of ten each err by at most 2**-53
        # relative; 1e-15 of the magnitude covers both with room.
        error = abs(float(text) - value)
        assert error <= 0.5 * _last_place(text) + 1e-15 * abs(value), (value, text)
        # fixed text with digits to spare is today's text
        if _significant_digits(fixed) > min_digits:
            assert text == fixed, (value, decimals, text)


@pytest.mark.parametrize(
    ("mean", "std", "decimals", "options", "expected"),
    [
        (0.20657, 0.07068, 3, {}, "0.207 ± 0.071"),
        (0.00028069, 0.00015998, 3, {}, "0.000281 ± 0.000160"),
        (0.00104, 0.00058, 2, {"min_digits": 1}, "0.00104 ± 0.00058"),
        # the paper's cells, and a std of float round-off on the mean's scale
        (0.13, 0.09, 2, {"min_digits": 1}, "0.13 ± 0.09"),
        (0.2, 3.925231146709438e-17, 2, {"min_digits": 1}, "0.20 ± 0.00"),
        # the larger of the two sets the scale
        (0.0004, 0.002, 3, {}, "0.00040 ± 0.00200"),
        (4.1e-06, 2.2e-06, 3, {}, "4.10e-06 ± 2.20e-06"),
        (0.0, 0.0, 3, {}, "0.000 ± 0.000"),
        (1.0, 0.0, 3, {}, "1.000 ± 0.000"),
        (0.5, NAN, 3, {}, "0.500"),
        (0.0004, NAN, 2, {"min_digits": 1}, "0.000400"),
        (NAN, 0.1, 3, {}, "n/a"),
        (INF, NAN, 3, {}, "inf"),
        (0.5, INF, 3, {}, "0.500 ± inf"),
        (0.00041, 0.00012, 2, {"pm": r" \pm ", "min_digits": 1}, r"0.000410 \pm 0.000120"),
    ],
)
def test_format_mean_std(
    mean: float, std: float, decimals: int, options: dict[str, Any], expected: str
) -> None:
    assert format_mean_std(mean, std, decimals, **options) == expected


# ----------------------------------------------------------------- the commands

# Four cases, one class; ECE about 4e-4 like the sample data's. Run B: ACE 0.05,
# MCE 0.1 and Dice 0.01 lower, ECE 2e-5 higher in every case.
ACE = (0.1, 0.2, 0.3, 0.2)  # mean 0.2, std 0.0816
ECE = (0.00041, 0.00052, 0.00063, 0.00030)  # mean 0.000465, std 0.000142
MCE = (0.5, 0.6, 0.7, 0.6)
DICE = (0.9, 0.8, 0.9, 0.8)  # mean 0.85, std 0.0577


def write_run(folder: Path, shift: dict[str, float]) -> Path:
    folder.mkdir()
    table = pd.DataFrame(
        {
            "case_id": [f"c{i}" for i in range(4)],
            "class": "tumour",
            "ace": np.add(ACE, shift.get("ace", 0.0)),
            "ece": np.add(ECE, shift.get("ece", 0.0)),
            "mce": np.add(MCE, shift.get("mce", 0.0)),
            "dice": np.add(DICE, shift.get("dice", 0.0)),
            "n_voxels": 1000,
        }
    )
    table.to_csv(folder / "per_image.csv", index=False)
    return folder


@pytest.fixture
def runs(tmp_path: Path) -> tuple[Path, Path]:
    a = write_run(tmp_path / "A", {})
    b = write_run(tmp_path / "B", {"ace": -0.05, "ece": 2e-5, "mce": -0.1, "dice": -0.01})
    return a, b


def table_rows(stdout: str) -> list[list[str]]:
    """The cells of each body row of a rich table."""
    return [
        [cell.strip() for cell in line.strip("│ \n").split("│")]
        for line in stdout.splitlines()
        if line.startswith("│")
    ]


def test_evaluate_summary_shows_the_sample_data_ece(tmp_path: Path) -> None:
    code, stdout, stderr = run_cli(
        *("evaluate", SAMPLE_DATA / "predictions" / "dsc", SAMPLE_DATA / "brats"),
        *("--preset", "brats", "--out", tmp_path / "dsc"),
    )
    assert code == 0, stderr
    # Python's float() reads the CSV's repr back to the very floats the command printed.
    with open(tmp_path / "dsc" / "summary.csv", newline="") as handle:
        summary = {
            (row["class"], row["metric"]): {key: float(row[key]) for key in ("mean", "std")}
            for row in csv.DictReader(handle)
        }
    assert "0.000 ± 0.000" not in stdout
    rows = {row[0]: row for row in table_rows(stdout)}
    assert sorted(rows) == ["ET", "TC", "WT", "mean"]
    for name, row in rows.items():
        ece = summary[name, "ece"]
        assert 1e-4 < ece["mean"] < 1e-2  # where 3 fixed decimals lost the value
        assert row[2] == format_mean_std(ece["mean"], ece["std"], 3)
        mean_text, std_text = row[2].split(" ± ")
        # nonzero digits, within half the last place shown (slack as in the grid test)
        for text, value in ((mean_text, ece["mean"]), (std_text, ece["std"])):
            assert _significant_digits(text) >= 2 and float(text) > 0
            assert abs(float(text) - value) <= 0.5 * _last_place(text) + 1e-15 * value
        ace = summary[name, "ace"]  # readable values keep 3 decimals
        assert row[1] == f"{ace['mean']:.3f} ± {ace['std']:.3f}"


def test_compare_prints_small_means_and_differences(runs: tuple[Path, Path]) -> None:
    code, stdout, stderr = run_cli("compare", *runs)
    assert code == 0, stderr
    rows = {(row[0], row[1]): row for row in table_rows(stdout)}
    # metric, class, n, mean A, mean B, change %, median Δ, ...
    assert rows["ece", "tumour"][3:7] == ["0.000465", "0.000485", "+4.3", "+2.00e-05"]
    assert rows["ace", "tumour"][3:7] == ["0.2000", "0.1500", "-25.0", "-0.0500"]
    assert rows["dice", "mean"][3:7] == ["0.8500", "0.8400", "-1.2", "-0.0100"]


def test_summarize_markdown_and_latex_keep_small_values(runs: tuple[Path, Path]) -> None:
    code, stdout, stderr = run_cli("summarize", *runs, "--metrics", "ece,ace,dice")
    assert code == 0, stderr
    assert "| A | 0.000465 ± 0.000142 | 0.000465 ± 0.000142 |" in stdout
    assert "| B | 0.000485 ± 0.000142 | 0.000485 ± 0.000142 |" in stdout
    assert "| A | 0.20 ± 0.08 | 0.20 ± 0.08 |" in stdout  # 2 decimals where they read
    assert "| B | 0.84 ± 0.06 | 0.84 ± 0.06 |" in stdout
    assert "0.00 ± 0.00" not in stdout
    code, stdout, stderr = run_cli("summarize", *runs, "--metrics", "ece", "--decimals", "4")
    assert code == 0 and "| A | 0.0005 ± 0.0001 |" in stdout  # the digits asked for
    code, stdout, _ = run_cli("summarize", *runs, "--metrics", "ece", "--format", "latex")
    assert code == 0 and r"A & $0.000465 \pm 0.000142$ & $0.000465 \pm 0.000142$ \\" in stdout
    code, stdout, _ = run_cli("summarize", *runs, "--metrics", "ece", "--format", "csv")
    table = pd.read_csv(io.StringIO(stdout))
    assert code == 0 and table["ece_tumour_mean"].tolist() == pytest.approx([0.000465, 0.000485])


def test_gate_prints_small_values(
    runs: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    summary = tmp_path / "step_summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    a, b = runs
    code, stdout, stderr = run_cli(
        *("gate", a, "--max", "ece=0.0003", "--against", b, "--max-increase", "ece=0.001")
    )
    assert code == 1
    rows = table_rows(stdout)
    # bound, class, value, baseline, change, limit, n, result
    assert rows[0][:6] == ["ece <=", "mean", "0.000465", "", "", "0.0003"]
    assert rows[1][:6] == ["ece rise <=", "mean", "0.000465", "0.000485", "-2.00e-05", "0.001"]
    failed = [line for line in stderr.splitlines() if line.startswith("FAILED")]
    assert failed == ["FAILED ece [mean] = 0.000465 > 0.0003 (mean over 4 cases; --max ece=0.0003)"]
    text = summary.read_text()
    assert "| `ece` ≤ | mean | 0.000465 |  |  | 0.0003 | ❌ fail |" in text
    assert "| `ece` rise ≤ | mean | 0.000465 | 0.000485 | -2.00e-05 | 0.001 | ✅ pass |" in text


@pytest.mark.parametrize("command", ["evaluate", "compare"])
def test_tables_wrap_rather_than_cut_numbers_on_a_narrow_terminal(
    command: str, runs: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On an 80-column terminal a cell wraps onto a second line; no value is cut to '0.…'."""
    from calibkit.cli.app import stdout as console

    monkeypatch.setattr(console, "width", 80)
    if command == "evaluate":
        args: tuple[str | Path, ...] = (
            *("evaluate", SAMPLE_DATA / "predictions" / "dsc", SAMPLE_DATA / "brats"),
            *("--preset", "brats", "--out", tmp_path / "out"),
        )
    else:
        args = ("compare", *runs)
    code, stdout, stderr = run_cli(*args)
    assert code == 0, stderr
    assert "…" not in stdout
    lines = [line for line in stdout.splitlines() if line.startswith(("│", "┃"))]
    if command == "evaluate":  # fits in 80 columns: the mean row's ECE wraps after its ±
        assert lines and max(len(line) for line in lines) <= 80
        assert "0.000445 ±" in stdout and "0.000234" in stdout
    else:  # eleven columns cannot: printed at natural width, every number whole
        rows = {(row[0], row[1]): row for row in table_rows(stdout)}
        assert rows["ece", "tumour"][3:7] == ["0.000465", "0.000485", "+4.3", "+2.00e-05"]
