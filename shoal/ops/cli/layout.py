"""Laying out for the terminal's width: key facts whole, long values shortened in the middle.

Identifiers (IIDs, GIDs, instance ids) are copied into other commands, so they are never
cut; free text (reasons, errors, subjects) is shortened in the middle, keeping its start and
its end, where the decisive part of a message usually is (``… final=False``).
"""

from __future__ import annotations

from collections.abc import Sequence

from rich.console import Console
from rich.measure import Measurement
from rich.table import Column, Table
from rich.text import Text

__all__ = ["ELLIPSIS", "fit", "fit_facts", "middle"]

ELLIPSIS = "…"


def middle(text: str, width: int) -> str:
    """``text`` if it fits in ``width`` characters, else its start and end around ``…``."""
    if width <= 1:
        return text[:width]
    if len(text) <= width:
        return text
    keep = width - 1
    head = (keep + 1) // 2
    tail = keep - head
    return text[:head] + ELLIPSIS + (text[-tail:] if tail else "")


_FLOOR = 12
"""Shortest a fact is cut to before the next longest one gives way."""


def fit_facts(facts: Sequence[str], width: int, whole: int = 1) -> str:
    """``facts`` (most decisive first) joined by spaces in ``width`` characters.

    The first ``whole`` facts (``deny fetch_url``, ``final=False attempt=1``, a tool's name)
    are kept whole. The others give way from the last: each is first shortened to a few
    characters (its value in the middle, its ``key=`` kept), then dropped for a ``…``. Only
    when the whole facts alone do not fit is the line itself shortened in the middle.
    """
    parts = list(facts)

    def excess() -> int:
        return sum(map(len, parts)) + len(parts) - 1 - width

    for i in reversed(range(whole, len(parts))):
        over = excess()
        if over <= 0:
            break
        if len(parts[i]) <= _FLOOR:
            continue
        target = max(len(parts[i]) - over, _FLOOR)
        key, eq, value = parts[i].partition("=")
        if eq and target - len(key) - 1 >= 5:  # the key whole, enough of the value to read
            parts[i] = f"{key}={middle(value, target - len(key) - 1)}"
        else:
            parts[i] = middle(parts[i], target)
    tail = len(parts)
    while tail > whole and excess() > 0:  # drop from the end, leaving a … in their place
        tail -= 1
        if len(" ".join([*parts[:tail], ELLIPSIS])) <= width:
            break
    if tail < len(parts):
        parts = [*parts[:tail], ELLIPSIS]
    return middle(" ".join(parts), width)


def fit(
    table: Table, console: Console, drop: Sequence[str] = (), keep: Sequence[str] = ()
) -> Table:
    """Fit ``table`` to the console: drop columns in ``drop`` order until it fits unwrapped,
    then let the rest wrap (fold) rather than end in ``…``; ``keep`` columns never wrap."""
    width = console.width
    unbounded = console.options.update_width(100_000)
    for header in drop:
        if Measurement.get(console, unbounded, table).maximum <= width:
            break
        table.columns = [c for c in table.columns if _header(c) != header]
    for column in table.columns:
        if _header(column) in keep:
            column.no_wrap = True
            column.overflow = "ignore"
        else:
            column.overflow = "fold"
    return table


def _header(column: Column) -> str:
    header = column.header
    return header.plain if isinstance(header, Text) else str(header)


def fit_record(title: str, fields: Sequence[tuple[str, str]], console: Console) -> Table:
    """One record (a total): a row when it fits the console, else a name/value column pair,
    so no value is cut at 80 columns."""
    across = Table(title=title, title_justify="left")
    for name, _ in fields:
        across.add_column(name, justify="right")
    across.add_row(*(value for _, value in fields))
    unbounded = console.options.update_width(100_000)
    if Measurement.get(console, unbounded, across).maximum <= console.width:
        return across
    down = Table(title=title, title_justify="left", show_header=False)
    down.add_column("field", no_wrap=True)
    down.add_column("value", justify="right", overflow="fold")
    for name, value in fields:
        down.add_row(name, value)
    return down
