"""``shoal policy apply|test`` as an operator runs them: apply records who, why and the
version on the log; test decides one call and writes nothing."""

from __future__ import annotations

import getpass
import json
import os
from pathlib import Path

from shoal.bus import Bus, ShoalSettings
from shoal.schemas import PolicyApplied
from tests.ops.test_cli_health import invoke
from tests.policy.test_enforced import POLICY


async def applied_events(bus: Bus) -> list[PolicyApplied]:
    stored = await bus.read(bus.subjects.events_of_type("policy.applied"))
    return [s.event.data for s in stored if s.event and isinstance(s.event.data, PolicyApplied)]


async def test_apply_records_who_and_why_and_test_decides_without_writing(
    bus: Bus, settings: ShoalSettings, tmp_path: Path
) -> None:
    file = tmp_path / "guard.cedar"
    file.write_text(POLICY)
    applied = await invoke(
        settings, "policy", "apply", str(file), "--fleet", "office", "--reason", "audit 7", "--json"
    )
    assert applied.exit_code == 0, applied.output
    answer = json.loads(applied.stdout)
    assert answer["rules"] == ["no-etc-writes", "email-needs-approval", "interns-no-large-model"]
    [event] = await applied_events(bus)
    assert (event.scope, event.reason, event.rules, event.version) == (
        "fleet.office",
        "audit 7",
        answer["rules"],
        answer["version"],
    )
    assert event.version.startswith("fleet.office@1:")
    assert event.by == (os.environ.get("SHOAL_PRINCIPAL") or getpass.getuser())

    cases = {
        '{"action": "tool.call", "target": "write_file", "arguments": {"path": "/etc/hosts"}}': (
            "deny  (rule no-etc-writes)"
        ),
        '{"action": "tool.call", "target": "write_file", "arguments": {"path": "/tmp/x"}}': (
            "allow  (rule default)"
        ),
        '{"action": "tool.call", "target": "send_email"}': "high  (rule email-needs-approval)",
        '{"action": "model.call", "target": "offline-large", "principal": "intern"}': (
            "deny  (rule interns-no-large-model)"
        ),
        '{"action": "model.call", "target": "offline-large", "principal": "alice"}': (
            "allow  (rule default)"
        ),
    }
    for event_json, line in cases.items():
        result = await invoke(settings, "policy", "test", str(file), "--event", event_json)
        assert (result.exit_code, result.stdout.strip()) == (0, line)
    refused = await invoke(settings, "policy", "test", str(file), "--event", '{"tool": "x"}')
    assert refused.exit_code == 2 and refused.stdout == ""
    assert refused.stderr.startswith("error: --event has unknown field 'tool' (known: [")
    assert len(await applied_events(bus)) == 1  # a dry run records nothing
