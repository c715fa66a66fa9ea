"""``shoal evals``, ``shoal evals compare`` and ``shoal report``.

Each asks the query service (``evals``, ``evals-compare``, ``report``), or answers from the
data dir's projection when no service runs, like ``shoal cost`` (see :mod:`.cost`).
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from shoal.errors import InvalidOption
from shoal.ops.cli._common import Cli, JsonOption, cli, emit_json, run
from shoal.ops.cli.cost import DbOption, SinceOption, UntilOption, _range, ask_named
from shoal.ops.cli.layout import fit
from shoal.projections.eval_answers import (
    EVAL_DIMENSIONS,
    CompareAnswer,
    EvalRow,
    EvalsAnswer,
    ReportAnswer,
    ReportRow,
)

__all__ = ["register"]

evals_app = typer.Typer(
    help="Success rate, cost and retries per success, interventions, latency; compare cohorts.",
    invoke_without_command=True,
)


def _pct(value: Decimal | None) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"


def _usd(value: Decimal | None) -> str:
    return "-" if value is None else f"{value:.6f}"


def _num(value: Decimal | float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


_EVAL_COLUMNS = (
    "sessions",
    "success rate",
    "cost/success",
    "retries/success",
    "interventions",
    "p50 s",
    "p95 s",
)


def _eval_cells(r: EvalRow) -> list[str]:
    return [
        f"{r.sessions} ({r.pending} pending)" if r.pending else str(r.sessions),
        f"{_pct(r.success_rate)} of {r.decided}",
        _usd(r.cost_per_success_usd),
        _num(r.retries_per_success),
        _pct(r.intervention_rate),
        _num(r.latency_p50_s, 1),
        _num(r.latency_p95_s, 1),
    ]


def _render_evals(c: Cli, answer: EvalsAnswer, since: str | None) -> None:
    window = f" since {since}" if since else ""
    table = Table(title=f"evaluations by {', '.join(answer.by)}{window}", title_justify="left")
    for dim in answer.by:
        table.add_column(dim)
    for name in _EVAL_COLUMNS:
        table.add_column(name, justify="right")
    for row in answer.rows:
        table.add_row(*("-" if k is None else k for k in row.key), *_eval_cells(row))
    table.add_section()
    label = "total" if answer.groups == len(answer.rows) else f"total ({answer.groups} groups)"
    table.add_row(label, *[""] * (len(answer.by) - 1), *_eval_cells(answer.total))
    keep = (*answer.by, "success rate", "cost/success")
    c.out.print(fit(table, c.out, drop=("p95 s", "p50 s", "retries/success"), keep=keep))
    if not answer.rows:
        c.out.print("(no task sessions in the range)")


@evals_app.callback()
def evals(
    ctx: typer.Context,
    by: Annotated[
        list[str] | None,
        typer.Option(
            "--by", help=f"Group by ({'|'.join(EVAL_DIMENSIONS)}); repeat or comma-separate."
        ),
    ] = None,
    since: SinceOption = None,
    until: UntilOption = None,
    limit: Annotated[int, typer.Option("--limit", help="Largest groups shown.")] = 100,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Success rate, cost and retries per success, interventions, latency; compare cohorts."""
    if ctx.invoked_subcommand is not None:
        return
    c = cli(ctx, as_json)
    dims = [d.strip() for item in (by or ["capability"]) for d in item.split(",") if d.strip()]
    params = {"by": dims, "limit": limit, **_range(since, until)}
    answer = run(c, ask_named(c, "evals", params, db=db))
    assert isinstance(answer, EvalsAnswer)
    if c.json:
        emit_json(answer.model_dump(mode="json"))
    else:
        _render_evals(c, answer, since)


def _cohorts(
    agent: str | None,
    model: str | None,
    template: str | None,
    from_: str | None,
    to: str | None,
    filters: dict[str, str | None],
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Baseline and candidate cohorts from the options, or the usage error naming one."""
    if to is None:
        raise InvalidOption("--to: give the candidate (a version, or a model with --model)")
    common = {k: v for k, v in filters.items() if v is not None}
    if model is not None:
        if from_ is not None:
            raise InvalidOption("--from: with --model X --to Y the baseline is the model X")
        if agent is not None:
            common["agent"] = agent
        return {**common, "model": model}, {**common, "model": to}
    if from_ is None:
        raise InvalidOption("--from: give the baseline version (or --model X --to Y)")
    if template is not None:
        if agent is not None:
            common["agent"] = agent
        key = "prompt_version"
        common["prompt_template"] = template
    elif agent is not None:
        key = "agent_version"
        common["agent"] = agent
    else:
        raise InvalidOption("--agent: say whose versions to compare (or --prompt-template)")
    return {**common, key: from_}, {**common, key: to}


@evals_app.command("compare")
def compare(
    ctx: typer.Context,
    agent: Annotated[str | None, typer.Option("--agent", help="The agent (versions).")] = None,
    model: Annotated[
        str | None, typer.Option("--model", help="Baseline model (with --to the candidate).")
    ] = None,
    prompt_template: Annotated[
        str | None,
        typer.Option("--prompt-template", help="Compare this prompt template's versions."),
    ] = None,
    from_: Annotated[str | None, typer.Option("--from", help="Baseline version.")] = None,
    to: Annotated[str | None, typer.Option("--to", help="Candidate version or model.")] = None,
    capability: Annotated[
        str | None, typer.Option("--capability", help="Only tasks of this capability.")
    ] = None,
    task_class: Annotated[
        str | None, typer.Option("--task-class", help="Only tasks of this task class.")
    ] = None,
    fleet: Annotated[str | None, typer.Option("--fleet", help="Only this fleet.")] = None,
    since: SinceOption = None,
    until: UntilOption = None,
    check: Annotated[
        bool, typer.Option("--check", help="Exit 1 when the candidate regressed (for CI).")
    ] = False,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Two cohorts side by side: sample sizes, rates, tests; a regression only if significant."""
    c = cli(ctx, as_json)
    filters = {"capability": capability, "task_class": task_class, "fleet": fleet}
    baseline, candidate = _cohorts(agent, model, prompt_template, from_, to, filters)
    if baseline == candidate:
        raise InvalidOption(f"--to {to}: the same as the baseline")
    params = {"baseline": baseline, "candidate": candidate, **_range(since, until)}
    answer = run(c, ask_named(c, "evals-compare", params, db=db))
    assert isinstance(answer, CompareAnswer)
    if c.json:
        emit_json(answer.model_dump(mode="json"))
    else:
        _render_compare(c, answer)
    if check and answer.regressed:
        raise typer.Exit(1)


def _render_compare(c: Cli, answer: CompareAnswer) -> None:
    table = Table(title="cohorts compared", title_justify="left")
    for name in ("cohort", "", "decided", "successes", "success rate", "spend", "cost/success"):
        table.add_column(name, justify="left" if name in ("cohort", "") else "right")
    for label, o in (("A", answer.baseline), ("B", answer.candidate)):
        table.add_row(
            label,
            o.cohort.describe(),
            str(o.decided),
            str(o.successes),
            _pct(o.success_rate),
            _usd(o.spend_usd),
            _usd(o.cost_per_success_usd),
        )
    c.out.print(fit(table, c.out, drop=("spend",), keep=("cohort", "success rate")))
    r, k = answer.success_rate, answer.cost_per_success
    if r.p_value is None:
        c.out.print(f"success rate: not tested ({r.reason})")
    else:
        c.out.print(
            f"success rate: {r.reason}, n={r.n_a} vs {r.n_b}, z={r.z:.3f}, p={r.p_value:.4g}"
            f" (alpha {r.alpha:g})"
        )
    if k.low is None or k.high is None:
        c.out.print(f"cost per success: not tested ({k.reason})")
    else:
        c.out.print(
            f"cost per success, B - A: {k.estimate:+.6f} USD, {k.confidence:.0%} interval "
            f"{k.low:+.6f} .. {k.high:+.6f} ({k.reason}, {k.units_a} and {k.units_b} sessions)"
        )
    c.out.print(answer.verdict)


# -- report -----------------------------------------------------------------------------------

_REPORT_COLUMNS = (
    "fleet",
    "team",
    "units",
    "successes",
    "spend USD",
    "cost/success",
    "denials",
    "approvals",
    "kills",
    "incidents",
)


def _report_cells(r: ReportRow, fleet: str, team: str) -> list[str]:
    return [
        fleet,
        team,
        str(r.units),
        str(r.successes),
        _usd(r.spend_usd),
        _usd(r.cost_per_success_usd),
        str(r.denials),
        f"{r.approvals_granted}/{r.approvals_requested}",
        str(r.kills),
        str(r.incidents),
    ]


def _report_rows(answer: ReportAnswer) -> list[list[str]]:
    rows = [_report_cells(r, r.fleet or "-", r.team or "-") for r in answer.rows]
    return [*rows, _report_cells(answer.total, "all", "")]


def _period(answer: ReportAnswer) -> str:
    return f"{answer.since or 'the beginning'} to {answer.until or 'now'}"


def render_markdown(answer: ReportAnswer) -> str:
    """The report as a Markdown document (a heading, the period, one table, the notes)."""
    lines = [
        "# Agent work report",
        "",
        f"Period: {_period(answer)}.",
        "",
        "| " + " | ".join(_REPORT_COLUMNS) + " |",
        "|" + "|".join("---" if i < 2 else "---:" for i in range(len(_REPORT_COLUMNS))) + "|",
    ]
    lines += ["| " + " | ".join(cells) + " |" for cells in _report_rows(answer)]
    lines += [
        "",
        "Units are goals and bare sessions opened in the period; cost per success is all "
        "their spend (failures included) over the successful ones. Approvals: granted / "
        "requested. Incidents: sessions flagged stuck or looping, over budget, or sending "
        "events the core refused.",
        "",
    ]
    return "\n".join(lines)


def report(
    ctx: typer.Context,
    since: Annotated[
        str | None,
        typer.Option(
            "--since",
            help="Start of the period: a duration back from now (30d, P1D) or a time.",
        ),
    ] = "30d",
    until: UntilOption = None,
    markdown: Annotated[
        Path | None, typer.Option("--markdown", help="Also write the report to this file.")
    ] = None,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Useful work, cost per success, denials, approvals, kills, incidents per fleet, team."""
    c = cli(ctx, as_json)
    answer = run(c, ask_named(c, "report", _range(since, until), db=db))
    assert isinstance(answer, ReportAnswer)
    if markdown is not None:
        markdown.write_text(render_markdown(answer))
    if c.json:
        emit_json(answer.model_dump(mode="json"))
        return
    table = Table(title=f"agent work, {_period(answer)}", title_justify="left")
    for i, name in enumerate(_REPORT_COLUMNS):
        table.add_column(name, justify="left" if i < 2 else "right")
    rows = _report_rows(answer)
    for cells in rows[:-1]:
        table.add_row(*cells)
    table.add_section()
    table.add_row(*rows[-1])
    c.out.print(fit(table, c.out, drop=("incidents", "units"), keep=("fleet", "team")))
    if markdown is not None:
        c.out.print(f"written to {markdown}")


def register(app: typer.Typer) -> None:
    app.add_typer(evals_app, name="evals")
    app.command()(report)
