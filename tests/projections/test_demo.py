"""``shoal cost --by model`` right after ``shoal demo`` equals the core's server-side costs."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import defaultdict
from decimal import Decimal
from pathlib import Path

from shoal.aggregates.application import open_core
from shoal.bus import ShoalSettings
from tests.natsproc import NatsProcess

CENT = Decimal("0.01")


def _shoal(settings: ShoalSettings, *args: str, timeout: float = 180) -> str:
    base = [sys.executable, "-m", "shoal", "--nats-url", settings.nats_url or ""]
    base += ["--prefix", settings.prefix, "--data-dir", str(settings.data_dir)]
    done = subprocess.run([*base, *args], capture_output=True, timeout=timeout, check=False)
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    return done.stdout.decode()


def test_cost_by_model_after_the_demo_equals_the_cores_costs_to_the_cent(
    nats_server: NatsProcess, prefix: str, tmp_path: Path
) -> None:
    settings = ShoalSettings(
        nats_url=nats_server.url, prefix=prefix, data_dir=tmp_path / "data", principal="tester"
    )
    demo = json.loads(_shoal(settings, "demo", "--json"))
    # Right after the demo: no query service runs any more, so the command answers from the
    # data dir's projection, caught up with the core's store.
    answer = json.loads(_shoal(settings, "cost", "--by", "model", "--json"))

    core = open_core(settings)
    try:
        expected: dict[str, Decimal] = defaultdict(Decimal)
        for session in core.sessions():
            for model, cost in session.cost_by_model.items():
                expected[model] += cost
    finally:
        core.close()
    got = {row["key"][0]: Decimal(row["cost_usd"]) for row in answer["rows"]}
    assert expected, "the demo made no model call"
    assert {m: c.quantize(CENT) for m, c in got.items()} == {
        m: c.quantize(CENT) for m, c in expected.items()
    }
    assert got == dict(expected)  # and in fact exactly
    assert Decimal(answer["total_usd"]) == sum(expected.values())
    # The demo's own closing table (cost by agent and model, from its query service) agrees.
    assert demo["cost"]["by"] == ["agent", "model"]
    assert Decimal(demo["cost"]["total_usd"]) == sum(expected.values())
    # A second demo in the same data dir sums its own run only: the two add up to the dir's.
    again = json.loads(_shoal(settings, "demo", "--json"))
    everything = json.loads(_shoal(settings, "cost", "--by", "model", "--json"))
    first, second = (Decimal(d["cost"]["total_usd"]) for d in (demo, again))
    assert first + second == Decimal(everything["total_usd"]) and second > 0
    per_success = again["cost_per_success"]
    assert [(r["fleet"], r["units"]) for r in per_success["rows"]] == [("demo", 1)]
    assert Decimal(per_success["total"]["spend_usd"]) == second
