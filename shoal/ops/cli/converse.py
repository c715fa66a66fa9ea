"""``shoal session send|reply``: talk to a running session (see shoal.agents.conversation)."""

from __future__ import annotations

from typing import Annotated

import typer

from shoal.ops.cli._common import JsonOption, cli, emit_json, run
from shoal.ops.cli._roles import require_role
from shoal.ops.connect import open_bus

IidArgument = Annotated[str, typer.Argument(help="The running session (IID).")]
TextArgument = Annotated[str, typer.Argument(help="What to say.")]


def send(
    ctx: typer.Context, iid: IidArgument, text: TextArgument, as_json: JsonOption = False
) -> None:
    """Append a message to a running session; its handler reads it (ctx.messages())."""
    from shoal.aggregates.interactions import send_message

    c = cli(ctx, as_json)
    require_role(c, "operator", "session.send", iid)

    async def _send() -> str:
        async with open_bus(c.settings) as bus:
            return (await send_message(bus, iid, text, by=c.settings.principal)).id

    event_id = run(c, _send())
    if c.json:
        emit_json({"id": event_id, "iid": iid})
    else:
        c.out.print(f"message sent to {iid}")


def reply(
    ctx: typer.Context, iid: IidArgument, text: TextArgument, as_json: JsonOption = False
) -> None:
    """Answer the session's open question (ctx.ask); the session resumes."""
    from shoal.aggregates.interactions import reply_to_session

    c = cli(ctx, as_json)
    require_role(c, "operator", "session.reply", iid)

    async def _reply() -> tuple[str, str, str]:
        async with open_bus(c.settings) as bus:
            event, question = await reply_to_session(bus, iid, text, by=c.settings.principal)
            return event.id, question.question_id, question.question

    event_id, qid, question = run(c, _reply())
    if c.json:
        emit_json({"id": event_id, "iid": iid, "question_id": qid})
    else:
        c.out.print(f"replied to {iid}: {question!r}")


def register(app: typer.Typer) -> None:
    app.command("send")(send)
    app.command("reply")(reply)
