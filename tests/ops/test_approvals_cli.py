"""``shoal approvals ls|show`` as an approver reads them: the arguments exactly as redacted
for display (never read as markup), ids whole at 80 columns."""

from __future__ import annotations

import asyncio

from typer.testing import CliRunner, Result

from shoal.bus import Bus, ShoalSettings
from shoal.ops.cli import app
from shoal.policy import Approvals, ApprovalState
from tests.policy.test_approvals import SOURCE, email_request

runner = CliRunner()


async def invoke(settings: ShoalSettings, *args: str, columns: int = 80) -> Result:
    env = {
        "NATS_URL": settings.nats_url or "",
        "SHOAL_PREFIX": settings.prefix,
        "SHOAL_DATA_DIR": str(settings.data_dir),
        "COLUMNS": str(columns),
    }
    return await asyncio.to_thread(runner.invoke, app, list(args), env=env)


IID = "01M8T9W09S3Y7NQVPJKJ55Z0JM"


async def pending(bus: Bus) -> ApprovalState:
    asked = email_request(IID, "cfo@example.com").model_copy(
        update={
            "fleet": "finance-reporting",
            "agent": "quarterly-mailer",
            "rule": "email-needs-approval",
            "arguments": {
                "to": "[redacted 15 chars]",
                "body": "[bold red]urgent[/] [link=x]y[/link]",
            },
        }
    )
    return await (await Approvals.open(bus)).request(asked, source=SOURCE)


async def test_show_prints_the_arguments_as_redacted_not_as_markup(
    bus: Bus, settings: ShoalSettings
) -> None:
    state = await pending(bus)
    result = await invoke(settings, "approvals", "show", state.id)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert "  to = [redacted 15 chars]" in lines
    assert "  body = [bold red]urgent[/] [link=x]y[/link]" in lines
    assert f"request hash {state.request_hash}" in lines


async def test_ls_at_80_columns_keeps_ids_whole_on_one_line(
    bus: Bus, settings: ShoalSettings
) -> None:
    state = await pending(bus)
    result = await invoke(settings, "approvals", "ls")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80
    assert any(state.id in line and IID in line for line in lines)
    assert "tool send_email" in result.stdout
    wide = await invoke(settings, "approvals", "ls", columns=200)
    assert "finance-reporting/quarterly-mailer" in wide.stdout
    assert "email-needs-approval" in wide.stdout
