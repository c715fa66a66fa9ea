"""The root command group: global flags in any position, and one line for every failure.

``--json``, ``-o json`` and ``--debug`` may appear anywhere before a ``--``; they are moved in
front of the command, where the root callback reads them. Every exception that leaves a
command ends here: a usage error (click's, or a :class:`~shoal.errors.ShoalError` with exit
code 2) and a failure at run time (exit 1) each become one line on stderr — a JSON object
``{"error", "code", "exit"}`` with ``--json`` — and never a traceback unless ``--debug``.
"""

from __future__ import annotations

import errno
import json
import sys
from collections.abc import Sequence
from typing import Any

from typer._click import exceptions as click
from typer.core import TyperGroup
from typer.exceptions import Abort, Exit

from shoal.errors import RUNTIME_EXIT, USAGE_EXIT, ShoalError

__all__ = [
    "COMMANDS",
    "PANEL_OF",
    "ShoalGroup",
    "describe_exception",
    "normalize_args",
    "print_error",
]

COMMANDS: dict[str, tuple[str, str, str]] = {
    # name: (module under shoal.ops.cli, help panel, short help shown by ``shoal --help``)
    "up": (
        "platform",
        "run",
        "Start (or reuse) NATS, provision streams and buckets, start the local services.",
    ),
    "down": (
        "platform",
        "run",
        "Stop the local services and the embedded NATS server (its store stays).",
    ),
    "demo": (
        "demo",
        "run",
        "Run the demo fleet on a goal: live progress, the result, the timeline and its cost.",
    ),
    "core": (
        "core",
        "run",
        "Run the core: ingest the event log into sessions and goals, exactly once.",
    ),
    "supervisor": (
        "supervisor",
        "run",
        "Start, stop, replace and drain agent instances until they match desired state.",
    ),
    "agent": ("agent", "run", "Run agent instances."),
    "console": (
        "console",
        "observe",
        "The operations console: a web page over NATS (and its sign-in tokens).",
    ),
    "gateway": (
        "gateway",
        "run",
        "Run the model gateway (OpenAI API at /v1) and the MCP gateway until SIGTERM.",
    ),
    "status": (
        "platform",
        "observe",
        "Health at a glance: services, lags, dead letters, sessions in trouble, versions.",
    ),
    "goal": ("goal", "observe", "Submit and inspect goals."),
    "session": ("session", "observe", "Find, inspect and replay sessions (IIDs)."),
    "events": ("events", "observe", "Read the event log."),
    "trace": (
        "trace",
        "observe",
        "Print the spans of a session (its model and tool calls, delegated sessions) as a tree.",
    ),
    "deadletters": (
        "deadletters",
        "observe",
        "Messages no consumer could process: list, inspect, replay.",
    ),
    "kill": (
        "kill",
        "govern",
        "Stop exactly one instance, session, goal, fleet, tool, model, principal — or all.",
    ),
    "unkill": (
        "kill",
        "govern",
        "Lift a kill switch (a killed instance's slot or fleet is started again).",
    ),
    "outcome": ("outcome", "govern", "Report outcomes of sessions."),
    "policy": ("policy", "govern", "Apply, test and show policies."),
    "keys": ("gateway", "govern", "Gateway keys: create, list, revoke."),
    "auth": (
        "auth",
        "govern",
        "Credentials: operators (viewer/operator/admin), enrollment, revoke.",
    ),
    "approvals": ("approvals", "govern", "Pending approvals: list, show, grant, deny."),
    "fleet": ("fleet", "fleet", "Declare, scale, upgrade and inspect fleets."),
    "registry": (
        "registry",
        "fleet",
        "The registry of agents and tools: versions, lifecycle, A2A agent cards.",
    ),
    "cost": ("cost", "data", "Server-side cost of model calls, grouped (default: by model)."),
    "outcomes": ("cost", "data", "Outcomes per fleet, and what each successful outcome cost."),
    "query": (
        "cost",
        "data",
        "Any named query (sessions, workflows, retries, failed-spend, interventions…).",
    ),
    "sql": (
        "cost",
        "data",
        "Run one read-only SQL statement against the projection (writes are refused).",
    ),
    "tools": ("cost", "data", "Tool calls: the ledger."),
    "evals": (
        "evals",
        "data",
        "Success rate, cost and retries per success, interventions, latency; compare cohorts.",
    ),
    "report": (
        "evals",
        "data",
        "Useful work, cost per success, denials, approvals, kills, incidents per fleet, team.",
    ),
    "projections": (
        "projections",
        "data",
        "The DuckDB projections: serve queries, rebuild by replay.",
    ),
    "export": ("projections", "data", "Export the projection's tables."),
    "schemas": ("schemas", "data", "The wire contract: JSON Schema and AsyncAPI."),
}
"""Every top-level command, loaded only when it runs (``shoal --help`` imports none of them).

Each module has a ``register(app)`` that adds its commands; a new module adds its names
here. ``tests/ops/test_cli_startup.py`` checks each short help against the command's own.
"""

PANEL_OF = {name: panel for name, (_, panel, _) in COMMANDS.items()}
_PANELS = tuple(dict.fromkeys(PANEL_OF.values()))
"""The ``--help`` panel of each top-level command (run, observe, govern, fleet, data)."""

_LABELS = {"str": "TEXT", "int": "INTEGER", "float": "NUMBER", "path": "PATH"}

_OUTPUT_FLAGS = ("-o", "--output")


def normalize_args(args: Sequence[str]) -> tuple[list[str], bool, bool]:
    """Move ``--json``/``-o json``/``--debug`` to the front: (args, as_json, debug)."""
    rest: list[str] = []
    as_json = debug = False
    items = list(args)
    i = 0
    while i < len(items):
        arg = items[i]
        if arg == "--":
            rest.extend(items[i:])
            break
        if arg == "--json":
            as_json = True
        elif arg == "--debug":
            debug = True
        elif arg in _OUTPUT_FLAGS and i + 1 < len(items):
            value = items[i + 1]
            if value not in ("json", "text", "table"):
                raise click.UsageError(f"{arg} {value!r}: the output format is json or text")
            as_json = as_json or value == "json"
            i += 1
        elif arg.split("=", 1)[0] in _OUTPUT_FLAGS and "=" in arg:
            value = arg.split("=", 1)[1]
            if value not in ("json", "text", "table"):
                raise click.UsageError(f"{arg}: the output format is json or text")
            as_json = as_json or value == "json"
        else:
            rest.append(arg)
        i += 1
    front = (["--json"] if as_json else []) + (["--debug"] if debug else [])
    return front + rest, as_json, debug


def describe_exception(e: BaseException) -> tuple[str, str, int]:
    """(message, code, exit status) of any exception, on one line."""
    if isinstance(e, ShoalError):
        return _one_line(str(e)), e.code, e.exit_code
    if isinstance(e, click.ClickException):
        where = ""
        ctx = getattr(e, "ctx", None)
        if ctx is not None:
            where = f" (see '{ctx.command_path} --help')"
        return _one_line(e.format_message()) + where, "usage", USAGE_EXIT
    if isinstance(e, UnicodeDecodeError):
        return f"not valid UTF-8 text: {e.reason} at byte {e.start}", "invalid_input", USAGE_EXIT
    if isinstance(e, PermissionError | IsADirectoryError | NotADirectoryError) or (
        isinstance(e, OSError) and e.errno in (errno.EROFS, errno.EACCES, errno.ENOSPC)
    ):
        where = f"{e.filename}: " if e.filename else ""
        return f"cannot write {where}{e.strerror}", "not_writable", RUNTIME_EXIT
    if isinstance(e, TimeoutError):
        return "timed out waiting for the server", "timeout", RUNTIME_EXIT
    text = _one_line(str(e)) or "no detail"
    return (
        f"unexpected {type(e).__name__}: {text} (run with --debug for the traceback)",
        "internal",
        RUNTIME_EXIT,
    )


def _one_line(text: str) -> str:
    return " ".join(text.split())


def print_error(message: str, code: str, exit_code: int, *, as_json: bool) -> None:
    """One line on stderr: ``error: …``, or a JSON object with ``--json``."""
    if as_json:
        line = json.dumps({"error": message, "code": code, "exit": exit_code})
    else:
        line = f"error: {message}"
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def _label(original: Any) -> Any:
    """A param's type for help: no ``<bool>`` for flags, ``TEXT``/``INTEGER`` for values."""

    def display_type(ctx: Any) -> str | None:
        label = str(original(ctx)).strip("<>")
        if label.startswith("list[") and label.endswith("]"):
            label = label[5:-1]
        if label in ("bool", "None", "NoneType"):
            return None
        return _LABELS.get(label, label.upper() if label.isidentifier() else label)

    return display_type


def _plain(text: str | None) -> str | None:
    # Docstrings quote names RST-style (``goal.submitted``); help shows them plain.
    return text.replace("``", "'") if text else text


def _tidy_param(param: Any) -> Any:
    if param is not None and hasattr(param, "display_type"):
        param.display_type = _label(param.display_type)
    if getattr(param, "help", None):
        param.help = _plain(param.help)
    return param


def _tidy(command: Any, path: str, panel: str | None = None) -> None:
    """Help text of a command tree: panels, plain quotes, readable type labels; checks."""
    from shoal.ops.cli._validate import attach

    attach(path, command)
    if panel is not None:
        command.rich_help_panel = panel
    command.help = _plain(command.help)
    command.short_help = _plain(command.short_help)
    for param in command.params:
        _tidy_param(param)
    help_option = command.get_help_option
    command.get_help_option = lambda ctx: _tidy_param(help_option(ctx))
    for name, sub in getattr(command, "commands", {}).items():
        _tidy(sub, f"{path} {name}")


class ShoalGroup(TyperGroup):
    """The root group: argv normalised, every failure one line (see the module doc)."""

    _listing = False

    def list_commands(self, ctx: Any) -> list[str]:
        """Every command, loaded or not, in panel order."""
        return [*COMMANDS, *(n for n in self.commands if n not in COMMANDS)]

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        """The command, importing its module the first time (a stub while listing help)."""
        if cmd_name not in self.commands and cmd_name in COMMANDS:
            if self._listing:
                return self._stub(cmd_name)
            self.load(COMMANDS[cmd_name][0])
        return self.commands.get(cmd_name)

    def format_help(self, ctx: Any, formatter: Any) -> None:
        """The root's help in plain text (no rich import: see :mod:`shoal.ops.cli._help`)."""
        from shoal.ops.cli._help import root_help

        self._tidy_root()
        formatter.write(root_help(self, ctx, _PANELS))

    def load(self, module_name: str) -> None:
        """Import ``shoal.ops.cli.<module>`` and add the commands it registers."""
        import importlib

        import typer

        scratch = typer.Typer()
        scratch.callback()(lambda: None)  # always a group, whatever the module registers
        importlib.import_module(f"shoal.ops.cli.{module_name}").register(scratch)
        group = typer.main.get_command(scratch)
        for name, command in getattr(group, "commands", {}).items():
            _tidy(command, name, PANEL_OF.get(name))
            self.commands[name] = command

    def load_all(self) -> None:
        """Every command (for tests and tools that walk the whole tree)."""
        for module in dict.fromkeys(m for m, _, _ in COMMANDS.values()):
            self.load(module)

    def _stub(self, name: str) -> Any:
        from typer.core import TyperCommand

        _, panel, short = COMMANDS[name]
        return TyperCommand(name=name, help=short, short_help=short, rich_help_panel=panel)

    _root_tidied = False

    def _tidy_root(self) -> None:
        if self._root_tidied:
            return
        self._root_tidied = True
        super_help = self.get_help_option
        self.get_help_option = lambda ctx: _tidy_param(super_help(ctx))  # type: ignore[method-assign]
        self.help = _plain(self.help)
        for param in self.params:
            _tidy_param(param)

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        windows_expand_args: bool = True,
        **extra: Any,
    ) -> Any:
        self._tidy_root()
        raw = list(sys.argv[1:] if args is None else args)
        as_json = "--json" in raw
        try:
            argv, as_json, debug = normalize_args(raw)
        except click.UsageError as e:
            print_error(*describe_exception(e), as_json=as_json)
            sys.exit(USAGE_EXIT)
        try:
            rv = super().main(
                argv,
                prog_name=prog_name or "shoal",
                complete_var=complete_var,
                standalone_mode=False,
                windows_expand_args=windows_expand_args,
                **extra,
            )
        except Abort:
            sys.exit(130)
        except Exit as e:  # pragma: no cover - returned, not raised
            sys.exit(e.exit_code)
        except click.NoArgsIsHelpError as e:
            e.show()  # the help text, as a bare ``shoal fleet`` asks for
            sys.exit(USAGE_EXIT)
        except Exception as e:
            if debug and not isinstance(e, click.ClickException):
                raise
            print_error(*describe_exception(e), as_json=as_json)
            sys.exit(describe_exception(e)[2])
        if not standalone_mode:
            return rv
        sys.exit(rv if isinstance(rv, int) else 0)
