"""``python -m shoal``: the CLI. ``agent run`` (what supervisors start, once per instance)
skips building the typer app: see :mod:`shoal.agents.__main__`."""

import sys

if sys.argv[1:3] == ["agent", "run"] and "--help" not in sys.argv:
    from shoal.agents.__main__ import main as run_agent

    raise SystemExit(run_agent(sys.argv[3:], prog="shoal agent run"))

from shoal.ops.cli import main

main()
