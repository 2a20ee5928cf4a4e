"""outbox.kafka: the relay's producer keeps its guarantees whatever --kafka-config says,
and says which of the user's properties it replaced (pure, no broker)."""

from __future__ import annotations

from outbox.kafka import REQUIRED, TUNING, producer_config, replaced


def test_the_guarantees_win_over_the_users_properties_and_tuning_loses_to_them() -> None:
    user = {"acks": "0", "enable.idempotence": "false", "partitioner": "consistent",
            "max.in.flight.requests.per.connection": "20", "linger.ms": "7",
            "bootstrap.servers": "b:9092"}
    config = producer_config(user, "relay-x")
    assert {key: config[key] for key in REQUIRED} == REQUIRED
    assert config["linger.ms"] == "7" and config["bootstrap.servers"] == "b:9092"
    assert config["client.id"] == "relay-x"
    assert config["batch.size"] == TUNING["batch.size"]


def test_replaced_names_each_property_given_another_value_and_nothing_else() -> None:
    assert replaced({"acks": "0", "enable.idempotence": "false", "linger.ms": "7"}) == [
        "enable.idempotence=false -> true", "acks=0 -> all"]
    # the same meaning spelled another way is not replaced
    assert replaced({"acks": "-1", "enable.idempotence": "True", "partitioner": "murmur2_random",
                     "max.in.flight.requests.per.connection": 5}) == []
    assert replaced({}) == []
    assert replaced({"max.in.flight.requests.per.connection": "1"}) == [
        "max.in.flight.requests.per.connection=1 -> 5"]
