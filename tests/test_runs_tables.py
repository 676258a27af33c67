"""Run folders of both layouts, paper tables, and the paper's reproduced numbers."""

from __future__ import annotations

import io
import json
import shlex
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import SAMPLE_DATA, assert_user_error, run_cli
from scipy import stats as scipy_stats

from calibkit.errors import InputError
from calibkit.runs import compare_runs, load_run, load_runs
from calibkit.tables import render_summary, summarize_folders, summarize_runs

# The paper authors' published per-case results, copied into the repository (see its README).
REFERENCE = SAMPLE_DATA / "reference" / "ace-dliris"
# Table 1 / Table 2 of the paper: the six losses without temperature scaling, in its row order.
PAPER_RUNS = (
    "baseline_ce",
    "hardl1ace_ce",
    "baseline_dice",
    "hardl1ace_dice",
    "baseline_dice_ce",
    "hardl1ace_dice_ce",
)
PAPER_NAMES = ("CE", "CE + L1-ACE", "DSC", "DSC + L1-ACE", "DSC-CE", "DSC-CE + L1-ACE")
TABLE_2_ACE = {  # mean ± std, classes ET, TC, WT, Avg
    "baseline_ce": ("0.13 ± 0.09", "0.14 ± 0.10", "0.12 ± 0.07", "0.13 ± 0.06"),
    "hardl1ace_ce": ("0.12 ± 0.10", "0.14 ± 0.10", "0.11 ± 0.09", "0.12 ± 0.07"),
    "baseline_dice": ("0.25 ± 0.07", "0.26 ± 0.07", "0.23 ± 0.06", "0.25 ± 0.05"),
    "hardl1ace_dice": ("0.14 ± 0.10", "0.15 ± 0.09", "0.12 ± 0.08", "0.14 ± 0.07"),
    "baseline_dice_ce": ("0.20 ± 0.08", "0.21 ± 0.08", "0.18 ± 0.09", "0.20 ± 0.06"),
    "hardl1ace_dice_ce": ("0.15 ± 0.11", "0.15 ± 0.11", "0.11 ± 0.08", "0.14 ± 0.08"),
}
TABLE_1_DICE = {
    "baseline_ce": ("0.82 ± 0.19", "0.87 ± 0.18", "0.90 ± 0.11", "0.86 ± 0.14"),
    "hardl1ace_ce": ("0.80 ± 0.20", "0.86 ± 0.19", "0.87 ± 0.12", "0.84 ± 0.15"),
    "baseline_dice": ("0.84 ± 0.17", "0.87 ± 0.20", "0.89 ± 0.12", "0.87 ± 0.14"),
    "hardl1ace_dice": ("0.83 ± 0.18", "0.88 ± 0.18", "0.89 ± 0.11", "0.87 ± 0.13"),
    "baseline_dice_ce": ("0.85 ± 0.17", "0.89 ± 0.17", "0.90 ± 0.11", "0.88 ± 0.13"),
    "hardl1ace_dice_ce": ("0.82 ± 0.20", "0.86 ± 0.21", "0.88 ± 0.13", "0.85 ± 0.16"),
}


def write_paper_run(
    folder: Path, values: dict[str, dict[str, tuple[float, float, float]]], *, mean: bool = True
) -> Path:
    """values: {metric file stem: {filename: (class0, class1, class2)}}."""
    folder.mkdir(parents=True, exist_ok=True)
    for stem, cases in values.items():
        rows = []
        for filename, triple in cases.items():
            row = {"filename": filename, "class0": triple[0], "class1": triple[1]}
            row["class2"] = triple[2]
            if mean:
                row["mean"] = float(np.nanmean(triple)) if not np.isnan(triple).all() else np.nan
            rows.append(row)
        pd.DataFrame(rows).to_csv(folder / f"{stem}_raw.csv", index=False)
    return folder


def write_per_image(folder: Path, rows: list[tuple[str, str, float, float]]) -> Path:
    """rows: (case_id, class, ace, dice); ece = ace / 10, mce = 2 ace."""
    folder.mkdir(parents=True, exist_ok=True)
    table = pd.DataFrame(rows, columns=["case_id", "class", "ace", "dice"])
    table["ece"] = table["ace"] / 10
    table["mce"] = table["ace"] * 2
    table["n_voxels"] = 100
    table[["case_id", "class", "ace", "ece", "mce", "dice", "n_voxels"]].to_csv(
        folder / "per_image.csv", index=False
    )
    return folder


def test_load_paper_layout(tmp_path: Path) -> None:
    run = load_run(
        write_paper_run(
            tmp_path / "run",
            {
                "ace": {"c1.nii.gz": (0.1, 0.2, 0.3), "c2": (0.4, 0.5, 0.6)},
                "mean_dice": {"c1.nii.gz": (np.nan, 0.5, 0.9), "c2": (0.8, 0.8, 0.8)},
            },
        )
    )
    assert run.layout == "paper" and run.name == "run"
    assert run.class_names == ("ET", "TC", "WT") and run.metrics == ("ace", "dice")
    assert run.case_ids == ("c1", "c2")  # volume suffixes stripped
    assert run.series("ace", "TC").to_dict() == {"c1": 0.2, "c2": 0.5}
    assert run.series("dice", "mean")["c1"] == pytest.approx(0.7)  # NaN-mean over classes
    assert np.isnan(run.series("dice", "ET")["c1"])
    with pytest.raises(InputError, match=r"mce_raw\.csv"):
        run.require(["ace", "mce"])


def test_paper_layout_without_mean_column(tmp_path: Path) -> None:
    folder = write_paper_run(tmp_path / "r", {"ace": {"a": (0.1, 0.2, np.nan)}}, mean=False)
    assert load_run(folder).series("ace", "mean")["a"] == pytest.approx(0.15)


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ("name,class0\na,0.1\n", "expected columns filename"),
        ("filename,class0,class1,class2,mean\na,0.1,0.2,0.3,0.2\na,0.1,0.2,0.3,0.2\n", "more than"),
        ("filename,class0,class1,class2,mean\na,0.1,oops,0.3,0.2\n", "non-number"),
    ],
)
def test_paper_layout_errors(tmp_path: Path, content: str, fragment: str) -> None:
    (tmp_path / "ace_raw.csv").write_text(content)
    with pytest.raises(InputError, match=fragment) as error:
        load_run(tmp_path)
    assert "ace_raw.csv" in str(error.value)


def test_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"neither per_image\.csv"):
        load_run(tmp_path)
    with pytest.raises(InputError, match="no such folder"):
        load_run(tmp_path / "missing")
    with pytest.raises(ValueError, match="names"):
        load_runs([tmp_path], ["a", "b"])


def test_load_calibkit_layout_adds_the_per_case_mean(tmp_path: Path) -> None:
    folder = write_per_image(
        tmp_path / "res",
        [
            ("s1", "liver", 0.1, 0.9),
            ("s1", "tumour", 0.3, float("nan")),
            ("s0", "liver", 0.2, 0.8),
            ("s0", "tumour", 0.4, 0.6),
        ],
    )
    run = load_run(folder, name="mine")
    assert run.layout == "calibkit" and run.name == "mine"
    assert run.class_names == ("liver", "tumour") and run.metrics == ("ace", "ece", "mce", "dice")
    assert run.series("ace", "mean").to_dict() == pytest.approx({"s0": 0.3, "s1": 0.2})
    assert run.series("dice", "mean").to_dict() == pytest.approx({"s0": 0.7, "s1": 0.9})
    assert run.series("mce", "tumour")["s0"] == pytest.approx(0.8)


def test_summarize_matches_evaluate_summary(tmp_path: Path) -> None:
    out = tmp_path / "dsc"
    code, _, stderr = run_cli(
        *("evaluate", SAMPLE_DATA / "predictions" / "dsc", SAMPLE_DATA / "brats"),
        *("--preset", "brats", "--out", out, "--quiet"),
    )
    assert code == 0, stderr
    summary = summarize_folders([out])
    expected = pd.read_csv(out / "summary.csv")
    for row in expected.to_dict("records"):
        mean, std, n = summary.cell("dsc", row["metric"], row["class"])
        assert mean == pytest.approx(row["mean"], rel=1e-12, nan_ok=True)
        assert std == pytest.approx(row["std"], rel=1e-12, nan_ok=True)
        assert n == row["n"]


def test_renderers(tmp_path: Path) -> None:
    a = write_paper_run(tmp_path / "run_a", {"ace": {"x": (0.1, 0.2, 0.3), "y": (0.3, 0.2, 0.1)}})
    b = write_paper_run(tmp_path / "b|c", {"ace": {"x": (0.5, 0.5, 0.5)}})
    summary = summarize_runs(load_runs([a, b]))
    markdown = render_summary(summary, "markdown")
    assert "| run | ET | TC | WT | mean |" in markdown
    assert "| run_a | 0.20 ± 0.14 | 0.20 ± 0.00 | 0.20 ± 0.14 | 0.20 ± 0.00 |" in markdown
    assert "| b\\|c | 0.50 | 0.50 | 0.50 | 0.50 |" in markdown  # one case: no std
    assert "n = 1 to 2 cases" in markdown
    latex = render_summary(summary, "latex", decimals=3)
    assert r"run\_a & $0.200 \pm 0.141$" in latex and r"\toprule" in latex
    table = pd.read_csv(io.StringIO(render_summary(summary, "csv")))
    assert table["run"].tolist() == ["run_a", "b|c"]
    assert table["ace_ET_mean"].tolist() == pytest.approx([0.2, 0.5])
    assert table["ace_ET_std"].iloc[0] == pytest.approx(np.std([0.1, 0.3], ddof=1))
    assert table["ace_mean_n"].tolist() == [2, 1]
    with pytest.raises(ValueError, match="repeat"):
        summarize_runs(load_runs([a, b], ["same", "same"]))


def test_summarize_cli_formats_and_errors(tmp_path: Path) -> None:
    a = write_paper_run(tmp_path / "a", {"ace": {"x": (0.1, 0.2, 0.3), "y": (0.3, 0.2, 0.1)}})
    code, stdout, stderr = run_cli("summarize", a, "--names", "Model A")
    assert code == 0, stderr
    assert "| Model A | 0.20 ± 0.14 |" in stdout
    code, stdout, _ = run_cli("summarize", a, "--out", tmp_path / "t.tex")
    assert code == 0 and r"\begin{tabular}" in (tmp_path / "t.tex").read_text()
    code, _, _ = run_cli("summarize", a, "--format", "csv", "--out", tmp_path / "t.txt")
    assert code == 0 and (tmp_path / "t.txt").read_text().startswith("run,ace_ET_mean")
    assert run_cli("summarize", a, "--metrics", "ace,foo")[0] == 2
    assert run_cli("summarize", a, "--names", "x,y")[0] == 2
    code, _, stderr = run_cli("summarize", a, "--metrics", "dice")
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert code == 1 and len(lines) == 1 and "mean_dice_raw.csv" in lines[0]


def test_compare_cli_outputs(tmp_path: Path) -> None:
    cases = {f"c{i}": (0.1 + i / 50, 0.2, 0.3 - i / 100) for i in range(8)}
    a = write_paper_run(tmp_path / "a", {"ace": cases})
    better = {key: (v[0] / 2, v[1] * 0.6, v[2] / 3) for key, v in cases.items() if key != "c0"}
    b = write_paper_run(tmp_path / "b", {"ace": better})
    code, stdout, stderr = run_cli("compare", a, b, "--out", tmp_path / "s.json", "--names", "A,B")
    assert code == 0, stderr
    assert "1 case(s) of A (A) are missing in B (B)" in stderr and "c0" in stderr
    assert "1 only in A" in stdout and "mean A" in stdout
    record = json.loads((tmp_path / "s.json").read_text())
    assert record["only_in_a"] == ["c0"] and record["test"] == "wilcoxon"
    rows = {(r["metric"], r["class"]): r for r in record["rows"]}
    assert rows["ace", "TC"]["n"] == 7 and rows["ace", "TC"]["n_missing_b"] == 1
    assert rows["ace", "TC"]["change_pct"] == pytest.approx(-40.0)
    assert rows["ace", "ET"]["effect_size"] == -1.0
    code, _, _ = run_cli("compare", a, b, "--test", "ttest", "--out", tmp_path / "s.csv", "-q")
    table = pd.read_csv(tmp_path / "s.csv")
    assert code == 0 and table["test"].unique().tolist() == ["ttest"]
    assert table["class"].tolist() == ["ET", "TC", "WT", "mean"]
    assert run_cli("compare", a, b, "--out", tmp_path / "s.txt")[0] == 2
    assert run_cli("compare", a, b, "--names", "only-one")[0] == 2
    assert run_cli("compare", a, b, "--metrics", "acc")[0] == 2
    code, _, stderr = run_cli("compare", a, tmp_path / "nope")
    assert code == 1 and "nope" in stderr and "Traceback" not in stderr


def test_compare_warnings_use_the_given_names(tmp_path: Path) -> None:
    cases = {f"c{i}": (0.1 + i / 50, 0.2, 0.3) for i in range(6)}
    a = write_paper_run(tmp_path / "run_a", {"ace": {**cases, "a_only": (0.1, 0.1, 0.1)}})
    b = write_paper_run(tmp_path / "run_b", {"ace": {**cases, "b_only": (0.2, 0.2, 0.2)}})
    code, _, stderr = run_cli("compare", a, b, "--names", "DSC,DSC+ACE", "-q")
    assert code == 0, stderr
    warnings = [line for line in stderr.splitlines() if line.strip()]
    assert warnings == [
        "warning: 1 case(s) of DSC (A) are missing in DSC+ACE (B) and left out of the pairs: "
        "a_only",
        "warning: 1 case(s) of DSC+ACE (B) are missing in DSC (A) and left out of the pairs: "
        "b_only",
    ]
    # Without --names, the folder names.
    code, _, stderr = run_cli("compare", a, b, "-q")
    assert code == 0 and "1 case(s) of run_a (A) are missing in run_b (B)" in stderr


def test_compare_of_runs_without_shared_cases_is_an_error(tmp_path: Path) -> None:
    a = write_paper_run(tmp_path / "a", {"ace": {f"c{i}": (0.1, 0.2, 0.3) for i in range(3)}})
    b = write_paper_run(tmp_path / "b", {"ace": {f"x{i}": (0.1, 0.2, 0.3) for i in range(4)}})
    out = tmp_path / "s.csv"
    code, stdout, stderr = run_cli("compare", a, b, "--names", "DSC,ACE", "--out", out)
    assert_user_error(
        code,
        stderr,
        f"{b}: the runs share no case ids (ACE: 4 case(s), e.g. x0, x1; DSC: 3 case(s), "
        "e.g. c0, c1)",
    )
    assert stdout == "" and not out.exists()


def test_compare_rejects_different_classes(tmp_path: Path) -> None:
    a = write_paper_run(tmp_path / "a", {"ace": {"x": (0.1, 0.2, 0.3)}})
    b = write_per_image(tmp_path / "b", [("x", "liver", 0.1, 0.9)])
    with pytest.raises(InputError, match="classes"):
        compare_runs(a, b, metrics=["ace"])


def test_summarize_reproduces_paper_tables_1_and_2() -> None:
    summary = summarize_folders(
        [REFERENCE / run for run in PAPER_RUNS], names=PAPER_RUNS, metrics=["ace", "dice"]
    )
    ace_means = [round(summary.cell(run, "ace", "mean")[0], 2) for run in PAPER_RUNS]
    assert ace_means == [0.13, 0.12, 0.25, 0.14, 0.20, 0.14]
    markdown = render_summary(summary, "markdown")
    for table in (TABLE_2_ACE, TABLE_1_DICE):
        for run, cells in table.items():
            assert f"| {run} | " + " | ".join(cells) + " |" in markdown
    assert summary.cell("baseline_dice", "dice", "ET")[2] == 199  # one case has no ET


def test_compare_reproduces_the_headline_change() -> None:
    comparison = compare_runs(REFERENCE / "baseline_dice", REFERENCE / "hardl1ace_dice")
    table = comparison.table.set_index(["metric", "class"])
    ace = table.loc["ace", "mean"]
    assert ace["mean_a"] == pytest.approx(0.2468, abs=5e-5)
    assert ace["mean_b"] == pytest.approx(0.1367, abs=5e-5)
    assert round(ace["change_pct"]) == -45
    assert ace["p_adjusted"] < 0.01 and ace["effect_size"] < -0.9
    a = pd.read_csv(REFERENCE / "baseline_dice" / "ace_raw.csv")
    b = pd.read_csv(REFERENCE / "hardl1ace_dice" / "ace_raw.csv").sample(frac=1, random_state=0)
    merged = a.merge(b, on="filename", suffixes=("_a", "_b"))
    assert ace["p"] == pytest.approx(
        scipy_stats.wilcoxon(merged["mean_b"], merged["mean_a"]).pvalue, rel=1e-12
    )
    assert round(table.loc["mce", "mean"]["change_pct"]) == -54  # paper: "55% reduction in MCE"
    assert table.loc["dice", "ET"][["n", "n_nan"]].tolist() == [199, 1]
    # The paper's "no statistically significant difference (p = 0.61)" in Dice is a paired t-test.
    ttest = compare_runs(
        REFERENCE / "baseline_dice", REFERENCE / "hardl1ace_dice", metrics=["dice"], test="ttest"
    )
    dice = ttest.table.set_index("class").loc["mean"]
    assert round(dice["p"], 2) == 0.61


def test_volume_suffixes_match_the_readers() -> None:
    from calibkit.io.volumes import PREDICTION_SUFFIXES
    from calibkit.runs import _VOLUME_SUFFIXES

    assert set(_VOLUME_SUFFIXES) == set(PREDICTION_SUFFIXES)


def test_readme_reproduced_results_commands_run_as_written(monkeypatch: pytest.MonkeyPatch) -> None:
    """The README's "Reproduced results" block runs on a clone and prints the table below it."""
    readme = (SAMPLE_DATA.parent / "README.md").read_text(encoding="utf-8")
    section = readme.split("### Reproduced results", 1)[1]
    block = section.split("```sh\n", 1)[1].split("```", 1)[0]
    commands = [shlex.split(line) for line in block.replace("\\\n", " ").splitlines()]
    assert [command[0] for command in commands] == ["cd", "calibkit"]
    monkeypatch.chdir(SAMPLE_DATA.parent / commands[0][1])
    code, stdout, stderr = run_cli(*commands[1][1:])
    assert code == 0, stderr
    after_block = section.split("```", 2)[2]
    first_table = after_block[after_block.index("\n|") + 1 :].split("\n\n", 1)[0]
    rows = first_table.splitlines()
    assert len(rows) == 8  # header, rule and the six runs
    for row in rows:
        assert row in stdout, row
