"""The pages (GET only): overview, fleets, sessions, cost, tool ledger, kill switches, and
the places where approvals and the gateway's figures slot in."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from typing import Any

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response, StreamingResponse

from shoal.aggregates.replay import ReplayFold, fold_replay, parse_at
from shoal.bus import KILL_SCOPES
from shoal.console import control
from shoal.console.approvals import approvals_page
from shoal.console.data import SessionFilter, sql_literal, token_or_empty
from shoal.console.live import follow_session
from shoal.console.registry_page import registry
from shoal.console.web import console_of, render, require, signed_in
from shoal.errors import InvalidEvent, InvalidName, NotFound, ShoalError
from shoal.schemas import is_token, utcnow

__all__ = ["PAGES"]

RANGES = {"24h": timedelta(hours=24), "7d": timedelta(days=7), "30d": timedelta(days=30)}


def empty(request: Request, active: str, message: str, run: str, status: int) -> Response:
    """A page that has nothing to show, saying why and what to run."""
    return render(request, "empty.html", {"active": active, "message": message, "run": run}, status)


async def overview(request: Request) -> Response:
    await require(request)
    c = console_of(request)
    view = await c.data.overview(c.settings.stuck_after_s)
    return render(request, "overview.html", {"active": "overview", "o": view})


async def fleets(request: Request) -> Response:
    await require(request)
    views = await control.list_fleets(console_of(request).bus)
    return render(request, "fleets.html", {"active": "fleets", "fleets": views})


async def fleet(request: Request) -> Response:
    await require(request)
    c = console_of(request)
    name = request.path_params["name"]
    try:
        view = await control.describe_fleet(c.bus, name)
    except (NotFound, InvalidName) as e:
        return render(
            request,
            "empty.html",
            {
                "active": "fleets",
                "message": str(e),
                "run": "shoal fleet apply examples/demo-fleet.yaml",
            },
            404,
        )
    try:
        history = await control.fleet_history(c.bus, name)
    except ShoalError as e:
        history, error = [], str(e)
    else:
        error = ""
    return render(
        request,
        "fleet.html",
        {"active": "fleets", "f": view, "history": list(reversed(history)), "history_error": error},
    )


async def sessions(request: Request) -> Response:
    await require(request)
    c = console_of(request)
    q = request.query_params
    state = q.get("state", "")
    f = SessionFilter(
        fleet=token_or_empty(q.get("fleet")),
        agent=token_or_empty(q.get("agent")),
        status=token_or_empty(q.get("status")),
        state=state if state in ("stuck", "looping", "awaiting") else "",
        q=token_or_empty(q.get("q")),
    )
    try:
        rows, goals, facets = await asyncio.gather(
            c.data.sessions(f), c.data.goals(f.q), c.data.facets()
        )
        error = ""
    except ShoalError as e:
        rows, goals, facets, error = [], [], {"fleets": [], "agents": [], "statuses": []}, str(e)
    return render(
        request,
        "sessions.html",
        {
            "active": "sessions",
            "rows": rows,
            "goals": goals,
            "f": f,
            "facets": facets,
            "error": error,
        },
    )


async def goal(request: Request) -> Response:
    await require(request)
    gid = request.path_params["gid"]
    if not is_token(gid):
        return render(
            request,
            "empty.html",
            {
                "active": "sessions",
                "message": "no such goal",
                "run": 'shoal goal submit demo "..."',
            },
            404,
        )
    rows = await console_of(request).data.sql(
        f"SELECT root_iid FROM goals WHERE gid = {sql_literal(gid)}", 1
    )
    if not rows or not rows[0]["root_iid"]:
        return render(
            request,
            "empty.html",
            {
                "active": "sessions",
                "message": f"goal {gid} is not in the projection yet",
                "run": f"shoal goal show {gid}",
            },
            404,
        )
    return RedirectResponse(f"/sessions/{rows[0]['root_iid']}", status_code=303)


async def session(request: Request) -> Response:
    await require(request)
    c = console_of(request)
    iid = request.path_params["iid"]
    if not is_token(iid):
        return empty(
            request, "sessions", f"{iid!r} is not a session id (IID)", "shoal session ls", 404
        )
    try:
        at = parse_at(request.query_params.get("at") or None)
    except InvalidEvent as e:
        return render(
            request, "empty.html", {"active": "sessions", "message": str(e), "run": ""}, 400
        )
    folded: ReplayFold | None
    try:
        folded = await fold_replay(c.bus, iid, c.prices, at)
    except (NotFound, InvalidName):
        folded = None
    if folded is None:
        # Not started yet (or unknown): the page waits for its first event, live.
        return render(
            request,
            "session.html",
            {
                "active": "sessions",
                "iid": iid,
                "replay": None,
                "at": None,
                "last_seq": 0,
                "first_seq": 0,
                "gid": None,
                "seqs": [],
            },
        )
    try:
        replay = folded.replay(iid)
    except NotFound as e:
        return render(
            request, "empty.html", {"active": "sessions", "message": str(e), "run": ""}, 404
        )
    seqs = sorted(folded.seqs)
    gid = replay.root.session.gid
    return render(
        request,
        "session.html",
        {
            "active": "sessions",
            "iid": iid,
            "replay": replay,
            "at": at,
            "gid": gid,
            "first_seq": seqs[0],
            "last_seq": seqs[-1],
            "seqs": seqs,
            "cut": at if isinstance(at, int) else (seqs[-1] if at is None else None),
        },
    )


async def session_summary(request: Request) -> Response:
    """The session's figures as a fragment (the live page refreshes it after new events)."""
    await require(request)
    c = console_of(request)
    iid = request.path_params["iid"]
    try:
        replay = (await fold_replay(c.bus, iid, c.prices)).replay(iid)
    except (NotFound, InvalidName):
        return Response("", status_code=204)
    return render(request, "_summary.html", {"replay": replay})


async def session_stream(request: Request) -> Response:
    if await signed_in(request) is None:
        return Response("sign in first", status_code=401)
    c = console_of(request)
    iid = request.path_params["iid"]
    gid = request.query_params.get("gid") or None
    if not is_token(iid) or (gid is not None and not is_token(gid)):
        return Response("bad iid or gid", status_code=400)
    try:
        after = int(request.query_params.get("after", "0"))
    except ValueError:
        return Response("after must be a sequence number", status_code=400)
    after = max(after, int(request.headers.get("last-event-id", "0") or 0))
    return StreamingResponse(
        follow_session(c.bus, iid, gid, after, c.prices),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


async def cost(request: Request) -> Response:
    await require(request)
    c = console_of(request)
    rng = request.query_params.get("range", "7d")
    if rng not in (*RANGES, "all"):
        rng = "7d"
    since = utcnow() - RANGES[rng] if rng in RANGES else None
    try:
        data: dict[str, Any] | None = await c.data.cost(since)
        error = ""
    except ShoalError as e:
        data, error = None, str(e)
    chart = json.dumps(data["series"]) if data else "{}"
    return render(
        request,
        "cost.html",
        {
            "active": "cost",
            "d": data,
            "range": rng,
            "ranges": [*RANGES, "all"],
            "chart": chart,
            "error": error,
        },
    )


async def tools(request: Request) -> Response:
    await require(request)
    c = console_of(request)
    q = request.query_params
    params: dict[str, Any] = {"limit": 100}
    for key in ("tool", "agent", "iid"):
        value = token_or_empty(q.get(key))
        if value:
            params[key] = value
    if q.get("decision") in ("allow", "deny", "needs_approval"):
        params["decision"] = q["decision"]
    if q.get("sensitivity") in ("public", "internal", "confidential", "secret"):
        params["sensitivity"] = q["sensitivity"]
    try:
        answer = await c.data.ledger(params)
        rows, error = answer.rows, ""
    except ShoalError as e:
        rows, error = [], str(e)
    return render(
        request, "tools.html", {"active": "tools", "rows": rows, "p": params, "error": error}
    )


async def kills(request: Request) -> Response:
    await require(request)
    switches = await control.list_kills(console_of(request).bus)
    return render(
        request,
        "kills.html",
        {
            "active": "kills",
            "switches": switches,
            "scopes": KILL_SCOPES,
            "scope": request.query_params.get("scope", "session"),
            "name": request.query_params.get("name", ""),
        },
    )


async def deadletters(request: Request) -> Response:
    """The newest parked messages: where from, why (bodies stay in the stream)."""
    await require(request)
    try:
        letters, total = await control.list_deadletters(console_of(request).bus)
        error = ""
    except ShoalError as e:
        letters, total, error = [], 0, str(e)
    return render(
        request,
        "deadletters.html",
        {"active": "", "letters": list(reversed(letters)), "total": total, "error": error},
    )


async def gateway(request: Request) -> Response:
    await require(request)
    try:
        figures: dict[str, Any] | None = await console_of(request).data.gateway(
            utcnow() - RANGES["24h"]
        )
        error = ""
    except ShoalError as e:
        figures, error = None, str(e)
    return render(request, "gateway.html", {"active": "gateway", "g": figures, "error": error})


async def healthz(request: Request) -> Response:
    c = console_of(request)
    up = c.bus.nc.is_connected
    return Response("ok\n" if up else "nats disconnected\n", status_code=200 if up else 503)


PAGES = (
    ("/", overview),
    ("/fleets", fleets),
    ("/fleets/{name}", fleet),
    ("/sessions", sessions),
    ("/goals/{gid}", goal),
    ("/sessions/{iid}", session),
    ("/sessions/{iid}/summary", session_summary),
    ("/sessions/{iid}/stream", session_stream),
    ("/cost", cost),
    ("/tools", tools),
    ("/kills", kills),
    ("/approvals", approvals_page),
    ("/gateway", gateway),
    ("/deadletters", deadletters),
    ("/registry", registry),
    ("/healthz", healthz),
)
