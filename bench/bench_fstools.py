"""Benchmark: the sandboxed file tools' cost, beside an unchecked ``open()`` by name.

* **read**: ``read_beneath`` of a small file two directories deep, with ``openat2``
  (``RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS``) and with the component-wise ``O_NOFOLLOW`` walk;
  both include the descriptor checks (``fstat``, ``/proc/self/fd``). The ceiling is
  ``open(path).read()`` by name, which is what the racy sandbox did after resolving.
* **digest**: ``arguments_digest`` of a three-argument call (the HMAC the tool gateway adds
  to every ``tool.called``), beside ``json.dumps`` of the same arguments.

Run: ``uv run python bench/bench_fstools.py [--reads N]``. Medians of 3 rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from shoal.agents.digest import arguments_digest
from shoal.agents.fstools import openat2_works, read_beneath


def per_second(fn: Callable[[], object], n: int) -> float:
    started = time.perf_counter()
    for _ in range(n):
        fn()
    return n / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reads", type=int, default=20_000)
    n = parser.parse_args().reads
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "a" / "b").mkdir(parents=True)
        path = root / "a" / "b" / "doc.md"
        path.write_text("# A document\n" * 20)
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)

        def by_name() -> bytes:
            with open(path, "rb") as f:
                return f.read()

        cases: dict[str, Callable[[], object]] = {"open() by name (ceiling)": by_name}
        if openat2_works():
            cases["openat2 beneath"] = lambda: read_beneath(fd, "a/b/doc.md")
        cases["O_NOFOLLOW walk"] = lambda: read_beneath(fd, "a/b/doc.md", walk=True)
        args = {"query": "quarterly churn by region", "limit": 20, "cursor": None}
        key = os.urandom(32)
        cases["json.dumps of the arguments"] = lambda: json.dumps(args, sort_keys=True)
        cases["arguments_digest (HMAC)"] = lambda: arguments_digest(key, "01IID", "search", args)
        rounds: dict[str, list[float]] = {name: [] for name in cases}
        for _ in range(3):  # alternate the cases, so drift on a shared machine hits all alike
            for name, fn in cases.items():
                rounds[name].append(per_second(fn, n))
        os.close(fd)
    ceiling = statistics.median(rounds["open() by name (ceiling)"])
    print(f"medians of 3 rounds, {n} calls each")
    for name, figures in rounds.items():
        rate = statistics.median(figures)
        note = (
            f"  = {rate / ceiling:4.0%} of open() by name"
            if "beneath" in name or "walk" in name
            else ""
        )
        print(f"{name:32}: {rate:>10,.0f} /s  ({1e6 / rate:6.1f} µs){note}")


if __name__ == "__main__":
    main()
