"""Keyed digests of tool arguments: how the core tells repeated calls apart from new ones.

``tool.called`` records arguments redacted by the tool's sensitivity, so two calls of a
``secret`` tool with different queries look the same there. The tool gateway therefore also
sends ``arguments_digest``: an HMAC-SHA256 of the *real* arguments (canonical JSON), which
the core compares for equality and nothing else.

- **The key never leaves the agents' hosts.** It is ``SHOAL_TOOL_DIGEST_KEY`` when set (the
  same on every host of a deployment), else 32 random bytes in
  ``<data_dir>/keys/tool-digest.key`` (created once, mode 0600; every process sharing the
  data dir uses it). Without the key, a reader of the event log cannot test guesses of a
  low-entropy secret (a PIN, a password) against a digest.
- **One key per session.** The digest's key is ``HMAC(key, iid)``: equal arguments give
  equal digests within a session (all its loop detection needs, across attempts and
  instances), and unrelated digests in two sessions, so the log does not even reveal that
  two sessions used the same secret.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from shoal.bus import ShoalSettings

__all__ = ["KEY_FILE", "arguments_digest", "load_digest_key"]

log = logging.getLogger(__name__)

KEY_FILE = Path("keys") / "tool-digest.key"
"""Where the default key lives, under the data dir."""

DIGEST_BYTES = 16  # 128 bits: collisions are not a concern for equality within a session


def arguments_digest(key: bytes, iid: str, tool: str, arguments: Mapping[str, Any]) -> str:
    """The hex HMAC of ``tool`` and its real ``arguments`` under session ``iid``'s key."""
    session_key = hmac.new(key, iid.encode(), hashlib.sha256).digest()
    canonical = json.dumps(
        [tool, arguments], sort_keys=True, separators=(",", ":"), default=str, ensure_ascii=False
    )
    mac = hmac.new(session_key, canonical.encode(), hashlib.sha256)
    return mac.digest()[:DIGEST_BYTES].hex()


def load_digest_key(settings: ShoalSettings) -> bytes:
    """The deployment's digest key: the setting, else the data dir's key file (made once).

    A data dir that cannot hold the file gives a per-process key (logged): digests then
    agree only within this process.
    """
    if settings.tool_digest_key is not None:
        return settings.tool_digest_key.get_secret_value().encode()
    path = settings.data_dir / KEY_FILE
    try:
        return _read_or_create(path)
    except OSError as e:
        log.warning("no tool digest key at %s (%s); using a per-process key", path, e.strerror)
        return secrets.token_bytes(32)


def _read_or_create(path: Path) -> bytes:
    try:
        return _read(path)
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    # Write a private temporary file, then link it into place: the link is atomic and fails
    # if another process got there first, whose key everyone then uses.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
    finally:
        tmp.unlink(missing_ok=True)
    return _read(path)


def _read(path: Path) -> bytes:
    text = path.read_text().strip()
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) < 16:
        raise OSError(0, "the key file does not hold at least 16 hex-encoded bytes")
    return key
