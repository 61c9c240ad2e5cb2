"""Prometheus metrics and the optional HTTP endpoint (/metrics, /healthz). Owns prometheus-client.

Counters are fed from the tick reports (polls, items, matches, deliveries); gauges are set
from a database snapshot after each tick, so a scrape never queries the database. Every
daemon has its own CollectorRegistry: tests (and a library user) can run two side by side.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import datetime

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from monitor.errors import UnavailableError
from monitor.models import FeedStatus
from monitor.status import Health, Snapshot

log = logging.getLogger(__name__)
# Feed fetches: from a cached 304 in milliseconds to a server cut off at the timeout.
_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


@dataclass(frozen=True, slots=True)
class PollOutcome:
    """One feed's poll, as the metrics see it."""

    result: str  # "changed", "unchanged" or "failed"
    seconds: float | None = None  # how long the fetch took, when known


class Metrics:
    """The daemon's instruments, in a registry of their own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.polls = Counter("monitor_polls", "Feed polls by result.", ["result"], registry=r)
        self.fetch_seconds = Histogram(
            "monitor_fetch_seconds", "Time to fetch one feed.", buckets=_LATENCY_BUCKETS, registry=r
        )
        self.cycle_seconds = Histogram(
            "monitor_poll_cycle_seconds",
            "Time of a poll tick that polled at least one feed.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.items_new = Counter("monitor_items_new", "New items stored.", registry=r)
        self.matches = Counter("monitor_matches", "Watchlist matches recorded.", registry=r)
        self.digests = Counter("monitor_digests_composed", "Messages composed.", registry=r)
        self.deliveries = Counter(
            "monitor_deliveries",
            "Send attempts by result (sent, failed: will retry, dead: refused for good).",
            ["result"],
            registry=r,
        )
        self.pending = Gauge(
            "monitor_deliveries_pending", "Deliveries not yet accepted by the server.", registry=r
        )
        self.dead = Gauge(  # the name predates counting dead letters as messages everywhere
            "monitor_deliveries_dead", "Dead letters: messages refused for good.", registry=r
        )
        self.messages = Gauge(
            "monitor_messages",
            "Stored messages by channel (email, webhook, slack, ...) and state (ready/sent/dead).",
            ["channel", "state"],
            registry=r,
        )
        self.oldest_pending = Gauge(
            "monitor_oldest_pending_delivery_age_seconds",
            "Age of the oldest delivery still pending (0 when none).",
            registry=r,
        )
        self.feeds = Gauge("monitor_feeds", "Configured feeds by state.", ["state"], registry=r)
        self.healthy = Gauge("monitor_healthy", "1 while the health check passes.", registry=r)
        self.last_poll = Gauge(
            "monitor_last_poll_timestamp_seconds", "When the last poll tick ended.", registry=r
        )
        for result in ("changed", "unchanged", "failed"):
            self.polls.labels(result)  # export zeros, so rate() works from the first scrape
        for result in ("sent", "failed", "dead"):
            self.deliveries.labels(result)

    def record_polls(self, outcomes: Iterable[PollOutcome], cycle_seconds: float) -> None:
        count = 0
        for outcome in outcomes:
            count += 1
            self.polls.labels(outcome.result).inc()
            if outcome.seconds is not None:
                self.fetch_seconds.observe(outcome.seconds)
        if count:
            self.cycle_seconds.observe(cycle_seconds)

    def record_ingest(self, new_items: int, matches: int) -> None:
        self.items_new.inc(new_items)
        self.matches.inc(matches)

    def record_deliveries(self, composed: int, sent: int, failed: int, dead: int) -> None:
        self.digests.inc(composed)
        self.deliveries.labels("sent").inc(sent)
        self.deliveries.labels("failed").inc(failed)
        self.deliveries.labels("dead").inc(dead)

    def record_snapshot(self, snapshot: Snapshot, now: datetime) -> None:
        self.pending.set(snapshot.outbox.pending)
        self.dead.set(snapshot.outbox.dead)
        self.messages.clear()  # a channel removed from the config leaves no stale series
        for (channel, state), count in snapshot.messages.items():
            self.messages.labels(channel, state).set(count)
        oldest = snapshot.outbox.oldest_pending
        self.oldest_pending.set(max(0.0, (now - oldest).total_seconds()) if oldest else 0.0)
        for state in FeedStatus:
            self.feeds.labels(state.value).set(snapshot.feeds_by_state.get(state.value, 0))

    def record_health(self, health: Health) -> None:
        self.healthy.set(1 if health.ok else 0)

    def record_poll_tick(self, when: datetime) -> None:
        self.last_poll.set(when.timestamp())

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


def parse_listen(listen: str) -> tuple[str, int]:
    """'127.0.0.1:9464' or '[::1]:9464' -> (host, port); the config validated it."""
    host, _, port = listen.rpartition(":")
    return host.strip("[]"), int(port)


HealthCheck = Callable[[], Awaitable[Health]]


def build_web_app(metrics: Metrics, health: HealthCheck) -> web.Application:
    async def metrics_page(_request: web.Request) -> web.Response:
        response = web.Response(body=metrics.exposition())
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response

    async def health_page(_request: web.Request) -> web.Response:
        result = await health()
        return web.Response(status=200 if result.ok else 503, text=result.describe() + "\n")

    application = web.Application()
    application.router.add_get("/metrics", metrics_page)
    application.router.add_get("/healthz", health_page)
    return application


async def start_endpoint(metrics: Metrics, health: HealthCheck, listen: str) -> web.AppRunner:
    """Serve /metrics and /healthz on listen (a loopback address); stop with runner.cleanup()."""
    host, port = parse_listen(listen)
    runner = web.AppRunner(build_web_app(metrics, health), access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except OSError as error:
        await runner.cleanup()
        raise UnavailableError(
            f"metrics.listen {listen}: cannot listen there: {error.strerror or error}"
        ) from None
    log.info("metrics on http://%s/metrics, health on /healthz", listen)
    return runner
