"""How a connection proves who it is: credentials and TLS options for nats-py.

Following the ``nats`` CLI's conventions: ``NATS_CREDS`` (a user JWT + seed file),
``NATS_NKEY`` (a file holding a user seed), ``NATS_USER``/``NATS_PASSWORD``, ``NATS_TOKEN``,
and TLS with ``NATS_CA`` (verify the server), ``NATS_CERT``/``NATS_KEY`` (mutual TLS). A
password in the URL (``nats://user:pass@host``) works too; :func:`redact_url` is what may be
shown of such a URL.
"""

from __future__ import annotations

import base64
import json
import ssl
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from shoal.bus.settings import ShoalSettings
from shoal.errors import AuthorizationFailed

__all__ = ["auth_error", "connect_options", "redact_url"]

_AUTH_MARKERS = ("authorization violation", "authentication", "user authentication revoked")


def connect_options(settings: ShoalSettings) -> dict[str, Any]:
    """Keyword arguments for ``nats.connect`` that authenticate as ``settings`` say."""
    opts: dict[str, Any] = {}
    creds = settings.effective_creds
    if creds is not None:
        opts["user_credentials"] = str(creds)
        inbox = private_inbox(creds)
        if inbox is not None:
            opts["inbox_prefix"] = inbox
    elif settings.nkey is not None:
        opts["nkeys_seed"] = str(settings.nkey)
    if settings.nats_user:
        opts["user"] = settings.nats_user
        if settings.nats_password is not None:
            opts["password"] = settings.nats_password.get_secret_value()
    if settings.nats_token is not None:
        opts["token"] = settings.nats_token.get_secret_value()
    if settings.tls_ca or settings.tls_cert:
        ctx = ssl.create_default_context(cafile=str(settings.tls_ca) if settings.tls_ca else None)
        if settings.tls_cert:
            ctx.load_cert_chain(str(settings.tls_cert), str(settings.tls_key or settings.tls_cert))
        opts["tls"] = ctx
    return opts


def private_inbox(creds: Path) -> str | None:
    """The reply-inbox prefix the credentials' subscribe permission allows, if only one.

    Credentials issued by shoal let a user subscribe to ``_INBOX.<its key>.>`` alone (so no
    user reads another's replies); the connection must then use that inbox prefix.
    """
    try:
        token = next(
            line.strip() for line in creds.read_text().splitlines() if line.count(".") == 2
        )
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        allowed = claims["nats"]["sub"]["allow"]
    except (OSError, StopIteration, ValueError, KeyError, TypeError, IndexError):
        return None
    inboxes = [s for s in allowed if isinstance(s, str) and s.startswith("_INBOX.")]
    if len(inboxes) != 1 or not inboxes[0].endswith(".>") or inboxes[0] == "_INBOX.>":
        return None
    return inboxes[0].removesuffix(".>")


def auth_error(url: str, errors: list[Exception]) -> AuthorizationFailed | None:
    """An :class:`AuthorizationFailed` if the server refused who we are, else None."""
    for e in errors:
        text = str(e).lower()
        if any(marker in text for marker in _AUTH_MARKERS):
            return AuthorizationFailed(
                f"NATS at {redact_url(url)} refused the credentials (authorization violation): "
                "check NATS_CREDS / NATS_USER / NATS_PASSWORD / NATS_TOKEN / NATS_NKEY"
            )
    return None


def redact_url(url: str) -> str:
    """``url`` (one or several, comma-separated) with any password replaced by ``***``."""
    out = []
    for one in url.split(","):
        one = one.strip()
        try:
            parts = urlsplit(one if "://" in one else f"nats://{one}")
        except ValueError:
            out.append("<invalid url>")
            continue
        if parts.password is not None or (parts.username and "@" in parts.netloc):
            host = parts.netloc.rsplit("@", 1)[1]
            user = parts.username or ""
            netloc = f"{user}:***@{host}" if parts.password is not None else f"***@{host}"
            one = urlunsplit(parts._replace(netloc=netloc))
        out.append(one)
    return ",".join(out)
