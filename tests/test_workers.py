"""The worker registry, on SQLite and PostgreSQL: heartbeats and config mismatch warnings."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

import pytest

from monitor.config import parse_config
from monitor.store import open_store
from monitor.workers import Registry, config_hash

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
CONFIG = """
recipients: [a@example.org]
feeds: [{name: heise, url: 'https://heise.example/feed'}]
watchlists: [{name: xAI, terms: [xAI]}]
"""


def test_config_hash_ignores_the_file_name_but_not_the_content() -> None:
    one = parse_config(CONFIG, "a.yaml")
    assert config_hash(one) == config_hash(parse_config(CONFIG, "b.yaml"))
    assert config_hash(one) != config_hash(parse_config(CONFIG.replace("xAI]", "x.AI]"), "a.yaml"))


def test_a_worker_with_another_config_is_warned_about_once(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    store = open_store(database_url)
    try:
        first = Registry(store, "w1", parse_config(CONFIG))
        second = Registry(store, "w2", parse_config(CONFIG))
        odd = Registry(store, "w3", parse_config(CONFIG.replace("xAI]", "Grok]")))
        first.beat(NOW)
        with caplog.at_level(logging.WARNING, logger="monitor.workers"):
            assert [w.worker_id for w in second.beat(NOW)] == ["w1"]
            assert caplog.text == ""
            odd.beat(NOW)
            assert "runs a different configuration" in caplog.text
            caplog.clear()
            odd.beat(NOW + timedelta(seconds=30))
            assert caplog.text == ""  # once per mismatch, not every heartbeat
        # A worker silent for longer than the liveness window no longer counts.
        assert [w.worker_id for w in first.beat(NOW + timedelta(minutes=5))] == []
        first.retire(NOW + timedelta(hours=1))
        assert store.live_workers(NOW - timedelta(days=1)) == []
    finally:
        store.close()
