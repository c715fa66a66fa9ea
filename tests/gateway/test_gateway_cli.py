"""``shoal gateway`` on a port that is taken: one clear line, exit 2, nothing left running."""

from __future__ import annotations

import socket
import subprocess
import sys

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
