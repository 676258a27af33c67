"""The options that choose what is evaluated, shared by ``evaluate`` and ``fit-temperature``.

``--classes`` (label values), ``--class-names``, ``--region NAME=VALUES`` (repeatable),
``--preset`` (a region table such as BraTS or KiTS), ``--classes-from dataset.json``
and ``--include-background``: parsed here into the fields of
:class:`calibkit.records.EvaluationOptions`.
"""

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from calibkit.cli.app import name_list
from calibkit.errors import CalibkitError

__all__ = [
    "ClassNamesOption",
    "ClassValuesOption",
    "ClassesFromOption",
    "IncludeBackgroundOption",
    "PresetOption",
    "RegionOption",
    "class_choice",
]

ClassValuesOption = Annotated[
    Optional[str],
    typer.Option(
        "--classes",
        help="Label values to evaluate, one channel each: a list and ranges, e.g. 1,2,3 "
        "or 1-117 or 1-10,12,20-25.",
    ),
]
ClassNamesOption = Annotated[
    Optional[str], typer.Option("--class-names", help="Names of the classes, e.g. liver,tumour.")
]
RegionOption = Annotated[
    Optional[list[str]],
    typer.Option(
        "--region",
        help="A region NAME=VALUES scored as one class, e.g. --region TC=1,4,3 (repeatable; "
        "regions may overlap). Read from one channel per region (in order) or as the sum "
        "of a softmax map's channels of its labels; NAME=VALUES@CHANNELS names the channels.",
    ),
]
PresetOption = Annotated[
    Optional[str],
    typer.Option(
        "--preset",
        help="Regions of a challenge: brats (ET, TC, WT) or kits (kidney+masses, masses, tumor).",
    ),
]
ClassesFromOption = Annotated[
    Optional[Path],
    typer.Option(
        "--classes-from",
        help="An nnU-Net or Medical Segmentation Decathlon dataset.json: its labels (or "
        "regions) and their names.",
    ),
]
IncludeBackgroundOption = Annotated[
    bool, typer.Option("--include-background", help="Evaluate label 0 / channel 0 too.")
]


def class_choice(
    *,
    classes: str | None,
    class_names: str | None,
    regions: list[str] | None,
    preset: str | None,
    classes_from: Path | None,
    include_background: bool,
) -> dict[str, Any]:
    """The class fields of :class:`~calibkit.records.EvaluationOptions` from the options.

    Raises:
        CalibkitError: two options that each choose the classes, or one that does
            not parse.
        InputError: a ``dataset.json`` that cannot be used.
    """
    # Deferred: the library loads when the command runs (a fast calibkit --help).
    from calibkit.classes import parse_classes, parse_region
    from calibkit.io.dataset_json import read_dataset_classes

    given = [
        option
        for option, value in (
            ("--classes", classes),
            ("--region", regions),
            ("--preset", preset),
            ("--classes-from", classes_from),
        )
        if value
    ]
    if len(given) > 1:
        raise CalibkitError(f"give one of {' and '.join(given)}: each chooses the classes")
    names = name_list(class_names)
    if classes_from is not None:
        found = read_dataset_classes(classes_from, include_background=include_background)
        if names is not None and found.class_names is not None:
            raise CalibkitError(
                f"--class-names and --classes-from {classes_from} both name the classes; give one"
            )
        return {
            "classes": found.classes,
            "class_names": found.class_names if names is None else names,
            "regions": found.regions,
            "include_background": include_background,
            "preset": None,
        }
    return {
        "classes": parse_classes(classes) if classes is not None else None,
        "class_names": names,
        "regions": tuple(parse_region(text) for text in regions) if regions else None,
        "include_background": include_background,
        "preset": preset,
    }
