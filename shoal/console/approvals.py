"""The approvals inbox: pending requests from the approvals bucket, granted or denied here.

The page reads the ``<P>_approvals`` bucket (the same documents ``shoal approvals ls``
lists: the exact request, its arguments as redacted for display, the rule, the deadline).
A decision is :meth:`shoal.policy.Approvals.decide` with ``by`` the signed-in principal,
exactly as ``shoal approvals grant|deny`` calls it: compare-and-set on the document, then
``approval.granted|denied`` on the session's timeline naming the person. Like every action
it is confirmed first, carries the CSRF token, and needs the request's approver role
(``operator`` unless the policy asks for more).
"""

from __future__ import annotations

import asyncio
import logging

from nats.js.errors import BucketNotFoundError
from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import Response

from shoal.console.access import Role
from shoal.console.actions import confirm_page, go_back
from shoal.console.control import kv_snapshot
from shoal.console.web import console_of, render, require, require_action
from shoal.errors import NotFound, ShoalError
from shoal.policy import Approvals, ApprovalState

__all__ = ["APPROVAL_ACTIONS", "DECIDED_IDS", "PENDING_IDS", "approvals_page", "get_or_none"]

log = logging.getLogger("shoal.console")

DECIDED = ("granted", "denied", "expired")


async def _open(request: Request) -> Approvals | None:
    try:
        return await Approvals.open(console_of(request).bus)
    except BucketNotFoundError:
        return None  # nothing provisioned yet: no request can have been made


async def read_all(store: Approvals) -> list[ApprovalState]:
    """Every approval document, in one watch of the bucket (not a get per key)."""
    out = []
    for key, entry in (await kv_snapshot(store.kv)).items():
        try:
            out.append(ApprovalState.model_validate_json(entry.value or b""))
        except ValidationError as e:  # written by a newer or broken writer: shown as missing
            log.warning("approval document %s does not parse: %s", key, e)
    return out


PENDING_IDS = (
    "SELECT request_id FROM approvals GROUP BY request_id "
    "HAVING count(*) FILTER (state <> 'requested') = 0 ORDER BY min(ts) LIMIT 100"
)
DECIDED_IDS = (
    "SELECT request_id FROM approvals WHERE state <> 'requested' "
    "GROUP BY request_id ORDER BY max(ts) DESC LIMIT 20"
)


async def _listed(request: Request, store: Approvals) -> tuple[list[ApprovalState], str]:
    """Pending requests (oldest first) then the last decisions, as the bucket holds them.

    Which ones comes from the projection (the bucket keeps every request ever made, and has
    no index: reading it whole took seconds at 15,000 documents); each document is then read
    by its key, so what is shown and decided is the bucket's current state. Without the
    query service, the bucket is read whole (slow, but right).
    """
    data = console_of(request).data
    try:
        pending, decided = await asyncio.gather(
            data.sql(PENDING_IDS, 100), data.sql(DECIDED_IDS, 20)
        )
    except ShoalError as e:
        return await read_all(store), f"{e}: listed from the approvals bucket instead"
    ids = [r["request_id"] for r in (*pending, *decided)]
    found = await asyncio.gather(*(get_or_none(store, i) for i in dict.fromkeys(ids)))
    return [a for a in found if a is not None], ""


async def get_or_none(store: Approvals, approval: str) -> ApprovalState | None:
    """The approval's document, or None if the bucket no longer has it."""
    try:
        return await store.get(approval)
    except NotFound:
        return None  # in the projection, gone from the bucket


async def approvals_page(request: Request) -> Response:
    """Pending approvals, oldest first, and the last decisions."""
    await require(request)
    store = await _open(request)
    every: list[ApprovalState] = []
    note = ""
    if store is not None:
        every, note = await _listed(request, store)
    pending = sorted((a for a in every if a.state == "pending"), key=lambda a: a.requested_at)
    decided = sorted(
        (a for a in every if a.state in DECIDED),
        key=lambda a: a.decided_at or a.requested_at,
        reverse=True,
    )
    return render(
        request,
        "approvals.html",
        {"active": "approvals", "pending": pending, "decided": decided[:20], "note": note},
    )


async def decide(request: Request) -> Response:
    """Grant or deny one pending approval (confirmed first), recorded as the principal."""
    sign_in, form = await require_action(request)
    approval, verb = request.path_params["id"], request.path_params["verb"]
    if verb not in ("grant", "deny"):
        return go_back("/approvals", error=f"unknown decision {verb!r}: grant or deny")
    reason = str(form.get("reason") or "").strip()
    store = await _open(request)
    if store is None:
        return go_back("/approvals", error=f"no approval {approval!r}")
    try:
        state = await store.get(approval)
    except ShoalError as e:
        return go_back("/approvals", error=str(e))
    need: Role = "admin" if state.approver_role == "admin" else "operator"
    if not sign_in.who.may(need):
        return go_back(
            "/approvals",
            error=f"{approval} needs role {need}; {sign_in.principal} is a {sign_in.role}",
        )
    what = f"{state.action.removesuffix('.call')} {state.target} in session {state.iid}"
    if form.get("confirmed") != "yes":
        effect = (
            "The parked call runs with exactly the reviewed arguments."
            if verb == "grant"
            else "The parked call fails with an error its handler sees."
        )
        lines = [
            f"{verb.capitalize()} {approval}: {what}.",
            effect,
            f"Recorded on the session's timeline as {sign_in.principal}, "
            f"reason: {reason or '(none given)'}.",
        ]
        return confirm_page(request, form, f"{verb.capitalize()} {approval}?", lines, "/approvals")
    try:
        decided = await store.decide(
            approval, grant=verb == "grant", by=sign_in.principal, reason=reason
        )
    except ShoalError as e:
        return go_back("/approvals", error=str(e))
    return go_back("/approvals", done=f"{decided.id} {decided.state} by {decided.decided_by}")


APPROVAL_ACTIONS = (("/approvals/{id}/{verb}", decide, ["POST"]),)
