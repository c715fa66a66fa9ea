"""How the pages write money, times, counts and ids: one way everywhere.

* Money is USD. An amount of a cent or more is shown with cents (``$1.23``); a non-zero
  amount under a cent with six decimals (``$0.000042``), in a ``fine`` span whose title says
  so. Every page says this once in its footer.
* Times go out as ``<time datetime="…Z" title="… UTC">`` in UTC; the page's script rewrites
  the text into the viewer's zone, leaving UTC on hover.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any

from markupsafe import Markup, escape

__all__ = ["FILTERS", "count", "duration", "short", "usd", "when"]

NONE = "\u2013"
"""What a page shows for no value (an en dash)."""
_CENT = Decimal("0.01")
_MICRO = Decimal("0.000001")


def _decimal(value: Any) -> Decimal | None:
    if value is None or value == "":
        return None
    try:
        return Decimal(str(value))
    except InvalidOperation:
        return None


def usd_text(value: Any) -> str:
    """``$1.23``, ``$0.000042`` (under a cent), ``$0.00`` for zero, a dash for none."""
    d = _decimal(value)
    if d is None:
        return NONE
    sign = "-" if d < 0 else ""
    d = abs(d)
    if d == 0 or d >= _CENT:
        return f"{sign}${d.quantize(_CENT, ROUND_HALF_UP):,}"
    return f"{sign}${d.quantize(_MICRO, ROUND_HALF_UP)}"


def usd(value: Any) -> Markup:
    """Money as HTML: small amounts marked as shown to the micro-dollar."""
    d = _decimal(value)
    text = usd_text(value)
    if d is not None and d != 0 and abs(d) < _CENT:
        return Markup(
            '<span class="money fine" title="under a cent: shown to $0.000001">{}</span>'
        ).format(text)
    return Markup('<span class="money">{}</span>').format(text)


def _as_datetime(value: Any) -> datetime | None:
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        moment = value
    else:
        try:
            moment = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        except ValueError:
            return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def when(value: Any) -> Markup:
    """A time: UTC in the markup, the viewer's zone once the script has run."""
    moment = _as_datetime(value)
    if moment is None:
        return Markup(NONE)
    utc = moment.astimezone(UTC)
    iso = utc.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    text = utc.strftime("%Y-%m-%d %H:%M:%S UTC")
    return Markup('<time datetime="{}" title="{}">{}</time>').format(iso, text, text)


def duration(seconds: Any) -> str:
    """``850 ms``, ``12.3 s``, ``4 min 5 s``, ``2 h 3 min``."""
    if seconds is None:
        return NONE
    s = float(seconds)
    if s < 1:
        return f"{s * 1000:.0f} ms"
    if s < 60:
        return f"{s:.1f} s"
    if s < 3600:
        return f"{int(s // 60)} min {int(s % 60)} s"
    return f"{int(s // 3600)} h {int(s % 3600 // 60)} min"


def count(value: Any) -> str:
    return NONE if value is None else f"{int(value):,}"


def short(value: Any, n: int = 10) -> Markup:
    """A long id cut to its first ``n`` characters, whole on hover."""
    if not value:
        return Markup(NONE)
    text = str(value)
    if len(text) <= n:
        return Markup("<code>{}</code>").format(text)
    return Markup('<code title="{}">{}…</code>').format(text, text[:n])


def brief(value: Any, n: int = 200) -> str:
    """A value as compact JSON, cut to ``n`` characters."""
    text = json.dumps(value, default=str, separators=(",", ":"))
    return text if len(text) <= n else text[: n - 1] + "…"


def percent(numerator: Any, denominator: Any) -> str:
    if not denominator:
        return NONE
    return f"{100 * float(numerator) / float(denominator):.1f}%"


FILTERS: dict[str, Any] = {
    "usd": usd,
    "when": when,
    "duration": duration,
    "count": count,
    "short": short,
    "e": escape,
    "brief": brief,
}
GLOBALS: dict[str, Any] = {"percent": percent, "usd_text": usd_text}
