"""Which classes a figure with a panel per class draws, and how many panels share a row.

A data set with a hundred classes would otherwise give a figure a hundred panels
wide. Unless classes are named, a figure draws at most :data:`MAX_CLASSES`: the
worst-calibrated ones, worst first, and says so in a line of its title
(:func:`class_note`). Panels wrap after :data:`DEFAULT_COLUMNS` per row. Nothing
here needs matplotlib.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from calibkit.errors import CalibkitError

__all__ = [
    "DEFAULT_COLUMNS",
    "MAX_CLASSES",
    "check_columns",
    "check_max_classes",
    "choose_classes",
    "class_note",
    "classes_per_case",
    "worst_first",
]


MAX_CLASSES = 12  # a figure's default cap on class panels; 0 draws them all
DEFAULT_COLUMNS = 4  # panels per row: BraTS's three regions (and KiTS's) stay on one row


def worst_first(values: npt.ArrayLike) -> npt.NDArray[np.intp]:
    """Indices that order ``values`` from the largest down; NaN last, ties in the given order.

    Example:
        >>> worst_first([0.1, float("nan"), 0.3, 0.1]).tolist()
        [2, 0, 3, 1]
    """
    array = np.asarray(values, dtype=np.float64)
    # Sorted ascending by -value: NaN becomes +inf, after every real value.
    return np.argsort(np.where(np.isnan(array), np.inf, -array), kind="stable")


def check_max_classes(max_classes: int) -> int:
    """``max_classes`` as an int, when it is 0 (every class) or more.

    Raises:
        CalibkitError: a negative number.
    """
    if int(max_classes) < 0:
        raise CalibkitError(f"max classes must be 0 (draw every class) or more, got {max_classes}")
    return int(max_classes)


def check_columns(columns: int) -> int:
    """``columns`` as an int, when it is 1 or more.

    Raises:
        CalibkitError: 0 or a negative number.
    """
    if int(columns) < 1:
        raise CalibkitError(f"columns must be 1 or more, got {columns}")
    return int(columns)


def choose_classes(badness: npt.ArrayLike, max_classes: int = MAX_CLASSES) -> list[int]:
    """Indices of the classes to draw: all of them in order, or the ``max_classes`` worst.

    Args:
        badness: one value per class, larger is worse (e.g. ACE); NaN ranks last.
        max_classes: the most classes to draw; 0 draws every class.

    Returns:
        Every index in order when there are no more than ``max_classes`` classes (or
        ``max_classes`` is 0); otherwise the ``max_classes`` worst, worst first.

    Raises:
        CalibkitError: ``max_classes`` is negative.

    Example:
        >>> choose_classes([0.1, 0.5, 0.3], max_classes=2), choose_classes([0.1, 0.5, 0.3])
        ([1, 2], [0, 1, 2])
    """
    values = np.asarray(badness, dtype=np.float64).reshape(-1)
    cap = check_max_classes(max_classes)
    if cap == 0 or values.size <= cap:
        return list(range(values.size))
    return [int(i) for i in worst_first(values)[:cap]]


def classes_per_case(max_classes: int, n_cases: int) -> int:
    """Class panels in each of ``n_cases`` case diagrams that share ``max_classes`` panels.

    ``calibkit evaluate --plots`` draws the dataset histogram and a diagram of each
    of the worst cases; sharing one budget keeps the figures' cost bounded however
    many cases are drawn (12 over 3 cases: 4 each, one row). Every diagram keeps at
    least one class; 0 (every class) stays 0.

    Example:
        >>> classes_per_case(12, 3), classes_per_case(12, 2), classes_per_case(12, 20)
        (4, 6, 1)
        >>> classes_per_case(0, 3)
        0
    """
    cap = check_max_classes(max_classes)
    return cap if cap == 0 else max(1, cap // max(int(n_cases), 1))


def worst_over_runs(values: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """The largest value over runs (axis 0) per class, ignoring NaN (NaN if every run is NaN).

    A class is among the worst when any run calibrates it badly.
    """
    return np.asarray(np.fmax.reduce(np.asarray(values, dtype=np.float64), axis=0))


def class_note(n_drawn: int, n_available: int, ranked_by: str, n_runs: int = 1) -> str | None:
    """The title line that says which classes a figure shows, or None when it shows all.

    Example:
        >>> class_note(12, 110, "ACE")
        '12 of 110 classes, the worst by ACE'
        >>> class_note(3, 3, "ACE") is None
        True
    """
    if n_drawn >= n_available:
        return None
    where = " in any run" if n_runs > 1 else ""
    return f"{n_drawn} of {n_available} classes, the worst by {ranked_by}{where}"


def panel_rows(n_panels: int, columns: int) -> tuple[int, int]:
    """``(rows, columns)`` of the grid that holds ``n_panels`` at ``columns`` per row.

    Example:
        >>> panel_rows(3, 4), panel_rows(12, 4), panel_rows(13, 5)
        ((1, 3), (3, 4), (3, 5))
    """
    used = max(1, min(check_columns(columns), n_panels))
    return max(1, math.ceil(n_panels / used)), used
