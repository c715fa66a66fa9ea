"""The operations console: a server-rendered web app that reads over NATS only.

Pages for on-call (overview), fleets, sessions and goals (live timelines), cost and
outcomes, the tool ledger and kill switches, behind a token sign-in with roles. See
``docs/console.md``.
"""

from __future__ import annotations

from shoal.console.access import ROLES, Authenticator, KVTokenStore, Principal, Role
from shoal.console.app import create_app, open_console, serve_console
from shoal.console.settings import DEFAULT_PORT, ConsoleSettings

__all__ = [
    "DEFAULT_PORT",
    "ROLES",
    "Authenticator",
    "ConsoleSettings",
    "KVTokenStore",
    "Principal",
    "Role",
    "create_app",
    "open_console",
    "serve_console",
]
