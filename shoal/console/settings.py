"""The console's own settings (``SHOAL_CONSOLE_*``), beside the platform's settings."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["DEFAULT_PORT", "ConsoleSettings"]

DEFAULT_PORT = 8470


class ConsoleSettings(BaseSettings):
    """Where the console listens and how it treats cookies."""

    model_config = SettingsConfigDict(env_prefix="SHOAL_CONSOLE_", extra="ignore", frozen=True)

    host: str = Field(default="127.0.0.1", description="Interface to listen on (loopback).")
    port: int = Field(default=DEFAULT_PORT, ge=0, le=65535, description="0 picks a free port.")
    session_ttl_s: float = Field(
        default=8 * 3600.0, gt=0, description="A sign-in lasts this long (the bucket's TTL)."
    )
    secure_cookies: Literal["auto", "always"] = Field(
        default="auto",
        description="auto: Secure when the request came over https (or X-Forwarded-Proto "
        "says so); always: Secure even on plain http (behind a TLS proxy that drops the header).",
    )
    stuck_after_s: float = Field(default=300.0, gt=0, description="Silent this long: stuck.")
