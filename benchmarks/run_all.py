"""Run every benchmark in one go and write ``benchmarks/RESULTS.md``.

Run: ``python benchmarks/run_all.py [--quick]`` (``--quick``: smaller inputs, for a
smoke test). The README shows the table this writes.
"""

from __future__ import annotations

import argparse
import platform
import sys
from datetime import date
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_binning  # noqa: E402
import bench_binning_dtypes  # noqa: E402
import bench_cli  # noqa: E402
import bench_evaluate  # noqa: E402
import bench_readers  # noqa: E402
import bench_torch_backend  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small inputs, for a smoke test")
    args = parser.parse_args()
    import os

    binning_args = ["--repeats", "7"] + (["--shape", "3", "64", "64", "64"] if args.quick else [])
    dtypes_args = ["--repeats", "7"] + (["--shape", "4", "64", "64", "64"] if args.quick else [])
    evaluate_args = ["--cases", "4"] if args.quick else []
    sections = [
        f"# Benchmarks\n\nMeasured {date.today()} on {platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}, by `python benchmarks/run_all.py`.",
        "## Bin statistics of one volume\n\n" + bench_binning.main(binning_args),
        "## Binary targets of each dtype\n\n" + bench_binning_dtypes.main(dtypes_args),
        "## The torch backend on the CPU\n\n"
        + bench_torch_backend.main(["--repeats", "5"] + (["--quick"] if args.quick else [])),
        "## evaluate against reading only\n\n" + bench_evaluate.main(evaluate_args),
        "## Readers\n\n" + bench_readers.main([]),
        "## Start-up\n\n" + bench_cli.main(),
    ]
    if not args.quick:
        (HERE / "RESULTS.md").write_text("\n\n".join(sections) + "\n")
        print(f"wrote {HERE / 'RESULTS.md'}")


if __name__ == "__main__":
    main()
