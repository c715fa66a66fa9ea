"""Laying out for the terminal's width: key facts whole, long values shortened in the middle.

Identifiers (IIDs, GIDs, instance ids) are copied into other commands, so they are never
cut; free text (reasons, errors, subjects) is shortened in the middle, keeping its start and
its end, where the decisive part of a message usually is (``… final=False``).
"""

from __future__ import annotations

__all__ = ["ELLIPSIS", "middle"]

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
