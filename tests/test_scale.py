"""Several `monitor run` workers on one PostgreSQL database (issue: scale-out).

300 local feeds on 10 loopback hosts, 20 recipients, three workers: every feed is polled once
(never by two workers at once) and every match reaches each of its recipients once. With one
worker killed by SIGKILL mid-run, its feed leases expire and the others finish its work:
still nothing lost, and nothing twice except a resend of the same Message-ID.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import timedelta
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import SmtpRecorder
from tests.feeds import RECENT

pytestmark = pytest.mark.slow
FEEDS, HOSTS, LATENCY = 300, 10, 0.15
WATCHLISTS = ("Alpha", "Bravo", "Charlie", "Delta")
RECIPIENTS_PER_WATCHLIST = 5
WAIT = 120.0
FAST = {"MONITOR_TICK_POLL": "0.3", "MONITOR_TICK_DIGEST": "0.3", "MONITOR_TICK_HEALTH": "0.5"}
# Distinct made-up words, so no two items look like one story to the near-duplicate check.
VOCABULARY = [
    a + b
    for a in (
        "rot",
        "blau",
        "gruen",
        "gelb",
        "schwarz",
        "weiss",
        "grau",
        "braun",
        "lila",
        "rosa",
        "hell",
        "dunkel",
        "gross",
        "klein",
        "alt",
        "neu",
        "hoch",
        "tief",
        "warm",
        "kalt",
    )
    for b in (
        "haus",
        "baum",
        "weg",
        "see",
        "berg",
        "tal",
        "feld",
        "wald",
        "dorf",
        "stadt",
        "fluss",
        "meer",
        "turm",
        "hof",
        "markt",
        "platz",
        "tor",
        "bach",
        "hain",
        "moor",
    )
]


def feed_document(number: int) -> bytes:
    """Two items: one for a watchlist (its word in the title), one for nobody."""
    words = random.Random(number).sample(VOCABULARY, 24)
    term = WATCHLISTS[number % len(WATCHLISTS)]
    # Dated in the hour before the run: news, not a backlog older than `backlog` (48 h).
    stamp = format_datetime((RECENT - timedelta(hours=1)).replace(minute=number % 60, second=0))
    items = "".join(
        f"<item><title>{title}</title><link>https://feeds.example/{number}/{slot}</link>"
        f"<description>{' '.join(words[slot * 12 : slot * 12 + 12])} {number}</description>"
        f"<pubDate>{stamp}</pubDate></item>"
        for slot, title in enumerate((f"{term} meldet {words[0]} {number}", f"Nichts {number}"))
    )
    return (
        f"<rss version='2.0'><channel><title>Feed {number}</title>{items}</channel></rss>"
    ).encode()


class FeedServers:
    """HTTP servers on 127.0.0.2..; each request is counted, and overlap per feed is recorded."""

    def __init__(self) -> None:
        self.requests: Counter[str] = Counter()
        self.active: Counter[str] = Counter()
        self.overlaps: list[str] = []
        self.lock = threading.Lock()
        self.servers = [self._start(f"127.0.0.{2 + n}") for n in range(HOSTS)]

    def _start(self, address: str) -> ThreadingHTTPServer:
        servers = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with servers.lock:
                    servers.requests[self.path] += 1
                    servers.active[self.path] += 1
                    if servers.active[self.path] > 1:
                        servers.overlaps.append(self.path)
                time.sleep(LATENCY)
                body = feed_document(int(self.path.strip("/").split(".")[0]))
                try:
                    self.send_response(200)
                    self.send_header("Content-Type", "application/rss+xml")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the worker was killed mid-fetch: that is the test
                finally:
                    with servers.lock:
                        servers.active[self.path] -= 1

            def log_message(self, *args: Any) -> None:
                pass

        server = ThreadingHTTPServer((address, 0), Handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return server

    def url(self, number: int) -> str:
        host, port = self.servers[number % HOSTS].server_address[:2]
        return f"http://{host}:{port}/{number}.xml"

    def close(self) -> None:
        for server in self.servers:
            server.shutdown()
            server.server_close()


@pytest.fixture
def feed_servers() -> Iterator[FeedServers]:
    servers = FeedServers()
    yield servers
    servers.close()


def config(servers: FeedServers, smtp_port: int, database: str) -> dict[str, Any]:
    return {
        "database": database,
        "polling": {"interval": "10m", "min_interval": "5m", "lease": "4s", "concurrency": 20},
        "digests": {"hold": "1s"},
        "feeds": [{"name": f"feed-{n}", "url": servers.url(n)} for n in range(FEEDS)],
        "watchlists": [
            {
                "name": term,
                "terms": [term],
                "digest": "immediate",
                "recipients": [
                    f"{term.lower()}-{r}@example.org" for r in range(RECIPIENTS_PER_WATCHLIST)
                ],
            }
            for term in WATCHLISTS
        ],
        "smtp": {
            "host": "127.0.0.1",
            "port": smtp_port,
            "from": "m@example.org",
            "starttls": False,
        },
    }


def expected_deliveries() -> set[tuple[str, str]]:
    return {
        (
            f"{WATCHLISTS[n % len(WATCHLISTS)].lower()}-{r}@example.org",
            f"https://feeds.example/{n}/0",
        )
        for n in range(FEEDS)
        for r in range(RECIPIENTS_PER_WATCHLIST)
    }


def delivered(recorder: SmtpRecorder) -> tuple[Counter[tuple[str, str]], int]:
    """(recipient, item link) pairs over distinct Message-IDs, and how many resends there were."""
    pairs: Counter[tuple[str, str]] = Counter()
    seen: set[str] = set()
    resends = 0
    for message in recorder.parsed():
        if message["Message-ID"] in seen:
            resends += 1
            continue
        seen.add(message["Message-ID"])
        text = message.get_body(("plain",)).get_content()  # type: ignore[union-attr]
        for line in text.splitlines():
            if line.strip().startswith("https://feeds.example/"):
                pairs[(message["To"], line.strip())] += 1
    return pairs, resends


def scalars(url: str, sql: str) -> list[Any]:
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    try:
        with engine.connect() as connection:
            return list(connection.execute(sa.text(sql)).scalars())
    finally:
        engine.dispose()


def start_worker(path: Path, index: int) -> subprocess.Popen[bytes]:
    with open(path.parent / f"worker-{index}.log", "wb") as log:  # the child keeps its own copy
        return subprocess.Popen(
            [sys.executable, "-m", "monitor", "--config", str(path), "run"],
            cwd=path.parent,
            env={**os.environ, **FAST},
            stdout=subprocess.DEVNULL,
            stderr=log,
            start_new_session=True,
        )


def wait_for(condition: Callable[[], bool], what: str | Callable[[], str]) -> None:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what if isinstance(what, str) else what()}")


def stop(workers: list[subprocess.Popen[bytes]]) -> None:
    for worker in workers:
        if worker.poll() is None:
            worker.send_signal(signal.SIGTERM)
    for worker in workers:
        worker.wait(timeout=60)
        assert worker.returncode in (0, -signal.SIGKILL), worker.returncode


@pytest.mark.parametrize("kill_one", [False, True], ids=["three-workers", "one-killed"])
def test_three_workers_poll_each_feed_once_and_deliver_each_match_once(
    feed_servers: FeedServers,
    smtp_server: tuple[SmtpRecorder, int],
    postgres_url: str,
    write_config: Callable[..., Path],
    kill_one: bool,
) -> None:
    import sqlalchemy as sa

    recorder, port = smtp_server
    path = write_config(config(feed_servers, port, postgres_url))
    workers = [start_worker(path, n) for n in range(3)]
    orphaned = 0  # feeds the killed worker held leases of: fetched, maybe, but not recorded
    try:
        if kill_one:
            engine = sa.create_engine(postgres_url)

            def leased(worker: subprocess.Popen[bytes]) -> int:  # until they expire
                with engine.connect() as connection:
                    return int(
                        connection.execute(
                            sa.text("SELECT count(*) FROM feeds WHERE lease_owner LIKE :mine"),
                            {"mine": f"%:{worker.pid}:%"},
                        ).scalar_one()
                    )

            wait_for(
                lambda: sum(feed_servers.requests.values()) >= FEEDS // 5, "a fifth of the feeds"
            )
            busy: list[subprocess.Popen[bytes]] = []

            def someone_busy() -> bool:  # a worker with feeds in hand, lost with it
                busy[:] = [w for w in workers if leased(w)]
                return bool(busy)

            owners = "SELECT DISTINCT lease_owner FROM feeds"
            wait_for(someone_busy, lambda: f"a worker's leases: {scalars(postgres_url, owners)}")
            victim = busy[0]
            os.killpg(victim.pid, signal.SIGKILL)  # the worker and its parse processes
            orphaned = leased(victim)
            engine.dispose()
        wait_for(lambda: len(feed_servers.requests) == FEEDS, "every feed to be polled")
        expected = expected_deliveries()
        wait_for(
            lambda: set(delivered(recorder)[0]) >= expected,
            lambda: (
                f"every match to be delivered; missing e.g. "
                f"{sorted(expected - set(delivered(recorder)[0]))[:3]}"
            ),
        )
        time.sleep(2)  # room for a late duplicate to show up
    finally:
        stop(workers)
    logs = "\n".join(p.read_text() for p in path.parent.glob("worker-*.log"))
    assert feed_servers.overlaps == [], "a feed was fetched by two workers at once"
    # Each feed once; a feed the killed worker had fetched but not recorded may be fetched
    # again: only one it held a lease of (how many depends on how far its writer lagged).
    twice = [p for p, count in feed_servers.requests.items() if count > 1]
    assert len(twice) <= orphaned, (twice, orphaned, logs[-3000:])
    pairs, resends = delivered(recorder)
    assert set(pairs) == expected
    assert max(pairs.values()) == 1, [p for p, n in pairs.items() if n > 1][:5]
    assert resends <= (len(expected) if kill_one else 0)
    assert "Traceback" not in logs, logs[-3000:]
