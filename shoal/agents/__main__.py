"""``python -m shoal.agents run FLEET AGENT [options]``: one agent instance, lean start-up.

The same command as ``shoal agent run`` — same options, output and exit codes (0 once
stopped by a signal or an instance kill; 2 with one ``error:`` line for a usage error or a
:class:`~shoal.errors.ShoalError`; 130 on Ctrl-C) and the same code path
(:func:`~shoal.agents.serve.run_instance`) — parsed with argparse instead of the typer app,
which imports every command module of the CLI: about a third of an instance's CPU before
its first heartbeat. ``python -m shoal agent run …``, what supervisors start, comes here too
(see ``shoal/__main__.py``), so an instance's command line stays ``… shoal agent run …``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from pydantic import ValidationError

from shoal.agents.serve import run_instance
from shoal.bus import ShoalSettings
from shoal.errors import ShoalError
from shoal.schemas import describe_validation_error

__all__ = ["main"]


def _at_least_one(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not in the range x>=1")
    return value


def _parser(prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description="Run one instance until SIGTERM/SIGINT (graceful drain, exit 0) "
        "or an instance kill.",
    )
    p.add_argument("fleet", help="The fleet the instance serves.")
    p.add_argument("agent", help="The agent's name in the fleet.")
    p.add_argument("--target", help="module:attr of the Agent declaration (default: demo fleet).")
    p.add_argument("--instance", help="Instance id (default: a new ULID).")
    p.add_argument("--version", help="Version to report (default: declared).")
    p.add_argument(
        "--concurrency", type=_at_least_one, default=8, help="Tasks at once per capability."
    )
    p.add_argument("--slot", type=int, help="Supervisor slot number.")
    p.add_argument("--supervisor", help="Id of the supervisor that started it.")
    p.add_argument(
        "--manifest", type=Path, help="Capability manifest file replacing the declared one."
    )
    p.add_argument("--json", action="store_true", help="JSON output for scripts.")
    return p


def main(argv: Sequence[str] | None = None, prog: str = "python -m shoal.agents run") -> int:
    """Parse ``FLEET AGENT [options]`` (the words after ``run``), run, return the exit code."""
    args = _parser(prog).parse_args(sys.argv[2:] if argv is None else argv)
    try:
        settings = ShoalSettings()  # the environment only, as a supervisor passes it
    except ValidationError as e:
        print(f"error: invalid settings: {describe_validation_error(e)}", file=sys.stderr)
        return 2
    try:
        reason = asyncio.run(
            run_instance(
                settings,
                args.fleet,
                args.agent,
                target=args.target,
                instance=args.instance,
                version=args.version,
                concurrency=args.concurrency,
                slot=args.slot,
                supervisor=args.supervisor,
                manifest=args.manifest,
            )
        )
    except ShoalError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    if args.json:
        sys.stdout.write(json.dumps({"stopped": reason}) + "\n")
    else:
        print(f"agent {args.fleet}/{args.agent} stopped: {reason}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] != ["run"]:
        print("usage: python -m shoal.agents run FLEET AGENT [options]", file=sys.stderr)
        raise SystemExit(2)
    raise SystemExit(main())
