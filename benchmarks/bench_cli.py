"""Start-up time of ``calibkit --help`` (median of several fresh processes)."""

from __future__ import annotations

import statistics
import subprocess
import sys
import time


def main(repeats: int = 7) -> str:
    command = [sys.executable, "-m", "calibkit", "--help"]
    subprocess.run(command, capture_output=True, check=True)  # warm the file cache
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(command, capture_output=True, check=True)
        times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    report = f"`calibkit --help`: {seconds:.3f} s (median of {repeats} fresh processes)."
    print(report)
    return report


if __name__ == "__main__":
    main()
