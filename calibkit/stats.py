"""Paired statistics between two runs: tests, Holm adjustment, rank-biserial effect size.

Pure: arrays and tidy tables in, arrays, frozen dataclasses and tables out (SPEC.md §6).
Two runs are paired **by case id**, never by row order; cases present in one run
only and pairs with a NaN value are counted and reported, never dropped silently.

* Differences are ``d = B - A`` (a negative ACE difference means run B is better
  calibrated).
* Wilcoxon signed-rank (default): ``scipy.stats.wilcoxon`` two-sided with scipy's
  defaults (zero differences dropped); paired t-test: ``scipy.stats.ttest_rel``.
* Effect size: matched-pairs rank-biserial correlation
  ``r = (R+ - R-) / (R+ + R-)`` over the ranks of ``|d|`` (zero differences
  dropped, ties given average ranks); ``r = 1`` when B is larger in every pair,
  ``-1`` when smaller in every pair.
* Holm's step-down adjustment across the family of tests of one call.

scipy and pandas are imported inside the functions that need them.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "COMPARISON_COLUMNS",
    "TESTS",
    "AlignedPairs",
    "PairedResult",
    "align_pairs",
    "compare_tables",
    "holm_adjust",
    "paired_test",
    "rank_biserial",
]

TestName = Literal["wilcoxon", "ttest"]
TESTS: tuple[TestName, ...] = ("wilcoxon", "ttest")
CorrectionName = Literal["holm", "none"]

COMPARISON_COLUMNS = (
    "metric",
    "class",
    "n",
    "n_missing_a",
    "n_missing_b",
    "n_nan",
    "mean_a",
    "mean_b",
    "change_pct",
    "median_diff",
    "effect_size",
    "statistic",
    "p",
    "p_adjusted",
)


def rank_biserial(differences: npt.ArrayLike) -> float:
    """Matched-pairs rank-biserial correlation of paired differences ``B - A``.

    ``r = (R+ - R-) / (R+ + R-)``, where ``R+`` (``R-``) sums the ranks of ``|d|``
    over positive (negative) differences; zero differences are dropped (as the
    Wilcoxon test drops them) and tied ``|d|`` share their average rank.

    Args:
        differences: paired differences; NaN values are ignored.

    Returns:
        ``r`` in ``[-1, 1]``; NaN when no non-zero difference is left.

    Example:
        >>> rank_biserial([1.0, -2.0, 3.0, 4.0, -5.0])  # (8 - 7) / 15
        0.06666666666666667
        >>> rank_biserial([-0.1, -0.2, -0.3])
        -1.0
    """
    from scipy.stats import rankdata

    d = np.asarray(differences, dtype=np.float64).ravel()
    d = d[~np.isnan(d) & (d != 0)]
    if d.size == 0:
        return float("nan")
    ranks = rankdata(np.abs(d))
    positive = float(ranks[d > 0].sum())
    negative = float(ranks[d < 0].sum())
    return (positive - negative) / (positive + negative)


def holm_adjust(p_values: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """Holm's step-down adjusted p-values (family-wise error control).

    With the ``m`` finite p-values sorted ascending, ``p_(1) <= ... <= p_(m)``,
    ``adj_(i) = max_{j <= i} min(1, (m - j + 1) p_(j))``. NaN entries are not part
    of the family and stay NaN.

    Args:
        p_values: raw p-values, any shape.

    Returns:
        Adjusted p-values, same shape.

    Example:
        >>> holm_adjust([0.01, 0.04, 0.03, 0.005]).round(4).tolist()
        [0.03, 0.06, 0.06, 0.02]
    """
    p = np.asarray(p_values, dtype=np.float64)
    flat = p.ravel()
    adjusted = np.full(flat.shape, np.nan)
    finite = np.flatnonzero(~np.isnan(flat))
    m = finite.size
    if m:
        order = finite[np.argsort(flat[finite], kind="stable")]
        scaled = np.minimum(1.0, (m - np.arange(m)) * flat[order])
        adjusted[order] = np.maximum.accumulate(scaled)
    return adjusted.reshape(p.shape)


@dataclass(frozen=True)
class AlignedPairs:
    """Two runs' values of one metric and class, paired by case id.

    Attributes:
        case_ids: ids of the complete pairs (both values finite), sorted.
        a: run A's values for ``case_ids``.
        b: run B's values for ``case_ids``.
        missing_in_a: ids that only run B has.
        missing_in_b: ids that only run A has.
        nan_pairs: ids present in both runs with a NaN value in either.
    """

    case_ids: tuple[str, ...]
    a: npt.NDArray[np.float64]
    b: npt.NDArray[np.float64]
    missing_in_a: tuple[str, ...]
    missing_in_b: tuple[str, ...]
    nan_pairs: tuple[str, ...]


def align_pairs(
    ids_a: Sequence[str],
    values_a: npt.ArrayLike,
    ids_b: Sequence[str],
    values_b: npt.ArrayLike,
) -> AlignedPairs:
    """Pair two runs' per-case values by case id (row order does not matter).

    Args:
        ids_a: case ids of run A (unique).
        values_a: run A's values, one per id.
        ids_b: case ids of run B (unique).
        values_b: run B's values, one per id.

    Returns:
        :class:`AlignedPairs`.

    Raises:
        ValueError: an id repeats within a run, or ids and values differ in length.

    Example:
        >>> pairs = align_pairs(["x", "y", "z"], [1.0, 2.0, 3.0], ["z", "x"], [30.0, 10.0])
        >>> pairs.case_ids, pairs.b.tolist(), pairs.missing_in_b
        (('x', 'z'), [10.0, 30.0], ('y',))
    """
    map_a = _value_map(ids_a, values_a, "A")
    map_b = _value_map(ids_b, values_b, "B")
    common = sorted(map_a.keys() & map_b.keys())
    complete = [c for c in common if not (np.isnan(map_a[c]) or np.isnan(map_b[c]))]
    return AlignedPairs(
        case_ids=tuple(complete),
        a=np.array([map_a[c] for c in complete], dtype=np.float64),
        b=np.array([map_b[c] for c in complete], dtype=np.float64),
        missing_in_a=tuple(sorted(map_b.keys() - map_a.keys())),
        missing_in_b=tuple(sorted(map_a.keys() - map_b.keys())),
        nan_pairs=tuple(c for c in common if np.isnan(map_a[c]) or np.isnan(map_b[c])),
    )


def _value_map(ids: Sequence[str], values: npt.ArrayLike, run: str) -> dict[str, float]:
    array = np.asarray(values, dtype=np.float64).ravel()
    if len(ids) != array.size:
        raise ValueError(f"run {run}: {len(ids)} case ids but {array.size} values")
    mapping = {str(case): float(value) for case, value in zip(ids, array, strict=True)}
    if len(mapping) != len(ids):
        raise ValueError(f"run {run}: case ids repeat")
    return mapping


@dataclass(frozen=True)
class PairedResult:
    """A paired test of run B against run A over complete pairs.

    Attributes:
        n: number of pairs.
        mean_a: mean of A over the pairs.
        mean_b: mean of B over the pairs.
        change_pct: ``100 (mean_b - mean_a) / mean_a``; NaN when ``mean_a`` is 0.
        median_diff: median of ``B - A``.
        effect_size: matched-pairs rank-biserial correlation (:func:`rank_biserial`).
        statistic: the test statistic (Wilcoxon ``W`` or Student ``t``).
        p: two-sided p-value; NaN with fewer than two pairs.
    """

    n: int
    mean_a: float
    mean_b: float
    change_pct: float
    median_diff: float
    effect_size: float
    statistic: float
    p: float


def paired_test(a: npt.ArrayLike, b: npt.ArrayLike, test: TestName = "wilcoxon") -> PairedResult:
    """Two-sided paired test of ``b`` against ``a`` (already aligned, finite).

    Args:
        a: run A's values.
        b: run B's values, same length and order as ``a``.
        test: ``"wilcoxon"`` (``scipy.stats.wilcoxon``) or ``"ttest"``
            (``scipy.stats.ttest_rel``), both with scipy's defaults.

    Returns:
        :class:`PairedResult`.

    Raises:
        ValueError: unknown test, lengths differ, or a value is NaN.

    Example:
        >>> result = paired_test([0.30, 0.25, 0.20, 0.28], [0.15, 0.14, 0.12, 0.13])
        >>> round(result.change_pct, 1), result.effect_size, result.p
        (-47.6, -1.0, 0.125)
    """
    from scipy.stats import ttest_rel, wilcoxon

    if test not in TESTS:
        raise ValueError(f"unknown test {test!r}; choose one of {', '.join(TESTS)}")
    x = np.asarray(a, dtype=np.float64).ravel()
    y = np.asarray(b, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"paired samples differ in length: {x.size} vs {y.size}")
    if np.isnan(x).any() or np.isnan(y).any():
        raise ValueError("paired samples hold NaN; align them with align_pairs first")
    n = int(x.size)
    if n == 0:
        nan = float("nan")
        return PairedResult(0, nan, nan, nan, nan, nan, nan, nan)
    d = y - x
    mean_a, mean_b = float(x.mean()), float(y.mean())
    change = 100.0 * (mean_b - mean_a) / mean_a if mean_a != 0 else float("nan")
    statistic, p = float("nan"), float("nan")
    if n >= 2:
        with warnings.catch_warnings():
            # Constant or all-zero differences: scipy warns and returns its own value.
            warnings.simplefilter("ignore", RuntimeWarning)
            outcome = wilcoxon(y, x) if test == "wilcoxon" else ttest_rel(y, x)
        statistic, p = float(outcome.statistic), float(outcome.pvalue)
    return PairedResult(
        n=n,
        mean_a=mean_a,
        mean_b=mean_b,
        change_pct=change,
        median_diff=float(np.median(d)),
        effect_size=rank_biserial(d),
        statistic=statistic,
        p=p,
    )


def compare_tables(
    table_a: pd.DataFrame,
    table_b: pd.DataFrame,
    *,
    metrics: Sequence[str],
    classes: Sequence[str],
    test: TestName = "wilcoxon",
    correction: CorrectionName = "holm",
) -> pd.DataFrame:
    """Paired tests of run B against run A for every metric and class.

    Args:
        table_a: run A as a tidy table ``case_id, class, metric, value``
            (one row per case, class and metric; see :mod:`calibkit.runs`).
        table_b: run B, same layout.
        metrics: metrics to test, in the order of the output rows.
        classes: classes to test (``"mean"`` for the per-case mean over classes).
        test: ``"wilcoxon"`` or ``"ttest"``.
        correction: ``"holm"`` adjusts across all rows of this call; ``"none"``
            copies ``p``.

    Returns:
        One row per (metric, class), columns :data:`COMPARISON_COLUMNS`:
        ``n`` complete pairs, ``n_missing_a`` / ``n_missing_b`` cases only the
        other run has, ``n_nan`` pairs with a NaN value, the means over the
        pairs, ``change_pct`` (% change of the mean from A to B), ``median_diff``
        (median of B - A), ``effect_size`` (rank-biserial), ``statistic``, ``p``
        and ``p_adjusted``.

    Raises:
        ValueError: unknown correction, or a case id repeats for one metric and class.
    """
    import pandas as pd

    if correction not in ("holm", "none"):
        raise ValueError(f"unknown correction {correction!r}; choose holm or none")
    groups_a = _groups(table_a)
    groups_b = _groups(table_b)
    rows: list[dict[str, object]] = []
    for metric in metrics:
        for name in classes:
            ids_a, values_a = groups_a.get((metric, name), ((), np.empty(0)))
            ids_b, values_b = groups_b.get((metric, name), ((), np.empty(0)))
            pairs = align_pairs(ids_a, values_a, ids_b, values_b)
            result = paired_test(pairs.a, pairs.b, test)
            rows.append(
                {
                    "metric": metric,
                    "class": name,
                    "n": result.n,
                    "n_missing_a": len(pairs.missing_in_a),
                    "n_missing_b": len(pairs.missing_in_b),
                    "n_nan": len(pairs.nan_pairs),
                    "mean_a": result.mean_a,
                    "mean_b": result.mean_b,
                    "change_pct": result.change_pct,
                    "median_diff": result.median_diff,
                    "effect_size": result.effect_size,
                    "statistic": result.statistic,
                    "p": result.p,
                }
            )
    table = pd.DataFrame(rows, columns=list(COMPARISON_COLUMNS[:-1]))
    p = table["p"].to_numpy(dtype=np.float64)
    table["p_adjusted"] = holm_adjust(p) if correction == "holm" else p
    return table


def _groups(
    table: pd.DataFrame,
) -> dict[tuple[str, str], tuple[tuple[str, ...], npt.NDArray[np.float64]]]:
    groups: dict[tuple[str, str], tuple[tuple[str, ...], npt.NDArray[np.float64]]] = {}
    for (metric, name), group in table.groupby(["metric", "class"], sort=False):
        groups[str(metric), str(name)] = (
            tuple(group["case_id"].astype(str)),
            group["value"].to_numpy(dtype=np.float64),
        )
    return groups
