"""Settings: one pydantic-settings model read from ``SHOAL_*`` variables and ``NATS_URL``.

Nothing reads the environment anywhere else; commands build one :class:`ShoalSettings` and
pass it down.
"""

from __future__ import annotations

import getpass
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from shoal.schemas import is_token

__all__ = ["ShoalSettings"]


DEFAULT_PREFIX = "shoal"
"""The subject prefix of a single-tenant deployment."""


def _default_principal() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no passwd entry (containers): fall back to a fixed name
        return "operator"


class ShoalSettings(BaseSettings):
    """Where NATS is, how subjects and streams are named, and where local state lives."""

    model_config = SettingsConfigDict(env_prefix="SHOAL_", extra="ignore", frozen=True)

    nats_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("NATS_URL", "SHOAL_NATS_URL", "nats_url"),
        description="An existing NATS server or cluster; unset means the embedded server.",
    )
    # -- authentication (the nats CLI's variables; secrets never printed) -----------------
    creds: Path | None = Field(
        default=None,
        validation_alias=AliasChoices("NATS_CREDS", "SHOAL_CREDS", "creds"),
        description="NATS credentials file (user JWT + seed); the embedded default: admin.",
    )
    nkey: Path | None = Field(
        default=None,
        validation_alias=AliasChoices("NATS_NKEY", "nkey"),
        description="File holding an NKey user seed.",
    )
    nats_user: str | None = Field(
        default=None, validation_alias=AliasChoices("NATS_USER", "nats_user")
    )
    nats_password: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("NATS_PASSWORD", "nats_password")
    )
    nats_token: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("NATS_TOKEN", "nats_token")
    )
    tls_ca: Path | None = Field(
        default=None,
        validation_alias=AliasChoices("NATS_CA", "tls_ca"),
        description="CA certificate(s) to verify the server (turns TLS on).",
    )
    tls_cert: Path | None = Field(
        default=None,
        validation_alias=AliasChoices("NATS_CERT", "tls_cert"),
        description="Client certificate for mutual TLS (with NATS_KEY).",
    )
    tls_key: Path | None = Field(default=None, validation_alias=AliasChoices("NATS_KEY", "tls_key"))
    data_dir: Path = Field(default=Path(".shoal"), description="Local state: embedded store, DBs.")
    prefix: str = Field(default=DEFAULT_PREFIX, description="First token of every subject.")
    stream_replicas: int = Field(default=1, ge=1, le=5, description="R1 embedded, R3 cluster.")
    nats_port: int | None = Field(
        default=None, description="Fixed port for the embedded server; unset picks a free one."
    )
    sync_interval: str | None = Field(
        default=None,
        description=(
            "JetStream fsync policy of the embedded server: a duration ('2m', the server "
            "default) or 'always' (fsync every write)."
        ),
    )
    principal: str = Field(default_factory=_default_principal)
    connect_timeout: float = Field(default=2.0, gt=0)
    request_timeout: float = Field(default=5.0, gt=0)
    dedup_window_s: float = Field(default=120.0, gt=0)
    presence_ttl_s: float = Field(default=10.0, gt=0)
    lease_ttl_s: float = Field(default=10.0, gt=0)
    supervisor_capacity: int | None = Field(
        default=None,
        ge=0,
        description="Instances one supervisor admits (default: computed from CPUs and memory).",
    )
    log_level: Literal["debug", "info", "warning", "error"] = "warning"
    persistence_module: str = Field(
        default="eventsourcing.sqlite",
        validation_alias=AliasChoices("PERSISTENCE_MODULE", "SHOAL_PERSISTENCE_MODULE"),
        description="eventsourcing persistence: eventsourcing.sqlite or eventsourcing.postgres.",
    )
    # -- agents (task consumers, model clients, tools) ------------------------------------
    task_ack_wait_s: float = Field(
        default=30.0, gt=0, description="Un-acked task is redelivered after this (crash)."
    )
    task_max_deliver: int = Field(default=3, ge=1, description="Attempts per task in all.")
    task_retry_delay_s: float = Field(
        default=1.0, ge=0, description="First retry delay; doubles per attempt."
    )
    model_base_url: str | None = Field(
        default=None, description="OpenAI-compatible endpoint (…/v1); unset: offline models only."
    )
    model_api_key: str | None = Field(default=None, description="Bearer key for model_base_url.")
    model_name: str | None = Field(default=None, description="Model served at model_base_url.")
    export_root: Path | None = Field(
        default=None,
        description="The query service exports Parquet only under this (default: its cwd).",
    )
    workspace_dir: Path | None = Field(
        default=None, description="Root of the sandboxed file tools (default <data_dir>/workspace)."
    )
    tool_digest_key: SecretStr | None = Field(
        default=None,
        description="Key of the tool-argument digests the core compares for looping (default: "
        "<data_dir>/keys/tool-digest.key, created 0600); the same on every host of a deployment.",
    )
    # -- the gateways (shoal gateway) ---------------------------------------------------------
    gateway_config: Path | None = Field(
        default=None, description="Gateway providers/aliases/routing YAML (docs/gateways.md)."
    )
    gateway_host: str = Field(default="127.0.0.1", description="Address the gateway binds.")
    gateway_port: int = Field(default=4080, ge=0, le=65535, description="Model gateway port.")
    gateway_mcp_port: int = Field(default=4081, ge=0, le=65535, description="MCP gateway port.")
    gateway_url: str | None = Field(
        default=None, description="Model gateway base URL (…/v1) agents are given."
    )
    gateway_mcp_url: str | None = Field(
        default=None, description="MCP gateway endpoint (…/mcp) agents are given."
    )
    gateway_key: str | None = Field(
        default=None,
        description="This instance's gateway key (its model calls, and its MCP tools' calls "
        "with SHOAL_GATEWAY_MCP_URL, then go there).",
    )
    gateway_cache_ttl_s: float = Field(
        default=300.0, gt=0, description="Longest a cached gateway response is kept."
    )
    # -- the event-sourced core (ingestion, prices, watchdog) -----------------------------
    price_table: Path | None = Field(
        default=None, description="Price table YAML (per model USD/1M tokens); unset: builtin."
    )
    approval_timeout_s: float = Field(
        default=3600.0,
        gt=0,
        description="How long a high-risk call waits for a human before it fails as timed out.",
    )
    core_batch: int = Field(default=1000, ge=1, le=10000, description="Events per core write.")
    core_partitions: int = Field(
        default=1,
        ge=1,
        le=64,
        description="Partitions the core folds the log in (1: one core, docs/scale.md).",
    )
    stuck_after_s: float = Field(
        default=300.0, gt=0, description="A running session silent this long is flagged stuck."
    )
    loop_repeats: int = Field(
        default=5, ge=2, description="Same tool + same arguments this many times: looping."
    )
    loop_model_calls: int = Field(
        default=25, ge=2, description="Model calls in a row with no tool/task progress: looping."
    )
    regression_min_samples: int = Field(
        default=20,
        ge=1,
        description="Sessions each version needs before the core tests an upgrade for a "
        "regression (a canary carries its own --min-samples).",
    )
    # -- telemetry (OpenTelemetry: the standard OTEL_* variables) -------------------------
    otel_sdk_disabled: bool = Field(
        default=False,
        validation_alias=AliasChoices("OTEL_SDK_DISABLED", "otel_sdk_disabled"),
        description="true: no spans, no metrics, no trace context on the wire.",
    )
    otel_endpoint: str | None = Field(
        default=None,
        validation_alias=AliasChoices("OTEL_EXPORTER_OTLP_ENDPOINT", "otel_endpoint"),
        description="OTLP collector base URL; unset: JSON lines under <data_dir>/traces/.",
    )
    otel_traces_endpoint: str | None = Field(
        default=None,
        validation_alias=AliasChoices("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "otel_traces_endpoint"),
        description="OTLP endpoint for spans only (full URL, used as given).",
    )
    otel_metrics_endpoint: str | None = Field(
        default=None,
        validation_alias=AliasChoices(
            "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "otel_metrics_endpoint"
        ),
        description="OTLP endpoint for metrics only (full URL, used as given).",
    )
    otel_traces_exporter: Literal["otlp", "none"] = Field(
        default="otlp",
        validation_alias=AliasChoices("OTEL_TRACES_EXPORTER", "otel_traces_exporter"),
        description="none: no span is exported (nor written to the span file).",
    )
    otel_metrics_exporter: Literal["otlp", "none"] = Field(
        default="otlp",
        validation_alias=AliasChoices("OTEL_METRICS_EXPORTER", "otel_metrics_exporter"),
        description="none: no metric is exported (nor written to the metrics file).",
    )
    otel_protocol: Literal["grpc", "http/protobuf"] = Field(
        default="http/protobuf",
        validation_alias=AliasChoices("OTEL_EXPORTER_OTLP_PROTOCOL", "otel_protocol"),
    )
    otel_service_name: str | None = Field(
        default=None,
        validation_alias=AliasChoices("OTEL_SERVICE_NAME", "otel_service_name"),
        description="Overrides the process's own service.name (shoal-agent, shoal-cli…).",
    )
    trace_content: bool = Field(
        default=False,
        validation_alias=AliasChoices(
            "SHOAL_TRACE_CONTENT",
            "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT",
            "trace_content",
        ),
        description="Record tool arguments/results on spans (redacted by sensitivity).",
    )

    @field_validator("nats_url")
    @classmethod
    def _empty_url_is_unset(cls, value: str | None) -> str | None:
        # NATS_URL= (set but empty) means "no external server", as unset does.
        return value.strip() or None if value is not None else None

    @field_validator("creds", "nkey", "tls_ca", "tls_cert", "tls_key", mode="before")
    @classmethod
    def _empty_path_is_unset(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator(
        "otel_endpoint", "otel_traces_endpoint", "otel_metrics_endpoint", "otel_service_name"
    )
    @classmethod
    def _empty_otel_is_unset(cls, value: str | None) -> str | None:
        return value.strip() or None if value is not None else None

    @field_validator("otel_traces_exporter", "otel_metrics_exporter", mode="before")
    @classmethod
    def _exporter_name(cls, value: object) -> object:
        # The spec's values are case-insensitive, comma-separated lists; shoal takes one.
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("otel_sdk_disabled", mode="before")
    @classmethod
    def _otel_disabled_only_if_true(cls, value: object) -> object:
        # The OpenTelemetry spec: only "true" (any case) disables; anything else is false.
        return value.strip().lower() == "true" if isinstance(value, str) else value

    @field_validator("prefix")
    @classmethod
    def _prefix_is_a_token(cls, value: str) -> str:
        if not is_token(value):
            raise ValueError("prefix must be one subject token (no '.', '*', '>' or spaces)")
        return value

    @property
    def embedded(self) -> bool:
        """True when shoal runs (or reuses) its own nats-server."""
        return self.nats_url is None

    @property
    def effective_creds(self) -> Path | None:
        """``NATS_CREDS`` if given; on the embedded server, the local admin's credentials
        (``<data_dir>/auth/creds/admin.creds``, written when the server first starts)."""
        if self.creds:
            return self.creds
        if self.embedded and not (self.nkey or self.nats_user or self.nats_token):
            local = self.data_dir.resolve() / "auth" / "creds" / "admin.creds"
            if local.is_file():
                return local
        return None

    @property
    def store_dir(self) -> Path:
        """Where this tenant's stores live (the core's SQLite file, the DuckDB projection).

        The default prefix keeps them in the data dir itself; any other prefix gets
        ``<data_dir>/tenants/<prefix>/``, so tenants sharing a server and a data dir never
        read each other's sessions.
        """
        if self.prefix == DEFAULT_PREFIX:
            return self.data_dir
        return self.data_dir / "tenants" / self.prefix

    @property
    def stream_prefix(self) -> str:
        """Upper-case prefix of stream and bucket names (``shoal`` → ``SHOAL``)."""
        return self.prefix.upper().replace("-", "_")
