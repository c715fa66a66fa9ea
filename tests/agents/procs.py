"""An agent instance as a real process (``python -m shoal agent run``), for fault tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from shoal.bus import ShoalSettings

ROOT = Path(__file__).resolve().parents[2]


def start_agent(
    settings: ShoalSettings, fleet: str, agent: str, target: str, instance: str
) -> subprocess.Popen[bytes]:
    """Start one instance on the test's server and prefix (crash redelivery after 2 s)."""
    env = {
        **os.environ,
        "NATS_URL": settings.nats_url or "",
        "SHOAL_PREFIX": settings.prefix,
        "SHOAL_DATA_DIR": str(settings.data_dir),
        "SHOAL_TASK_ACK_WAIT_S": "2",
    }
    argv = ["agent", "run", fleet, agent, "--target", target, "--instance", instance]
    return subprocess.Popen(
        [sys.executable, "-m", "shoal", *argv],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
