"""``shoal --help`` without rich: the root listing drawn in plain text, panels and all.

Rendering the root help with typer's rich renderer imports rich and markdown-it, about
three quarters of the command's start-up; ``shoal --help`` is what a person waits for
first, so the root draws its own boxes in the same look (a sub-command's ``--help`` still
uses typer's renderer). Commands come from :data:`shoal.ops.cli._group.COMMANDS`, so no
command module is imported either.
"""

from __future__ import annotations

import shutil
import textwrap
from collections.abc import Iterable, Sequence
from typing import Any

__all__ = ["root_help"]

_MAX_WIDTH = 100
"""Wider terminals get this width, as typer's renderer does: long lines are hard to read."""


def root_help(group: Any, ctx: Any, panels: Sequence[str]) -> str:
    """The root group's help: usage, description, options, then one box per panel."""
    from shoal.ops.cli._group import COMMANDS

    width = max(min(shutil.get_terminal_size((80, 24)).columns, _MAX_WIDTH), 40)
    lines = ["", f" Usage: {ctx.command_path} {' '.join(group.collect_usage_pieces(ctx))}"]
    lines += ["", *(f" {line}" for line in textwrap.wrap(group.help or "", width - 2)), ""]
    options = [record for p in group.get_params(ctx) if (record := p.get_help_record(ctx))]
    lines += _box("Options", options, width)
    for panel in panels:
        rows = [(name, short) for name, (_, p, short) in COMMANDS.items() if p == panel]
        lines += _box(panel, rows, width)
    return "\n".join(lines) + "\n"


def _box(title: str, rows: Iterable[tuple[str, str]], width: int) -> list[str]:
    """A rounded box like typer's: ``╭─ title ─…╮``, two columns, the right one wrapped."""
    rows = list(rows)
    if not rows:
        return []
    inner = width - 4  # "│ " and " │"
    left = min(max(len(name) for name, _ in rows) + 2, inner // 2)
    out = [f"╭─ {title} " + "─" * (width - len(title) - 5) + "╮"]
    for name, text in rows:
        wrapped = textwrap.wrap(text, inner - left) or [""]
        if len(name) > left - 2:  # a long option list: its own line, the help below
            out.append(f"│ {name:<{inner}} │")
            name = ""
        for i, part in enumerate(wrapped):
            out.append(f"│ {(name if i == 0 else ''):<{left}}{part:<{inner - left}} │")
    out.append("╰" + "─" * (width - 2) + "╯")
    return out
