"""``shoal trace IID``: the span tree of a session (or a goal) from the local span file."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.text import Text
from rich.tree import Tree

from shoal.bus.spanfile import SpanRecord, session_trace
from shoal.bus.telemetry import spans_path
from shoal.ops.cli._common import JsonOption, cli, emit_json, fail


def trace(
    ctx: typer.Context,
    key: Annotated[str, typer.Argument(help="A session's IID, or a goal's GID.")],
    as_json: JsonOption = False,
) -> None:
    """Print the spans of a session (its model and tool calls, delegated sessions) as a tree."""
    c = cli(ctx, as_json)
    path = spans_path(c.settings)
    if not path.exists():
        raise fail(
            c,
            f"no span file at {path}: tracing was off or spans went to an OTLP endpoint",
            1,
            "not_found",
        )
    roots = session_trace(path, key)
    if not roots:
        raise fail(c, f"no spans of session or goal {key} in {path}", 1, "not_found")
    if c.json:
        emit_json(
            {
                "key": key,
                "trace_ids": sorted({r.trace_id for r in roots}),
                "spans": [_tree_json(r) for r in roots],
            }
        )
        return
    for trace_id in dict.fromkeys(r.trace_id for r in roots):
        tree = Tree(f"[bold]trace {trace_id}[/]")
        widths = [0]
        for root in roots:
            if root.trace_id == trace_id:
                _add(tree, root, widths)
        # Never wrapped or cut: a span line is read (and grepped) whole, whatever the width
        # (a Tree crops its lines to the console's width, so widen the console instead).
        c.out.width = max(c.out.width, *widths)
        c.out.print(tree)


def _add(
    tree: Tree, span: SpanRecord, widths: list[int], depth: int = 1, parent: object = None
) -> None:
    service = span.resource.get("service.name")
    # The process is named where the trace enters it: the root, and each hop across the bus.
    text = Text.from_markup(_label(span, service if service != parent else None))
    widths.append(text.cell_len + 4 * depth)  # the tree's guides take 4 cells a level
    branch = tree.add(text)
    for child in span.children:
        _add(branch, child, widths, depth + 1, service)


def _label(span: SpanRecord, service: object) -> str:
    a = span.attributes
    parts = [f"[bold]{escape(span.name)}[/]", f"[dim]{span.duration_ms:.1f} ms[/]"]
    op = a.get("gen_ai.operation.name")
    if op == "invoke_agent":
        parts.append(f"iid={a.get('gen_ai.conversation.id')}")
        if a.get("shoal.attempt", 1) != 1:
            parts.append(f"attempt {a['shoal.attempt']}")
    elif op == "chat":
        model = f"{a.get('gen_ai.provider.name', '?')}:{a.get('gen_ai.response.model', '-')}"
        tokens_in, tokens_out = (
            a.get("gen_ai.usage.input_tokens"),
            a.get("gen_ai.usage.output_tokens"),
        )
        parts.append(escape(f"{model} in={tokens_in} out={tokens_out}"))
    elif op == "execute_tool":
        parts.append(f"call={a.get('gen_ai.tool.call.id')}")
    decision = a.get("shoal.policy.decision")
    if decision and decision != "allow":
        parts.append(f"[yellow]policy {decision}[/]")
    if span.status == "ERROR":
        parts.append(f"[red]✗ {escape(str(a.get('error.type', 'error')))}[/]")
    if service:
        parts.append(f"[dim]@{escape(str(service))}[/]")
    return "  ".join(parts)


def _tree_json(span: SpanRecord) -> dict[str, Any]:
    return {**span.raw, "children": [_tree_json(c) for c in span.children]}


def register(app: typer.Typer) -> None:
    app.command()(trace)
