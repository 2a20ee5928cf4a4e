"""Start-up checks against the real stack: each bad input is one line, the right kind."""

from __future__ import annotations

import logging
import re

import pytest

from outbox import preflight
from outbox.errors import ConfigurationError, ServiceUnavailableError
from outbox.logs import check_level, with_client_logger
from outbox.settings import Settings, scrub

pytestmark = [pytest.mark.postgres, pytest.mark.kafka]


def test_a_reachable_stack_passes(pg_url: str, kafka_bootstrap: str) -> None:
    preflight.check_database(Settings(database_url=pg_url))
    preflight.check_kafka(Settings(kafka_bootstrap_servers=kafka_bootstrap), timeout=5)


def _port(url: str, port: str) -> str:
    """``url`` with its port replaced (whichever port the stack runs on)."""
    return re.sub(r":\d+/", f":{port}/", url, count=1)


@pytest.mark.parametrize(("change", "kind", "words"), [
    (lambda u: _port(u, "abc"), ConfigurationError, "is not a number"),
    (lambda u: u.replace("outbox:outbox@", "outbox:Wr0ngCanary@"), ConfigurationError,
     "password authentication failed"),
    (lambda u: u.replace("127.0.0.1", "nohost.invalid"), ConfigurationError, "resolve"),
    (lambda u: _port(u, "1"), ServiceUnavailableError, "refused"),
])
def test_database_problems_are_one_line_without_the_secret(
        pg_url: str, change: object, kind: type[Exception], words: str) -> None:
    assert callable(change)
    settings = Settings(database_url=change(pg_url))
    with pytest.raises(kind) as caught:
        preflight.check_database(settings, timeout=3)
    text = str(caught.value)
    assert words in text
    assert "\n" not in text
    assert "Wr0ngCanary" not in text


def test_an_unreachable_or_unknown_broker_is_reported_within_the_bound() -> None:
    with pytest.raises(ServiceUnavailableError, match="refused"):
        preflight.check_kafka(Settings(kafka_bootstrap_servers="127.0.0.1:1"), timeout=2)
    with pytest.raises(ConfigurationError, match="resolve"):
        preflight.check_kafka(Settings(kafka_bootstrap_servers="nohost.invalid:9092"),
                              timeout=2)
    with pytest.raises(ConfigurationError, match=r"bogus\.prop"):
        preflight.check_kafka(Settings(kafka_bootstrap_servers="127.0.0.1:1",
                                       kafka_config={"bogus.prop": "1"}), timeout=2)


def test_secrets_in_every_form_are_scrubbed() -> None:
    settings = Settings(database_url="postgresql://u@h:5432/db?password=C4nary1",
                        kafka_config={"sasl.password": "C4nary2"},
                        connect_url="http://admin:C4nary3@connect:8083")
    assert scrub("C4nary1 C4nary2 C4nary3", settings) == "*** *** ***"
    keyword = Settings(database_url="host=h password=C4nary4 user=u")
    assert scrub("echo C4nary4", keyword) == "echo ***"


def test_log_levels_are_checked_and_clients_log_through_the_toolkit() -> None:
    assert check_level("INFO") == "info"
    with pytest.raises(ConfigurationError, match="bogus"):
        check_level("bogus")
    assert isinstance(with_client_logger({})["logger"], logging.Logger)
