"""Work in flight on one instance, and what a kill switch does to it.

Every delivery being handled has an :class:`InFlight` entry: its message, its session, the
asyncio task running its handler and the attempt's own :class:`AttemptPolicy`. A kill that
**covers** a running handler *interrupts* it (:meth:`InFlight.interrupt`):

- which kills cover it: ``instance.<id>``, ``fleet.<name>`` and ``all`` cover all of an
  instance's work; ``session.<iid>`` (its own IID or its parent's), ``goal.<gid>`` and
  ``principal.<name>`` cover the matching sessions. ``tool.<name>`` and ``model.<name>``
  refuse calls but interrupt nothing;
- the attempt's policy refuses every later model call, tool call or delegation, for good
  (even once the switch is lifted): a handler that catches :class:`Killed`, or even
  ``CancelledError``, and carries on can reach nothing;
- the handler's asyncio task is cancelled, and the delivery is settled by the runtime at
  once — not when the handler returns, not after the ack wait (see ``tasks.py``):
  :func:`releases` says whether it goes back to the queue or fails finally.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from nats.aio.msg import Msg

from shoal.agents.errors import Killed
from shoal.agents.killswitch import kill_keys
from shoal.agents.policy import Action, Policy
from shoal.agents.session import Session
from shoal.bus import KillSwitch
from shoal.schemas import AgentKilled, GoalFailed, SessionKilled, TaskFailed

if TYPE_CHECKING:
    from shoal.agents.runtime import AgentRuntime

__all__ = ["AttemptPolicy", "InFlight", "KillSettler", "killed_error", "releases"]

log = logging.getLogger(__name__)

# Kills that stop the worker, not the work: the task goes back to the queue for later.
RELEASING_SCOPES = frozenset({"instance", "fleet", "all"})


def releases(key: str) -> bool:
    """True when a kill of ``key`` releases the work it interrupts (else it fails finally)."""
    return key.partition(".")[0] in RELEASING_SCOPES


def killed_error(key: str, switch: KillSwitch, target: str = "") -> Killed:
    """The :class:`Killed` a kill switch raises, naming who set it and why."""
    why = f"kill switch {key} set by {switch.by}" + (f": {switch.reason}" if switch.reason else "")
    return Killed(why, key=key, target=target)


@dataclass
class AttemptPolicy(Policy):
    """The policy of one attempt: the runtime's, plus the interruption of that attempt.

    Once :attr:`interrupted` is set, every check raises ``CancelledError``: the handler
    was cancelled, and a call it still attempts continues that cancellation (a handler that
    catches :class:`Killed` cannot catch this; one whose cancellation was lost — Python
    3.11's ``asyncio.wait_for`` drops a cancellation that meets its inner result — ends at
    its next call). The first refusal is recorded as ``policy.decided``; later ones are
    only counted and paused, so a handler that swallows even that can neither flood the
    event log nor starve the event loop.
    """

    interrupted: Killed | None = None
    refused_after_kill: int = 0
    PAUSE_S: ClassVar[float] = 0.01

    @classmethod
    def of(cls, policy: Policy) -> AttemptPolicy:
        """An attempt's policy: the runtime's (its manifest, policy book, approvals…)."""
        return cls(**{name: getattr(policy, name) for name in _POLICY_FIELDS})

    async def check(
        self, session: Session, action: Action, target: str, *args: Any, **kwargs: Any
    ) -> None:
        if self.interrupted is None:
            await super().check(session, action, target, *args, **kwargs)
            return
        kill = self.interrupted
        self.refused_after_kill += 1
        if self.refused_after_kill == 1:
            with contextlib.suppress(Killed):  # recorded, then refused below
                await self._refuse(
                    session, action, target, Killed(str(kill), key=kill.key, target=target)
                )
        else:
            await asyncio.sleep(self.PAUSE_S)
        raise asyncio.CancelledError(f"interrupted: {kill}")


_POLICY_FIELDS = tuple(f.name for f in fields(Policy))


@dataclass(eq=False)
class InFlight:
    """One delivery being handled: a task (``kind="task"``) or a goal."""

    msg: Msg
    session: Session
    kind: Literal["task", "goal"]
    capability: str
    attempt: int
    policy: AttemptPolicy
    started: float = field(default_factory=time.monotonic)
    task: asyncio.Task[None] | None = None  # the asyncio task running the handler
    running: bool = False  # the handler has been called and has not returned yet
    kill: tuple[str, KillSwitch] | None = None  # the kill that interrupted it, if any

    @property
    def covering_keys(self) -> list[str]:
        """The kill keys that cover this work (``tool``/``model`` kills never do)."""
        return kill_keys(self.session.scope(self.policy.identity))

    def interrupt(self, key: str, switch: KillSwitch, *, cancel: bool = True) -> bool:
        """Refuse every later call and cancel the handler; False if it is not running."""
        if self.kill is not None or not self.running:
            return False
        self.kill = (key, switch)
        self.policy.interrupted = killed_error(key, switch)
        if cancel and self.task is not None:
            self.task.cancel()
        return True


class KillSettler:
    """Interrupts the in-flight work a kill covers and settles each delivery at once.

    Settling (in a task of its own, so it does not wait for the handler): a task gets a
    ``task.failed`` (``error_type: Killed``) and a nak without delay when the kill releases
    it (``instance``/``fleet``/``all``, attempts left), else a final one and a term; a goal
    is nak'ed, or ends in ``goal.failed`` and an ack. Then the kill is acknowledged on the
    log with what it interrupted: ``agent.killed`` (this instance's IID) for a releasing
    kill, ``session.killed`` in each interrupted session for the others. Handlers that
    swallow their cancellation are cancelled again until they end.
    """

    # Python 3.11's asyncio.wait_for can swallow a cancellation (its inner awaitable
    # finishing at the same instant): cancel again soon, for up to ten seconds.
    REAP_EVERY_S = 0.01
    REAP_TRIES = 1000

    def __init__(self, runtime: AgentRuntime, inflight: dict[int, InFlight]) -> None:
        self.rt = runtime
        self.inflight = inflight
        self.interrupted = 0  # handlers interrupted so far
        self._tasks: set[asyncio.Task[None]] = set()

    def on_kill(self, key: str, switch: KillSwitch) -> list[InFlight]:
        """A kill switch was set: interrupt what it covers (the watcher's callback)."""
        hit = [
            entry
            for entry in list(self.inflight.values())
            if key in entry.covering_keys and entry.interrupt(key, switch)
        ]
        if hit:
            self._spawn(hit, key, switch)
        return hit

    def covered(self, entry: InFlight) -> bool:
        """True (and the delivery settled) if a kill already covers work about to start."""
        hit = self.rt.kills.match(entry.covering_keys)
        if hit is None:
            return False
        key, switch = hit
        if entry.interrupt(key, switch, cancel=False):
            self._spawn([entry], key, switch)
        return True

    async def settled(self, timeout: float) -> None:
        """Wait (up to ``timeout``) for every settlement under way."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout)

    def _spawn(self, entries: list[InFlight], key: str, switch: KillSwitch) -> None:
        self.interrupted += len(entries)
        task = asyncio.get_running_loop().create_task(
            self._settle(entries, key, switch), name=f"kill-{key}"
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _settle(self, entries: list[InFlight], key: str, switch: KillSwitch) -> None:
        try:
            if releases(key):
                # Paused: no pull request of ours may take the released work straight back.
                await asyncio.gather(*(c.withdraw() for c in self.rt.consumers if self.rt.paused()))
            await asyncio.gather(*(self._settle_one(entry, key) for entry in entries))
            await self._acknowledge(entries, key, switch)
        except Exception as e:  # un-acked deliveries come back after the ack wait: say so
            log.error(
                "kill %s: settling %d interrupted deliveries failed: %s", key, len(entries), e
            )
        await self._reap(entries)

    async def _settle_one(self, entry: InFlight, key: str) -> None:
        self.inflight.pop(id(entry.msg), None)
        rt = self.rt
        error = entry.policy.interrupted
        final = not releases(key) or entry.attempt >= rt.settings.task_max_deliver
        if entry.kind == "task":
            failed = TaskFailed(
                capability=entry.capability,
                error=f"interrupted: {error}"[:2000],
                error_type="Killed",
                attempt=max(1, entry.attempt),
                final=final,
            )
            await rt.emitter.emit(failed, entry.session)
            rt.genai.task_failed(rt.identity.fleet, entry.capability, "Killed", final)
            await (entry.msg.term() if final else entry.msg.nak())
        elif final:
            await rt.emitter.emit(GoalFailed(reason=f"Killed: {error}"[:2000]), entry.session)
            await entry.msg.ack()
        else:
            await entry.msg.nak()

    async def _acknowledge(self, entries: list[InFlight], key: str, switch: KillSwitch) -> None:
        rt = self.rt
        if releases(key):
            iids = [entry.session.iid for entry in entries]
            killed = AgentKilled(by=switch.by, reason=switch.reason, interrupted=iids)
            await rt.emitter.emit(killed, rt.life)
            return
        for entry in entries:
            session = entry.session
            data = SessionKilled(by=switch.by, reason=switch.reason, interrupted=[session.iid])
            await rt.emitter.emit(data, session)

    async def _reap(self, entries: list[InFlight]) -> None:
        me = asyncio.current_task()
        for _ in range(self.REAP_TRIES):
            alive = [e.task for e in entries if e.task not in (None, me) and not e.task.done()]
            if not alive:
                return
            await asyncio.sleep(self.REAP_EVERY_S)
            for task in alive:
                if task is not None and not task.done():
                    task.cancel()  # it swallowed the last cancellation
        log.error(
            "kill: %d handlers ignore their cancellation (their calls are refused)", len(alive)
        )
