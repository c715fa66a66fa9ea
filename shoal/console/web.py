"""What every page shares: the console's state, sign-in, CSRF, rendering.

Cookies: the sign-in cookie is ``HttpOnly``, ``SameSite=Strict``, ``Path=/`` and ``Secure``
whenever the request came over https (or ``SHOAL_CONSOLE_SECURE_COOKIES=always``). Every
state-changing request carries the sign-in's CSRF token in a form field and is refused with
403 without it; the sign-in form itself uses a double-submit token (a cookie and a field
that must match), so a sign-in cannot be forced from another site either.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.templating import Jinja2Templates

from shoal.aggregates.pricing import PriceTable
from shoal.bus import Bus
from shoal.console.access import Authenticator, Role, SignIn, SignInStore, csrf_matches
from shoal.console.data import ConsoleData
from shoal.console.format import FILTERS, GLOBALS
from shoal.console.settings import ConsoleSettings

__all__ = [
    "COOKIE",
    "LOGIN_COOKIE",
    "NAV",
    "Console",
    "console_of",
    "render",
    "require",
    "require_action",
]

log = logging.getLogger("shoal.console")

COOKIE = "shoal_console"
LOGIN_COOKIE = "shoal_console_login"
HERE = Path(__file__).parent

NAV: tuple[tuple[str, str, str], ...] = (
    ("overview", "/", "Overview"),
    ("fleets", "/fleets", "Fleets"),
    ("sessions", "/sessions", "Sessions"),
    ("cost", "/cost", "Cost & outcomes"),
    ("tools", "/tools", "Tool ledger"),
    ("kills", "/kills", "Kill switches"),
    ("approvals", "/approvals", "Approvals"),
    ("gateway", "/gateway", "Gateway"),
    ("registry", "/registry", "Registry"),
)
"""The navigation, in order; approvals and gateway pages slot in when those parts land."""


@dataclass
class Console:
    """Everything a request needs, shared by every request of one process (no state of its
    own: the bus, the readers, the sign-in store, the price table)."""

    bus: Bus
    settings: ConsoleSettings
    authenticator: Authenticator
    sign_ins: SignInStore
    data: ConsoleData
    prices: PriceTable
    templates: Jinja2Templates


def make_templates() -> Jinja2Templates:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=jinja2.select_autoescape(default=True),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(FILTERS)
    env.globals.update(GLOBALS)
    env.globals["NAV"] = NAV
    return Jinja2Templates(env=env)


def console_of(request: Request) -> Console:
    console: Console = request.app.state.console
    return console


def secure(request: Request, settings: ConsoleSettings) -> bool:
    if settings.secure_cookies == "always":
        return True
    proto = request.headers.get("x-forwarded-proto", request.url.scheme)
    return proto.split(",")[0].strip() == "https"


def set_cookie(response: Response, request: Request, name: str, value: str, max_age: int) -> None:
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        path="/",
        httponly=True,
        samesite="strict",
        secure=secure(request, console_of(request).settings),
    )


async def signed_in(request: Request) -> SignIn | None:
    """The request's sign-in (looked up in the KV bucket), cached on the request."""
    if not hasattr(request.state, "sign_in"):
        store = console_of(request).sign_ins
        request.state.sign_in = await store.find(request.cookies.get(COOKIE))
    sign_in: SignIn | None = request.state.sign_in
    return sign_in


class NeedSignIn(Exception):
    """Raised by :func:`require` on a page: answered with a redirect to the sign-in page."""


async def require(request: Request) -> SignIn:
    sign_in = await signed_in(request)
    if sign_in is None:
        raise NeedSignIn()
    return sign_in


async def require_action(request: Request, role: Role = "operator") -> tuple[SignIn, Any]:
    """A state-changing request: signed in, the CSRF token matches, and the role suffices.

    Returns the sign-in and the parsed form; anything else is 403 (never a redirect, so a
    forged request learns nothing and changes nothing).
    """
    sign_in = await signed_in(request)
    if sign_in is None:
        raise HTTPException(403, "not signed in")
    form = await request.form()
    token = form.get("csrf")
    if not csrf_matches(sign_in, token if isinstance(token, str) else None):
        raise HTTPException(403, "missing or wrong CSRF token: reload the page and try again")
    if not sign_in.who.may(role):
        raise HTTPException(403, f"{sign_in.principal} is a {sign_in.role}: acting needs {role}")
    return sign_in, form


def render(
    request: Request, name: str, context: dict[str, Any], status_code: int = 200
) -> Response:
    console = console_of(request)
    sign_in: SignIn | None = getattr(request.state, "sign_in", None)
    base = {
        "who": sign_in.who if sign_in else None,
        "csrf": sign_in.csrf if sign_in else "",
        "can_act": bool(sign_in and sign_in.who.can_act),
        "active": context.get("active", ""),
        "prefix": console.bus.settings.prefix,
        "flash": request.query_params.get("done", ""),
        "flash_error": request.query_params.get("error", ""),
    }
    response = console.templates.TemplateResponse(
        request, name, {**base, **context}, status_code=status_code
    )
    response.headers["Cache-Control"] = "no-store"
    return response


def login_redirect(request: Request) -> Response:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"/login?next={target}", status_code=303)


def new_login_token() -> str:
    return secrets.token_urlsafe(24)
