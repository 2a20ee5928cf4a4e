"""The baseline is real: the fetch() chain and the dual write lose orders under the scripted
faults; the outbox saga loses none under the same faults, and the strangler's first edge
(outbox forward) survives the downstream outage.

Faults here are the kill -9 and outage of the test's own processes; restarting the
broker or PostgreSQL is exercised by bench/migration.py on a private stack only.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from services.legacy import scenario

# quiet: an order not final after 20 s without any progress is lost. Generous, so that a
# slow machine does not turn the saga's recovery into a loss (CI runs it alone).
PLAN = scenario.Plan(rate=20, seconds=5, warmup=10, fault_at=2, down_for=5, quiet=20,
                     settle_timeout=120)


def run(variant: str, fault: str, pg_url: str, kafka_bootstrap: str,
        tmp_path: Path) -> scenario.Outcome:
    outcome = scenario.run(variant, fault, PLAN, pg_url, kafka_bootstrap, tmp_path)
    print(outcome.as_dict())
    assert outcome.accepted == outcome.offered  # the faults hit downstream, not the API
    assert outcome.duplicates == 0
    assert outcome.completed > outcome.offered // 3
    return outcome


@pytest.mark.slow
@pytest.mark.parametrize(("variant", "loses"), [
    ("legacy", True), ("dualwrite", True), ("saga", False), ("strangler", True)])
def test_kill_9_between_commit_and_call(variant: str, loses: bool, pg_url: str,
                                        kafka_bootstrap: str, tmp_path: Path) -> None:
    outcome = run(variant, "kill", pg_url, kafka_bootstrap, tmp_path)
    assert outcome.restarts == {"inventory": 1}
    # strangler: the first edge is the outbox, but the killed step's own call is a fetch
    assert (outcome.lost > 0) is loses, outcome.lost_sample


@pytest.mark.slow
@pytest.mark.parametrize(("variant", "loses"), [
    ("legacy", True), ("saga", False), ("strangler", False)])
def test_downstream_down_for_a_while(variant: str, loses: bool, pg_url: str,
                                     kafka_bootstrap: str, tmp_path: Path) -> None:
    outcome = run(variant, "down", pg_url, kafka_bootstrap, tmp_path)
    assert (outcome.lost > 0) is loses, outcome.lost_sample
