"""Policy as code: Cedar rules with shoal's tiers, decided exactly as written."""

from __future__ import annotations

import pytest

from shoal.policy import CallFacts, InvalidPolicy, compile_policy

RULES = """
@id("no-etc-writes")
forbid(principal, action == Action::"tool", resource == Tool::"write_file")
when { context.args has path && context.args.path like "/etc/*" };

@id("email-needs-approval") @tier("high")
permit(principal, action == Action::"tool", resource == Tool::"send_email");

@id("interns-no-large-model")
forbid(principal == Principal::"intern", action == Action::"model",
       resource == Model::"offline-large");

@id("sql-writes-reviewed") @tier("medium")
permit(principal, action == Action::"tool", resource == Tool::"sql")
when { context.sql_verb != "SELECT" };

@id("no-evil-domains")
forbid(principal, action == Action::"tool", resource)
when { context.domains.contains("evil.example") };

@id("big-refunds") @tier("high")
permit(principal, action == Action::"tool", resource == Tool::"refund")
when { context.args.amount > 100 };

@id("prod-fleet-audit") @tier("low")
permit(principal, action, resource) when { context.fleet == "prod" };
"""


def decide(**kw: object) -> tuple[str, str]:
    verdict = compile_policy(RULES, version="global@1:x").evaluate(CallFacts(**kw))  # type: ignore[arg-type]
    return verdict.outcome, verdict.rule


@pytest.mark.parametrize(
    ("facts", "expected"),
    [
        (
            dict(action="tool.call", target="write_file", arguments={"path": "/etc/passwd"}),
            ("deny", "no-etc-writes"),
        ),
        (
            dict(
                action="tool.call", target="write_file", arguments={"path": "/etc/ssh/sshd_config"}
            ),
            ("deny", "no-etc-writes"),
        ),
        (
            dict(action="tool.call", target="write_file", arguments={"path": "/tmp/etc/x"}),
            ("allow", "default"),
        ),
        (
            dict(action="tool.call", target="send_email", arguments={"to": "a@b.c"}),
            ("high", "email-needs-approval"),
        ),
        (
            dict(action="model.call", target="offline-large", principal="intern"),
            ("deny", "interns-no-large-model"),
        ),
        (
            dict(action="model.call", target="offline-large", principal="alice"),
            ("allow", "default"),
        ),
        (
            dict(action="model.call", target="offline-small", principal="intern"),
            ("allow", "default"),
        ),
        (
            dict(action="tool.call", target="sql", arguments={"sql": "  delete from t"}),
            ("medium", "sql-writes-reviewed"),
        ),
        (
            dict(action="tool.call", target="sql", arguments={"sql": "SELECT 1"}),
            ("allow", "default"),
        ),
        (
            dict(
                action="tool.call",
                target="fetch_url",
                arguments={"url": "https://EVIL.example/x?y=1"},
            ),
            ("deny", "no-evil-domains"),
        ),
        (
            dict(action="tool.call", target="refund", arguments={"amount": 250}),
            ("high", "big-refunds"),
        ),
        (
            dict(action="tool.call", target="refund", arguments={"amount": 100}),
            ("allow", "default"),
        ),
        (dict(action="tool.call", target="read_file", fleet="prod"), ("low", "prod-fleet-audit")),
        # A deny wins over a tier; a higher tier wins over a lower one.
        (
            dict(
                action="tool.call", target="write_file", fleet="prod", arguments={"path": "/etc/x"}
            ),
            ("deny", "no-etc-writes"),
        ),
        (
            dict(action="tool.call", target="send_email", fleet="prod"),
            ("high", "email-needs-approval"),
        ),
    ],
)
def test_rules_decide_as_written(facts: dict[str, object], expected: tuple[str, str]) -> None:
    assert decide(**facts) == expected


def test_a_verdict_names_its_rule_tier_and_version() -> None:
    verdict = compile_policy(RULES, version="fleet.demo@3:abc").evaluate(
        CallFacts(action="tool.call", target="send_email")
    )
    assert (verdict.tier, verdict.version) == ("high", "fleet.demo@3:abc")
    assert verdict.reason == "rule 'email-needs-approval': risk tier high"


def test_a_high_rule_names_its_approver_and_the_stricter_of_two_holds() -> None:
    text = (
        '@id("email") @tier("high") permit(principal, action, resource == Tool::"send_email");\n'
        '@id("wire") @approver("admin") @tier("high")\n'
        'permit(principal, action, resource == Tool::"wire_money");\n'
        '@id("big") @approver("admin") @tier("high")\n'
        "permit(principal, action, resource) when { context.args has to && "
        'context.args.to == "all@example.com" };'
    )
    policy = compile_policy(text)
    verdicts = {
        (target, to): policy.evaluate(
            CallFacts(action="tool.call", target=target, arguments={"to": to})
        )
        for target, to in [
            ("send_email", "cfo"),
            ("wire_money", "x"),
            ("send_email", "all@example.com"),
        ]
    }
    assert {k: (v.outcome, v.rule, v.approver) for k, v in verdicts.items()} == {
        ("send_email", "cfo"): ("high", "email", "operator"),
        ("wire_money", "x"): ("high", "wire", "admin"),
        ("send_email", "all@example.com"): ("high", "email", "admin"),
    }


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("permit(principal, action, resource) when { nope", "policy is not valid Cedar"),
        ('@tier("extreme") permit(principal, action, resource);', "is not one of low"),
        ('@tier("high") forbid(principal, action, resource);', "@tier goes on a permit"),
        ('@owner("me") permit(principal, action, resource);', "unknown annotation @owner"),
        (
            '@id("x") @approver("admin") @tier("medium") permit(principal, action, resource);',
            "rule 'x': @approver goes on a @tier(\"high\") permit",
        ),
        (
            '@id("x") @approver("viewer") @tier("high") permit(principal, action, resource);',
            "rule 'x': @approver('viewer') is not one of operator, admin",
        ),
        (
            '@id("a") permit(principal, action, resource);\n'
            '@id("a") permit(principal, action, resource);',
            "repeated: a",
        ),
    ],
)
def test_an_invalid_policy_is_refused_naming_the_problem(text: str, message: str) -> None:
    with pytest.raises(InvalidPolicy) as raised:
        compile_policy(text)
    assert message in str(raised.value)
