"""The sessions page's filters, and the only ways a typed value enters the console's SQL."""

from __future__ import annotations

from dataclasses import dataclass

from shoal.schemas import is_token

__all__ = ["SessionFilter", "sql_literal", "token_or_empty"]


def sql_literal(value: str) -> str:
    """A SQL string literal (quotes doubled); the only way a typed value enters SQL here."""
    return "'" + value.replace("'", "''") + "'"


@dataclass(frozen=True)
class SessionFilter:
    """The sessions page's filters (empty matches everything)."""

    fleet: str = ""
    agent: str = ""
    status: str = ""
    state: str = ""  # stuck | looping | killed | "" (any)
    q: str = ""  # IID, GID or principal, exact or prefix
    limit: int = 100

    def where(self) -> str:
        parts = ["TRUE"]
        for column, value in (
            ("fleet", self.fleet),
            ("agent", self.agent),
            ("status", self.status),
        ):
            if value:
                parts.append(f"{column} = {sql_literal(value)}")
        if self.state == "stuck":
            parts.append("stuck")
        elif self.state == "looping":
            parts.append("looping")
        elif self.state == "awaiting":
            parts.append("approvals_requested > 0 AND status IN ('open', 'running')")
        if self.q:
            like = sql_literal(self.q.replace("%", "").replace("_", r"\_") + "%")
            parts.append(
                f"(iid LIKE {like} ESCAPE '\\' OR gid LIKE {like} ESCAPE '\\' "
                f"OR principal = {sql_literal(self.q)})"
            )
        return " AND ".join(parts)


def token_or_empty(value: str | None) -> str:
    """A filter value that must be a name: kept if it is one, else dropped."""
    value = (value or "").strip()
    return value if value and is_token(value) else ""
