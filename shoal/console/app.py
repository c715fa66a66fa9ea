"""The console as an ASGI app, and the process that serves it with uvicorn.

:func:`open_console` gathers what requests share (on one NATS connection) and makes sure
the console's two KV buckets exist; :func:`create_app` routes the pages and actions;
:func:`serve_console` runs it until told to stop, on a port of its choosing when given 0,
and reports the URL it listens on. Security headers on every answer: a strict Content
Security Policy (scripts and styles from the console only), no framing, no referrer, no
sniffing.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from shoal.aggregates.pricing import PriceTable
from shoal.bus import Bus
from shoal.bus.streams import provision
from shoal.console.access import (
    Authenticator,
    KVTokenStore,
    SignInStore,
    console_buckets,
)
from shoal.console.actions import ACTIONS
from shoal.console.approvals import APPROVAL_ACTIONS
from shoal.console.cards import CARD_ROUTES
from shoal.console.creds import CredsAuthenticator, EitherAuthenticator
from shoal.console.data import ConsoleData
from shoal.console.pages import PAGES
from shoal.console.settings import ConsoleSettings
from shoal.console.web import HERE, Console, NeedSignIn, login_redirect, make_templates, render
from shoal.errors import PortInUse

__all__ = ["create_app", "open_console", "serve_console"]

log = logging.getLogger("shoal.console")

_HEADERS = [
    (
        b"content-security-policy",
        b"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        b"connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    ),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
]


class SecurityHeaders:
    """Adds :data:`_HEADERS` to every HTTP response, and ``Server-Timing: app;dur=<ms>``
    (the time until the response started: what ``bench/bench_console.py`` measures)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        started = time.perf_counter()

        async def with_headers(message: Any) -> None:
            if message["type"] == "http.response.start":
                took = f"app;dur={(time.perf_counter() - started) * 1000:.2f}".encode()
                message["headers"] = [
                    *message.get("headers", []),
                    *_HEADERS,
                    (b"server-timing", took),
                ]
            await send(message)

        await self.app(scope, receive, with_headers)


async def open_console(
    bus: Bus, settings: ConsoleSettings, authenticator: Authenticator | None = None
) -> Console:
    """What every request shares; creates the console's buckets if missing (idempotent)."""
    tokens, sign_ins = console_buckets(bus, settings.session_ttl_s)
    await provision(bus.js, _BucketsOnly(tokens, sign_ins))  # type: ignore[arg-type]
    # A console token, or operator credentials the NATS server itself verifies.
    authenticator = authenticator or EitherAuthenticator(
        KVTokenStore(bus, tokens), CredsAuthenticator(bus)
    )
    return Console(
        bus=bus,
        settings=settings,
        authenticator=authenticator,
        sign_ins=SignInStore(bus, sign_ins, authenticator),
        data=ConsoleData(bus),
        prices=PriceTable.load(bus.settings.price_table),
        templates=make_templates(),
    )


class _BucketsOnly:
    """A topology of just the console's buckets, for :func:`shoal.bus.streams.provision`."""

    def __init__(self, *buckets: Any) -> None:
        self.streams: tuple[Any, ...] = ()
        self.buckets = buckets


def create_app(console: Console) -> Starlette:
    """The routes, static files, error pages and security headers of one console."""

    def page(handler: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Any]:
        async def guarded(request: Request) -> Response:
            try:
                return await handler(request)
            except NeedSignIn:
                return login_redirect(request)

        return guarded

    from shoal.console.actions import login_page

    routes: list[Route | Mount] = [
        Route("/login", login_page, methods=["GET"]),
        *(Route(path, page(fn), methods=["GET"]) for path, fn in PAGES),
        *(Route(path, fn, methods=methods) for path, fn, methods in (*ACTIONS, *APPROVAL_ACTIONS)),
        *CARD_ROUTES,
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        if request.url.path.startswith("/static") or request.method != "GET":
            return PlainTextResponse(f"{exc.status_code}: {exc.detail}\n", exc.status_code)
        return render(
            request, "empty.html", {"active": "", "message": exc.detail, "run": ""}, exc.status_code
        )

    app = Starlette(
        routes=routes,
        middleware=[Middleware(SecurityHeaders)],
        exception_handlers={HTTPException: http_error},
    )
    app.state.console = console
    return app


async def serve_console(
    console: Console,
    stop: asyncio.Event,
    *,
    on_listening: Callable[[str], None] | None = None,
) -> None:
    """Serve until ``stop`` is set; ``on_listening`` gets the URL once bound."""
    settings = console.settings
    sock = socket.socket(socket.AF_INET6 if ":" in settings.host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Accepted connections inherit it. Without it each answer on a kept-alive connection
    # waited ~40 ms for the client's delayed ACK (Nagle), measured with curl: 44 ms → 0.3 ms.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((settings.host, settings.port))
    except OSError as e:
        if e.errno != errno.EADDRINUSE or settings.port == 0:
            raise PortInUse(f"console cannot listen on {settings.host}:{settings.port}: {e}") from e
        # Another console (or anything) holds the default port: take a free one; the URL
        # record (shoal status) tells where.
        log.warning("port %s is in use; the console takes a free port", settings.port)
        sock.bind((settings.host, 0))
    host, port = sock.getsockname()[:2]
    config = uvicorn.Config(
        create_app(console),
        log_level="warning",
        access_log=False,
        lifespan="off",
        timeout_graceful_shutdown=2,
        proxy_headers=True,
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started and not task.done():  # noqa: ASYNC110 (uvicorn has no event)
        await asyncio.sleep(0.01)
    if task.done():
        task.result()  # it failed to start: say why
    shown = f"[{host}]" if ":" in host else host
    if on_listening is not None:
        on_listening(f"http://{shown}:{port}")
    stopper = asyncio.create_task(stop.wait())
    await asyncio.wait([task, stopper], return_when=asyncio.FIRST_COMPLETED)
    server.should_exit = True
    stopper.cancel()
    try:
        await task
    finally:
        close = getattr(console.authenticator, "close", None)
        if close is not None:  # the connections sign-ins with NATS credentials rest on
            await close()
