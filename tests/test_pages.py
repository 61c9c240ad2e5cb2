"""Page politeness across workers (monitor/pages.py): two `Pages` over one database, as two
workers on PostgreSQL (or two processes in turn on one SQLite file), against a local site.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from monitor.config import FulltextConfig, PollingConfig
from monitor.errors import FetchError
from monitor.fetch import Fetcher
from monitor.pages import PageRefused, Pages
from monitor.store import open_store

PAGE = b"<html><body><p>An article.</p></body></html>"
START = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)


class Site:
    """The local site: when each request arrived (time.monotonic()), and what it answers."""

    def __init__(self, httpserver: HTTPServer) -> None:
        self.httpserver = httpserver
        self.arrived: list[tuple[str, float]] = []
        self.answers: list[Response] = []  # the next page answers, first first; then 200
        httpserver.expect_request("/robots.txt").respond_with_handler(self._robots)

    def _robots(self, request: Request) -> Response:
        self.arrived.append((request.path, time.monotonic()))
        return Response("User-agent: *\nDisallow: /private/\n", content_type="text/plain")

    def serve(self, *paths: str) -> None:
        for path in paths:
            self.httpserver.expect_request(path).respond_with_handler(self._page)

    def _page(self, request: Request) -> Response:
        self.arrived.append((request.path, time.monotonic()))
        if self.answers:
            return self.answers.pop(0)
        return Response(PAGE, content_type="text/html")

    def url(self, path: str) -> str:
        return self.httpserver.url_for(path)

    def requests_to(self, path: str) -> int:
        return [p for p, _ in self.arrived].count(path)


@pytest.fixture
def site(httpserver: HTTPServer) -> Site:
    return Site(httpserver)


@asynccontextmanager
async def workers(
    database_url: str, clock: Callable[[], datetime], count: int = 2, **fulltext: Any
) -> AsyncIterator[list[Pages]]:
    """`count` workers' Pages, each with its own store connection and HTTP client, taking
    turns in the store (on SQLite too: one process has a SQLite file, so a daemon keeps its
    turns in memory, but the store's turns are the same on both engines)."""
    settings = FulltextConfig.model_validate({"min_gap": 0.01, **fulltext})
    async with AsyncExitStack() as stack:
        found = []
        for _ in range(count):
            store = open_store(database_url)
            stack.callback(store.close)
            fetcher = await stack.enter_async_context(Fetcher(PollingConfig()))
            found.append(Pages(fetcher, settings, clock, store, shared=True))
        yield found


def utc_now() -> datetime:
    return datetime.now(UTC)


class Clock:
    """A clock the test moves."""

    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> datetime:
        return self.now


async def test_two_workers_never_start_requests_to_one_site_closer_than_min_gap(
    site: Site, database_url: str
) -> None:
    paths = [f"/a{n}" for n in range(6)]
    site.serve(*paths)
    async with workers(database_url, utc_now, min_gap=0.5) as (one, two):
        fetches = [
            (one if n % 2 else two).fetch(site.url(path), site.url("/feed"))
            for n, path in enumerate(paths)
        ]
        await asyncio.gather(*fetches)

    assert len(site.arrived) == 7  # the six pages and robots.txt, read once
    starts = sorted(at for _, at in site.arrived)
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    # Measured at the server, in this process: a request arrives a little after its turn,
    # by up to tens of milliseconds on a busy machine, so one gap can look that much shorter
    # (0.487-0.515 s under load here). Without the shared turn two workers start together.
    assert min(gaps) >= 0.4


async def test_a_back_off_met_by_one_worker_holds_the_other_back(
    site: Site, database_url: str
) -> None:
    site.serve("/a", "/b")
    site.answers.append(Response("slow down", status=429, headers={"Retry-After": "3600"}))
    clock = Clock()
    async with workers(database_url, clock) as (one, two):
        with pytest.raises(PageRefused) as first:
            await one.fetch(site.url("/a"), site.url("/feed"))
        with pytest.raises(PageRefused) as second:
            await two.fetch(site.url("/b"), site.url("/feed"))
        clock.now += timedelta(seconds=3600)
        answer = await two.fetch(site.url("/b"), site.url("/feed"))

    assert first.value.until == second.value.until == START + timedelta(seconds=3600)
    assert "HTTP 429" in str(second.value)
    assert answer.body == PAGE
    assert (site.requests_to("/a"), site.requests_to("/b")) == (1, 1)


async def test_robots_txt_read_by_one_worker_is_not_read_again_by_the_other(
    site: Site, database_url: str
) -> None:
    site.serve("/a", "/b", "/c", "/private/d")
    clock = Clock()
    async with workers(database_url, clock, robots_ttl="1h") as (one, two):
        await one.fetch(site.url("/a"), site.url("/feed"))
        clock.now += timedelta(minutes=59)
        await two.fetch(site.url("/b"), site.url("/feed"))
        with pytest.raises(PageRefused, match=r"robots\.txt"):  # the rules, not just a flag
            await two.fetch(site.url("/private/d"), site.url("/feed"))
        read_within_ttl = site.requests_to("/robots.txt")
        clock.now += timedelta(minutes=1)
        await two.fetch(site.url("/c"), site.url("/feed"))

    assert read_within_ttl == 1
    assert site.requests_to("/robots.txt") == 2  # once the ttl is over, read again
    assert site.requests_to("/private/d") == 0


async def test_403_in_a_row_doubles_the_wait_up_to_a_day_and_a_page_resets_it(
    site: Site, database_url: str
) -> None:
    site.serve("/a")
    clock = Clock()
    waits = []
    async with workers(database_url, clock) as (one, two):
        for n in range(7):  # the two workers take turns: the strikes are the site's
            if n != 4:
                site.answers.append(Response("no", status=403))
            else:  # honoured as given, and counted
                site.answers.append(Response("wait", status=503, headers={"Retry-After": "600"}))
            with pytest.raises(PageRefused) as refused:
                await (one, two)[n % 2].fetch(site.url("/a"), site.url("/feed"))
            assert refused.value.until is not None
            waits.append((refused.value.until - clock.now) / timedelta(hours=1))
            clock.now = refused.value.until
        await one.fetch(site.url("/a"), site.url("/feed"))  # a page: the strikes are over
        site.answers.append(Response("no", status=403))
        with pytest.raises(PageRefused) as again:
            await two.fetch(site.url("/a"), site.url("/feed"))

    assert waits == [1, 2, 4, 8, 600 / 3600, 24, 24]
    assert again.value.until == clock.now + timedelta(hours=1)
    assert "HTTP 403" in str(again.value) and "left alone until" in str(again.value)


async def test_a_page_error_that_is_no_back_off_leaves_the_strikes_alone(
    site: Site, database_url: str
) -> None:
    site.serve("/a")
    clock = Clock()
    async with workers(database_url, clock, count=1) as (one,):
        site.answers.append(Response("no", status=403))
        with pytest.raises(PageRefused):
            await one.fetch(site.url("/a"), site.url("/feed"))
        clock.now += timedelta(hours=1)
        site.answers.append(Response("gone", status=404))
        with pytest.raises(FetchError) as gone:
            await one.fetch(site.url("/a"), site.url("/feed"))
        site.answers.append(Response("no", status=403))
        with pytest.raises(PageRefused) as refused:
            await one.fetch(site.url("/a"), site.url("/feed"))

    assert not isinstance(gone.value, PageRefused)
    assert refused.value.until == clock.now + timedelta(hours=2)
