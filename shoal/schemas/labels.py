"""Attribution labels: who and what a goal or task is for, carried from submission down.

A goal (``goal.submitted``) and a task (``task.assigned``) may carry :class:`Labels`; an
agent's delegated tasks carry its own session's labels, so a child session is attributed
like its parent. The names are fixed: an unknown label is refused, naming it, rather than
accepted and never counted.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, ValidationError

__all__ = ["LABEL_NAMES", "Labels", "parse_labels"]

_Value = Annotated[str, Field(min_length=1, max_length=200)]


class Labels(BaseModel):
    """Team, repository or resource, workflow, task class, prompt template id and version."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    team: _Value | None = None
    repo: _Value | None = None
    workflow: _Value | None = None
    task_class: _Value | None = None
    prompt_template: _Value | None = None
    prompt_version: _Value | None = None

    def values(self) -> dict[str, str]:
        """The labels that are set, by name."""
        return {k: v for k, v in self.model_dump().items() if v is not None}


LABEL_NAMES: tuple[str, ...] = tuple(Labels.model_fields)
"""Every label name, in column order."""


def parse_labels(items: list[str] | None, option: str = "--label") -> Labels | None:
    """``["team=payments", "workflow=triage"]`` (or comma-separated) as :class:`Labels`.

    Raises ``ValueError`` naming the item: not ``name=value``, an unknown name, a name
    given twice, or a value out of bounds.
    """
    values: dict[str, str] = {}
    for item in items or []:
        for part in (p.strip() for p in item.split(",")):
            if not part:
                continue
            name, sep, value = part.partition("=")
            name = name.strip().replace("-", "_")
            if not sep:
                raise ValueError(f"{option} {part!r}: expected NAME=VALUE")
            if name not in LABEL_NAMES:
                raise ValueError(
                    f"{option} {part!r}: unknown label {name!r}; one of {', '.join(LABEL_NAMES)}"
                )
            if name in values:
                raise ValueError(f"{option} {name}: given twice")
            values[name] = value.strip()
    if not values:
        return None
    try:
        return Labels(**values)
    except ValidationError as e:
        err = e.errors()[0]
        field = ".".join(str(p) for p in err["loc"])
        raise ValueError(f"{option} {field}: {err['msg']}") from None
