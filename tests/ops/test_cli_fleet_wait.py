"""``fleet apply|scale --wait`` follow replicas converging; ``upgrade`` shows each batch;
``fleet delete`` drains and removes a fleet — against a real supervisor and processes."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import pytest

from shoal.bus import Bus, ShoalSettings
from tests.ops.fleetprocs import Supervisors, agent_procs, process_env
from tests.ops.test_supervisor import settings, spec, supervisors

__all__ = ["settings", "supervisors"]  # the supervisor tests' fixtures, reused

pytestmark = pytest.mark.timeout(150)


async def shoal(settings: ShoalSettings, *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "shoal",
        *args,
        env=process_env(settings),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    return proc.returncode or 0, out.decode(), err.decode()


async def test_apply_and_scale_wait_until_replicas_run_and_delete_drains(
    bus: Bus, settings: ShoalSettings, supervisors: Supervisors, tmp_path: Path
) -> None:
    supervisors.start("sup-a")
    spec_file = tmp_path / "fleet.yaml"
    spec_file.write_text(spec(1))
    code, out, err = await shoal(settings, "fleet", "apply", str(spec_file), "--wait")
    assert code == 0, err
    assert out.splitlines()[-1] == "converged: fleet demo: worker 1/1 (1 at 1)"
    assert "fleet demo: worker 0/1" in err  # progress, before it ran
    assert len(agent_procs(settings.prefix)) == 1

    code, out, err = await shoal(settings, "--json", "fleet", "scale", "demo", "worker=3", "--wait")
    assert code == 0, err
    answer = json.loads(out)
    [worker] = answer["fleet"]["agents"]
    assert (answer["converged"], worker["desired"], worker["actual"]) == (True, 3, 3)
    assert len(agent_procs(settings.prefix)) == 3

    code, out, err = await shoal(settings, "fleet", "upgrade", "demo", "worker", "2")
    assert code == 0, err
    batches = [line for line in err.splitlines() if line.startswith("fleet demo: worker")]
    # The last progress line may be printed a beat before the third replacement reports in;
    # the closing line below states the converged end (3 running version 2).
    assert batches[-1].endswith(" at 2)"), batches
    assert len(batches) >= 2 and "at 1" in batches[0]  # from the old version, batch by batch
    assert out.splitlines()[-1] == "3 instance(s) of worker run 2"

    code, out, err = await shoal(settings, "fleet", "delete", "demo")
    assert code == 0, err
    assert out.strip() == "fleet demo deleted (history kept: shoal fleet history demo)"
    # Drained: no instance reports in; their processes exit moments later (SIGTERM, drain).
    for _ in range(200):
        if not agent_procs(settings.prefix):
            break
        await asyncio.sleep(0.1)
    assert agent_procs(settings.prefix) == []
    code, out, _ = await shoal(settings, "--json", "fleet", "ls")
    assert (code, json.loads(out)) == (0, [])


async def test_scale_wait_times_out_without_a_supervisor(
    bus: Bus, settings: ShoalSettings, tmp_path: Path
) -> None:
    spec_file = tmp_path / "fleet.yaml"
    spec_file.write_text(spec(0))
    assert (await shoal(settings, "fleet", "apply", str(spec_file)))[0] == 0
    code, out, _ = await shoal(
        settings, "fleet", "scale", "demo", "worker=2", "--wait", "--wait-timeout", "1"
    )
    assert code == 1
    assert out.splitlines()[-1] == "not converged after 1s: fleet demo: worker 0/2"
