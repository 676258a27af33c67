"""Paired statistics: scipy's p-values, pairing by case id, Holm and rank-biserial by hand."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
from scipy import stats as scipy_stats

from calibkit.stats import (
    COMPARISON_COLUMNS,
    align_pairs,
    compare_tables,
    holm_adjust,
    paired_test,
    rank_biserial,
)


def reference_rank_biserial(d: np.ndarray) -> float:
    """Definition with ranks found by counting (no scipy): average rank of |d| among non-zero."""
    d = d[d != 0]
    magnitude = np.abs(d)
    ranks = np.array([(magnitude < m).sum() + ((magnitude == m).sum() + 1) / 2 for m in magnitude])
    positive, negative = ranks[d > 0].sum(), ranks[d < 0].sum()
    return float((positive - negative) / (positive + negative))


def reference_holm(p: list[float]) -> list[float]:
    """Holm by its definition: adj_i = max over j ranked at or before i of min(1, (m-r_j+1) p_j)."""
    m = len(p)
    order = sorted(range(m), key=lambda i: p[i])
    rank = {index: r for r, index in enumerate(order, start=1)}
    return [
        max(min(1.0, (m - rank[j] + 1) * p[j]) for j in range(m) if rank[j] <= rank[i])
        for i in range(m)
    ]


def test_rank_biserial_by_hand() -> None:
    # ranks of |d|: 1, 2, 3, 4, 5; R+ = 1 + 3 + 4 = 8, R- = 2 + 5 = 7; r = 1 / 15
    assert rank_biserial([1.0, -2.0, 3.0, 4.0, -5.0]) == pytest.approx(1 / 15)
    # zero dropped; |d| = 1, 1, 2 -> ranks 1.5, 1.5, 3; R+ = 4.5, R- = 1.5; r = 3 / 6
    assert rank_biserial([0.0, 1.0, -1.0, 2.0]) == pytest.approx(0.5)
    assert rank_biserial([0.2, 0.1]) == 1.0
    assert rank_biserial([-0.2, -0.1, np.nan]) == -1.0
    assert np.isnan(rank_biserial([0.0, 0.0]))
    assert np.isnan(rank_biserial([]))


def test_rank_biserial_matches_definition_and_wilcoxon_sum(rng: np.random.Generator) -> None:
    for _ in range(20):
        d = np.round(rng.normal(size=int(rng.integers(3, 30))), 1)  # rounding makes ties, zeros
        if not (d != 0).any():
            continue
        assert rank_biserial(d) == pytest.approx(reference_rank_biserial(d), abs=1e-12)
        # scipy's one-sided statistic is R+; r = (2 R+ - T) / T with T = n'(n'+1)/2
        nonzero = d[d != 0]
        total = nonzero.size * (nonzero.size + 1) / 2
        r_plus = scipy_stats.wilcoxon(nonzero, alternative="greater", method="asymptotic").statistic
        assert rank_biserial(d) == pytest.approx((2 * r_plus - total) / total, abs=1e-12)


def test_holm_by_hand() -> None:
    # sorted 0.005, 0.01, 0.03, 0.04 -> x4, x3, x2, x1 = 0.02, 0.03, 0.06, 0.04 -> running max
    assert holm_adjust([0.01, 0.04, 0.03, 0.005]).tolist() == pytest.approx(
        [0.03, 0.06, 0.06, 0.02]
    )
    assert holm_adjust([0.5, 0.6]).tolist() == [1.0, 1.0]
    assert holm_adjust([0.04]).tolist() == [0.04]
    nan_kept = holm_adjust([0.01, np.nan, 0.04])  # NaN is not part of the family: m = 2
    assert nan_kept[0] == pytest.approx(0.02) and np.isnan(nan_kept[1])
    assert nan_kept[2] == pytest.approx(0.04)
    assert holm_adjust([]).shape == (0,)


def test_holm_matches_definition(rng: np.random.Generator) -> None:
    for size in (2, 5, 16):
        p = list(rng.uniform(0, 0.2, size=size))
        p[0] = p[-1]  # a tie
        assert holm_adjust(p).tolist() == pytest.approx(reference_holm(p), abs=1e-15)


@pytest.mark.parametrize("test", ["wilcoxon", "ttest"])
def test_paired_test_equals_scipy(test: str, rng: np.random.Generator) -> None:
    a = rng.uniform(0.1, 0.4, size=40)
    b = a - rng.normal(0.03, 0.05, size=40)
    b[:3] = a[:3]  # zero differences
    result = paired_test(a, b, test)  # type: ignore[arg-type]
    expected = scipy_stats.wilcoxon(b, a) if test == "wilcoxon" else scipy_stats.ttest_rel(b, a)
    assert result.p == pytest.approx(expected.pvalue, rel=1e-12)
    assert result.statistic == pytest.approx(expected.statistic, rel=1e-12)
    assert result.n == 40
    assert result.mean_a == pytest.approx(a.mean()) and result.mean_b == pytest.approx(b.mean())
    assert result.change_pct == pytest.approx(100 * (b.mean() - a.mean()) / a.mean())
    assert result.median_diff == pytest.approx(np.median(b - a))
    assert result.effect_size == pytest.approx(reference_rank_biserial(b - a))


def test_paired_test_small_and_invalid() -> None:
    result = paired_test([0.30, 0.25, 0.20, 0.28], [0.15, 0.14, 0.12, 0.13])
    assert result.p == pytest.approx(2 / 16)  # exact: all 4 signs negative, two-sided
    assert result.effect_size == -1.0
    one = paired_test([0.2], [0.1])
    assert one.n == 1 and np.isnan(one.p) and one.median_diff == pytest.approx(-0.1)
    empty = paired_test([], [])
    assert empty.n == 0 and np.isnan(empty.mean_a) and np.isnan(empty.p)
    assert np.isnan(paired_test([0.0, 0.0], [0.1, 0.2]).change_pct)  # mean A is 0
    with pytest.raises(ValueError, match="NaN"):
        paired_test([0.1, np.nan], [0.1, 0.2])
    with pytest.raises(ValueError, match="length"):
        paired_test([0.1, 0.2], [0.1])
    with pytest.raises(ValueError, match="unknown test"):
        paired_test([0.1, 0.2], [0.1, 0.3], "sign")  # type: ignore[arg-type]


def test_align_pairs_by_id_counts_missing_and_nan() -> None:
    pairs = align_pairs(
        ["c", "a", "b", "d"],
        [3.0, 1.0, np.nan, 4.0],
        ["a", "e", "b", "c"],
        [10.0, 50.0, 20.0, 30.0],
    )
    assert pairs.case_ids == ("a", "c")
    assert pairs.a.tolist() == [1.0, 3.0] and pairs.b.tolist() == [10.0, 30.0]
    assert pairs.missing_in_a == ("e",) and pairs.missing_in_b == ("d",)
    assert pairs.nan_pairs == ("b",)
    with pytest.raises(ValueError, match="repeat"):
        align_pairs(["a", "a"], [1.0, 2.0], ["a"], [1.0])
    with pytest.raises(ValueError, match="values"):
        align_pairs(["a", "b"], [1.0], ["a"], [1.0])


def tidy(values: dict[tuple[str, str], dict[str, float]]) -> pd.DataFrame:
    """{(metric, class): {case_id: value}} -> case_id, class, metric, value."""
    rows = [
        {"case_id": case, "class": name, "metric": metric, "value": value}
        for (metric, name), cases in values.items()
        for case, value in cases.items()
    ]
    return pd.DataFrame(rows)


@pytest.fixture
def two_runs(rng: np.random.Generator) -> tuple[pd.DataFrame, pd.DataFrame]:
    cases = [f"case{i:02d}" for i in range(30)]
    a: dict[tuple[str, str], dict[str, float]] = {}
    b: dict[tuple[str, str], dict[str, float]] = {}
    for metric, name in itertools.product(("ace", "dice"), ("ET", "WT", "mean")):
        base = rng.uniform(0.1, 0.9, size=len(cases))
        a[metric, name] = dict(zip(cases, base, strict=True))
        b[metric, name] = dict(zip(cases, base + rng.normal(-0.02, 0.05, size=30), strict=True))
    del b["ace", "ET"]["case03"]  # missing in B
    del a["ace", "ET"]["case07"]  # missing in A
    b["dice", "WT"]["case11"] = float("nan")  # NaN pair
    return tidy(a), tidy(b)


def test_compare_tables_equals_scipy_per_row(two_runs: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    table_a, table_b = two_runs
    table = compare_tables(
        table_a, table_b, metrics=["ace", "dice"], classes=["ET", "WT", "mean"], test="wilcoxon"
    )
    assert list(table.columns) == list(COMPARISON_COLUMNS)
    assert len(table) == 6
    for row in table.to_dict("records"):
        a = table_a[(table_a["metric"] == row["metric"]) & (table_a["class"] == row["class"])]
        b = table_b[(table_b["metric"] == row["metric"]) & (table_b["class"] == row["class"])]
        merged = a.merge(b, on="case_id", suffixes=("_a", "_b")).dropna()
        assert row["n"] == len(merged)
        expected = scipy_stats.wilcoxon(merged["value_b"], merged["value_a"])
        assert row["p"] == pytest.approx(expected.pvalue, rel=1e-12)
        assert row["mean_b"] == pytest.approx(merged["value_b"].mean())
    by_key = table.set_index(["metric", "class"])
    assert by_key.loc[("ace", "ET"), ["n", "n_missing_a", "n_missing_b", "n_nan"]].tolist() == [
        28,
        1,
        1,
        0,
    ]
    assert by_key.loc[("dice", "WT"), ["n", "n_nan"]].tolist() == [29, 1]
    assert table["p_adjusted"].tolist() == pytest.approx(reference_holm(table["p"].tolist()))
    none = compare_tables(
        table_a, table_b, metrics=["ace"], classes=["ET"], correction="none", test="ttest"
    )
    assert none["p_adjusted"].tolist() == none["p"].tolist()


def test_compare_tables_ignores_row_order(two_runs: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    table_a, table_b = two_runs
    options = {"metrics": ["ace", "dice"], "classes": ["ET", "WT", "mean"]}
    reference = compare_tables(table_a, table_b, **options)  # type: ignore[arg-type]
    for seed in range(3):
        shuffled_a = table_a.sample(frac=1.0, random_state=seed).reset_index(drop=True)
        shuffled_b = table_b.sample(frac=1.0, random_state=seed + 10).reset_index(drop=True)
        result = compare_tables(shuffled_a, shuffled_b, **options)  # type: ignore[arg-type]
        pd.testing.assert_frame_equal(result, reference)


def test_compare_tables_rejects_unknown_correction(
    two_runs: tuple[pd.DataFrame, pd.DataFrame],
) -> None:
    with pytest.raises(ValueError, match="correction"):
        compare_tables(*two_runs, metrics=["ace"], classes=["ET"], correction="bonferroni")  # type: ignore[arg-type]
