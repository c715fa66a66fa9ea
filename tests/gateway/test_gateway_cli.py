"""``shoal gateway`` on a port that is taken: one clear line, exit 1, nothing left running;
running, it serves until SIGTERM, however long that is."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from shoal.bus import ShoalSettings


@pytest.mark.parametrize("option", ["--port", "--mcp-port"])
def test_a_taken_port_is_one_line_and_exit_1(settings: ShoalSettings, option: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        other = "--mcp-port" if option == "--port" else "--port"
        base = [sys.executable, "-m", "shoal", "--nats-url", settings.nats_url or ""]
        base += ["--prefix", settings.prefix, "--data-dir", str(settings.data_dir)]
        done = subprocess.run(
            [*base, "gateway", option, str(port), other, "0"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    which = "model" if option == "--port" else "MCP"
    assert done.returncode == 1  # a failure at run time (docs/foundation.md)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        f"error: the {which} gateway cannot listen on 127.0.0.1:{port}: "
    )


def test_the_gateway_serves_past_the_command_timeout_until_sigterm(
    settings: ShoalSettings, tmp_path: Path
) -> None:
    # --timeout bounds a command's waits for the server, not a service's life.
    base = [sys.executable, "-m", "shoal", "--nats-url", settings.nats_url or ""]
    base += ["--prefix", settings.prefix, "--data-dir", str(settings.data_dir), "--timeout", "1"]
    log = tmp_path / "gateway.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*base, "gateway", "--port", "0", "--mcp-port", "0"], stdout=out, stderr=out
        )
    try:
        deadline = time.monotonic() + 60
        while "model gateway at" not in log.read_text() and time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()
            time.sleep(0.1)
        url = log.read_text().split("model gateway at ")[1].split(";")[0]
        time.sleep(3)  # three times the command timeout
        assert proc.poll() is None, log.read_text()
        answer = httpx.get(f"{url}/models", headers={"Authorization": "Bearer sk-shoal-x-y"})
        assert answer.status_code == 401
    finally:
        proc.terminate()
        code = proc.wait(30)
    assert code == 0, log.read_text()
