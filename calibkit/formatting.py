"""Numbers for people: one rule for every console table and Markdown or LaTeX cell.

``evaluate``, ``compare``, ``gate`` (console, failure lines, JUnit messages and
the ``$GITHUB_STEP_SUMMARY`` Markdown), ``summarize`` (Markdown and LaTeX), the
demo, ``fit-temperature``'s ACE table, ``train``'s validation line and the
reliability-diagram labels all print metric values through
:func:`format_number` and :func:`format_mean_std`. Files meant for programs (CSV,
JSON) keep full precision and do not come here.

The rule. A caller names its usual fixed ``decimals`` (3 in ``evaluate``, 4 in
``compare`` and ``gate``, ``--decimals`` in ``summarize``) and ``min_digits``, the
fewest significant digits those decimals must keep of a value:

* a finite, nonzero value whose first significant digit lies at 10**e keeps
  ``decimals + e + 1`` significant digits at fixed decimals (0.207 at 3 decimals:
  e = -1, 3 digits; 0.000412: e = -4, none). If that is at least
  ``min_digits``, the value is shown at the fixed decimals, as before;
* otherwise it is shown with :data:`SIG_DIGITS` (3) significant figures: in fixed
  point down to 1e-4 (``0.000412``, ``0.00412``), in scientific notation below
  (``4.12e-05``, ``1.00e-09``), the threshold Python's ``g`` format uses. The
  exponent e is read after rounding to 3 figures, so 0.009996 counts as 0.0100.
  A value the fixed decimals would round *up* to their last place is counted as
  lost too: 0.0005 at 3 decimals shows as ``0.000500``, not as the doubled
  ``0.001``;
* zero is shown at the fixed decimals (``0.000``); a negative zero loses its
  sign; NaN is ``n/a`` (:data:`MISSING`); infinities are ``inf`` and ``-inf``.

Console tables use ``min_digits=2`` (the default): nothing below 0.01 is shown
with a single digit at 3 decimals. ``summarize`` honours the ``--decimals`` a user
asked for and passes ``min_digits=1``, so only values those decimals would erase
change (``0.00 ± 0.00`` becomes ``0.000410 ± 0.000120``) and the paper's
tables are reproduced cell for cell (``0.13 ± 0.09``).

A ``mean ± std`` pair shares one number of decimals, chosen by the rule for the
larger of the two magnitudes: the std reads on the mean's scale, ``0.20 ± 0.00``
stays as the paper prints it (a std of float round-off, 4e-17, is not shown as
``3.93e-17``), and ``0.000281 ± 0.000160`` lines up. When that scale is below
1e-4 both are shown in scientific notation.

Percent changes, p-values and effect sizes have their own, older formats in
``compare`` and are not metric values; they do not come here.
"""

from __future__ import annotations

import math

__all__ = ["MISSING", "SIG_DIGITS", "format_mean_std", "format_number"]

MISSING = "n/a"
"""Text of a NaN value (no finite case values)."""
SIG_DIGITS = 3
"""Significant figures of a value the fixed decimals would lose."""
_SCIENTIFIC_EXPONENT = -5
"""Values whose first significant digit lies at or below 10**-5 use scientific notation."""


def _places(scale: float, decimals: int, min_digits: int) -> int | None:
    """Decimals to show ``scale`` with (finite, >= 0), or None for scientific notation."""
    if scale == 0:
        return decimals
    exponent = int(f"{scale:.{SIG_DIGITS - 1}e}".split("e")[1])
    if decimals + exponent + 1 >= min_digits:
        return decimals
    if exponent <= _SCIENTIFIC_EXPONENT:
        return None
    return max(decimals, SIG_DIGITS - 1 - exponent)


def _text(value: float, places: int | None, sign: bool) -> str:
    plus = "+" if sign else ""
    if places is None:
        return format(value, f"{plus}.{SIG_DIGITS - 1}e")
    return format(value + 0.0, f"{plus}.{places}f")  # + 0.0 turns -0.0 into 0.0


def format_number(
    value: float, decimals: int = 3, *, sign: bool = False, min_digits: int = 2
) -> str:
    """One metric value (or a difference of two) as text, by the module's rule.

    Args:
        value: the number; NaN shows as ``n/a``.
        decimals: the usual fixed decimals.
        sign: show ``+`` before positive values (differences).
        min_digits: fewest significant digits the fixed decimals must keep.

    Returns:
        The text, without padding.

    Examples:
        >>> format_number(0.20657)
        '0.207'
        >>> format_number(0.00044484), format_number(0.0008074, 4)
        ('0.000445', '0.000807')
        >>> format_number(0.0123), format_number(0.00999), format_number(0.0123, 2, min_digits=1)
        ('0.012', '0.00999', '0.01')
        >>> format_number(0.0005), format_number(0.0005, 4, min_digits=1)
        ('0.000500', '0.0005')
        >>> format_number(2.13e-05, 4, sign=True), format_number(-1e-9)
        ('+2.13e-05', '-1.00e-09')
        >>> format_number(-0.0877, 4, sign=True), format_number(0.0, 4, sign=True)
        ('-0.0877', '+0.0000')
        >>> format_number(1.0), format_number(0.99996, 4), format_number(12.5)
        ('1.000', '1.0000', '12.500')
        >>> format_number(float("nan")), format_number(float("inf"), sign=True)
        ('n/a', '+inf')
    """
    if math.isnan(value):
        return MISSING
    if math.isinf(value):
        return _text(value, decimals, sign)
    return _text(value, _places(abs(value), decimals, min_digits), sign)


def format_mean_std(
    mean: float, std: float, decimals: int = 3, *, pm: str = " ± ", min_digits: int = 2
) -> str:
    """``mean ± std`` with one number of decimals for both (the module's pair rule).

    Args:
        mean: mean over cases; NaN shows as ``n/a``.
        std: their standard deviation; NaN (a single case) shows the mean alone.
        decimals: the usual fixed decimals.
        pm: the text between the two, e.g. ``r" \\pm "`` for LaTeX.
        min_digits: fewest significant digits the fixed decimals must keep of the
            larger of the two.

    Returns:
        The text.

    Examples:
        >>> format_mean_std(0.20657, 0.07068)
        '0.207 ± 0.071'
        >>> format_mean_std(0.00028069, 0.00015998)
        '0.000281 ± 0.000160'
        >>> format_mean_std(0.13, 0.09, 2, min_digits=1), format_mean_std(0.2, 3.9e-17, 2)
        ('0.13 ± 0.09', '0.20 ± 0.00')
        >>> format_mean_std(0.00041, 0.00012, 2, min_digits=1)
        '0.000410 ± 0.000120'
        >>> format_mean_std(4.1e-06, 2.2e-06), format_mean_std(0.0, 0.0)
        ('4.10e-06 ± 2.20e-06', '0.000 ± 0.000')
        >>> format_mean_std(0.5, float("nan")), format_mean_std(float("nan"), 0.1)
        ('0.500', 'n/a')
    """
    if math.isnan(mean):
        return MISSING
    if math.isnan(std):
        return format_number(mean, decimals, min_digits=min_digits)
    if math.isinf(mean) or math.isinf(std):
        places: int | None = decimals
    else:
        places = _places(max(abs(mean), abs(std)), decimals, min_digits)
    return _text(mean, places, False) + pm + _text(std, places, False)
