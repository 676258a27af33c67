"""The CI gate: bounds, exit codes, JUnit XML and the GitHub step summary."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import assert_user_error, run_cli
from typer.testing import CliRunner

import calibkit.cli.compare  # noqa: F401  (registers compare, summarize, gate)
from calibkit.cli.app import app
from calibkit.errors import InputError
from calibkit.gate import (
    Bound,
    check_run,
    gate_folder,
    junit_xml,
    markdown_summary,
    parse_bound,
    parse_bounds,
)
from calibkit.runs import load_run

runner = CliRunner()

# per case (ET, TC, WT); means: ET 0.2, TC 0.3, WT 0.1, mean 0.2
ACE = {"c1": (0.1, 0.2, 0.0), "c2": (0.3, 0.4, 0.2), "c3": (0.2, 0.3, 0.1)}
DICE = {"c1": (0.9, 0.8, 0.95), "c2": (np.nan, 0.7, 0.85), "c3": (0.7, 0.9, 0.9)}


def write_run(
    folder: Path, ace: Mapping[str, tuple[float, ...]], dice: Mapping[str, tuple[float, ...]]
) -> Path:
    folder.mkdir(parents=True)
    for stem, values in (("ace", ace), ("mean_dice", dice)):
        rows = [
            {
                "filename": case,
                "class0": v[0],
                "class1": v[1],
                "class2": v[2],
                "mean": np.nanmean(v),
            }
            for case, v in values.items()
        ]
        pd.DataFrame(rows).to_csv(folder / f"{stem}_raw.csv", index=False)
    return folder


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    return write_run(tmp_path / "model", ACE, DICE)


@pytest.fixture
def baseline_dir(tmp_path: Path) -> Path:
    # ACE 0.05 lower in every case and class; c4 exists only here; Dice the same as the run.
    ace = {case: tuple(v - 0.05 for v in values) for case, values in ACE.items()}
    ace["c4"] = (0.9, 0.9, 0.9)
    dice = dict(DICE)
    dice["c4"] = (0.1, 0.1, 0.1)
    return write_run(tmp_path / "released", ace, dice)


def invoke(*args: str | Path, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    result = runner.invoke(app, ["gate", *map(str, args)], env=env)
    return result.exit_code, result.stdout, result.stderr


@pytest.mark.parametrize(
    ("text", "kind", "expected"),
    [
        ("ace=0.15", "max", Bound("max", "ace", 0.15)),
        (" MCE = 0.3 ", "max", Bound("max", "mce", 0.3)),
        ("dice:ET=0.7", "min", Bound("min", "dice", 0.7, "ET")),
        ("ace=-0.01", "max_increase", Bound("max_increase", "ace", -0.01)),
    ],
)
def test_parse_bound(text: str, kind: str, expected: Bound) -> None:
    assert parse_bound(text, kind) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("ace=abc", "not a number"),
        ("acc=0.1", "unknown metric"),
        ("ace", "METRIC=VALUE"),
        ("ace=0.1=0.2", "METRIC=VALUE"),
        ("ace=nan", "finite"),
        ("ace=1.5", "[0, 1]"),
        ("ace=-0.1", "[0, 1]"),
        ("ace:=0.1", "empty class"),
    ],
)
def test_parse_bound_rejects(text: str, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment.replace("[", r"\[")):
        parse_bound(text, "max")


def test_parse_bounds_names_the_option_and_rejects_repeats() -> None:
    with pytest.raises(ValueError, match="--min"):
        parse_bounds(min_bounds=["dice=x"])
    with pytest.raises(ValueError, match="twice"):
        parse_bounds(max_bounds=["ace=0.1", "ace=0.2"])
    assert len(parse_bounds(max_bounds=["ace=0.1"], min_bounds=["ace=0.05"])) == 2


def test_check_run_mean_per_class_and_median(run_dir: Path) -> None:
    run = load_run(run_dir)
    report = check_run(run, parse_bounds(max_bounds=["ace=0.2"], min_bounds=["dice=0.8"]))
    values = {(c.bound.metric, c.class_name): c for c in report.checks}
    assert values["ace", "mean"].value == pytest.approx(0.2) and values["ace", "mean"].passed
    # per-case Dice means 0.8833, 0.775, 0.8333 -> 0.8306
    assert values["dice", "mean"].value == pytest.approx((0.88333 + 0.775 + 0.83333) / 3, abs=1e-4)
    assert report.passed
    per_class = check_run(run, parse_bounds(max_bounds=["ace=0.25"]), per_class=True)
    assert [(c.class_name, c.passed) for c in per_class.checks] == [
        ("ET", True),
        ("TC", False),
        ("WT", True),
    ]
    assert not per_class.passed and per_class.failures[0].class_name == "TC"
    assert "ace [TC] = 0.3000 > 0.25" in per_class.failures[0].message
    dice_et = check_run(run, parse_bounds(min_bounds=["dice:ET=0.8"]), statistic="median")
    (check,) = dice_et.checks
    assert check.n == 2 and check.value == pytest.approx(0.8) and check.passed  # NaN left out
    with pytest.raises(InputError, match="no class 'NCR'"):
        check_run(run, parse_bounds(max_bounds=["ace:NCR=0.1"]))
    with pytest.raises(InputError, match="mce"):
        check_run(run, parse_bounds(max_bounds=["mce=0.1"]))
    with pytest.raises(ValueError, match="baseline"):
        check_run(run, parse_bounds(max_increase=["ace=0.1"]))


def test_check_run_against_baseline_uses_shared_cases(run_dir: Path, baseline_dir: Path) -> None:
    bounds = parse_bounds(max_increase=["ace=0.04"], max_decrease=["dice=0.0"])
    report = gate_folder(run_dir, bounds, against=baseline_dir)
    ace, dice = report.checks
    assert ace.baseline == pytest.approx(0.15) and ace.change == pytest.approx(0.05)
    assert not ace.passed and "rise +0.0500 > 0.04" in ace.message
    assert dice.change == pytest.approx(0.0, abs=1e-12) and dice.passed  # c4 not shared
    assert report.notes and "0 case(s) only in model and 1 only in released" in report.notes[0]
    assert gate_folder(
        run_dir, parse_bounds(max_increase=["ace=0.06"]), against=baseline_dir
    ).passed


def test_nan_statistic_fails(tmp_path: Path) -> None:
    folder = write_run(tmp_path / "r", ACE, {"c1": (np.nan, 0.5, 0.5)})
    (check,) = check_run(load_run(folder), parse_bounds(min_bounds=["dice:ET=0.1"])).checks
    assert not check.passed and check.n == 0 and "no finite case values" in check.message


def test_cli_pass(run_dir: Path) -> None:
    code, stdout, stderr = invoke(run_dir, "--max", "ace=0.25", "--min", "dice=0.8")
    assert code == 0, stderr
    assert "2 of 2 bounds hold" in stdout and stderr.strip() == ""


def test_cli_fail_names_each_failed_bound(run_dir: Path) -> None:
    code, stdout, stderr = invoke(
        run_dir, "--max", "ace=0.25", "--max", "dice=0.5", "--per-class", "--min", "dice:ET=0.9"
    )
    assert code == 1
    failed = [line for line in stderr.splitlines() if line.startswith("FAILED")]
    assert len(failed) == 5  # ace TC; dice ET, TC, WT above 0.5; dice ET below 0.9
    assert any("ace [TC]" in line and "--max ace=0.25" in line for line in failed)
    assert any("dice [ET]" in line and "--min dice:ET=0.9" in line for line in failed)
    assert "FAIL" in stdout and "2 of 7 bounds hold" in stdout


@pytest.mark.parametrize(
    "args",
    [
        ("--max", "ace=abc"),
        ("--max", "foo=0.1"),
        ("--min", "dice"),
        ("--max-increase", "ace=0.01"),  # without --against
        (),  # no bound at all
    ],
)
def test_cli_malformed_bounds_exit_2(run_dir: Path, args: tuple[str, ...]) -> None:
    code, _, stderr = invoke(run_dir, *args)
    assert code == 2, stderr
    assert "Traceback" not in stderr


def test_cli_missing_folder_is_a_user_error(tmp_path: Path) -> None:
    code, _, stderr = invoke(tmp_path / "nope", "--max", "ace=0.1")
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert code == 1 and len(lines) == 1 and lines[0].startswith("error:") and "nope" in lines[0]


def test_cli_junit_report_is_valid(run_dir: Path, tmp_path: Path) -> None:
    junit = tmp_path / "report.xml"
    code, _, _ = invoke(
        run_dir, "--per-class", "--max", "ace=0.25", "--min", "dice=0.8", "--junit", junit
    )
    assert code == 1
    root = ET.parse(junit).getroot()
    assert root.tag == "testsuites" and root.get("tests") == "6" and root.get("failures") == "2"
    (suite,) = root.findall("testsuite")
    cases = suite.findall("testcase")
    assert len(cases) == 6 and suite.get("failures") == "2"
    failures = [case for case in cases if case.find("failure") is not None]
    assert [case.get("name") for case in failures] == ["ace <= 0.25 [TC]", "dice >= 0.8 [TC]"]
    for case in failures:
        failure = case.find("failure")
        assert failure is not None and failure.get("message") and failure.get("type")
    assert all(case.get("classname", "").startswith("calibkit.gate.") for case in cases)


def test_junit_escapes_markup(run_dir: Path) -> None:
    report = check_run(load_run(run_dir, name='a<b>&"c'), parse_bounds(max_bounds=["ace=0.1"]))
    root = ET.fromstring(junit_xml(report).split("\n", 1)[1])
    assert root.find("testsuite").get("name") == 'calibkit gate: a<b>&"c'  # type: ignore[union-attr]


def test_cli_appends_github_step_summary(run_dir: Path, baseline_dir: Path, tmp_path: Path) -> None:
    summary = tmp_path / "step_summary.md"
    summary.write_text("earlier step\n")
    env = {"GITHUB_STEP_SUMMARY": str(summary)}
    code, _, stderr = invoke(
        run_dir,
        "--max",
        "ace=0.25",
        "--against",
        baseline_dir,
        "--max-increase",
        "ace=0.1",
        env=env,
    )
    assert code == 0, stderr
    text = summary.read_text()
    assert text.startswith("earlier step\n")
    assert "### calibkit gate ✅ passed: `model`" in text
    assert "| `ace` rise ≤ | mean | 0.2000 | 0.1500 | +0.0500 | 0.1 | ✅ pass |" in text
    assert "note:" in stderr and "released" in stderr
    code, _, _ = invoke(run_dir, "--max", "ace=0.1", env=env)
    assert code == 1 and "❌ failed" in summary.read_text()


def test_markdown_summary_without_env_is_not_written(run_dir: Path, tmp_path: Path) -> None:
    report = check_run(load_run(run_dir), parse_bounds(max_bounds=["ace=0.1"]))
    text = markdown_summary(report)
    assert "0 of 1 bounds hold" in text and "❌ fail" in text
    code, _, _ = invoke(run_dir, "--max", "ace=0.3", env={"GITHUB_STEP_SUMMARY": ""})
    assert code == 0 and not list(tmp_path.glob("*.md"))


def test_cli_against_a_baseline_without_shared_cases(tmp_path: Path, run_dir: Path) -> None:
    other = {f"x{i}": (0.2, 0.3, 0.1) for i in range(2)}
    baseline = write_run(tmp_path / "released", other, other)
    args = ("gate", run_dir, "--against", baseline, "--max-increase", "ace=0.01")
    code, stdout, stderr = run_cli(*args)
    assert_user_error(
        code,
        stderr,
        f"{baseline}: the runs share no case ids (released: 2 case(s), e.g. x0, x1; model: "
        "3 case(s), e.g. c1, c2)",
    )
    assert stdout == ""


def test_cli_against_baseline(run_dir: Path, baseline_dir: Path) -> None:
    args = (run_dir, "--against", baseline_dir, "--max-increase", "ace=0.01")
    code, stdout, stderr = invoke(*args)
    assert code == 1
    assert "rise +0.0500 > 0.01" in stderr and "--max-increase ace=0.01" in stderr
    assert "0.1500" in stdout  # the baseline's value is shown
    code, _, _ = invoke(*args[:3], "--max-decrease", "dice=0.0", "--per-class")
    assert code == 0
