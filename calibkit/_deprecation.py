"""Old import paths of moved names: they keep working for one release, with a warning."""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable, Mapping
from typing import Any


def moved_names(module: str, moved: Mapping[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` that finds each moved name in its new module.

    Args:
        module: the old module's ``__name__``.
        moved: new module of each moved name.

    Example:
        >>> __getattr__ = moved_names("calibkit.old", {"pi": "math"})
        >>> import warnings
        >>> with warnings.catch_warnings(record=True) as caught:
        ...     warnings.simplefilter("always")
        ...     value = __getattr__("pi")
        >>> round(value, 2), caught[0].category.__name__
        (3.14, 'DeprecationWarning')
        >>> str(caught[0].message).split(";")[0]
        'calibkit.old.pi moved to math.pi'
    """

    def __getattr__(name: str) -> Any:
        if name not in moved:
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        warnings.warn(
            f"{module}.{name} moved to {moved[name]}.{name}; import it from there "
            "(the old path goes in the next release)",
            DeprecationWarning,
            stacklevel=2,
        )
        return getattr(importlib.import_module(moved[name]), name)

    return __getattr__
