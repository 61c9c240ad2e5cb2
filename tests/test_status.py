"""`monitor status` from the database: heartbeat, feeds by state, outbox, next digests."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from monitor.config import Config, parse_config
from monitor.status import (
    Heartbeat,
    Snapshot,
    next_digests,
    read_heartbeat,
    status_lines,
    take_snapshot,
    write_heartbeat,
)
from monitor.store import Outbox, Store, open_store

NOW = datetime(2026, 11, 29, 6, 30, tzinfo=UTC)  # 07:30 in Berlin
CONFIG = """
feeds:
  - {name: heise, url: "https://www.heise.de/rss/heise-atom.xml"}
  - {name: Spiegel, url: "https://www.spiegel.de/schlagzeilen/index.rss"}
  - {name: t3n, url: "https://t3n.de/rss.xml"}
watchlists:
  - {name: xAI, terms: [xAI], recipients: [a@example.org], digest: "daily 07:00"}
  - {name: Grok, terms: [Grok], recipients: [a@example.org], digest: hourly}
"""


@pytest.fixture
def config() -> Config:
    return parse_config(CONFIG)


@pytest.fixture
def store(database_url: str, config: Config) -> Iterator[Store]:
    store = open_store(database_url)
    store.sync_feeds({f.name: f.url for f in config.feeds if f.name != "t3n"}, NOW)
    store.update_feed("Spiegel", status="degraded", last_error="HTTP 503")
    yield store
    store.close()


def beat(**changes: object) -> Heartbeat:
    heartbeat = Heartbeat(
        pid=os.getpid(),
        host=socket.gethostname(),
        at=NOW - timedelta(seconds=5),
        started_at=NOW - timedelta(hours=3),
        last_poll_at=NOW - timedelta(seconds=2),
        interval=10.0,
    )
    return replace(heartbeat, **changes)  # type: ignore[arg-type]


def test_snapshot_counts_configured_feeds_by_state(store: Store, config: Config) -> None:
    snapshot = take_snapshot(store, config, NOW)
    assert snapshot.feeds_by_state == {"degraded": 1, "new": 2}  # t3n is not in the table yet
    assert snapshot.summary() == "2 feeds ok, 1 failing; outbox 0 pending, 0 dead"
    assert {d.watchlist: d.at for d in snapshot.next_digests} == {
        "xAI": datetime(2026, 11, 30, 6, 0, tzinfo=UTC),  # 07:00 Berlin tomorrow
        "Grok": datetime(2026, 11, 29, 7, 0, tzinfo=UTC),
    }


def test_next_digests_follow_each_recipients_plan() -> None:
    """priority: immediate, and a recipient's own digest:, decide when mail goes out; status
    showed the watchlist's digest: instead (07:00 tomorrow for an immediate list)."""
    config = parse_config(
        CONFIG
        + "  - name: Keele\n    terms: [Keele]\n    priority: immediate\n"
        + "    recipients: [press@example.org, {address: ceo@example.org, digest: weekly MON 08:00}]\n"
    )
    keele = [d for d in next_digests(config, NOW) if d.watchlist == "Keele"]
    assert [(d.schedule, d.at, d.recipients) for d in keele] == [
        ("immediate", None, ("press@example.org",)),
        ("weekly MON 08:00", datetime(2026, 11, 30, 7, 0, tzinfo=UTC), ("ceo@example.org",)),
    ]
    lines = status_lines(replace(empty_snapshot(), next_digests=tuple(keele)), config, NOW)
    assert lines[-2:] == [
        "  Keele  immediate (as matches arrive)  to press@example.org",
        "  Keele  2026-11-30 08:00:00 CET  to ceo@example.org",
    ]


def empty_snapshot() -> Snapshot:
    return Snapshot({}, Outbox(0, 0, 0, None), (), None)


def test_heartbeat_round_trips_through_the_meta_table(store: Store) -> None:
    assert read_heartbeat(store) is None
    write_heartbeat(store, beat())
    assert read_heartbeat(store) == beat()
    store.set_meta("daemon_heartbeat", "{not json")  # another version's format: ignored
    assert read_heartbeat(store) is None


@pytest.mark.parametrize(
    ("heartbeat", "alive"),
    [
        (beat(), True),
        (beat(at=NOW - timedelta(minutes=5)), False),  # stale: the daemon hangs or died
        (beat(running=False), False),  # a clean stop
        (beat(pid=2**22 + 12345), False),  # no such process on this host
        (beat(pid=2**22 + 12345, host="elsewhere"), True),  # another host: trust the time
    ],
)
def test_alive_means_fresh_running_and_present(heartbeat: Heartbeat, alive: bool) -> None:
    assert heartbeat.is_alive(NOW) is alive


def test_status_lines(store: Store, config: Config) -> None:
    write_heartbeat(store, beat())
    text = "\n".join(status_lines(take_snapshot(store, config, NOW), config, NOW))
    assert f"daemon:     running (pid {os.getpid()} on {socket.gethostname()}, since " in text
    assert "last poll:  2026-11-29 07:29:58 CET" in text
    assert "feeds:      1 degraded, 2 new" in text
    assert "outbox:     0 pending, 0 ready to send, 0 dead letters" in text
    assert "  xAI   first after its feeds' next poll, then 2026-11-30 07:00:00 CET" in text


def test_status_after_a_crash_says_so(store: Store, config: Config) -> None:
    write_heartbeat(store, beat(at=NOW - timedelta(hours=1)))
    text = "\n".join(status_lines(take_snapshot(store, config, NOW), config, NOW))
    assert "not running (last heartbeat 2026-11-29 06:30:00 CET; it did not stop cleanly)" in text


def test_a_feed_gone_is_failing_and_one_switched_off_is_not(store: Store) -> None:
    # heise answered 410 (the poller disabled it); Spiegel, last seen degraded, is switched
    # off in the config: it is the user's choice, nothing to look at.
    store.update_feed("heise", status="disabled", last_error="HTTP 410 Gone: the feed was removed")
    config = parse_config(CONFIG.replace('index.rss"}', 'index.rss", enabled: false}'))
    snapshot = take_snapshot(store, config, NOW)
    assert snapshot.feeds_by_state == {"disabled": 2, "new": 1}  # the gauges' states
    assert snapshot.feeds_gone == 1 and snapshot.feeds_failing == 1
    assert (
        snapshot.summary() == "1 feeds ok, 1 failing (1 gone: HTTP 410); outbox 0 pending, 0 dead"
    )
    text = "\n".join(status_lines(snapshot, config, NOW))
    assert "feeds:      1 disabled, 1 gone (HTTP 410), 1 new; 1 failing" in text


def test_status_counts_every_live_worker_not_the_last_heartbeat(
    store: Store, config: Config
) -> None:
    """On PostgreSQL workers share the heartbeat: one stopping wrote "stopped" while the
    others ran, and `monitor status` said not running (exit 1)."""
    from monitor.store import WorkerInfo

    write_heartbeat(store, beat(running=False))
    assert not take_snapshot(store, config, NOW).running(NOW)
    store.heartbeat(WorkerInfo("a", socket.gethostname(), os.getpid(), "h"), NOW)
    store.heartbeat(WorkerInfo("b", "elsewhere", 4242, "h"), NOW - timedelta(seconds=30))
    store.heartbeat(WorkerInfo("gone", "elsewhere", 7, "h"), NOW - timedelta(hours=1))
    snapshot = take_snapshot(store, config, NOW)
    assert snapshot.running(NOW)
    daemon = status_lines(snapshot, config, NOW)[0]
    assert daemon.startswith("daemon:     running: 2 worker(s) (")
    assert "pid 4242 on elsewhere" in daemon and f"pid {os.getpid()} on" in daemon


def test_a_digest_never_sent_goes_out_after_the_next_poll_not_at_its_time(
    store: Store, config: Config
) -> None:
    """Issue 23: status said "tomorrow 08:00" for a new watchlist whose first digest goes
    out right after its feeds' next poll."""
    from monitor.store import DigestRun

    store.claim_digest(None, [], NOW, [DigestRun("Grok", "a@example.org", NOW)])  # Grok went out
    snapshot = take_snapshot(store, config, NOW)
    assert {d.watchlist: d.first for d in snapshot.next_digests} == {"xAI": True, "Grok": False}
    lines = status_lines(snapshot, config, NOW)
    assert "  xAI   first after its feeds' next poll, then 2026-11-30 07:00:00 CET" in lines
    assert "  Grok  2026-11-29 08:00:00 CET" in lines
