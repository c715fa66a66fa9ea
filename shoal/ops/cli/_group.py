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

__all__ = ["PANEL_OF", "ShoalGroup", "describe_exception", "normalize_args", "print_error"]

PANEL_OF = {
    "up": "run",
    "down": "run",
    "demo": "run",
    "core": "run",
    "supervisor": "run",
    "agent": "run",
    "status": "observe",
    "events": "observe",
    "session": "observe",
    "trace": "observe",
    "goal": "observe",
    "deadletters": "observe",
    "kill": "govern",
    "unkill": "govern",
    "outcome": "govern",
    "auth": "govern",
    "fleet": "fleet",
    "cost": "data",
    "outcomes": "data",
    "query": "data",
    "sql": "data",
    "tools": "data",
    "projections": "data",
    "export": "data",
    "schemas": "data",
}
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

    _tidied = False

    def tidy(self) -> None:
        """Panels and help labels, once per process (see :func:`_tidy`)."""
        if self._tidied:
            return
        self._tidied = True
        panels = ("run", "observe", "govern", "fleet", "data")
        order = sorted(
            self.commands, key=lambda n: panels.index(PANEL_OF[n]) if n in PANEL_OF else 99
        )
        self.commands = {name: self.commands[name] for name in order}
        for name, sub in self.commands.items():
            _tidy(sub, name, PANEL_OF.get(name))
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
        self.tidy()
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
