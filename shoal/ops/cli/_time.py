"""Times and durations on the command line: ``--since``/``--until`` of every analytics command.

Accepted: a duration back from now (``24h``, ``90m``, ``7d``, ``2w``, ``1h30m``, ``1.5h``),
an ISO 8601 duration (``P1D``, ``PT2H``, ``P1DT12H``), an ISO 8601 time or date
(``2026-12-01T17:00:00+01:00``, ``2026-12-01``; UTC if no zone), or a time of day
(``17:49``, ``17:49:37``: its latest occurrence, today or yesterday, in UTC). Anything else,
a negative duration, or one reaching before year 1 is an :class:`InvalidOption` naming the
option and the forms it takes.
"""

from __future__ import annotations

import re
from datetime import datetime, time, timedelta

from shoal.errors import InvalidOption

__all__ = ["parse_duration", "parse_moment"]

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_SHORT = re.compile(r"^(?:(\d+(?:\.\d+)?)([smhdw]))+$")
_SHORT_PART = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
_ISO = re.compile(
    r"^P(?:(?P<w>\d+(?:\.\d+)?)W)?(?:(?P<d>\d+(?:\.\d+)?)D)?"
    r"(?:T(?:(?P<h>\d+(?:\.\d+)?)H)?(?:(?P<m>\d+(?:\.\d+)?)M)?(?:(?P<s>\d+(?:\.\d+)?)S)?)?$"
)
_CLOCK = re.compile(r"^\d{1,2}:\d{2}(:\d{2}(\.\d+)?)?$")
_FORMS = "a duration (24h, 90m, 7d, P1D, PT2H) nor a time (2026-12-01T17:00, 17:49:37)"


def parse_duration(text: str) -> float | None:
    """Seconds of ``24h`` / ``1h30m`` / ``P1DT2H``; ``None`` if ``text`` is not a duration."""
    value = text.strip()
    if _SHORT.match(value.lower()):
        return sum(float(n) * _UNITS[u] for n, u in _SHORT_PART.findall(value.lower()))
    match = _ISO.match(value.upper())
    if match and value.upper() not in ("P", "PT") and any(match.groupdict().values()):
        parts = {k: float(v) for k, v in match.groupdict().items() if v}
        return sum(parts.get(k, 0.0) * _UNITS[k] for k in ("w", "d", "h", "m", "s"))
    return None


def parse_moment(text: str | None, now: datetime, option: str = "--since") -> datetime | None:
    """The moment ``text`` names, relative to ``now`` (an aware datetime)."""
    if text is None:
        return None
    value = text.strip()
    if value.startswith("-"):
        raise InvalidOption(f"{option} {text!r}: a duration back from now cannot be negative")
    seconds = parse_duration(value)
    if seconds is not None:
        try:
            return now - timedelta(seconds=seconds)
        except OverflowError:
            raise InvalidOption(f"{option} {text!r} reaches back before year 1") from None
    if _CLOCK.match(value):
        try:
            clock = time.fromisoformat(value if value.count(":") == 2 else value + ":00")
        except ValueError:
            raise InvalidOption(f"{option} {text!r} is not a time of day") from None
        today = datetime.combine(now.date(), clock, tzinfo=now.tzinfo)
        return today if today <= now else today - timedelta(days=1)
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidOption(f"{option} {text!r} is neither {_FORMS}") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=now.tzinfo)
