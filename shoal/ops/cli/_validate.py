"""Option values checked at parse time, by option name, for every command at once.

An option name means one thing across the CLI (``--limit`` is a count, ``--since`` a time,
``--fleet`` a subject token), so the root group attaches one check per name to every
command that has it (:func:`attach`). A bad value is a click usage error: one line naming
the option, exit 2, before anything connects or writes. Choices that differ by command
(``--status``) are listed by command path.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from typer._click import exceptions as click

__all__ = ["attach"]

Check = Callable[[Any], None]


def _bad(message: str) -> click.BadParameter:
    return click.BadParameter(message)


def _at_least(minimum: float, *, strict: bool = False) -> Check:
    def check(value: Any) -> None:
        if value is not None and (value <= minimum if strict else value < minimum):
            sign = ">" if strict else ">="
            raise _bad(f"{value} is not {sign} {minimum:g}")

    return check


def _token(value: Any) -> None:
    from shoal.schemas import is_token

    for item in value if isinstance(value, list | tuple) else [value]:
        if item is not None and not is_token(item):
            raise _bad(f"{item!r} is not a name (one subject token: no '.', '*', '>', spaces)")


def _moment(option: str) -> Check:
    def check(value: Any) -> None:
        from shoal.errors import InvalidOption
        from shoal.ops.cli._time import parse_moment
        from shoal.schemas import utcnow

        try:
            parse_moment(value, utcnow(), option)
        except InvalidOption as e:
            raise _bad(str(e).removeprefix(f"{option} ")) from None

    return check


def _one_of(*allowed: str, split: bool = False) -> Check:
    def check(value: Any) -> None:
        items = value if isinstance(value, list | tuple) else [value]
        if split:
            items = [p.strip() for item in items if item for p in item.split(",")]
        for item in items:
            if item is not None and item not in allowed:
                raise _bad(f"{item!r} is not one of {', '.join(allowed)}")

    return check


def _existing_file(value: Any) -> None:
    if value is not None and not Path(value).is_file():
        raise _bad(f"no file at {value}")


def _event_type(value: Any) -> None:
    from shoal.schemas import EVENT_TYPES

    known = sorted(t.removeprefix("shoal.") for t in EVENT_TYPES)
    if value is not None and value not in known:
        raise _bad(f"{value!r} is not an event type (e.g. model.called, task.failed)")


def _by(value: Any) -> None:
    from shoal.projections.answers import COST_DIMENSIONS

    _one_of(*COST_DIMENSIONS, split=True)(value)


def _evals_by(value: Any) -> None:
    from shoal.projections.eval_answers import EVAL_DIMENSIONS

    _one_of(*EVAL_DIMENSIONS, split=True)(value)


def _unit_by(value: Any) -> None:
    from shoal.projections.answers import UNIT_DIMENSIONS

    _one_of(*UNIT_DIMENSIONS, split=True)(value)


def _labels(value: Any) -> None:
    from shoal.schemas.labels import parse_labels

    try:
        parse_labels(value)
    except ValueError as e:
        raise _bad(str(e).removeprefix("--label ")) from None


COUNT = _at_least(1)
SECONDS = _at_least(0)

BY_NAME: dict[str, Check] = {
    "--limit": COUNT,
    "--batch": COUNT,
    "--concurrency": COUNT,
    "--crashloop-after": COUNT,
    "--as-of": COUNT,
    "--slot": _at_least(0),
    "--max-lag": _at_least(0),
    "--timeout": SECONDS,
    "--drain-grace": SECONDS,
    "--wait-timeout": SECONDS,
    "--backoff": SECONDS,
    "--tick": _at_least(0, strict=True),
    "--resync": _at_least(0, strict=True),
    "--since": _moment("--since"),
    "--until": _moment("--until"),
    "--db": _existing_file,
    "--type": _event_type,
    "--by": _by,
    "--label": _labels,
    "--state": _one_of("active", "stuck", "looping"),
    "--order": _one_of("spend", "successes"),
    "--decision": _one_of("allow", "deny", "needs_approval"),
    "--sensitivity": _one_of("public", "internal", "confidential", "secret"),
    **{
        name: _token
        for name in (
            "--instance",
            "--session",
            "--goal",
            "--fleet",
            "--tool",
            "--model",
            "--principal",
            "--origin",
            "--mcp",
        )
    },
}

BY_COMMAND: dict[tuple[str, str], Check] = {
    ("session ls", "--status"): _one_of("open", "running", "completed", "failed", "killed"),
    ("goal ls", "--status"): _one_of("open", "running", "completed", "failed"),
    **{
        (f"registry {cmd}", option): check
        for cmd in ("ls", "search")
        for option, check in (
            ("--state", _one_of("draft", "certified", "deprecated", "retired")),
            ("--kind", _one_of("agent", "tool")),
        )
    },
    ("evals", "--by"): _evals_by,
    ("outcomes", "--by"): _unit_by,
}


def attach(path: str, command: Any) -> None:
    """Give each option of ``command`` (at ``path``, e.g. ``"goal ls"``) its check."""
    for param in command.params:
        if param.param_type_name != "option" or not param.opts:
            continue
        check = BY_COMMAND.get((path, param.opts[0])) or BY_NAME.get(param.opts[0])
        if check is None or getattr(param, "is_flag", False):
            continue
        param.callback = _wrap(check, param.callback)


def _wrap(check: Check, previous: Any) -> Any:
    def callback(ctx: Any, param: Any, value: Any) -> Any:
        check(value)
        return previous(ctx, param, value) if previous else value

    return callback
