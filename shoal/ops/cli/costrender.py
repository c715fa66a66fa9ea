"""How the cost and query commands print an answer: rich tables fitted to the terminal.

Key columns are kept whole and others dropped by priority (:func:`~shoal.ops.cli.layout.fit`);
a total is a row when it fits, else one line per field; ``--json`` prints the answer as is.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

from pydantic import BaseModel
from rich.console import Console
from rich.table import Table

from shoal.ops.cli._common import Cli, emit_json
from shoal.ops.cli.layout import fit, fit_record
from shoal.projections.queries import NAMED_QUERIES, CostAnswer, SuccessCostAnswer

__all__ = ["render", "render_demo_summary", "table_of"]


def render_demo_summary(out: Console, cost: CostAnswer, success: SuccessCostAnswer) -> None:
    """The demo's closing tables: spend by agent and model, then per successful outcome."""
    _render_cost(out, cost)
    _render_success(out, success)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, Decimal):
        return f"{value:.6f}"
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, float):
        return f"{value:.1f}"
    if isinstance(value, list):
        return ", ".join("-" if v is None else str(v) for v in value)
    return str(value)


def table_of(title: str, rows: Sequence[BaseModel], columns: Sequence[str] | None = None) -> Table:
    """A table of ``rows``' fields (or just ``columns``), numbers right-aligned."""
    names = list(columns or (type(rows[0]).model_fields if rows else []))
    table = Table(title=title, title_justify="left")
    first = rows[0] if rows else None
    for name in names:
        value = getattr(first, name, None)
        numeric = isinstance(value, int | float | Decimal) and not isinstance(value, bool)
        table.add_column(name, justify="right" if numeric else "left")
    for row in rows:
        table.add_row(*(_cell(getattr(row, n)) for n in names))
    return table


def _headers(table: Table) -> list[str]:
    return [str(col.header) for col in table.columns]


def _render_cost(out: Console, answer: CostAnswer) -> None:
    table = Table(title=f"cost by {', '.join(answer.by)} (USD, server-side)", title_justify="left")
    for dim in answer.by:
        table.add_column(dim)
    for name in ("calls", "input_tokens", "output_tokens", "cost_usd"):
        table.add_column(name, justify="right")
    for row in answer.rows:
        keys = [_cell(k) for k in row.key]
        table.add_row(
            *keys,
            str(row.calls),
            str(row.input_tokens),
            str(row.output_tokens),
            _cell(row.cost_usd),
        )
    blanks = [""] * (len(answer.by) - 1)
    table.add_section()
    label = "total" if answer.groups == len(answer.rows) else f"total ({answer.groups} groups)"
    table.add_row(label, *blanks, str(answer.calls), "", "", _cell(answer.total_usd))
    out.print(
        fit(table, out, drop=("input_tokens", "output_tokens"), keep=(*answer.by, "cost_usd"))
    )


def _render_success(out: Console, answer: SuccessCostAnswer) -> None:
    rows = [*answer.rows, answer.total.model_copy(update={"fleet": "all"})]
    columns = ("fleet", "units", "successes", "failures", "pending", "spend_usd")
    table = table_of("cost per successful outcome (USD)", rows, (*columns, "cost_per_success_usd"))
    drop = ("pending", "units", "failures", "spend_usd")
    out.print(fit(table, out, drop=drop, keep=("fleet", "cost_per_success_usd")))


def render(c: Cli, name: str, answer: BaseModel) -> None:
    """``answer`` to the named query ``name``, as a table (or JSON with ``--json``)."""
    if c.json:
        emit_json(answer.model_dump(mode="json"))
    elif isinstance(answer, CostAnswer):
        _render_cost(c.out, answer)
    elif isinstance(answer, SuccessCostAnswer):
        _render_success(c.out, answer)
    else:
        rows = getattr(answer, "rows", [])
        table = table_of(f"{name}: {NAMED_QUERIES[name].description}", rows)
        keep = [n for n in ("iid", "gid", "fleet", "status", "cost_usd") if n in _headers(table)]
        drop = [n for n in reversed(_headers(table)) if n not in keep]
        c.out.print(fit(table, c.out, drop=drop, keep=keep))
        total = getattr(answer, "total", None)
        if isinstance(total, BaseModel):
            fields = [(n, _cell(getattr(total, n))) for n in type(total).model_fields]
            c.out.print(fit_record("total", fields, c.out))
        if not rows:
            c.out.print("(no rows)")
