"""The CI release gate: bounds on a run's calibration and Dice, and their reports.

A bound reads ``METRIC=VALUE`` or ``METRIC:CLASS=VALUE`` (``ace=0.15``,
``dice:ET=0.7``) with METRIC one of ace, ece, mce, dice. Kinds:

* ``max``: the statistic (mean or median over cases, NaN cases left out) must be
  ``<= VALUE``; ``min``: ``>= VALUE``;
* ``max_increase`` / ``max_decrease`` (against a baseline run): the statistic of
  the run minus (resp. of the baseline minus) that of the baseline, both over the
  cases the two runs share, must be ``<= VALUE``.

Without a class a bound applies to the per-case mean over classes (class
``mean``), or with ``per_class`` to every class. A NaN statistic fails its bound.

Reports render as JUnit XML (one test case per bound and class) and as Markdown
(for ``$GITHUB_STEP_SUMMARY``); values there and in the messages read as
:func:`calibkit.formatting.format_number` writes them (4 decimals, or 3
significant figures for small values such as ECE).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import numpy.typing as npt

from calibkit.errors import InputError
from calibkit.formatting import format_number
from calibkit.metrics import METRICS
from calibkit.runs import MEAN_CLASS, _no_shared_cases, load_run

if TYPE_CHECKING:
    from calibkit.runs import Run

__all__ = [
    "STATISTICS",
    "Bound",
    "Check",
    "GateReport",
    "check_run",
    "gate_folder",
    "junit_xml",
    "markdown_summary",
    "parse_bound",
    "parse_bounds",
]

BoundKind = Literal["max", "min", "max_increase", "max_decrease"]
Statistic = Literal["mean", "median"]
STATISTICS: tuple[Statistic, ...] = ("mean", "median")
_OPTION = {
    "max": "--max",
    "min": "--min",
    "max_increase": "--max-increase",
    "max_decrease": "--max-decrease",
}
_RELATIVE: tuple[BoundKind, ...] = ("max_increase", "max_decrease")


@dataclass(frozen=True)
class Bound:
    """One bound of the gate.

    Attributes:
        kind: ``"max"``, ``"min"``, ``"max_increase"`` or ``"max_decrease"``.
        metric: ``ace``, ``ece``, ``mce`` or ``dice``.
        limit: the bound's value.
        class_name: the class it applies to; ``None`` for the mean (or every class
            with ``per_class``).
    """

    kind: BoundKind
    metric: str
    limit: float
    class_name: str | None = None

    @property
    def relative(self) -> bool:
        """Whether the bound compares against a baseline."""
        return self.kind in _RELATIVE

    @property
    def text(self) -> str:
        """The bound as given: ``ace=0.15`` or ``dice:ET=0.7``."""
        target = self.metric if self.class_name is None else f"{self.metric}:{self.class_name}"
        return f"{target}={self.limit:g}"


def parse_bound(text: str, kind: BoundKind = "max") -> Bound:
    """Parse ``METRIC=VALUE`` or ``METRIC:CLASS=VALUE``.

    Raises:
        ValueError: with a message saying what is wrong and what is expected.

    Example:
        >>> parse_bound("ace=0.15")
        Bound(kind='max', metric='ace', limit=0.15, class_name=None)
        >>> parse_bound("Dice:ET=0.7", "min").class_name
        'ET'
    """
    if kind not in _OPTION:
        raise ValueError(f"unknown bound kind {kind!r}")
    example = "ace=0.15" if kind != "min" else "dice=0.8"
    if text.count("=") != 1:
        raise ValueError(f"{text!r} is not METRIC=VALUE (e.g. {example})")
    target, raw_value = (part.strip() for part in text.split("="))
    metric, _, class_name = target.partition(":")
    metric = metric.strip().lower()
    class_name = class_name.strip()
    if metric not in METRICS:
        raise ValueError(f"{text!r}: unknown metric {metric!r}; use one of {', '.join(METRICS)}")
    if ":" in target and not class_name:
        raise ValueError(f"{text!r}: empty class after ':' (e.g. {metric}:ET=0.2)")
    try:
        limit = float(raw_value)
    except ValueError:
        raise ValueError(f"{text!r}: {raw_value!r} is not a number (e.g. {example})") from None
    if not math.isfinite(limit):
        raise ValueError(f"{text!r}: the value must be a finite number")
    if kind in ("max", "min") and not 0.0 <= limit <= 1.0:
        raise ValueError(f"{text!r}: {metric} lies in [0, 1]; give a value in that range")
    return Bound(kind, metric, limit, class_name or None)


def parse_bounds(
    *,
    max_bounds: Sequence[str] = (),
    min_bounds: Sequence[str] = (),
    max_increase: Sequence[str] = (),
    max_decrease: Sequence[str] = (),
) -> tuple[Bound, ...]:
    """Parse every bound of a gate call; the same target may not repeat within a kind.

    Raises:
        ValueError: a bound is malformed or repeats (message names the option).
    """
    bounds: list[Bound] = []
    seen: set[tuple[str, str, str | None]] = set()
    groups: tuple[tuple[BoundKind, Sequence[str]], ...] = (
        ("max", max_bounds),
        ("min", min_bounds),
        ("max_increase", max_increase),
        ("max_decrease", max_decrease),
    )
    for kind, texts in groups:
        for text in texts:
            try:
                bound = parse_bound(text, kind)
            except ValueError as error:
                raise ValueError(f"{_OPTION[kind]} {error}") from None
            key = (kind, bound.metric, bound.class_name)
            if key in seen:
                raise ValueError(f"{_OPTION[kind]} {text!r}: this bound is given twice")
            seen.add(key)
            bounds.append(bound)
    return tuple(bounds)


@dataclass(frozen=True)
class Check:
    """One bound evaluated on one class.

    Attributes:
        bound: the bound.
        class_name: the class checked (``"mean"``: per-case mean over classes).
        statistic: ``"mean"`` or ``"median"`` over cases.
        value: the run's statistic (relative bounds: over the shared cases).
        baseline: the baseline's statistic over the shared cases (relative bounds only).
        n: cases with a finite value behind ``value``.
        passed: whether the bound holds (a NaN value fails).
    """

    bound: Bound
    class_name: str
    statistic: Statistic
    value: float
    baseline: float | None
    n: int
    passed: bool

    @property
    def change(self) -> float:
        """``value - baseline`` (NaN without a baseline)."""
        return float("nan") if self.baseline is None else self.value - self.baseline

    @property
    def name(self) -> str:
        """Test-case name, e.g. ``ace <= 0.15 [mean]``."""
        b = self.bound
        relation = {
            "max": f"{b.metric} <= {b.limit:g}",
            "min": f"{b.metric} >= {b.limit:g}",
            "max_increase": f"{b.metric} increase vs baseline <= {b.limit:g}",
            "max_decrease": f"{b.metric} decrease vs baseline <= {b.limit:g}",
        }[b.kind]
        return f"{relation} [{self.class_name}]"

    @property
    def message(self) -> str:
        """One line saying what was measured against which limit."""
        b = self.bound
        what = f"{b.metric} [{self.class_name}]"
        option = f"({self.statistic} over {self.n} cases; {_OPTION[b.kind]} {b.text})"
        if np.isnan(self.value) or (self.baseline is not None and np.isnan(self.baseline)):
            return f"{what}: no finite case values ({_OPTION[b.kind]} {b.text})"
        if b.kind in ("max", "min"):
            relation = {
                ("max", True): "<=",
                ("max", False): ">",
                ("min", True): ">=",
                ("min", False): "<",
            }[b.kind, self.passed]
            return f"{what} = {format_number(self.value, 4)} {relation} {b.limit:g} {option}"
        baseline = math.nan if self.baseline is None else self.baseline
        delta = self.change if b.kind == "max_increase" else -self.change
        word = "rise" if b.kind == "max_increase" else "fall"
        relation = "<=" if self.passed else ">"
        return (
            f"{what} = {format_number(self.value, 4)} vs baseline "
            f"{format_number(baseline, 4)}: {word} {format_number(delta, 4, sign=True)} "
            f"{relation} {b.limit:g} {option}"
        )


@dataclass(frozen=True)
class GateReport:
    """All checks of one gate call.

    Attributes:
        run: the run's name.
        path: its folder.
        statistic: ``"mean"`` or ``"median"``.
        checks: one per bound and class, in bound order.
        baseline: the baseline's name, if any.
        notes: remarks for the user (e.g. cases only one run has).
    """

    run: str
    path: Path
    statistic: Statistic
    checks: tuple[Check, ...]
    baseline: str | None = None
    notes: tuple[str, ...] = ()

    @property
    def passed(self) -> bool:
        """Whether every bound holds."""
        return all(check.passed for check in self.checks)

    @property
    def failures(self) -> tuple[Check, ...]:
        """The checks that failed."""
        return tuple(check for check in self.checks if not check.passed)


def _statistic(values: npt.NDArray[np.float64], statistic: Statistic) -> tuple[float, int]:
    finite = values[~np.isnan(values)]
    if finite.size == 0:
        return float("nan"), 0
    value = float(finite.mean()) if statistic == "mean" else float(np.median(finite))
    return value, int(finite.size)


def check_run(
    run: Run,
    bounds: Sequence[Bound],
    *,
    per_class: bool = False,
    statistic: Statistic = "mean",
    baseline: Run | None = None,
) -> GateReport:
    """Evaluate bounds on a run (and, for relative bounds, against a baseline run).

    Args:
        run: the run to gate (:func:`calibkit.runs.load_run`).
        bounds: parsed bounds (:func:`parse_bounds`).
        per_class: apply class-less bounds to every class instead of the mean.
        statistic: ``"mean"`` or ``"median"`` over cases.
        baseline: the baseline run; required by relative bounds.

    Returns:
        :class:`GateReport`.

    Raises:
        ValueError: no bounds, a relative bound without baseline, unknown statistic.
        InputError: a run lacks a metric or a class named by a bound, or relative
            bounds meet a baseline that shares no case id with the run.
    """

    if statistic not in STATISTICS:
        raise ValueError(f"unknown statistic {statistic!r}; use mean or median")
    if not bounds:
        raise ValueError("no bounds given; add --max, --min, --max-increase or --max-decrease")
    if baseline is None and any(bound.relative for bound in bounds):
        raise ValueError("--max-increase / --max-decrease need a baseline (--against DIR)")
    run.require([bound.metric for bound in bounds])
    relative = [bound for bound in bounds if bound.relative]
    if baseline is not None and relative:
        baseline.require([bound.metric for bound in relative])
        if not set(run.case_ids) & set(baseline.case_ids):
            raise InputError(baseline.path, _no_shared_cases(baseline, run))
    known = (*run.class_names, MEAN_CLASS)
    checks = []
    for bound in bounds:
        if bound.class_name is not None:
            if bound.class_name not in known:
                raise InputError(
                    run.path,
                    f"has no class {bound.class_name!r} (bound {bound.text}); "
                    f"classes: {', '.join(known)}",
                )
            targets: tuple[str, ...] = (bound.class_name,)
        else:
            targets = run.class_names if per_class else (MEAN_CLASS,)
        for name in targets:
            checks.append(_check(run, bound, name, statistic, baseline))
    notes: list[str] = []
    if baseline is not None and relative:
        only_run = set(run.case_ids) - set(baseline.case_ids)
        only_base = set(baseline.case_ids) - set(run.case_ids)
        if only_run or only_base:
            notes.append(
                f"{len(only_run)} case(s) only in {run.name} and {len(only_base)} only in "
                f"{baseline.name}; changes against the baseline use the shared cases"
            )
    return GateReport(
        run=run.name,
        path=run.path,
        statistic=statistic,
        checks=tuple(checks),
        baseline=None if baseline is None else baseline.name,
        notes=tuple(notes),
    )


def _check(run: Run, bound: Bound, name: str, statistic: Statistic, baseline: Run | None) -> Check:
    series = run.series(bound.metric, name)
    if not bound.relative:
        value, n = _statistic(series.to_numpy(dtype=np.float64), statistic)
        holds = value <= bound.limit if bound.kind == "max" else value >= bound.limit
        return Check(bound, name, statistic, value, None, n, bool(holds))
    if baseline is None:
        raise ValueError(f"{_OPTION[bound.kind]} {bound.text} needs a baseline run")
    base = baseline.series(bound.metric, name)
    shared = series.index.intersection(base.index)
    a = series.loc[shared].to_numpy(dtype=np.float64)
    b = base.loc[shared].to_numpy(dtype=np.float64)
    complete = ~(np.isnan(a) | np.isnan(b))
    value, n = _statistic(a[complete], statistic)
    base_value, _ = _statistic(b[complete], statistic)
    change = value - base_value
    holds = (change if bound.kind == "max_increase" else -change) <= bound.limit
    return Check(bound, name, statistic, value, base_value, n, bool(holds))


def gate_folder(
    folder: Path | str,
    bounds: Sequence[Bound],
    *,
    per_class: bool = False,
    statistic: Statistic = "mean",
    against: Path | str | None = None,
) -> GateReport:
    """Load a run folder (either layout), and a baseline folder if given, and check bounds.

    See :func:`check_run`.
    """

    run = load_run(folder)
    baseline = None
    if against is not None:
        name = Path(against).resolve().name
        baseline = load_run(against, f"{name} (baseline)" if name == run.name else name)
    return check_run(run, bounds, per_class=per_class, statistic=statistic, baseline=baseline)


def junit_xml(report: GateReport) -> str:
    """JUnit XML: one ``testsuite`` per run, one ``testcase`` per bound and class.

    Failed bounds carry a ``<failure>`` whose ``message`` is :attr:`Check.message`.
    """
    import xml.etree.ElementTree as ET

    n_tests, n_failures = str(len(report.checks)), str(len(report.failures))
    root = ET.Element(
        "testsuites", name="calibkit gate", tests=n_tests, failures=n_failures, errors="0"
    )
    suite = ET.SubElement(
        root,
        "testsuite",
        name=f"calibkit gate: {report.run}",
        tests=n_tests,
        failures=n_failures,
        errors="0",
        skipped="0",
        time="0",
    )
    properties = ET.SubElement(suite, "properties")
    ET.SubElement(properties, "property", name="run", value=str(report.path))
    ET.SubElement(properties, "property", name="statistic", value=report.statistic)
    if report.baseline is not None:
        ET.SubElement(properties, "property", name="baseline", value=report.baseline)
    for check in report.checks:
        case = ET.SubElement(
            suite,
            "testcase",
            classname=f"calibkit.gate.{check.bound.metric}",
            name=check.name,
            time="0",
        )
        if not check.passed:
            failure = ET.SubElement(case, "failure", message=check.message, type="BoundFailed")
            failure.text = f"{check.message}\nrun: {report.path}\ncases: {check.n}"
        else:
            out = ET.SubElement(case, "system-out")
            out.text = check.message
    if report.notes:
        ET.SubElement(suite, "system-out").text = "\n".join(report.notes)
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def markdown_summary(report: GateReport) -> str:
    """A Markdown report for ``$GITHUB_STEP_SUMMARY``: verdict line and a table of checks."""
    verdict = "✅ passed" if report.passed else "❌ failed"
    held = len(report.checks) - len(report.failures)
    lines = [
        f"### calibkit gate {verdict}: `{report.run}`",
        "",
        f"{held} of {len(report.checks)} bounds hold ({report.statistic} over cases"
        + (f", baseline `{report.baseline}`" if report.baseline else "")
        + ").",
        "",
        "| bound | class | value | baseline | change | limit | result |",
        "|:---|:---|---:|---:|---:|---:|:---|",
    ]
    for check in report.checks:
        base = "" if check.baseline is None else format_number(check.baseline, 4)
        change = "" if check.baseline is None else format_number(check.change, 4, sign=True)
        relation = {"max": "≤", "min": "≥", "max_increase": "rise ≤", "max_decrease": "fall ≤"}
        lines.append(
            f"| `{check.bound.metric}` {relation[check.bound.kind]} | {check.class_name} | "
            f"{format_number(check.value, 4)} | {base} | {change} | {check.bound.limit:g} | "
            f"{'✅ pass' if check.passed else '❌ fail'} |"
        )
    lines += [f"\n> {note}" for note in report.notes]
    return "\n".join(lines) + "\n\n"
