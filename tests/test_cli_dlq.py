"""`outbox dlq redrive T` sends dead letters to T (or to --to), never where a dead
letter's own header points, shows what it sends and asks first for more than one."""

from __future__ import annotations

import uuid

import pytest
from click.testing import CliRunner

from outbox.cli import main
from outbox.exit_codes import EXIT_ERROR, EXIT_USAGE
from tests.harness.kafka import consume_all, create_topic, produce

pytestmark = [pytest.mark.kafka]


def dead_letter(event_id: str, original: str, n: int) -> tuple[bytes, bytes, list[
        tuple[str, str | bytes | None]]]:
    return (f"k-{n}".encode(), f'{{"n":{n}}}'.encode(), [
        ("id", event_id), ("eventType", "Thing"), ("dlq.original.topic", original),
        ("dlq.original.partition", "0"), ("dlq.original.offset", str(n)),
        ("dlq.reason", "handler-failed"), ("dlq.attempts", "3")])


def test_redrive_goes_to_the_named_topic_only_and_asks_first(
        kafka_bootstrap: str, topic: str) -> None:
    victim, elsewhere = topic + "-victim", topic + "-elsewhere"
    for name in (topic, topic + ".dlq", victim, elsewhere):
        create_topic(kafka_bootstrap, name, partitions=1)
    ids = [str(uuid.uuid4()) for _ in range(3)]
    # Whoever can write T.dlq can write any header: two of these name another topic.
    produce(kafka_bootstrap, topic + ".dlq", [dead_letter(ids[0], topic, 0),
                                              dead_letter(ids[1], victim, 1),
                                              dead_letter(ids[2], victim, 2)])
    env = {"OUTBOX_KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap}
    runner = CliRunner()

    shown = runner.invoke(main, ["dlq", "redrive", topic, "--all", "--dry-run"], env=env)
    assert shown.exit_code == 0, shown.output
    assert shown.output.count(f"-> {topic}") == 3
    assert f"header names '{victim}': ignored" in shown.output
    assert "3 dead letter(s) would be redriven" in shown.output

    refused = runner.invoke(main, ["dlq", "redrive", topic, "--all"], env=env, input="n\n")
    assert refused.exit_code == EXIT_USAGE, refused.output
    assert f"redrive 3 dead letters to {topic}?" in refused.output
    unanswered = runner.invoke(main, ["dlq", "redrive", topic, "--all"], env=env)
    assert unanswered.exit_code == EXIT_USAGE, unanswered.output
    assert consume_all(kafka_bootstrap, topic, timeout=3) == []

    sent = runner.invoke(main, ["dlq", "redrive", topic, "--all", "--yes"], env=env)
    assert sent.exit_code == 0, sent.output
    assert f"redriven 3 dead letter(s) to {topic}" in sent.output
    back = consume_all(kafka_bootstrap, topic, expected=3, timeout=30, idle=0.5)
    assert sorted((r.header("id") or b"").decode() for r in back) == sorted(ids)
    assert all(not k.startswith("dlq.") for r in back for k, _ in r.headers)
    assert consume_all(kafka_bootstrap, victim, timeout=3) == []

    # One event needs no question; --to names the destination explicitly.
    moved = runner.invoke(main, ["dlq", "redrive", topic, "--event-id", ids[1], "--to",
                                 elsewhere], env=env)
    assert moved.exit_code == 0, moved.output
    assert [r.key for r in consume_all(kafka_bootstrap, elsewhere, expected=1, timeout=30,
                                       idle=0.5)] == [b"k-1"]
    assert consume_all(kafka_bootstrap, victim, timeout=3) == []


def test_a_truncated_dead_letter_is_never_redriven(kafka_bootstrap: str, topic: str) -> None:
    """A truncated letter holds only the head of the original: sending it back would
    deliver a different event under the original's id. Named, it is refused with what to do
    instead; with --all it is skipped and the whole letters go."""
    for name in (topic, topic + ".dlq"):
        create_topic(kafka_bootstrap, name, partitions=1)
    whole, cut = str(uuid.uuid4()), str(uuid.uuid4())
    key, value, headers = dead_letter(cut, topic, 1)
    produce(kafka_bootstrap, topic + ".dlq", [
        dead_letter(whole, topic, 0),
        (key, value[:3], [*headers, ("dlq.truncated", "value"),
                          ("dlq.original.size", "2000000")])])
    env = {"OUTBOX_KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap}
    runner = CliRunner()

    named = runner.invoke(main, ["dlq", "redrive", topic, "--event-id", cut], env=env)
    assert named.exit_code == EXIT_ERROR, named.output
    [line] = named.output.strip().splitlines()
    assert cut in line and "cannot be redriven" in line and "outbox replay" in line

    every = runner.invoke(main, ["dlq", "redrive", topic, "--all", "--yes"], env=env)
    assert every.exit_code == 0, every.output
    assert "skipping 1 truncated dead letter(s)" in every.output
    assert "redriven 1 dead letter(s)" in every.output
    back = consume_all(kafka_bootstrap, topic, expected=1, timeout=30, idle=0.5)
    assert [(r.header("id") or b"").decode() for r in back] == [whole]
