"""How many agent instances one supervisor admits on its host.

An instance is a Python process: ~45 MiB resident once its imports are done, ~0.3 s of CPU
to start (warm bytecode cache) and little while idle (docs/operations.md, "Measured"). What
melts a small host is starting hundreds at once, so a supervisor admits at most

    min(CPUs * INSTANCES_PER_CPU, memory * MEMORY_SHARE // INSTANCE_MEMORY)

instances, counting the CPUs this process may run on (affinity, cgroup quota) and the
memory of the host or its cgroup limit, whichever is lower. ``SHOAL_SUPERVISOR_CAPACITY`` or
``shoal supervisor --capacity N`` replaces the computed figure (0 admits nothing: a
supervisor kept for draining). Slots beyond every supervisor's capacity stay unclaimed and
``fleet describe`` lists them as pending, with the reason.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["INSTANCES_PER_CPU", "INSTANCE_MEMORY", "MEMORY_SHARE", "Capacity", "host_capacity"]

INSTANCES_PER_CPU = 25
"""Measured: 50 instances on 2 cores start within ~10-15 s and then idle (bench_fleet)."""
INSTANCE_MEMORY = 128 * 2**20
"""Bytes set aside per instance: its ~45 MiB at start, with room for its handlers' work."""
MEMORY_SHARE = 0.8
"""Of the host's memory, what instances may take (the rest: NATS, the core, the OS)."""


@dataclass(frozen=True)
class Capacity:
    """How many instances a supervisor admits, and where the figure comes from."""

    instances: int
    source: str


def host_capacity(override: int | None = None, override_name: str = "override") -> Capacity:
    """This host's capacity, or ``override`` when one is given (named by ``override_name``)."""
    if override is not None:
        return Capacity(override, f"{override_name} {override}")
    cpus, memory = cpu_count(), memory_bytes()
    by_cpu = cpus * INSTANCES_PER_CPU
    by_memory = int(memory * MEMORY_SHARE) // INSTANCE_MEMORY
    source = (
        f"{cpus} CPU(s) x {INSTANCES_PER_CPU} = {by_cpu}, "
        f"{memory / 2**30:.1f} GiB x {MEMORY_SHARE} / {INSTANCE_MEMORY // 2**20} MiB = {by_memory}"
    )
    return Capacity(max(min(by_cpu, by_memory), 1), source)


def cpu_count() -> int:
    """CPUs this process may use: its affinity, lowered by a cgroup v2 CPU quota."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    quota = _read("/sys/fs/cgroup/cpu.max").split()
    if len(quota) == 2 and quota[0] != "max":
        try:
            cpus = min(cpus, max(math.ceil(int(quota[0]) / int(quota[1])), 1))
        except (ValueError, ZeroDivisionError):
            pass
    return max(cpus, 1)


def memory_bytes() -> int:
    """The host's physical memory, or the cgroup v2 limit when that is lower."""
    try:
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        total = 4 * 2**30  # unknown: assume a small machine
    limit = _read("/sys/fs/cgroup/memory.max").strip()
    if limit.isdigit():
        total = min(total, int(limit))
    return total


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""
