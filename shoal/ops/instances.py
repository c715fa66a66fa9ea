"""Agent instance processes as the supervisor starts them: command line, environment, and
the tie that makes an instance die with its supervisor.

A fleet spec's ``command:`` agent (any language) runs its own argv instead, as is (no
shell), supervised the same way; it learns who it is from :func:`identity_env`.

Each instance is ``python -m shoal agent run FLEET AGENT --target … --instance … --version …
--slot … --supervisor … [--manifest FILE]`` (``--manifest``: the fleet spec's manifest for
the agent, which replaces the one its code declares) through the lean entry point
:mod:`shoal.agents.__main__` (no typer app to build), in a session of its own (so a Ctrl-C
meant for the supervisor does not reach it: the supervisor drains its instances itself).
On Linux the child asks the kernel to send it SIGTERM when its parent dies
(``PR_SET_PDEATHSIG``): a SIGKILLed supervisor therefore leaves no unsupervised instance
behind, and the supervisor that takes over its slots once the leases expire starts exactly
the missing ones.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import functools
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from shoal.auth import InstanceScope, KeyStore
from shoal.auth.issuer import InstanceIssuer
from shoal.bus import ShoalSettings
from shoal.errors import ShoalError
from shoal.schemas.manifest import CapabilityManifest

__all__ = [
    "Launch",
    "Launcher",
    "bytecode_cache_dir",
    "identity_env",
    "instance_command",
    "instance_env",
    "mint",
    "own_settings",
    "scoped_env",
    "signal_process",
    "spawn",
    "tail_line",
]

PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class Launch:
    """Everything needed to start one instance in one slot."""

    fleet: str
    agent: str
    target: str
    version: str
    instance: str
    slot: int
    concurrency: int
    supervisor: str
    manifest: Path | None = None  # the spec's manifest override, as a JSON file
    command: tuple[str, ...] | None = None  # a non-Python agent's argv (then target is "")
    capabilities: tuple[str, ...] = ()  # what a command agent serves (its credentials' scope)


Launcher = Callable[[Launch], list[str]]
"""Builds the argv of an instance (replaceable for other runtimes, e.g. a non-Python agent)."""


def instance_command(launch: Launch) -> list[str]:
    """``python -m shoal agent run`` for one slot (``shoal/__main__.py`` routes it to the lean
    :mod:`shoal.agents.__main__`; the words ``shoal agent run`` name it in process lists), or
    the spec's ``command`` as written for a non-Python agent."""
    if launch.command is not None:
        return list(launch.command)
    manifest = ["--manifest", str(launch.manifest)] if launch.manifest is not None else []
    return [
        sys.executable,
        "-m",
        "shoal",
        "agent",
        "run",
        launch.fleet,
        launch.agent,
        "--target",
        launch.target,
        "--instance",
        launch.instance,
        "--version",
        launch.version,
        "--concurrency",
        str(launch.concurrency),
        "--slot",
        str(launch.slot),
        "--supervisor",
        launch.supervisor,
        *manifest,
    ]


def instance_env(settings: ShoalSettings, url: str) -> dict[str, str]:
    """The supervisor's environment plus where NATS is and how subjects are named."""
    env = dict(os.environ)
    env.update(
        {
            "NATS_URL": url,
            "SHOAL_PREFIX": settings.prefix,
            "SHOAL_DATA_DIR": str(settings.data_dir.resolve()),
            "SHOAL_PRESENCE_TTL_S": str(settings.presence_ttl_s),
            "SHOAL_LEASE_TTL_S": str(settings.lease_ttl_s),
        }
    )
    from shoal.ops.services import gateway_urls  # services imports this module

    gateway = gateway_urls(settings)
    if gateway is not None and gateway["url"]:  # the key is per instance: gateway_env()
        env.setdefault("SHOAL_GATEWAY_URL", gateway["url"])
        env.setdefault("OPENAI_BASE_URL", gateway["url"])
        if gateway["mcp_url"]:
            env.setdefault("SHOAL_GATEWAY_MCP_URL", gateway["mcp_url"])
    if env.pop("PYTHONDONTWRITEBYTECODE", ""):
        # Without cached bytecode every instance compiles shoal and its dependencies from
        # source: about half its CPU before the first heartbeat, times every replica. The
        # installed tree stays free of __pycache__ (the point of that variable): the cache
        # lives apart, in the user's cache directory, shared by every start that follows.
        env.setdefault("PYTHONPYCACHEPREFIX", str(bytecode_cache_dir(env)))
    return env


def identity_env(launch: Launch) -> dict[str, str]:
    """Who one instance is, as environment variables (docs/agents.md, "Non-Python agents in
    a fleet spec"): what a ``command`` agent has instead of ``shoal agent run``'s options."""
    env = {
        "SHOAL_FLEET": launch.fleet,
        "SHOAL_AGENT": launch.agent,
        "SHOAL_INSTANCE": launch.instance,
        "SHOAL_VERSION": launch.version,
        "SHOAL_SLOT": str(launch.slot),
        "SHOAL_CONCURRENCY": str(launch.concurrency),
        "SHOAL_SUPERVISOR": launch.supervisor,
        "SHOAL_CAPABILITIES": ",".join(launch.capabilities),
    }
    if launch.manifest is not None:
        env["SHOAL_MANIFEST"] = str(launch.manifest)
    return env


def scoped_env(env: dict[str, str], launch: Launch, settings: ShoalSettings) -> dict[str, str]:
    """``env`` with ``NATS_CREDS`` naming credentials minted for this one instance, and, for
    a ``command`` agent, its identity (:func:`identity_env`).

    Only when this supervisor connects with credentials of the key store in its data dir
    (the local installation) can it sign them; otherwise instances inherit ``env`` as is.
    The secret travels as a 0600 file's path, never on the command line.
    """
    if launch.command is not None:
        env = {**env, **identity_env(launch)}
    path = mint(
        settings,
        launch.fleet,
        launch.agent,
        launch.target,
        launch.instance,
        launch.manifest,
        capabilities=launch.capabilities if launch.command is not None else None,
    )
    return env if path is None else {**env, "NATS_CREDS": str(path)}


def own_settings(
    settings: ShoalSettings, fleet: str, agent: str, target: str | None, instance: str
) -> ShoalSettings:
    """For ``shoal agent run`` by the local admin: the instance connects as itself."""
    path = mint(settings, fleet, agent, target, instance) if settings.creds is None else None
    return settings if path is None else settings.model_copy(update={"creds": path})


def mint(
    settings: ShoalSettings,
    fleet: str,
    agent: str,
    target: str | None,
    instance: str,
    manifest: Path | None = None,
    capabilities: tuple[str, ...] | None = None,
) -> Path | None:
    """Credentials for one instance, if these settings connect with the local key store's
    credentials (so this process may sign them); None elsewhere. ``manifest`` is a fleet
    spec's override of the declared manifest (its delegations then apply); ``capabilities``
    what a command agent serves (a Python target is asked instead)."""
    store = KeyStore.for_data_dir(settings.data_dir)
    creds = settings.effective_creds
    if creds is None or not store.exists or not creds.resolve().is_relative_to(store.home):
        return None
    if capabilities is not None:  # a command: nothing to import, and it delegates nothing
        scope = InstanceScope(fleet, agent, instance, capabilities, ())  # unless its manifest
    else:
        scope = instance_scope(fleet, agent, target, instance)
    if manifest is not None:
        try:
            delegates = CapabilityManifest.model_validate_json(manifest.read_text()).delegates
        except (OSError, ValueError):
            delegates = ()  # unreadable: it may delegate nothing
        scope = dataclasses.replace(scope, delegates=delegates)
    return InstanceIssuer(store, settings).issue(scope)


def instance_scope(fleet: str, agent: str, target: str | None, instance: str) -> InstanceScope:
    """What an instance of ``target`` may do: its capabilities and manifest's delegations."""
    try:
        declared = _declared(fleet, agent, target)
    except ShoalError:
        return InstanceScope(fleet, agent, instance, ())  # it cannot start either: no rights
    return InstanceScope(fleet, agent, instance, *declared)


@functools.lru_cache(maxsize=256)
def _declared(
    fleet: str, agent: str, target: str | None
) -> tuple[tuple[str, ...], tuple[str, ...] | None]:
    from shoal.agents.serve import resolve_agent

    found = resolve_agent(fleet, agent, target)
    return tuple(found.capabilities), found.manifest.delegates


def bytecode_cache_dir(env: dict[str, str]) -> Path:
    """Where instances keep compiled bytecode when ``PYTHONDONTWRITEBYTECODE`` is set."""
    cache = env.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "shoal" / "pycache"


def _libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None


def spawn(argv: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    """Start an instance detached from the terminal, dying with this process (Linux).

    Must be called from the thread that lives as long as the supervisor (the event loop's):
    the kernel sends the death signal when the *thread* that forked the child exits.
    """
    libc = _libc()  # loaded before fork: the child must not load libraries
    parent = os.getpid()

    def _tie_to_parent() -> None:
        if libc is not None:
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        return subprocess.Popen(
            argv,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_tie_to_parent,
        )


def signal_process(proc: subprocess.Popen[bytes], sig: int) -> None:
    """Send ``sig`` unless the process is already gone (a race with its exit is fine)."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)


def tail_line(path: Path, limit: int = 4096) -> str:
    """The last non-empty line of an instance log: usually the reason it exited."""
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - limit))
            lines = f.read().decode(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return lines[-1].strip()[:300] if lines else ""
