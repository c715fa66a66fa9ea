"""State-changing requests: sign in and out, kill switches, fleet commands.

An action is confirmed before it runs: the first POST (from the button on a page) renders a
confirmation page naming exactly what will happen; its "Confirm" button POSTs the same
fields with ``confirmed=yes``. Both POSTs carry the CSRF token and need the operator role
(:func:`~shoal.console.web.require_action`). The command itself is the CLI's library
function (:mod:`shoal.console.control`) with ``by`` the signed-in principal, so the audit
on ``<prefix>.control.…`` and the Fleet history name the person, as ``shoal kill`` does.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote, urlencode

from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from shoal.bus import KILL_SCOPES, KillScope
from shoal.console import control
from shoal.console.creds import looks_like_creds
from shoal.console.web import (
    COOKIE,
    LOGIN_COOKIE,
    console_of,
    new_login_token,
    render,
    require_action,
    set_cookie,
)
from shoal.errors import ShoalError

__all__ = ["ACTIONS", "confirm_page", "go_back"]


def go_back(path: str, **query: str) -> Response:
    return RedirectResponse(f"{path}?{urlencode(query)}", status_code=303)


def _safe_next(value: str | None) -> str:
    # Only a path on this site: never an open redirect.
    if value and value.startswith("/") and not value.startswith("//"):
        return value
    return "/"


async def login_page(request: Request) -> Response:
    token = new_login_token()
    response = render(
        request,
        "login.html",
        {"next": _safe_next(request.query_params.get("next")), "login_csrf": token, "error": ""},
    )
    set_cookie(response, request, LOGIN_COOKIE, token, 600)
    return response


async def login(request: Request) -> Response:
    c = console_of(request)
    form = await request.form()
    expected = request.cookies.get(LOGIN_COOKIE)
    if not expected or form.get("login_csrf") != expected:
        return Response("sign-in form expired: reload the page", status_code=403)
    # A token, or the text of a .creds file (pasted in the token field or the credentials one).
    credential = str(form.get("creds") or "").strip() or str(form.get("token") or "")
    who = await c.authenticator.authenticate(credential) if credential.strip() else None
    if who is None:
        token = new_login_token()
        response = render(
            request,
            "login.html",
            {
                "next": _safe_next(str(form.get("next") or "")),
                "login_csrf": token,
                "error": "those credentials are not valid"
                if looks_like_creds(credential)
                else "that token is not valid",
            },
            401,
        )
        set_cookie(response, request, LOGIN_COOKIE, token, 600)
        return response
    cookie, _ = await c.sign_ins.open(who)
    response = RedirectResponse(_safe_next(str(form.get("next") or "")), status_code=303)
    set_cookie(response, request, COOKIE, cookie, int(c.settings.session_ttl_s))
    response.delete_cookie(LOGIN_COOKIE, path="/")
    return response


async def logout(request: Request) -> Response:
    await require_action(request, "viewer")
    cookie = request.cookies.get(COOKIE)
    if cookie:
        await console_of(request).sign_ins.close(cookie)
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(COOKIE, path="/")
    return response


def confirm_page(
    request: Request, form: FormData, title: str, lines: list[str], back: str
) -> Response:
    """The page that names what an action will do; its Confirm button carries it out."""
    fields = [(k, v) for k, v in form.multi_items() if k not in ("csrf", "confirmed")]
    return render(
        request,
        "confirm.html",
        {
            "title": title,
            "lines": lines,
            "fields": fields,
            "action": request.url.path,
            "back": back,
            "active": "",
        },
    )


async def kill_set(request: Request) -> Response:
    sign_in, form = await require_action(request)
    scope, name, reason = _kill_fields(form)
    back = str(form.get("back") or "/kills")
    if scope is None:
        return go_back(_safe_next(back), error=f"unknown kill scope {form.get('scope')!r}")
    if scope != "all" and not name:
        return go_back(
            _safe_next(back), error=f"name the {scope} to kill (or choose the scope all)"
        )
    target = "everything" if scope == "all" else f"{scope} {name}"
    if form.get("confirmed") != "yes":
        lines = [
            f"Set the kill switch on {target}.",
            "Every gateway refuses its next model or tool call"
            + (
                " and supervisors stop its instances."
                if scope in ("instance", "fleet", "all")
                else "."
            ),
            f"Recorded as {sign_in.principal}, reason: {reason or '(none given)'}.",
        ]
        return confirm_page(request, form, f"Kill {target}?", lines, _safe_next(back))
    try:
        result = await control.kill(
            console_of(request).bus, scope, name, by=sign_in.principal, reason=reason
        )
    except ShoalError as e:
        return go_back(_safe_next(back), error=str(e))
    return go_back(_safe_next(back), done=f"kill switch {result.key} set")


async def kill_lift(request: Request) -> Response:
    sign_in, form = await require_action(request)
    scope, name, reason = _kill_fields(form)
    if scope is None:
        return go_back("/kills", error=f"unknown kill scope {form.get('scope')!r}")
    target = "everything" if scope == "all" else f"{scope} {name}"
    if form.get("confirmed") != "yes":
        lines = [
            f"Lift the kill switch on {target}: calls and instances may run again.",
            f"Recorded as {sign_in.principal}, reason: {reason or '(none given)'}.",
        ]
        return confirm_page(request, form, f"Lift the kill on {target}?", lines, "/kills")
    try:
        await control.unkill(
            console_of(request).bus, scope, name, by=sign_in.principal, reason=reason
        )
    except ShoalError as e:
        return go_back("/kills", error=str(e))
    return go_back("/kills", done=f"kill switch on {target} lifted")


def _kill_fields(form: FormData) -> tuple[KillScope | None, str | None, str]:
    scope = str(form.get("scope") or "")
    name = str(form.get("name") or "").strip() or None
    reason = str(form.get("reason") or "").strip()
    if scope not in KILL_SCOPES:
        return None, name, reason
    return scope, (None if scope == "all" else name), reason


async def fleet_action(request: Request) -> Response:
    sign_in, form = await require_action(request)
    name, verb = request.path_params["name"], request.path_params["verb"]
    back = f"/fleets/{quote(name)}"
    if verb not in control.FLEET_VERBS:
        return go_back(back, error=f"unknown fleet command {verb!r}")
    reason = str(form.get("reason") or "").strip()
    args: dict[str, Any] = {}
    agent = str(form.get("agent") or "").strip()
    try:
        if verb == "scale":
            args["replicas"] = {agent: int(str(form.get("replicas") or ""))}
            what = f"scale {agent} of fleet {name} to {args['replicas'][agent]} instance(s)"
        elif verb == "upgrade":
            version = str(form.get("version") or "").strip()
            if not version:
                raise ValueError("version")
            args.update(agent=agent, version=version, target=None)
            what = f"upgrade {agent} of fleet {name} to version {version} (rolling)"
        elif verb == "rollback":
            args["agent"] = agent
            what = f"roll {agent} of fleet {name} back to its previous version"
        else:
            what = f"{verb} fleet {name}"
    except ValueError:
        field = "replicas (a whole number)" if verb == "scale" else "version"
        return go_back(back, error=f"{verb}: give {field}")
    if form.get("confirmed") != "yes":
        lines = [
            what[0].upper() + what[1:] + ".",
            f"Recorded in the fleet's history as {sign_in.principal}, "
            f"reason: {reason or '(none given)'}.",
        ]
        return confirm_page(request, form, what[0].upper() + what[1:] + "?", lines, back)
    try:
        await control.fleet_command(
            console_of(request).bus, name, verb, by=sign_in.principal, reason=reason, **args
        )
    except ShoalError as e:
        return go_back(back, error=str(e))
    return go_back(back, done=f"{what}: accepted")


ACTIONS = (
    ("/login", login, ["POST"]),
    ("/logout", logout, ["POST"]),
    ("/kills", kill_set, ["POST"]),
    ("/kills/lift", kill_lift, ["POST"]),
    ("/fleets/{name}/{verb}", fleet_action, ["POST"]),
)
