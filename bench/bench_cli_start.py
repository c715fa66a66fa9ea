"""Benchmark: start-up time of ``shoal --help`` beside ``python -c pass`` and bare typer.

Each command runs as a fresh process N times (median and best reported), so the figure is
what a person waits for at the prompt: interpreter start, imports, rendering the help.
Ceilings, same run: ``python -c pass`` (the interpreter alone), ``python -c "import typer"``
(the CLI framework, which ``shoal --help`` needs) and ``python -c "import typer.rich_utils"``
(typer's rich help renderer, which the root help no longer loads: shoal/ops/cli/_help.py).

Run: ``uv run python bench/bench_cli_start.py [--runs 15]``. Target: ``shoal --help`` < 0.3 s.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def measure(argv: list[str], runs: int) -> tuple[float, float]:
    """(median, best) wall seconds of running ``argv`` to completion."""
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(argv, cwd=ROOT, capture_output=True, check=False)
        times.append(time.perf_counter() - start)
    return statistics.median(times), min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument(
        "--baseline",
        type=Path,
        help="A checkout of an earlier shoal (its parent dir of shoal/) to time beside.",
    )
    args = parser.parse_args()
    py = sys.executable
    cases = [
        ("python -c pass", [py, "-c", "pass"]),
        ("python -c 'import typer'", [py, "-c", "import typer"]),
        ("python -c 'import typer.rich_utils'", [py, "-c", "import typer.rich_utils"]),
        ("shoal --help", [py, "-m", "shoal", "--help"]),
        ("shoal --version", [py, "-m", "shoal", "--version"]),
        ("shoal fleet --help (loads one module)", [py, "-m", "shoal", "fleet", "--help"]),
    ]
    if args.baseline:
        code = (
            f"import sys, runpy; sys.path.insert(0, {str(args.baseline)!r}); "
            "sys.argv = ['shoal', '--help']; runpy.run_module('shoal', run_name='__main__')"
        )
        cases.append(("baseline shoal --help", [py, "-c", code]))
    for _, argv in cases:  # warm the bytecode cache
        subprocess.run(argv, cwd=ROOT, capture_output=True, check=False)
    print(f"{'command':<42} {'median':>8} {'best':>8}   ({args.runs} runs each)")
    for label, argv in cases:
        median, best = measure(argv, args.runs)
        print(f"{label:<42} {median:>7.3f}s {best:>7.3f}s")
    print("target: shoal --help < 0.300 s")


if __name__ == "__main__":
    main()
