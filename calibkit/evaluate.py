"""Evaluate a folder of predictions against a folder of labels (``calibkit evaluate``).

A workflow: it pairs the files (:mod:`calibkit.io.pairing`), runs the case pipeline
(:func:`calibkit.cases.evaluate_case`) on every case through an executor
(:mod:`calibkit.execution`), builds the tables (:mod:`calibkit.assembly`) and, for
:func:`evaluate_to_folder`, writes them (:mod:`calibkit.io.results`).
:func:`evaluate_folders` returns an :class:`~calibkit.records.Evaluation` holding
the same tables that ``calibkit evaluate`` writes. It draws nothing: the command
line hands the figure writer in as one of ``extra_files`` (staged with the tables),
and the demo draws from the written folders.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import asdict
from functools import partial
from pathlib import Path

from calibkit._deprecation import moved_names
from calibkit.assembly import assemble_evaluation
from calibkit.cases import evaluate_case
from calibkit.errors import CalibkitError, ClusterError, WriteError
from calibkit.execution import Executor, executor_for, run_cases
from calibkit.io.atomic import staged_folder
from calibkit.io.checkpoint import CaseStore
from calibkit.io.pairing import pair_cases
from calibkit.io.results import prepare_output_dir, write_result_files
from calibkit.io.temperature import load_temperature
from calibkit.metrics import CALIBRATION_METRICS
from calibkit.records import CaseResult, Evaluation, EvaluationOptions

__all__ = [
    "CALIBRATION_METRICS",
    "CaseResult",
    "Evaluation",
    "EvaluationOptions",
    "evaluate_folders",
    "evaluate_to_folder",
]

ProgressCallback = Callable[[str], None]
# Writes more files into the staging folder of a result (figures, say); returns their paths.
ExtraFiles = Callable[[Path], list[Path]]

__getattr__ = moved_names(
    __name__,
    {
        "assemble_evaluation": "calibkit.assembly",
        "per_image_table": "calibkit.assembly",
        "summary_table": "calibkit.assembly",
        "MEAN_ROW": "calibkit.assembly",
        "to_probabilities": "calibkit.cases",
        "case_statistics": "calibkit.cases",
        "softmax_sum_problem": "calibkit.cases",
        "argmax_channel": "calibkit.cases",
        "resolve_backend": "calibkit.binning",
        "PROBABILITY_TOLERANCE": "calibkit.cases",
        "SOFTMAX_SUM_TOLERANCE": "calibkit.cases",
    },
)


def _import_table_libraries() -> None:
    # While the workers start and read their first cases, this process imports what
    # the tables need at the end (pandas, about 0.4 s).
    import pandas  # noqa: F401


def evaluate_folders(
    predictions: str | os.PathLike[str],
    labels: str | os.PathLike[str],
    options: EvaluationOptions | None = None,
    *,
    workers: int = 1,
    progress: ProgressCallback | None = None,
    on_start: Callable[[int], None] | None = None,
    store: CaseStore | None = None,
    executor: Executor | None = None,
) -> Evaluation:
    """Per-case, per-class ACE/ECE/MCE/Dice of a prediction folder against a label folder.

    Args:
        predictions: folder of probability (or logit) maps.
        labels: folder of integer label maps (BraTS case folders are searched recursively).
        options: :class:`EvaluationOptions`; defaults when None.
        workers: cases processed in parallel processes (1: in this process).
        progress: called with each case id as it finishes.
        on_start: called once with the number of cases before work begins.
        store: keeps each finished case on disk and supplies the cases an earlier,
            interrupted run finished (``calibkit evaluate --resume``).
        executor: where the cases run (:mod:`calibkit.execution`); default: this
            process for ``workers=1``, a local process pool above.

    Returns:
        :class:`Evaluation` with the per-image and summary tables and the bins.

    Raises:
        CalibkitError: on any bad input, naming the file and the problem.
    """
    options = options or EvaluationOptions()
    if executor is None:  # a bad --workers fails before any work
        executor = executor_for(workers, while_waiting=_import_table_libraries)
    if options.temperature is not None:
        load_temperature(options.temperature)  # a bad file fails before any work
    pred_dir, label_dir = Path(predictions), Path(labels)
    pairing = pair_cases(
        pred_dir, label_dir, suffixes=options.suffixes, allow_missing=options.allow_missing
    )
    if on_start is not None:
        on_start(len(pairing.pairs))
    results = run_cases(
        partial(evaluate_case, options=options),
        {pair.case_id: pair for pair in pairing.pairs},
        executor=executor,
        store=store,
        progress=progress,
    )
    return assemble_evaluation(
        results,
        options,
        extra_warnings=pairing.notes,
        missing_label=pairing.missing_label,
        missing_prediction=pairing.missing_prediction,
        sources={"predictions": str(pred_dir), "labels": str(label_dir)},
    )


def evaluate_to_folder(
    predictions: str | os.PathLike[str],
    labels: str | os.PathLike[str],
    out: str | os.PathLike[str],
    options: EvaluationOptions | None = None,
    *,
    workers: int = 1,
    resume: bool = False,
    overwrite: bool = False,
    extra_files: Sequence[ExtraFiles] = (),
    progress: ProgressCallback | None = None,
    on_start: Callable[[int], None] | None = None,
    executor: Executor | None = None,
) -> tuple[Evaluation, list[Path]]:
    """:func:`evaluate_folders`, then write the result files into ``out`` (``calibkit evaluate``).

    Finished cases are kept in ``out`` while the run goes on, so that an interrupted
    run continues with ``resume=True``; a lock keeps two processes apart. On bad
    input nothing is left in ``out``. Each of ``extra_files`` writes more files
    (figures, say) into the staging folder beside the tables, given as its
    argument; it sees the tables there. The tables and those files are written
    beside any earlier result and replace it only once all are complete; when a
    write fails (a full disk, say) the earlier result stays as it was, and so do
    the finished cases, for ``resume=True``. ``executor`` says where the cases run
    (a Dask cluster, say; :func:`evaluate_folders`); the files are written here.

    Returns:
        The evaluation and the paths of the files written.
    """
    options = options or EvaluationOptions()
    out_dir = Path(out)
    prepare_output_dir(out_dir, [Path(predictions), Path(labels)], overwrite=overwrite)
    fingerprint = {
        "options": asdict(options),
        "predictions": str(Path(predictions).resolve()),
        "labels": str(Path(labels).resolve()),
    }
    with CaseStore(out_dir, fingerprint, resume=resume, overwrite=overwrite) as store:
        try:
            evaluation = evaluate_folders(
                predictions,
                labels,
                options,
                workers=workers,
                progress=progress,
                on_start=on_start,
                store=store,
                executor=executor,
            )
        except WriteError:
            raise  # a case could not be stored: the finished ones stay for --resume
        except ClusterError as error:
            # Not the input's fault: the finished cases stay for --resume.
            raise ClusterError(f"{error}; {store.resume_note()}") from None
        except CalibkitError:
            store.discard()
            raise
        # Tables and figures are staged beside an earlier result and replace it together.
        try:
            with staged_folder(out_dir) as staging:
                written = write_result_files(evaluation, staging)
                for write_more in extra_files:
                    written += write_more(staging)
        except WriteError as error:
            raise error.noted(store.resume_note()) from None
        paths = [out_dir / path.relative_to(staging) for path in written]
        store.finish()
    return evaluation, paths
