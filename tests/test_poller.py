"""The polling engine against a real HTTP server on 127.0.0.1 that plays every hostile case.

For each case: the feed's health state and when it is polled next. Time is injected through
App.clock and advanced by hand; nothing here sleeps to wait for a schedule.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import gzip
import logging
import multiprocessing
import re
import socket
import struct
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import sqlalchemy as sa
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from monitor import poller
from monitor.app import App, running_app
from monitor.config import Config
from monitor.errors import ParseError
from monitor.models import FeedState, FeedStatus, FeedUpdate
from monitor.parse import parse_feed
from monitor.parse_pool import ParsePool
from monitor.poller import _Writer, poll_due
from monitor.store import schema
from tests.conftest import HungHost
from tests.feeds import ENGLISH, GERMAN, rss

START = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta) -> None:
        self.now += delta


def make_config(database: str, feeds: dict[str, str], **polling: Any) -> Config:
    return Config.model_validate(
        {
            "database": database,
            "feeds": [{"name": name, "url": url} for name, url in feeds.items()],
            "watchlists": [{"name": "w", "terms": ["xAI"], "recipients": ["a@example.org"]}],
            "polling": {
                "timeout": 3,
                "connect_timeout": 2,
                "min_gap": 0.001,
                "parse_workers": 1,
                **polling,
            },
        }
    )


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def start_app(sqlite_url: str, clock: Clock) -> Iterator[Callable[..., Any]]:
    """start_app(feeds, **polling) -> an async context manager yielding a running App."""

    def start(feeds: dict[str, str], database: str = sqlite_url, **polling: Any) -> Any:
        return running_app(make_config(database, feeds, **polling), clock=clock)

    yield start


async def poll(app: App, name: str) -> FeedState:
    """Poll one feed now, due or not, and return what the store recorded."""
    await poll_due(app, [name], force=True)
    state = app.store.feed_state(name)
    assert state is not None
    return state


def requests_to(server: HTTPServer, path: str) -> list[Request]:
    return [request for request, _ in server.log if request.path == path]


def between(moment: datetime | None, low: timedelta, high: timedelta, now: datetime) -> bool:
    return moment is not None and now + low <= moment <= now + high


# ----------------------------------------------------------------------------- success paths


def _etag_v1(request: Request) -> Response:
    """The German feed with ETag "v1"; 304 to a request that sends it."""
    if request.headers.get("If-None-Match") == '"v1"':
        return Response(status=304)
    return Response(GERMAN, headers={"ETag": '"v1"', "Content-Type": "application/rss+xml"})


async def test_etag_then_304_keeps_the_feed_ok_and_skips_the_parse(
    httpserver: HTTPServer, start_app: Callable[..., Any], clock: Clock
) -> None:
    httpserver.expect_request("/feed").respond_with_handler(_etag_v1)
    async with start_app({"de": httpserver.url_for("/feed")}) as app:
        first = await poll(app, "de")
        assert first.status == FeedStatus.OK and first.etag == '"v1"'
        assert between(first.next_poll_at, timedelta(minutes=4), 7 * HOUR, clock.now)
        clock.advance(HOUR)
        second = await poll(app, "de")
    sent = [r.headers.get("If-None-Match") for r in requests_to(httpserver, "/feed")]
    assert sent == [None, '"v1"']
    assert second.status == FeedStatus.OK and second.unchanged_streak == 1
    assert between(second.next_poll_at, timedelta(minutes=4), 7 * HOUR, clock.now)


async def test_an_unchanged_feed_keeps_its_items_keys_fresh(
    httpserver: HTTPServer, start_app: Callable[..., Any], clock: Clock
) -> None:
    """Keys are refreshed when seen in a parsed document, and an unchanged one is not
    parsed: a feed unchanged for longer than retention.keys let them expire while it still
    listed the items, which alerted again once it changed. Its unconditional check (every
    VERIFY_EVERY-th poll) parses it, and the keys are seen again."""
    import sqlalchemy as sa

    from monitor.feeds import VERIFY_EVERY
    from monitor.store.schema import item_keys

    httpserver.expect_request("/feed").respond_with_handler(_etag_v1)
    async with start_app({"de": httpserver.url_for("/feed")}) as app:
        await poll(app, "de")
        for _ in range(VERIFY_EVERY + 1):
            clock.advance(timedelta(days=1))
            state = await poll(app, "de")
        with app.store.engine.connect() as tx:
            seen = tx.execute(sa.select(sa.func.min(item_keys.c.last_seen_at))).scalar_one()
    sent = [r.headers.get("If-None-Match") for r in requests_to(httpserver, "/feed")]
    assert sent.count(None) == 2 and state.unchanged_streak == VERIFY_EVERY + 1
    assert seen.replace(tzinfo=UTC) == clock.now  # the check was this last poll


async def test_lying_validators_are_caught_and_no_longer_sent(
    httpserver: HTTPServer, start_app: Callable[..., Any], clock: Clock
) -> None:
    versions = [GERMAN]

    def liar(request: Request) -> Response:  # always 304 when asked, always the same ETag
        if request.headers.get("If-None-Match"):
            return Response(status=304)
        return Response(versions[-1], headers={"ETag": '"same"'})

    httpserver.expect_request("/liar").respond_with_handler(liar)
    async with start_app({"liar": httpserver.url_for("/liar")}) as app:
        await poll(app, "liar")
        versions.append(rss("Neu", [("neu", "xAI: neue Meldung", "Text")]))
        for _ in range(9):  # 8 answered 304, then the unconditional check
            clock.advance(HOUR)
            state = await poll(app, "liar")
        assert state.ignore_validators and state.status == FeedStatus.OK
        clock.advance(HOUR)
        await poll(app, "liar")
    sent = [r.headers.get("If-None-Match") for r in requests_to(httpserver, "/liar")]
    assert sent[1:9] == ['"same"'] * 8 and sent[9:] == [None, None]


async def test_an_empty_200_to_a_conditional_request_is_asked_again_without_validators(
    httpserver: HTTPServer, start_app: Callable[..., Any], clock: Clock
) -> None:
    # A classic CGI bug: "nothing changed" as 200 with an empty body instead of 304. The
    # feed is fine when asked without validators: it must not turn broken for good.
    def empty_when_asked(request: Request) -> Response:
        if request.headers.get("If-None-Match") == '"v1"':
            return Response(b"", headers={"ETag": '"v1"'})
        return Response(GERMAN, headers={"ETag": '"v1"', "Content-Type": "application/rss+xml"})

    httpserver.expect_request("/cgi").respond_with_handler(empty_when_asked)
    async with start_app({"cgi": httpserver.url_for("/cgi")}) as app:
        await poll(app, "cgi")
        clock.advance(HOUR)
        state = await poll(app, "cgi")
        assert state.status == FeedStatus.OK and state.consecutive_failures == 0
        assert state.ignore_validators and state.last_error is None
        clock.advance(HOUR)
        await poll(app, "cgi")
    sent = [r.headers.get("If-None-Match") for r in requests_to(httpserver, "/cgi")]
    assert sent == [None, '"v1"', None, None]


async def test_an_empty_200_also_without_validators_is_a_failure_that_keeps_them(
    httpserver: HTTPServer, start_app: Callable[..., Any], clock: Clock
) -> None:
    answers = [Response(GERMAN, headers={"ETag": '"v1"'})]
    httpserver.expect_request("/empty").respond_with_handler(
        lambda _r: answers.pop(0) if answers else Response(b"")
    )
    async with start_app({"empty": httpserver.url_for("/empty")}) as app:
        await poll(app, "empty")
        clock.advance(HOUR)
        state = await poll(app, "empty")
    assert state.status == FeedStatus.DEGRADED and "empty document" in (state.last_error or "")
    assert not state.ignore_validators and state.etag == '"v1"'
    sent = [r.headers.get("If-None-Match") for r in requests_to(httpserver, "/empty")]
    assert sent == [None, '"v1"', None]  # asked once more, once


@pytest.mark.parametrize("code", [301, 308])
async def test_permanent_redirect_is_adopted_after_three_sightings(
    httpserver: HTTPServer, start_app: Callable[..., Any], clock: Clock, code: int
) -> None:
    httpserver.expect_request("/old").respond_with_data("", code, {"Location": "/new"})
    httpserver.expect_request("/new").respond_with_data(GERMAN)
    async with start_app({"moved": httpserver.url_for("/old")}) as app:
        counts = []
        for _ in range(3):
            state = await poll(app, "moved")
            counts.append((state.url.endswith("/old"), state.redirect_count))
            clock.advance(HOUR)
        assert counts == [(True, 1), (True, 2), (False, 0)]
        assert state.url == httpserver.url_for("/new") and state.status == FeedStatus.OK
        await poll(app, "moved")
    assert len(requests_to(httpserver, "/old")) == 3 and len(requests_to(httpserver, "/new")) == 4


async def test_a_public_feed_redirected_to_an_internal_address_is_neither_followed_nor_moved(
    httpserver: HTTPServer, start_app: Callable[..., Any], clock: Clock
) -> None:
    # Configured on the internet; polled at a URL that (as every server in these tests) is
    # on 127.0.0.1, as if adopted from a redirect: its configured URL decides.
    internal = f"http://127.0.0.1:{httpserver.port}/admin"
    httpserver.expect_request("/moved").respond_with_data("", 301, {"Location": internal})
    async with start_app({"f": "http://93.184.215.14/feed.xml"}) as app:
        app.store.update_feed("f", url=httpserver.url_for("/moved"))
        for _ in range(3):
            state = await poll(app, "f")
            clock.advance(HOUR)
    assert state.url == httpserver.url_for("/moved") and state.redirect_count == 0
    assert state.status == FeedStatus.DEGRADED and "refused to follow" in (state.last_error or "")
    assert len(requests_to(httpserver, "/moved")) == 3 and not requests_to(httpserver, "/admin")


async def test_temporary_redirect_is_followed_but_never_stored(
    httpserver: HTTPServer, start_app: Callable[..., Any], clock: Clock
) -> None:
    httpserver.expect_request("/temp").respond_with_data("", 302, {"Location": "/elsewhere"})
    httpserver.expect_request("/elsewhere").respond_with_data(GERMAN)
    async with start_app({"temp": httpserver.url_for("/temp")}) as app:
        for _ in range(4):
            state = await poll(app, "temp")
            clock.advance(HOUR)
    assert state.url == httpserver.url_for("/temp") and state.redirect_url is None
    assert state.status == FeedStatus.OK


# ----------------------------------------------------------------------------- failures


async def test_gone_disables_the_feed_for_good(
    httpserver: HTTPServer, start_app: Callable[..., Any], clock: Clock
) -> None:
    httpserver.expect_request("/gone").respond_with_data("", 410)
    async with start_app({"gone": httpserver.url_for("/gone")}) as app:
        state = await poll(app, "gone")
        assert state.status == FeedStatus.DISABLED and state.next_poll_at is None
        assert "410" in (state.last_error or "")
        clock.advance(timedelta(days=365))
        report = await poll_due(app)
    assert report.polls == () and len(requests_to(httpserver, "/gone")) == 1


async def test_retry_after_is_honoured_for_the_feed_and_capped_at_a_day(
    httpserver: HTTPServer, start_app: Callable[..., Any], clock: Clock
) -> None:
    httpserver.expect_request("/busy").respond_with_data("", 503, {"Retry-After": "120"})
    httpserver.expect_request("/forever").respond_with_data("", 503, {"Retry-After": "9999999"})
    httpserver.expect_request("/ok").respond_with_data(GERMAN)
    feeds = {n: httpserver.url_for(f"/{n}") for n in ("busy", "forever", "ok")}
    async with start_app(feeds) as app:
        await poll_due(app)
        busy, forever = app.store.feed_state("busy"), app.store.feed_state("forever")
        assert busy is not None and forever is not None
        assert busy.status == FeedStatus.DEGRADED
        assert busy.next_poll_at == START + timedelta(seconds=120)
        assert forever.next_poll_at == START + timedelta(hours=24)
        clock.advance(timedelta(seconds=121))
        report = await poll_due(app)  # a 503 speaks for the feed only: the host is not blocked
    assert [p.feed for p in report.polls] == ["busy"]


@pytest.mark.parametrize("retry_after", ["0", "Thu, 01 Jan 2015 00:00:00 GMT"])
async def test_a_retry_after_of_now_waits_at_least_the_floor_and_then_backs_off(
    httpserver: HTTPServer, start_app: Callable[..., Any], clock: Clock, retry_after: str
) -> None:
    httpserver.expect_request("/busy").respond_with_data("", 503, {"Retry-After": retry_after})
    async with start_app({"busy": httpserver.url_for("/busy")}) as app:
        delays = []
        for _ in range(8):
            state = await poll(app, "busy")
            assert state.next_poll_at is not None
            delays.append((state.next_poll_at - clock.now).total_seconds())
            clock.advance(HOUR)
    assert state.consecutive_failures == 8 and state.status == FeedStatus.DEGRADED
    assert delays[0] == 60 and min(delays) >= 60  # never the 1 s it was: every poll tick


async def test_429_with_retry_after_holds_off_the_whole_host(
    httpserver: HTTPServer, start_app: Callable[..., Any], clock: Clock
) -> None:
    httpserver.expect_request("/limited").respond_with_data("", 429, {"Retry-After": "3600"})
    httpserver.expect_request("/fine").respond_with_data(GERMAN)
    feeds = {"limited": httpserver.url_for("/limited"), "fine": httpserver.url_for("/fine")}
    async with start_app(feeds, interval="10m", min_interval="10m") as app:
        await poll_due(app)
        clock.advance(timedelta(minutes=30))  # "fine" is due again, but its host said wait
        assert (await poll_due(app)).polls == ()
        clock.advance(timedelta(minutes=31))
        report = await poll_due(app)
    assert sorted(p.feed for p in report.polls) == ["fine", "limited"]


async def test_a_429_stops_the_requests_of_the_hosts_other_feeds_in_the_same_cycle(
    httpserver: HTTPServer, start_app: Callable[..., Any], clock: Clock
) -> None:
    # One request at a time: the other feeds of the host wait for their turn while the
    # first is asked. Its 429 must reach them before they go: they end unasked, are due
    # again when the block ends, and are neither failed nor failing.
    httpserver.expect_request("/limited").respond_with_data("", 429, {"Retry-After": "3600"})
    feeds = {f"f{n}": httpserver.url_for(f"/limited?n={n}") for n in range(5)}
    async with start_app(feeds, per_host=1) as app:
        report = await poll_due(app)
        assert len(requests_to(httpserver, "/limited")) == 1
        assert len(report.polls) == 5 and report.failed == 1
        deferred = [p for p in report.polls if p.deferred]
        assert len(deferred) == 4 and all(not p.error for p in deferred)
        for poll in deferred:
            state = app.store.feed_state(poll.feed)
            assert state is not None and state.next_poll_at == START + HOUR
            assert state.consecutive_failures == 0 and state.last_error is None
            assert state.status == FeedStatus.NEW
        clock.advance(timedelta(minutes=30))
        assert (await poll_due(app)).polls == ()  # the block holds across cycles too
        clock.advance(timedelta(minutes=31))
        await poll_due(app)
    assert len(requests_to(httpserver, "/limited")) == 2  # asked again, and blocked again


async def test_a_hung_host_neither_holds_the_window_nor_makes_its_feeds_wait_in_turn(
    httpserver: HTTPServer, hung_host: HungHost, start_app: Callable[..., Any], clock: Clock
) -> None:
    """A host that never answers, with the first due feeds: the other host's feeds are
    polled while the first request to it waits out its deadline, and the hung host's other
    feeds are not asked in turn after it (6 feeds, one at a time: 18 s), but are due again
    after one more deadline, neither failed nor failing."""
    answered: list[float] = []

    def feed(_request: Request) -> Response:
        answered.append(time.monotonic())
        return Response(GERMAN)

    httpserver.expect_request("/ok").respond_with_handler(feed)
    hung = {f"hung{n}": hung_host.url(f"/feed{n}") for n in range(6)}
    fine = {f"fine{n}": httpserver.url_for(f"/ok?n={n}") for n in range(4)}
    # The window (concurrency 2) claims 4 feeds at a time: the hung host's first.
    async with start_app(hung | fine, concurrency=2, per_host=1) as app:
        report = await poll_due(app)
        assert len(hung_host.arrived) == 1  # one request went to the hung host
        assert len(answered) == 4 and max(answered) < hung_host.abandoned[0]
        outcomes = {p.feed: p for p in report.polls}
        assert set(outcomes) == set(hung) | set(fine) and report.failed == 1
        assert all(not outcomes[name].error for name in fine)
        deferred = [p for p in report.polls if p.deferred]
        assert len(deferred) == 5 and all(p.feed in hung and not p.error for p in deferred)
        for poll in deferred:
            state = app.store.feed_state(poll.feed)
            assert state is not None and state.next_poll_at == START + timedelta(seconds=3)
            assert state.consecutive_failures == 0 and state.status == FeedStatus.NEW
        # The block reaches the other workers, as a 429's does, and ends after a deadline.
        later = clock.now + HOUR
        assert app.store.claim_feeds("other", clock.now, later, 10, names=list(hung)).feeds == []
        clock.advance(timedelta(seconds=3))
        assert len(app.store.claim_feeds("other", clock.now, later, 10, names=list(hung)).feeds)


async def test_a_timeout_holds_off_the_host_for_the_other_workers_too(
    hung_host: HungHost, start_app: Callable[..., Any], clock: Clock
) -> None:
    # The only feed of its host: the failure itself carries the block.
    async with start_app({"hung": hung_host.url("/feed")}) as app:
        report = await poll_due(app)
        assert report.failed == 1 and "timed out" in (report.polls[0].error or "")
        later = clock.now + HOUR
        assert app.store.claim_feeds("other", clock.now, later, 10, force=True).feeds == []
        clock.advance(timedelta(seconds=3))
        assert len(app.store.claim_feeds("other", clock.now, later, 10, force=True).feeds) == 1


async def test_a_host_wide_retry_after_reaches_the_other_workers(
    httpserver: HTTPServer, start_app: Callable[..., Any], clock: Clock
) -> None:
    # The only feed of its host: the host's release must carry the block it just reported.
    httpserver.expect_request("/limited").respond_with_data("", 429, {"Retry-After": "3600"})
    async with start_app({"limited": httpserver.url_for("/limited")}) as app:
        await poll_due(app)
        later = clock.now + timedelta(minutes=10)
        assert app.store.claim_feeds("other", clock.now, later, 10, force=True).feeds == []
        clock.advance(timedelta(minutes=61))
        assert len(app.store.claim_feeds("other", clock.now, later, 10, force=True).feeds) == 1


async def test_a_failed_claim_leaves_no_host_leased(
    httpserver: HTTPServer, start_app: Callable[..., Any], clock: Clock
) -> None:
    # The second claim fails while the first feed is in flight: once that feed is done, its
    # host must be given back, although no claim comes to carry the release.
    httpserver.expect_request("/a").respond_with_data(GERMAN)
    httpserver.expect_request("/b").respond_with_data(GERMAN)
    feeds = {"a": httpserver.url_for("/a"), "b": httpserver.url_for("/b")}
    async with start_app(feeds, concurrency=1) as app:
        claim_feeds, calls = app.store.claim_feeds, []

        def failing(*args: Any, **kwargs: Any) -> Any:
            calls.append(args)
            if len(calls) == 2:
                raise sa.exc.OperationalError("claim", {}, Exception("the database went away"))
            return claim_feeds(*args, **kwargs)

        app.store.claim_feeds = failing  # type: ignore[method-assign]
        with pytest.raises(sa.exc.OperationalError):
            await poll_due(app)
        later = clock.now + timedelta(minutes=10)
        taken = claim_feeds("other", clock.now, later, 10, force=True).feeds
    assert sorted(f.name for f in taken) == ["a", "b"]


def leased_hosts(app: App) -> list[tuple[str | None]]:
    with app.store.engine.connect() as connection:
        return [tuple(row) for row in connection.execute(sa.text("SELECT lease_owner FROM hosts"))]


def hold_requests(server: HTTPServer, path: str) -> tuple[threading.Event, threading.Event]:
    """(fetching, release): requests to `path` set `fetching`, then wait for `release`."""
    fetching, release = threading.Event(), threading.Event()

    def held(request: Request) -> Response:
        fetching.set()
        release.wait(10)
        return Response(GERMAN, content_type="application/rss+xml")

    server.expect_request(path).respond_with_handler(held)
    return fetching, release


async def cancel_cycle_once(app: App, started: threading.Event) -> None:
    """Run a cycle, cancel it (as shutdown does) once `started` is set, and let it end."""
    cycle = asyncio.create_task(poll_due(app))
    while not started.is_set():
        await asyncio.sleep(0.01)
    cycle.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cycle


async def test_a_cancelled_cycle_gives_back_the_claim_it_was_waiting_for(
    httpserver: HTTPServer, start_app: Callable[..., Any], clock: Clock
) -> None:
    # Shutdown cancels a cycle while the writer thread runs its claim: the claim commits
    # anyway, and its feed must not wait, leased to nobody polling it, for the lease to end.
    httpserver.expect_request("/a").respond_with_data(GERMAN)
    async with start_app({"a": httpserver.url_for("/a")}) as app:
        claim_feeds, claiming, claimed = app.store.claim_feeds, threading.Event(), threading.Event()

        def slow(*args: Any, **kwargs: Any) -> Any:
            claiming.set()
            time.sleep(0.5)
            try:
                return claim_feeds(*args, **kwargs)
            finally:
                claimed.set()

        app.store.claim_feeds = slow  # type: ignore[method-assign]
        await cancel_cycle_once(app, claiming)
        assert await asyncio.to_thread(claimed.wait, 10)
        later = clock.now + timedelta(minutes=10)
        taken = claim_feeds("other", clock.now, later, 10, force=True).feeds
    assert [f.name for f in taken] == ["a"]
    assert not httpserver.log  # it was never polled


async def test_a_cancelled_cycle_stops_its_polls_and_gives_back_their_hosts(
    httpserver: HTTPServer, start_app: Callable[..., Any]
) -> None:
    fetching, release = hold_requests(httpserver, "/a")
    try:
        async with start_app({"a": httpserver.url_for("/a")}) as app:
            await cancel_cycle_once(app, fetching)
            assert leased_hosts(app) == [(None,)]
    finally:
        release.set()


def lease_ends(app: App) -> list[datetime | None]:
    """When the leases of the (only) feed and host end, as stored."""
    with app.store.engine.connect() as connection:
        return [
            connection.execute(sa.select(table.c.lease_expires_at)).scalar_one()
            for table in (schema.feeds, schema.hosts)
        ]


async def test_a_poll_longer_than_its_lease_keeps_its_feed_and_host(
    httpserver: HTTPServer, start_app: Callable[..., Any], clock: Clock
) -> None:
    # A slow host (or a long queue at it) must not let a second worker take a feed whose
    # poll is still running: the cycle renews its leases every third of the lease.
    fetching, release = hold_requests(httpserver, "/slow")
    try:
        async with start_app({"slow": httpserver.url_for("/slow")}, lease=0.3) as app:
            cycle = asyncio.create_task(poll_due(app))
            assert await asyncio.to_thread(fetching.wait, 10)
            clock.advance(timedelta(seconds=5))  # long past the lease the claim wrote
            await asyncio.sleep(0.5)  # renewals every 0.1 s, from the clock's new time
            assert all(end is not None and end > clock.now for end in lease_ends(app))
            later = clock.now + timedelta(minutes=10)
            assert app.store.claim_feeds("other", clock.now, later, 10, force=True).feeds == []
            release.set()
            report = await cycle
        assert [p.feed for p in report.polls] == ["slow"] and not report.failed
    finally:
        release.set()


async def test_a_lease_renewal_gives_back_hosts_gone_idle_while_no_claim_comes(
    start_app: Callable[..., Any],
) -> None:
    # Claims of 2 feeds, each after a poll ends while 2 or fewer are in flight; 2
    # connections. a, c, d answer at once, b and e are held. a's end brings the claim of c
    # and d, c's that of e and f (with c's host released); d then ends with 3 in flight, so
    # no claim comes to release d's host, and b and e hold both connections until the test
    # lets them go. Only the lease renewal (every 0.2 s) can give d's host back meanwhile.
    release = threading.Event()
    fast = {"127.0.0.2", "127.0.0.4", "127.0.0.5"}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.server.server_address[0] not in fast:
                release.wait(10)
            self.send_response(200)
            self.send_header("Content-Length", str(len(GERMAN)))
            self.end_headers()
            self.wfile.write(GERMAN)

        def log_message(self, *args: Any) -> None:
            pass

    servers = [ThreadingHTTPServer((f"127.0.0.{n}", 0), Handler) for n in range(2, 9)]
    for server in servers:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    feeds = {
        name: "http://{}:{}/feed".format(*server.server_address)
        for name, server in zip("abcdefg", servers, strict=True)
    }
    try:
        async with start_app(feeds, concurrency=2, lease=0.6, timeout=30) as app:
            cycle = asyncio.create_task(poll_due(app))

            async def d_polled() -> None:
                while (state := app.store.feed_state("d")) is None or not state.last_polled_at:
                    await asyncio.sleep(0.02)

            await asyncio.wait_for(d_polled(), 20)
            await asyncio.sleep(0.5)
            with app.store.engine.connect() as connection:
                hosts = schema.hosts.c
                owners = dict(connection.execute(sa.select(hosts.host, hosts.lease_owner)).all())
            release.set()
            report = await cycle
        assert owners["127.0.0.5"] is None  # d's host: given back, though no claim came
        assert owners["127.0.0.3"] is not None and owners["127.0.0.6"] is not None  # b, e
        assert sorted(p.feed for p in report.polls) == list("abcdefg")
    finally:
        release.set()
        for server in servers:
            server.shutdown()
            server.server_close()


async def test_server_errors_back_off_turn_broken_and_are_logged_once(
    httpserver: HTTPServer,
    start_app: Callable[..., Any],
    clock: Clock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    httpserver.expect_request("/down").respond_with_data("oops", 500)
    caplog.set_level(logging.WARNING, logger="monitor.poller")
    async with start_app({"down": httpserver.url_for("/down")}, max_interval="2h") as app:
        state = await poll(app, "down")
        assert state.status == FeedStatus.DEGRADED and state.consecutive_failures == 1
        assert between(state.next_poll_at, timedelta(seconds=60), timedelta(minutes=15), clock.now)
        for _ in range(12):
            clock.advance(3 * HOUR)
            state = await poll(app, "down")
            assert between(state.next_poll_at, timedelta(seconds=60), 2 * HOUR, clock.now)
    assert state.status == FeedStatus.BROKEN and state.consecutive_failures == 13
    assert state.error_since == START and "HTTP 500" in (state.last_error or "")
    messages = [r.getMessage() for r in caplog.records]
    assert sum("is degraded" in m for m in messages) == 1
    assert sum("is broken" in m for m in messages) == 1


async def test_recovery_returns_to_ok(
    httpserver: HTTPServer, start_app: Callable[..., Any], clock: Clock
) -> None:
    answers = [Response("no", status=500), Response(GERMAN)]
    httpserver.expect_request("/flaky").respond_with_handler(lambda _r: answers.pop(0))
    async with start_app({"flaky": httpserver.url_for("/flaky")}) as app:
        assert (await poll(app, "flaky")).status == FeedStatus.DEGRADED
        clock.advance(HOUR)
        state = await poll(app, "flaky")
    assert state.status == FeedStatus.OK and state.consecutive_failures == 0
    assert state.last_error is None and state.items_total == 3


def _tcp_server(answer: Callable[[socket.socket], None]) -> tuple[int, threading.Event]:
    """A TCP server on 127.0.0.1 that reads each request and lets `answer` reply (and
    close); stopped by setting the event returned with its port."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    stop = threading.Event()

    def serve() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                continue
            connection.recv(4096)
            answer(connection)
            connection.close()
        listener.close()

    threading.Thread(target=serve, daemon=True).start()
    return listener.getsockname()[1], stop


def _reset_server() -> tuple[int, threading.Event]:
    """A TCP server that answers every connection with a reset (RST)."""

    def reset(connection: socket.socket) -> None:
        connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    return _tcp_server(reset)


def _trickle(_request: Request) -> Response:
    def body() -> Iterator[bytes]:
        yield b"<?xml version='1.0'?><rss version='2.0'><channel>"
        for _ in range(50):
            time.sleep(0.1)
            yield b" "

    return Response(body(), headers={"Content-Type": "application/xml"})


def _huge(_request: Request) -> Response:
    chunk = b"<!-- padding -->" * 4096
    return Response(chunk for _ in range(50 * 2**20 // len(chunk)))


ENTITY_BOMB = (
    '<?xml version="1.0"?><!DOCTYPE rss [<!ENTITY big "' + "A" * 10_000 + '">]>'
    "<rss version='2.0'><channel><title>t</title><item><title>x</title><description>"
    + "&big;" * 20_000
    + "</description></item></channel></rss>"
).encode()


@pytest.mark.parametrize(
    ("path", "respond", "error"),
    [
        ("/loop", lambda s: s.respond_with_data("", 302, {"Location": "/loop"}), "redirect"),
        ("/trickle", lambda s: s.respond_with_handler(_trickle), "timed out"),
        ("/huge", lambda s: s.respond_with_handler(_huge), "cap"),
        (
            "/bomb",
            lambda s: s.respond_with_data(
                gzip.compress(b"\0" * (12 * 2**20)), headers={"Content-Encoding": "gzip"}
            ),
            "cap",
        ),
        (
            "/html",
            lambda s: s.respond_with_data(
                "<!DOCTYPE html><html><body>Welcome</body></html>", content_type="text/html"
            ),
            "HTML page",
        ),
    ],
)
async def test_hostile_servers_degrade_the_feed_with_a_reason(
    httpserver: HTTPServer,
    start_app: Callable[..., Any],
    clock: Clock,
    path: str,
    respond: Callable[[Any], None],
    error: str,
) -> None:
    respond(httpserver.expect_request(path))
    async with start_app({"bad": httpserver.url_for(path)}, max_body="10 MiB") as app:
        state = await poll(app, "bad")
    assert state.status == FeedStatus.DEGRADED and error in (state.last_error or "")
    assert between(state.next_poll_at, timedelta(seconds=60), timedelta(minutes=15), clock.now)


async def test_connection_reset_degrades_the_feed(
    start_app: Callable[..., Any], clock: Clock
) -> None:
    port, stop = _reset_server()
    try:
        async with start_app({"reset": f"http://127.0.0.1:{port}/feed"}) as app:
            state = await poll(app, "reset")
    finally:
        stop.set()
    assert state.status == FeedStatus.DEGRADED and state.last_error
    assert between(state.next_poll_at, timedelta(seconds=60), timedelta(minutes=15), clock.now)


def _babbling_server(payload: bytes) -> tuple[int, threading.Event]:
    """A TCP server that answers every request with a 10-byte response and then `payload`
    in the same write: aiohttp's error about it quotes the payload (some 64 KB of it)."""
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n"
    return _tcp_server(lambda connection: connection.sendall(head + payload))


async def test_a_servers_text_in_an_error_is_cut_to_one_short_line(
    start_app: Callable[..., Any],
) -> None:
    port, stop = _babbling_server(b"BUY CHEAP PILLS\tat http://spam.example/\x1b[0m " * 2000)
    try:
        async with start_app({"spam": f"http://127.0.0.1:{port}/feed"}) as app:
            report = await poll_due(app)
            state = app.store.feed_state("spam")
    finally:
        stop.set()
    assert state is not None and state.status == FeedStatus.DEGRADED
    error = state.last_error or ""
    assert "PILLS" in error  # still says what came back ...
    assert len(error) <= 300 and "\n" not in error and "\r" not in error  # ... in a line
    assert report.polls[0].error == error


async def test_entity_bomb_is_defused_and_ingested(
    httpserver: HTTPServer, start_app: Callable[..., Any]
) -> None:
    httpserver.expect_request("/entities").respond_with_data(ENTITY_BOMB)
    async with start_app({"ent": httpserver.url_for("/entities")}, parse_timeout=10) as app:
        state = await poll(app, "ent")
    assert state.status == FeedStatus.OK and state.items_total == 1


async def test_wrong_declared_charset_is_still_read(
    httpserver: HTTPServer, start_app: Callable[..., Any], sqlite_url: str
) -> None:
    document = rss("Wetter", [("schnee", "Schnee in München", "Kälter"), ("b", "Übel", "Öde")])
    body = document.decode().encode("latin-1")  # the XML declaration says UTF-8: it lies
    httpserver.expect_request("/latin").respond_with_data(
        body, content_type="application/rss+xml; charset=utf-8"
    )
    async with start_app({"latin": httpserver.url_for("/latin")}) as app:
        state = await poll(app, "latin")
    assert state.status == FeedStatus.OK and state.items_total == 2
    engine = sa.create_engine(sqlite_url)
    with engine.connect() as connection:
        titles = [row[0] for row in connection.execute(sa.text("SELECT title FROM items"))]
    engine.dispose()
    assert any("München" in title for title in titles), titles


# ----------------------------------------------------------------------------- health and rhythm


async def test_a_quiet_feed_turns_stale_once(
    httpserver: HTTPServer,
    start_app: Callable[..., Any],
    clock: Clock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    httpserver.expect_request("/quiet").respond_with_data(GERMAN)  # items a minute apart
    caplog.set_level(logging.WARNING, logger="monitor.poller")
    async with start_app({"quiet": httpserver.url_for("/quiet")}) as app:
        fresh = await poll(app, "quiet")
        assert fresh.status == FeedStatus.OK and fresh.item_gap == 60
        assert fresh.items_per_day == 1440
        for _ in range(3):
            clock.advance(timedelta(days=1))
            state = await poll(app, "quiet")
    assert state.status == FeedStatus.STALE
    assert sum("stale" in r.getMessage() for r in caplog.records) == 1


async def test_a_server_asking_for_less_is_honoured_also_after_a_304(
    httpserver: HTTPServer, start_app: Callable[..., Any], clock: Clock
) -> None:
    """A feed's <ttl> is kept: a poll answered 304 (nothing parsed) still follows it. A
    cache lifetime longer than the configured interval does not stretch it."""
    with_ttl = GERMAN.replace(b"<language>de</language>", b"<ttl>10</ttl>")
    httpserver.expect_request("/ttl").respond_with_handler(
        lambda request: (
            Response(status=304)
            if request.headers.get("If-None-Match") == '"v1"'
            else Response(with_ttl, headers={"ETag": '"v1"'})
        )
    )
    httpserver.expect_request("/cached").respond_with_data(
        GERMAN, headers={"Cache-Control": "public, max-age=10800"}
    )
    feeds = {"ttl": httpserver.url_for("/ttl"), "cached": httpserver.url_for("/cached")}
    async with start_app(feeds) as app:
        await poll_due(app)
        clock.advance(HOUR)
        ttl = await poll(app, "ttl")
        cached = app.store.feed_state("cached")
    assert ttl.unchanged_streak == 1 and ttl.interval == 600
    assert ttl.poll_reason == "every 10m (server asks 10m: ttl)"
    assert between(ttl.next_poll_at, 0.85 * timedelta(minutes=10), timedelta(minutes=10), clock.now)
    assert cached is not None and cached.interval == 900


# ----------------------------------------------------------------------------- leases


async def test_two_workers_never_poll_a_feed_twice(
    httpserver: HTTPServer, start_app: Callable[..., Any], database_url: str
) -> None:
    httpserver.expect_request("/shared").respond_with_data(GERMAN)
    feeds = {f"f{n}": httpserver.url_for(f"/shared?n={n}") for n in range(30)}
    async with start_app(feeds, database=database_url) as app:
        first, second = await _together(
            poll_due(app, owner="worker-a"), poll_due(app, owner="worker-b")
        )
    polled = [p.feed for p in first.polls + second.polls]
    assert sorted(polled) == sorted(feeds) and len(requests_to(httpserver, "/shared")) == 30


async def test_a_cycle_claims_two_windows_once_one_has_room(
    httpserver: HTTPServer, start_app: Callable[..., Any]
) -> None:
    """Claims cost round trips beyond their rows on PostgreSQL: each takes twice the
    concurrency, and the next comes only once no more than the concurrency is in flight."""
    httpserver.expect_request("/shared").respond_with_data(GERMAN)
    feeds = {f"f{n}": httpserver.url_for(f"/shared?n={n}") for n in range(9)}
    async with start_app(feeds, concurrency=2) as app:
        claim_feeds, claims = app.store.claim_feeds, []

        def counted(*args: Any, **kwargs: Any) -> Any:
            claim = claim_feeds(*args, **kwargs)
            claims.append((args[3], len(claim.feeds)))
            return claim

        app.store.claim_feeds = counted  # type: ignore[method-assign]
        report = await poll_due(app, force=True)
    assert len(report.polls) == 9 and report.failed == 0
    assert {limit for limit, _ in claims} == {4}
    assert [taken for _, taken in claims][:3] == [4, 4, 1]


async def _together(*jobs: Any) -> list[Any]:
    import asyncio

    return list(await asyncio.gather(*jobs))


async def test_a_dead_workers_leases_expire(
    httpserver: HTTPServer, start_app: Callable[..., Any], database_url: str, clock: Clock
) -> None:
    httpserver.expect_request("/f").respond_with_data(GERMAN)
    async with start_app({"f": httpserver.url_for("/f")}, database=database_url) as app:
        lease_until = clock.now + timedelta(minutes=10)
        taken = app.store.claim_feeds("dead-worker", clock.now, lease_until, 10).feeds
        assert [s.name for s in taken] == ["f"]
        assert (await poll_due(app, owner="live")).polls == ()  # the lease still holds
        clock.advance(timedelta(minutes=11))
        report = await poll_due(app, owner="live")
    assert [p.feed for p in report.polls] == ["f"] and report.failed == 0


async def test_a_feed_only_another_workers_config_polls_is_left_to_it(
    httpserver: HTTPServer,
    start_app: Callable[..., Any],
    database_url: str,
    clock: Clock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    httpserver.expect_request("/a").respond_with_data(GERMAN)
    async with start_app({"a": httpserver.url_for("/a")}, database=database_url) as app:
        # Another worker, started with one more feed (of another host), synced last.
        urls = {"a": httpserver.url_for("/a"), "theirs": "http://127.0.0.2:9/theirs"}
        app.store.sync_feeds(urls, clock.now)
        report = await poll_due(app)
        assert [p.feed for p in report.polls] == ["a"] and report.failed == 0
        assert "theirs are polled by another worker's configuration" in caplog.text
        caplog.clear()
        await poll_due(app, force=True)  # claimed again: said once is enough
        assert "another worker's configuration" not in caplog.text
        # Given back at once, with its host: the other worker takes it now, not at expiry.
        later = clock.now + timedelta(minutes=10)
        taken = app.store.claim_feeds("other", clock.now, later, 10).feeds
    assert [f.name for f in taken] == ["theirs"]


async def test_a_claim_of_only_unknown_feeds_does_not_end_the_cycle(
    httpserver: HTTPServer, start_app: Callable[..., Any], database_url: str, clock: Clock
) -> None:
    httpserver.expect_request("/a").respond_with_data(GERMAN)
    url = httpserver.url_for("/a")
    async with start_app({"a": url}, database=database_url, concurrency=2) as app:
        # Another worker's config has three more feeds, due before "a": the first claims
        # take only those.
        theirs = {f"theirs-{n}": f"http://127.0.0.{n + 2}:9/f" for n in range(3)}
        app.store.sync_feeds({"a": url, **theirs}, clock.now - HOUR)
        report = await poll_due(app)
    assert [p.feed for p in report.polls] == ["a"]


async def test_a_host_leased_by_another_worker_is_left_alone(
    httpserver: HTTPServer, start_app: Callable[..., Any], database_url: str, clock: Clock
) -> None:
    httpserver.expect_request("/a").respond_with_data(GERMAN)
    feeds = {"a": httpserver.url_for("/a"), "b": httpserver.url_for("/a?b")}
    async with start_app(feeds, database=database_url) as app:
        later = clock.now + timedelta(minutes=10)
        assert len(app.store.claim_feeds("one", clock.now, later, 1).feeds) == 1
        assert app.store.claim_feeds("two", clock.now, later, 10).feeds == []  # same host: busy
        assert len(app.store.claim_feeds("one", clock.now, later, 10).feeds) == 1  # its own host


# ----------------------------------------------------------------------------- the parse pool


def _hang() -> None:
    time.sleep(60)


def _hog() -> bytes:
    return b"x" * (2 * 2**30)


def _answer() -> int:
    return 42


def _nap() -> str:
    time.sleep(0.6)
    return "done"


@pytest.fixture
async def pool() -> AsyncIterator[ParsePool]:
    pool = ParsePool(workers=1, timeout=5, memory=512 * 2**20)  # room for a cold start
    yield pool
    pool.close()


async def test_a_hung_parse_is_killed_and_the_pool_recovers(pool: ParsePool) -> None:
    with pytest.raises(ParseError, match="longer than 5 s"):
        await pool.run(_hang)
    assert await pool.run(_answer) == 42


async def test_the_deadline_times_each_parse_not_its_wait_in_the_queue() -> None:
    pool = ParsePool(workers=1, timeout=2, memory=512 * 2**20)
    nap = functools.partial(time.sleep, 1.2)  # a builtin: nothing to import in the process
    try:
        await pool.run(_answer)  # the process is up
        # Three 1.2 s parses on one process: the last ends 3.6 s after it was handed over,
        # past the 2 s deadline, and well within the daemon's backstop (9 s) on a busy machine.
        results = await asyncio.gather(pool.run(nap), pool.run(nap), pool.run(nap))
        assert results == [None] * 3
    finally:
        pool.close()


async def test_a_parse_deaf_to_its_deadline_is_killed_by_the_daemons() -> None:
    pool = ParsePool(workers=1, timeout=0.5, memory=512 * 2**20)
    # Builtins, not this module's functions: a worker unpickling one of those imports this
    # module first (the app, SQLAlchemy, aiohttp), which on a busy machine took longer than
    # the daemon's backstop of a 0.5 s deadline (2.5 s) before the job even began.
    answer = functools.partial(eval, "42")
    deaf = functools.partial(
        exec,
        "import signal, time; signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM}); "
        "time.sleep(60)",
    )
    try:
        assert await pool.run(answer) == 42
        with pytest.raises(ParseError, match=r"longer than 0\.5 s"):
            await pool.run(deaf)
        assert await pool.run(answer) == 42  # a new process
    finally:
        pool.close()


async def test_a_memory_hungry_parse_is_stopped_and_the_pool_recovers(pool: ParsePool) -> None:
    with pytest.raises(ParseError, match=r"memory|died"):
        await pool.run(_hog)
    assert await pool.run(_answer) == 42


async def test_a_running_app_collects_young_garbage_less_often_and_restores_it(
    start_app: Callable[..., Any],
) -> None:
    """A cycle keeps many items alive at once: at the interpreter's default (every 700 more
    objects allocated than freed) the collector ran 510 times in a cold cycle."""
    before = gc.get_threshold()
    async with start_app({"a": "http://127.0.0.1:9/never-polled.xml"}):
        assert gc.get_threshold() == (max(before[0], 10_000), *before[1:])
    assert gc.get_threshold() == before


async def test_the_parse_processes_start_with_the_pool_with_the_parser_loaded() -> None:
    """The first parses of a cycle find their processes running and feedparser imported:
    they neither wait for a process to start nor spend it importing."""
    before = {process.pid for process in multiprocessing.active_children()}
    pool = ParsePool(workers=2, timeout=5, memory=512 * 2**20)
    try:
        started = {process.pid for process in multiprocessing.active_children()} - before
        assert len(started) >= 2  # the fork server, if new, is not a child Process
        # Run by eval, in the worker as it is: no module of ours is imported to unpickle it.
        loaded = functools.partial(
            eval, "__import__('os').getpid(), 'feedparser' in __import__('sys').modules"
        )
        results = await asyncio.gather(*(pool.run(loaded) for _ in range(6)))
        assert {pid for pid, _ in results} <= started
        assert all(found for _, found in results)
    finally:
        manager = pool._pool._executor_manager_thread  # type: ignore[attr-defined]
        pool.close()
    # Its thread is done: none is left to race the interpreter's exit hook.
    assert manager is not None and not manager.is_alive()
    assert not any(
        process.is_alive()
        for process in multiprocessing.active_children()
        if process.pid in started
    )


# ----------------------------------------------------------------------------- monitor feeds


async def test_the_writer_gathers_feeds_parsed_close_together_into_one_round(
    start_app: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """While the parse processes are backlogged, a round waits for more feeds' items (a
    round's transactions cost the same for one feed as for sixteen); with no parse waiting,
    it stores what is there at once."""
    monkeypatch.setattr(poller, "_GATHER_SECONDS", 1.0)
    batches = [
        parse_feed(body, feed_name=name, url=f"https://{name}.example.org/", now=START).items
        for name, body in (("a", GERMAN), ("b", ENGLISH), ("c", rss("c", [("c1", "x", "y")])))
    ]
    async with start_app({"a": "http://127.0.0.1:9/never-polled.xml"}) as app:
        rounds: list[int] = []
        ingest_many = app.store.ingest_many

        def counted(parsed: list[Any], *args: Any, **kwargs: Any) -> Any:
            rounds.append(len(parsed))
            return ingest_many(parsed, *args, **kwargs)

        app.store.ingest_many = counted
        writer = _Writer(app)
        # One parse process, three jobs handed to it, a fourth waiting: a backlog.
        parsing = [asyncio.create_task(app.parse_pool.run(_nap)) for _ in range(4)]
        await asyncio.sleep(0)  # the parses have been handed over
        assert app.parse_pool.backlogged
        first = asyncio.create_task(writer.ingest(batches[0], START))
        await asyncio.sleep(0.2)
        assert writer.holding == 1 and writer.handed.is_set()  # out of the cycle's window
        second = asyncio.create_task(writer.ingest(batches[1], START))
        results = await asyncio.gather(first, second)
        assert rounds == [2]
        assert [len(r.new_items) for r in results] == [len(batches[0]), len(batches[1])]
        assert writer.holding == 0
        await asyncio.gather(*parsing)
        assert app.parse_pool.running == 0
        third = asyncio.create_task(writer.ingest(batches[2], START))
        await asyncio.sleep(0.2)
        fourth = asyncio.create_task(writer.ingest(batches[0], START))  # seen before: no new item
        results = await asyncio.gather(third, fourth)
        assert rounds == [2, 1, 1]
        assert [len(r.new_items) for r in results] == [1, 0]


async def test_the_writer_shares_a_round_among_poll_outcomes_arriving_while_it_waits(
    start_app: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With no feed's items to store (a warm cycle), a round of outcomes waits for more for
    as long as the last round took, not longer, and not at all once a claim is queued."""
    monkeypatch.setattr(poller, "_GATHER_OUTCOMES_SECONDS", 10.0)
    async with start_app({"a": "http://127.0.0.1:9/never-polled.xml"}) as app:
        rounds: list[int] = []
        finish_polls = app.store.finish_polls

        def counted(outcomes: Any, *args: Any) -> Any:
            rounds.append(len(outcomes))
            return finish_polls(outcomes, *args)

        app.store.finish_polls = counted
        writer = _Writer(app)
        values = FeedUpdate(last_error=None)
        writer.last_round = 0.5  # rounds are slow: share them
        first = asyncio.create_task(writer.finish("a", values))
        await asyncio.sleep(0.1)
        second = asyncio.create_task(writer.finish("a", values))
        await asyncio.gather(first, second)
        assert rounds == [2]
        writer.last_round = 0.0  # rounds are cheap: each outcome at once
        third = asyncio.create_task(writer.finish("a", values))
        await asyncio.sleep(0.1)
        fourth = asyncio.create_task(writer.finish("a", values))
        await asyncio.gather(third, fourth)
        assert rounds == [2, 1, 1]
        writer.last_round = 5.0
        began = time.monotonic()
        fifth = asyncio.create_task(writer.finish("a", values))
        await asyncio.sleep(0.05)
        assert await writer.call(lambda: 42) == 42  # a claim: the round runs now
        await fifth
        assert rounds == [2, 1, 1, 1]
        assert time.monotonic() - began < 2.5  # not the 5 s the round could have waited


async def test_on_postgresql_a_claim_does_not_wait_for_the_round_storing_items(
    start_app: Callable[..., Any], database_url: str
) -> None:
    """A claim that waited for the writer's round (50 ms and more on PostgreSQL) let the
    parse processes run dry; PostgreSQL takes it beside the round. SQLite's one write lock
    serializes them anyway: there it waits its turn."""
    items = parse_feed(GERMAN, feed_name="a", url="https://a.example.org/", now=START).items
    async with start_app({"a": "http://127.0.0.1:9/never-polled.xml"}, database_url) as app:
        storing, go_on = threading.Event(), threading.Event()
        ingest_many = app.store.ingest_many

        def held(*args: Any, **kwargs: Any) -> Any:
            storing.set()
            go_on.wait(10)
            return ingest_many(*args, **kwargs)

        app.store.ingest_many = held
        writer = _Writer(app)
        ingest = asyncio.create_task(writer.ingest(items, START))
        assert await asyncio.to_thread(storing.wait, 10)
        claim = asyncio.create_task(writer.call(lambda: 42))
        done, _ = await asyncio.wait({claim}, timeout=1.0)
        assert bool(done) is not app.store.is_sqlite
        go_on.set()
        assert await claim == 42
        assert len((await ingest).new_items) == len(items)


async def test_a_give_back_after_outcomes_waits_for_the_outcome_queued_before_it(
    start_app: Callable[..., Any], database_url: str
) -> None:
    """A poll cancelled after queueing its outcome gives its feed back: on PostgreSQL lease
    jobs have a writer of their own, but this one must follow that outcome, or the feed
    would be free for another worker while its outcome is still to be written."""
    async with start_app({"a": "http://127.0.0.1:9/never-polled.xml"}, database_url) as app:
        order: list[str] = []
        recording, go_on = threading.Event(), threading.Event()
        finish_polls = app.store.finish_polls

        def held(*args: Any) -> Any:
            recording.set()
            go_on.wait(10)
            order.append("outcome")
            return finish_polls(*args)

        app.store.finish_polls = held
        writer = _Writer(app)
        outcome = asyncio.create_task(writer.finish("a", FeedUpdate(last_error=None)))
        assert await asyncio.to_thread(recording.wait, 10)
        give_back = asyncio.create_task(
            writer.call(lambda: order.append("give back"), after_outcomes=True)
        )
        await asyncio.sleep(0.3)
        go_on.set()
        await asyncio.gather(outcome, give_back)
        assert order == ["outcome", "give back"]


async def test_feeds_command_shows_health_errors_and_rhythm(
    httpserver: HTTPServer,
    start_app: Callable[..., Any],
    write_config: Callable[..., Any],
    capsys: pytest.CaptureFixture[str],
) -> None:
    from monitor.cli import main

    httpserver.expect_request("/down").respond_with_data("oops", 500)
    httpserver.expect_request("/de").respond_with_data(GERMAN)
    httpserver.expect_request("/gone").respond_with_data("", 410)
    feeds = {
        "down": httpserver.url_for("/down"),
        "de": httpserver.url_for("/de"),
        "gone": httpserver.url_for("/gone"),
    }
    async with start_app(feeds) as app:
        await poll_due(app)
    path = write_config(
        {
            "feeds": [
                {"name": "down", "url": feeds["down"]},
                {"name": "de", "url": feeds["de"], "group": "news"},
                {"name": "off", "url": "http://127.0.0.1:9/x", "enabled": False},
                {"name": "gone", "url": feeds["gone"]},
            ],
            "watchlists": [{"name": "w", "terms": ["xAI"], "recipients": ["a@example.org"]}],
        }
    )
    assert main(["--config", str(path), "feeds"]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()[1:]}
    assert "degraded" in lines["down"] and "HTTP 500" in lines["down"]
    assert re.search(r"backing off after 1 failure +1 ", lines["down"])  # why; failures
    assert "ok" in lines["news/de"] and "1440.0" in lines["news/de"]  # items a minute apart
    assert "disabled" in lines["off"] and "never" in lines["off"]
    assert "switched off in the config" in lines["off"]
    assert lines["gone"].split()[1] == "gone" and "HTTP 410" in lines["gone"]
    assert "never (HTTP 410 Gone)" in lines["gone"]


def archive(count: int, newest: int) -> bytes:
    """An RSS archive of `count` items, newest first, about 200 bytes each."""
    start = datetime(2026, 12, 1, tzinfo=UTC)
    items = "".join(
        f"<item><title>Archive item {n}</title><guid>urn:item:{n}</guid>"
        f"<link>https://example.org/{n}</link>"
        f"<pubDate>{(start + timedelta(seconds=n)).strftime('%a, %d %b %Y %H:%M:%S')} GMT"
        f"</pubDate><description>What item {n} says.</description></item>\n"
        for n in range(newest, newest - count, -1)
    )
    head = '<?xml version="1.0"?><rss version="2.0"><channel><title>Archive</title>\n'
    return (head + items + "</channel></rss>\n").encode()


async def test_a_feed_of_100000_items_is_read_in_part_within_the_deadline_and_said_once(
    httpserver: HTTPServer,
    start_app: Callable[..., Any],
    sqlite_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """20 MB, 100,000 items: the parse ran past its deadline at every poll, nothing stored."""
    caplog.set_level(logging.INFO, logger="monitor.poller")
    documents = iter([archive(100_000, 100_000), archive(100_001, 100_001)])
    httpserver.expect_request("/archive").respond_with_handler(
        lambda _request: Response(next(documents), content_type="application/rss+xml")
    )
    feeds = {"archive": httpserver.url_for("/archive")}
    async with start_app(feeds, max_body="64 MiB", timeout=60, parse_timeout=20) as app:
        state = await poll(app, "archive")
        assert state.status == FeedStatus.OK, state.last_error
        assert state.items_total == 500  # polling.max_items
        state = await poll(app, "archive")  # one more item on top
        assert state.status == FeedStatus.OK, state.last_error
    engine = sa.create_engine(sqlite_url)
    with engine.connect() as connection:
        titles = {row[0] for row in connection.execute(sa.text("SELECT title FROM items"))}
    engine.dispose()
    assert {"Archive item 100001", "Archive item 100000", "Archive item 99501"} <= titles
    assert "Archive item 99500" not in titles
    said = [r.getMessage() for r in caplog.records if "polling.max_items" in r.getMessage()]
    assert len(said) == 1, said
    assert said[0].startswith("feed lists 100000 items in 2")  # 2x.x MB
    assert "the newest 500 were read, the 99500 older ones left out" in said[0]
