"""First run of each main command on a fresh install against the runs after it.

Run: ``python benchmarks/bench_first_use.py [--rounds 2] [--repeats 3] [--read-only]
[--prebuild] [--source CHECKOUT]``.

How a fresh install is made: a wheel of the checkout (this one, or ``--source``) is
built and installed with ``pip install --no-deps`` (which byte-compiles it, as
usual) into a throwaway venv; its other packages (numba, torch, ...) come from the
running interpreter's environment through a ``.pth`` line, so nothing is
downloaded. Every command runs as ``VENV/bin/calibkit ...`` in a fresh process,
from an empty working folder, with ``PYTHONPATH``, ``NUMBA_CACHE_DIR``,
``MPLCONFIGDIR``, ``PYTHONDONTWRITEBYTECODE`` and ``XDG_*`` removed from the
environment and ``HOME`` pointing at an empty folder: the user's caches (numba's,
calibkit's, matplotlib's font cache) start empty.

One round of a command: delete every numba cache file (``*.nbi``, ``*.nbc``) under
the installed package, give ``HOME`` a new empty folder, optionally run
``calibkit prebuild`` (``--prebuild``: as an install step would; timed apart),
then time the first run and ``--repeats`` later runs of the command. Each command
gets ``--rounds`` rounds; the table shows medians over rounds of the first run and
of the later runs' median, in wall time and in CPU time of the process and its
children (less sensitive to other load on the machine). The operating system's
file cache is warm for every run (the sample data is read before).

``--read-only``: the installed package is read-only, as a root-owned site-packages
is for its users (``chmod`` for a non-root user; for root, whom ``chmod`` does not
stop, a read-only bind mount in a private mount namespace, ``unshare --mount``).
With ``--prebuild`` the prebuild itself runs with the package writable, as the
installing administrator would run it.

After each first run the script counts numba's cache files in each place.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import site
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "sample_data"
CLEARED = (
    "PYTHONPATH",
    "PYTHONDONTWRITEBYTECODE",
    "NUMBA_CACHE_DIR",
    "MPLCONFIGDIR",
    "XDG_CACHE_HOME",
    "XDG_CONFIG_HOME",
    "VIRTUAL_ENV",
)
PIP = (sys.executable, "-m", "pip")


def install(root: Path, checkout: Path) -> Path:
    """A throwaway venv with a wheel of ``checkout`` installed; returns its site-packages."""
    source, wheels = root / "source", root / "wheel"
    # A clean copy of what the wheel is built from (no stale build/ of the checkout).
    ignored = shutil.ignore_patterns("__pycache__", "*.nbi", "*.nbc")
    shutil.copytree(checkout / "calibkit", source / "calibkit", ignore=ignored)
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(checkout / name, source / name)
    subprocess.run(
        [*PIP, "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(source)],
        check=True,
        cwd=root,
    )
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    # The running environment's packages, without processing its .pth files (which
    # would bring an editable calibkit along).
    dependencies = [*site.getsitepackages(), sysconfig.get_paths()["purelib"]]
    (Path(purelib) / "_bench_dependencies.pth").write_text("\n".join(dict.fromkeys(dependencies)))
    (wheel,) = wheels.glob("calibkit-*.whl")
    subprocess.run(
        [*PIP, "--python", str(python), "install", "-q", "--no-deps", str(wheel)],
        check=True,
    )
    return Path(purelib)


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class Runner:
    """Runs the installed ``calibkit`` with a given HOME, the package read-only or not."""

    def __init__(self, root: Path, purelib: Path, read_only: bool) -> None:
        self.root = root
        self.package = purelib / "calibkit"
        self.bin = purelib.parents[2] / "bin"
        self.read_only = read_only
        self.work = root / "work"
        self.work.mkdir()
        self.count = 0
        self.home = self.fresh("home")

    def fresh(self, stem: str, suffix: str = "") -> Path:
        self.count += 1
        return self.root / f"{stem}{self.count}{suffix}"

    def reset(self) -> None:
        """No numba cache under the package, a new empty HOME."""
        for cached in [*self.package.rglob("*.nbi"), *self.package.rglob("*.nbc")]:
            cached.unlink()
        self.home = self.fresh("home")
        self.home.mkdir()

    def command(self, args: list[str], read_only: bool) -> list[str]:
        command = [str(self.bin / "calibkit"), *args]
        if not read_only or os.geteuid() != 0:
            return command
        package = str(self.package)
        script = f'mount --bind "{package}" "{package}" && '
        script += f'mount -o remount,ro,bind "{package}" && exec "$@"'
        return ["unshare", "--mount", "sh", "-c", script, "sh", *command]

    def run(self, args: list[str], read_only: bool | None = None) -> tuple[float, float]:
        """Wall and CPU seconds of one run."""
        read_only = self.read_only if read_only is None else read_only
        self.set_read_only(read_only)
        env = {key: value for key, value in os.environ.items() if key not in CLEARED}
        env["HOME"] = str(self.home)
        env["PATH"] = f"{self.bin}{os.pathsep}{env.get('PATH', '')}"
        cpu = children_cpu()
        start = time.perf_counter()
        done = subprocess.run(
            self.command(args, read_only), cwd=self.work, env=env, capture_output=True, text=True
        )
        seconds = time.perf_counter() - start
        cpu = children_cpu() - cpu
        self.set_read_only(False)
        if done.returncode != 0:
            raise SystemExit(f"calibkit {' '.join(args)} failed:\n{done.stdout}{done.stderr}")
        return seconds, cpu

    def numba_cache_files(self) -> str:
        places = {
            "package": self.package,
            "~/.cache/numba": self.home / ".cache" / "numba",
            "~/.cache/calibkit": self.home / ".cache" / "calibkit",
        }
        counts = {name: sum(1 for _ in path.rglob("*.nbc")) for name, path in places.items()}
        return ", ".join(f"{name} {count}" for name, count in counts.items() if count) or "none"

    def set_read_only(self, read_only: bool) -> None:
        if not self.read_only or os.geteuid() == 0:
            return  # root: the bind mount of each run does it
        for path in [self.package, *self.package.rglob("*")]:
            mode = path.stat().st_mode
            path.chmod(mode & ~0o222 if read_only else mode | 0o200)


def commands(runner: Runner, results: Path) -> dict[str, Callable[[], list[str]]]:
    data = [str(SAMPLE / "predictions" / "dsc"), str(SAMPLE / "brats"), "--preset", "brats"]
    diagram = ["plot-diagram", str(results), "--case", "BraTS2021_S000"]
    return {
        "calibkit --help": lambda: ["--help"],
        "evaluate": lambda: ["evaluate", *data, "-q", "--out", str(runner.fresh("out"))],
        "evaluate --plots": lambda: [
            "evaluate",
            *data,
            "--plots",
            "-q",
            "--out",
            str(runner.fresh("out")),
        ],
        "fit-temperature": lambda: [
            "fit-temperature",
            *data,
            "-q",
            "--out",
            str(runner.fresh("t", ".json")),
        ],
        "plot-diagram": lambda: [*diagram, "-q", "--out", str(runner.fresh("figure", ".png"))],
    }


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=2, help="fresh starts per command")
    parser.add_argument("--repeats", type=int, default=3, help="later runs per round")
    parser.add_argument("--read-only", action="store_true", help="read-only installed package")
    parser.add_argument("--prebuild", action="store_true", help="run `calibkit prebuild` first")
    parser.add_argument("--source", type=Path, default=REPO, help="checkout to install")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="calibkit-first-use-") as temporary:
        root = Path(temporary)
        runner = Runner(root, install(root, args.source.resolve()), args.read_only)
        for path in SAMPLE.rglob("*.nii.gz"):
            path.read_bytes()  # the OS file cache is warm for every run
        results = runner.fresh("out")
        runner.run([*commands(runner, results)["evaluate"]()[:-1], str(results)])
        rows = []
        for name, make_args in commands(runner, results).items():
            firsts, laters, prebuilds, places = [], [], [], ""
            for _ in range(args.rounds):
                runner.reset()
                if args.prebuild:
                    prebuilds.append(runner.run(["prebuild", "-q"], read_only=False))
                firsts.append(runner.run(make_args()))
                places = runner.numba_cache_files()
                later = [runner.run(make_args()) for _ in range(args.repeats)]
                laters.append(tuple(statistics.median(run[i] for run in later) for i in (0, 1)))
            first = tuple(statistics.median(run[i] for run in firsts) for i in (0, 1))
            late = tuple(statistics.median(run[i] for run in laters) for i in (0, 1))
            prebuild = statistics.median(run[0] for run in prebuilds) if prebuilds else None
            rows.append((name, prebuild, first, late, places))
            print(f"{name}: first {first[0]:.2f} s, later {late[0]:.2f} s", file=sys.stderr)
    package = "read-only package (root-owned site-packages)" if args.read_only else "writable venv"
    lines = [
        f"First run on a fresh install ({package}"
        + (", after `calibkit prebuild`" if args.prebuild else "")
        + f") against later runs: medians of {args.rounds} rounds of 1 first + {args.repeats}"
        " later runs, each a fresh process, on the sample data.",
        "",
        "| command | "
        + ("prebuild s | " if args.prebuild else "")
        + "first s | later s | first − later s | CPU first − later s | numba cache files |",
        "|---|" + ("---:|" if args.prebuild else "") + "---:|---:|---:|---:|---|",
    ]
    for name, prebuild, first, late, places in rows:
        lines.append(
            f"| `{name}` | "
            + (f"{prebuild:.1f} | " if prebuild is not None else "")
            + f"{first[0]:.2f} | {late[0]:.2f} | {first[0] - late[0]:+.2f} | "
            + f"{first[1] - late[1]:+.2f} | {places} |"
        )
    report = "\n".join(lines)
    print(report)
    return report


if __name__ == "__main__":
    main()
