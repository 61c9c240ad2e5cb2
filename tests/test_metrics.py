"""Prometheus metrics and the /metrics, /healthz endpoint, served on 127.0.0.1 for real."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from monitor.config import parse_config
from monitor.errors import ConfigError
from monitor.metrics import Metrics, PollOutcome, start_endpoint
from monitor.status import Health, Snapshot
from monitor.store import Outbox
from tests.conftest import free_port

NOW = datetime(2026, 11, 29, 7, 0, tzinfo=UTC)


def samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = metrics.exposition().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_polls_items_and_deliveries_are_counted() -> None:
    metrics = Metrics()
    metrics.record_polls(
        [PollOutcome("changed", 0.2), PollOutcome("unchanged", 0.05), PollOutcome("failed")], 1.5
    )
    metrics.record_ingest(new_items=7, matches=3)
    metrics.record_deliveries(composed=2, sent=2, failed=1, dead=0)
    found = samples(metrics)
    assert found[("monitor_polls_total", (("result", "changed"),))] == 1
    assert found[("monitor_polls_total", (("result", "failed"),))] == 1
    assert found[("monitor_fetch_seconds_count", ())] == 2  # the failed poll had no timing
    assert found[("monitor_poll_cycle_seconds_sum", ())] == 1.5
    assert found[("monitor_items_new_total", ())] == 7
    assert found[("monitor_matches_total", ())] == 3
    assert found[("monitor_deliveries_total", (("result", "sent"),))] == 2
    assert found[("monitor_deliveries_total", (("result", "failed"),))] == 1
    assert found[("monitor_deliveries_total", (("result", "dead"),))] == 0


def test_gauges_follow_the_snapshot() -> None:
    metrics = Metrics()
    snapshot = Snapshot(
        feeds_by_state={"ok": 5, "broken": 1},
        outbox=Outbox(pending=4, ready=1, dead=2, oldest_pending=NOW - timedelta(hours=2)),
        next_digests=(),
        heartbeat=None,
    )
    metrics.record_snapshot(snapshot, NOW)
    found = samples(metrics)
    assert found[("monitor_feeds", (("state", "ok"),))] == 5
    assert found[("monitor_feeds", (("state", "broken"),))] == 1
    assert found[("monitor_feeds", (("state", "degraded"),))] == 0
    assert found[("monitor_deliveries_pending", ())] == 4
    assert found[("monitor_deliveries_dead", ())] == 2
    assert found[("monitor_oldest_pending_delivery_age_seconds", ())] == 7200


def test_each_daemon_has_its_own_registry() -> None:
    first, second = Metrics(), Metrics()  # the global registry would refuse the second
    first.record_ingest(1, 0)
    assert samples(second)[("monitor_items_new_total", ())] == 0


async def test_endpoint_serves_metrics_and_health_on_loopback() -> None:
    metrics = Metrics()
    metrics.record_ingest(3, 1)
    health = Health()

    async def check() -> Health:
        return health

    port = free_port()
    runner = await start_endpoint(metrics, check, f"127.0.0.1:{port}")
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{port}/metrics") as response:
                assert response.status == 200
                assert response.headers["Content-Type"].startswith("text/plain; version=")
                assert "monitor_items_new_total 3.0" in await response.text()
            async with session.get(f"http://127.0.0.1:{port}/healthz") as response:
                assert response.status == 200
                assert await response.text() == "ok\n"
            health = Health(("database did not answer within 10s",))
            async with session.get(f"http://127.0.0.1:{port}/healthz") as response:
                assert response.status == 503
                assert "database did not answer" in await response.text()
    finally:
        await runner.cleanup()


BASE = """
feeds: [{name: a, url: "https://example.org/feed"}]
watchlists: [{name: w, terms: [x], recipients: [a@example.org]}]
"""


def test_metrics_config_defaults_to_loopback() -> None:
    config = parse_config(BASE + "metrics: {}\n")
    assert config.metrics is not None and config.metrics.listen == "127.0.0.1:9464"
    assert parse_config(BASE).metrics is None  # off unless configured
    assert parse_config(BASE + "metrics: {listen: '[::1]:9100'}\n").metrics is not None


@pytest.mark.parametrize(
    ("listen", "message"),
    [
        ("0.0.0.0:9464", "0.0.0.0 is not a loopback address"),
        ("localhost:9464", "is not ADDRESS:PORT"),
        ("127.0.0.1:99999", "needs a port from 1 to 65535"),
    ],
)
def test_metrics_listen_must_be_a_loopback_address(listen: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(BASE + f"metrics: {{listen: '{listen}'}}\n", "c.yaml")
    [problem] = caught.value.problems
    assert problem.startswith("c.yaml:4:") and "metrics.listen" in problem and message in problem


async def test_a_metrics_address_in_use_is_named_not_a_traceback() -> None:
    import socket

    from monitor.errors import UnavailableError

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        listen = f"127.0.0.1:{taken.getsockname()[1]}"
        with pytest.raises(UnavailableError, match=rf"metrics.listen {listen}: cannot listen"):
            await start_endpoint(Metrics(), lambda: Health(()), listen)


def test_a_database_that_cannot_be_opened_is_named_without_its_password(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from monitor.cli import main

    port = free_port()  # nothing listens there
    path = tmp_path / "config.yaml"
    path.write_text(
        f"database: postgresql+psycopg://monitor:s3cret@127.0.0.1:{port}/monitor\n"
        "feeds: [{name: f, url: 'http://127.0.0.1:9/f'}]\n"
        "watchlists: [{name: w, terms: [xAI], recipients: [a@example.org]}]\n",
        "utf-8",
    )
    assert main(["--config", str(path), "poll"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"monitor: database postgresql+psycopg://monitor:***@127.0.0.1:{port}")
    assert "cannot open it: connection failed" in err and "s3cret" not in err
    assert "Traceback" not in err
