"""The demo fleet: summarise the documents of a workspace, offline and checkably.

- ``orchestrator`` lists ``*.md`` files through the sandboxed ``list_files`` tool, plans one
  ``summarize`` task per document through the model gateway, and consolidates the summaries.
- ``summarizer`` reads a document through the sandboxed ``read_file`` tool and summarises it
  with the offline model. A document that links to the web makes it try ``fetch_url``, a
  tool its manifest does not grant: the gateway denies it (``policy.decided``) and the
  summary says so. A document marked ``simulate: fail-once`` fails its first attempt (as a
  flaky endpoint would) and succeeds on redelivery. A document with a ``share: <address>``
  line has its summary sent there with ``send_email``, a call the summarizer's manifest puts
  behind a human's approval: it parks until ``shoal demo --approve`` grants it, or times
  out (recorded as such) and the summary says it was not shared.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from pydantic import BaseModel

from shoal.agents.agent import Agent
from shoal.agents.context import TaskContext
from shoal.agents.errors import ApprovalDenied, PolicyDenied
from shoal.agents.fstools import list_files, read_file
from shoal.agents.orchestrator import ModelPlanner, Outcome, orchestrator
from shoal.agents.tools import ToolEnv, tool
from shoal.schemas import GoalCompleted, GoalFailed, GoalSubmitted, TaskCompleted, TaskFailed
from shoal.schemas.manifest import CapabilityManifest, ToolGrant

__all__ = [
    "DEMO_DOCUMENTS",
    "SummarizeIn",
    "SummarizeOut",
    "demo_agents",
    "share_one_document",
    "write_workspace",
]

DEMO_FLEET = "demo"
DEMO_GOAL = "Summarise the documents in the workspace"


class TransientFailure(Exception):
    """A failure worth retrying (the demo's simulated flaky endpoint)."""


class SummarizeIn(BaseModel):
    path: str


class SummarizeOut(BaseModel):
    path: str
    summary: str
    words: int
    links_followed: bool = False
    shared: str | None = None
    """Where the summary was sent, or why it was not (a ``share:`` line asked for it)."""


@tool("send_email", side_effects=("email",))
async def send_email(env: ToolEnv, to: str, body: str) -> str:
    """Send an email (the demo's outbox: a file under the data dir)."""
    outbox = env.settings.data_dir / "outbox.txt"
    with outbox.open("a", encoding="utf-8") as out:
        out.write(f"To: {to}\n{body}\n\n")
    return f"sent to {to}"


SUMMARIZER_PROMPT = "Summarise the document in one sentence."


def summarizer_agent(fleet: str = DEMO_FLEET) -> Agent:
    """The worker: reads through ``read_file``, summarises with ``offline-small``."""
    manifest = CapabilityManifest(
        models=("offline-small",),
        tools={
            "read_file": ToolGrant(sensitivity="internal"),
            "send_email": ToolGrant(sensitivity="confidential", side_effects=("email",)),
        },
        budget_usd=None,
        requires_approval=("tool.send_email",),
    )
    agent = Agent(
        "summarizer", fleet=fleet, version="1.0", manifest=manifest, tools=[read_file, send_email]
    )

    @agent.handler("summarize")
    async def summarize(ctx: TaskContext, task: SummarizeIn) -> SummarizeOut:
        text = await ctx.tools.call("read_file", path=task.path)
        if "simulate: fail-once" in text and ctx.attempt == 1:
            raise TransientFailure("model endpoint overloaded (simulated); retrying")
        links_followed = False
        if "http://" in text or "https://" in text:
            url = next(w for w in text.split() if w.startswith(("http://", "https://")))
            try:
                await ctx.tools.call("fetch_url", url=url)
                links_followed = True
            except PolicyDenied:
                pass  # not granted: summarise without the linked page
        answer = await ctx.model.complete(text, system=SUMMARIZER_PROMPT, max_tokens=120)
        shared = None
        share = next((line for line in text.splitlines() if line.startswith("share: ")), None)
        if share is not None:
            try:  # parks until a human approves exactly this email
                shared = await ctx.tools.call("send_email", to=share[7:], body=answer.text)
            except ApprovalDenied as e:
                shared = f"not shared: {e}"
        return SummarizeOut(
            path=task.path,
            summary=answer.text,
            words=len(text.split()),
            links_followed=links_followed,
            shared=shared,
        )

    return agent


async def _documents(ctx: TaskContext, goal: GoalSubmitted) -> list[str]:
    pattern = str(goal.inputs.get("pattern", "*.md"))
    files = await ctx.tools.call("list_files", pattern=pattern)
    return [str(f) for f in files]


def _consolidate(goal: GoalSubmitted, outcomes: Sequence[Outcome]) -> GoalCompleted | GoalFailed:
    failed = [t.iid for t, e in outcomes if isinstance(e.data, TaskFailed)]
    if failed:
        return GoalFailed(reason=f"{len(failed)} document(s) not summarised", failed_iids=failed)
    docs = {
        e.data.output["path"]: e.data.output["summary"]
        for _, e in outcomes
        if isinstance(e.data, TaskCompleted)
    }
    words = sum(
        int(e.data.output.get("words", 0)) for _, e in outcomes if isinstance(e.data, TaskCompleted)
    )
    return GoalCompleted(
        result={"documents": docs, "words": words},
        summary=f"summarised {len(docs)} documents ({words} words)",
    )


def orchestrator_agent(fleet: str = DEMO_FLEET) -> Agent:
    """The demo fleet's orchestrator: one ``summarize`` task per workspace document."""
    manifest = CapabilityManifest(
        models=("offline-small",),
        tools={"list_files": ToolGrant(sensitivity="public")},
        delegates=("summarize",),
    )
    return orchestrator(
        fleet,
        planner=ModelPlanner("summarize", input_key="path", items=_documents),
        consolidate=_consolidate,
        manifest=manifest,
        tools=[list_files],
        task_timeout_s=60.0,
    )


def demo_agents(fleet: str = DEMO_FLEET) -> dict[str, Agent]:
    """Every agent of the demo fleet by name (fresh declarations)."""
    agents = [orchestrator_agent(fleet), summarizer_agent(fleet)]
    return {a.name: a for a in agents}


DEMO_DOCUMENTS: dict[str, str] = {
    "nats.md": "# NATS JetStream\nJetStream adds persistence to NATS subjects. Streams keep "
    "messages, consumers track what each reader has acknowledged, and work-queue streams "
    "delete a message once one consumer acks it.\n",
    "event-sourcing.md": "# Event sourcing\nState is derived by folding an append-only log of "
    "events. An aggregate applies each event in order, so replaying the log rebuilds it "
    "exactly, and a projection can be rebuilt from scratch at any time.\n",
    "kill-switches.md": "# Kill switches\nOperators must stop one agent, one session or a "
    "whole fleet in seconds. Every gateway watches the kill bucket, so the check before a "
    "model or tool call is a local lookup.\n",
    "budgets.md": "# Budgets\nEvery session carries a budget in dollars. The core prices each "
    "model call from its own table, and the gateway refuses calls once the budget is spent. "
    "Background reading: https://example.com/finops-for-llms\n",
    "flaky-endpoint.md": "# Retries\nModel endpoints fail transiently. A task that fails is "
    "redelivered after a back-off, and after the last attempt the failure is final and "
    "visible.\n<!-- simulate: fail-once -->\n",
}


SHARED_DOCUMENT = ("kill-switches.md", "share: oncall@example.com\n")
"""What ``shoal demo`` adds to one document so its summary is emailed (behind an approval).

Only the demo run itself adds it: a fleet applied from ``examples/demo-fleet.yaml`` has no
one waiting to approve, and would park that task until the approval timed out."""


def share_one_document(root: Path) -> None:
    """Ask for one summary to be emailed (the demo's approval)."""
    name, line = SHARED_DOCUMENT
    path = root / name
    text = DEMO_DOCUMENTS[name] + line
    if not path.exists() or path.read_text() != text:
        path.write_text(text)


def write_workspace(root: Path) -> list[Path]:
    """Write the demo documents under ``root`` (idempotent); return their paths."""
    root.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in DEMO_DOCUMENTS.items():
        path = root / name
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
        written.append(path)
    return written
