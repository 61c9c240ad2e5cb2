"""Polling: fetch -> parse -> store/dedupe -> match -> outbox, for each due feed.

`poll_feed` is the recipe for one feed; `poll_due` runs it for every due feed at once,
within the configured concurrency. A failing feed is recorded and reported, never dropped.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import random
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from monitor.app import App
from monitor.config import FeedConfig
from monitor.errors import FetchError, ParseError
from monitor.fetch import FetchResult
from monitor.models import FeedState, FeedStatus
from monitor.parse import ParsedFeed, parse_feed

log = logging.getLogger(__name__)
BROKEN_AFTER = timedelta(hours=24)


@dataclass(frozen=True, slots=True)
class PollReport:
    feed: str
    new_items: int = 0
    matches: int = 0
    unchanged: bool = False
    error: str | None = None


@dataclass(frozen=True, slots=True)
class CycleReport:
    polls: tuple[PollReport, ...]

    @property
    def new_items(self) -> int:
        return sum(p.new_items for p in self.polls)

    @property
    def matches(self) -> int:
        return sum(p.matches for p in self.polls)

    @property
    def failed(self) -> int:
        return sum(1 for p in self.polls if p.error)


async def poll_due(
    app: App, names: Iterable[str] | None = None, force: bool = False
) -> CycleReport:
    """Poll every due feed (or the named ones; force: whether due or not) concurrently."""
    configured = {feed.name: feed for feed in app.config.feeds}
    wanted = [n for n in (names or configured) if n in configured]
    now = app.clock()
    if force:
        states = [s for s in app.store.feed_states() if s.name in wanted]
    else:
        states = app.store.due_feeds(wanted, now)
    limit = asyncio.Semaphore(app.config.polling.concurrency)

    async def one(state: FeedState) -> PollReport:
        async with limit:
            return await poll_feed(app, configured[state.name], state)

    reports = await asyncio.gather(*(one(state) for state in states))
    return CycleReport(tuple(reports))


async def poll_feed(app: App, feed: FeedConfig, state: FeedState) -> PollReport:
    """Fetch one feed and ingest what is new; record success or failure on the feed."""
    try:
        result = await app.fetcher.fetch(state.url, state.etag, state.last_modified)
        body_hash = _hash(result.body)
        if result.not_modified or body_hash == state.body_hash:
            _record_success(app, feed, state, result, state.body_hash, None)
            return PollReport(feed.name, unchanged=True)
        parsed = await _parse(app, feed, result)
        ingested = app.store.ingest(parsed.items, app.matcher.match, app.recipients, app.clock())
        _record_success(app, feed, state, result, body_hash, parsed)
        if parsed.warning:
            log.debug("lenient parse", extra={"feed": feed.name, "detail": parsed.warning})
        return PollReport(feed.name, len(ingested.new_items), len(ingested.matches))
    except (FetchError, ParseError) as error:
        _record_failure(app, feed, state, str(error), getattr(error, "retry_after", None))
        return PollReport(feed.name, error=str(error))
    except Exception as error:  # a bug must not stop the other feeds
        log.exception("unexpected error while polling", extra={"feed": feed.name, "url": state.url})
        _record_failure(app, feed, state, f"internal error: {error!r}", None)
        return PollReport(feed.name, error=f"internal error: {error!r}")


async def _parse(app: App, feed: FeedConfig, result: FetchResult) -> ParsedFeed:
    assert result.body is not None
    job = functools.partial(
        parse_feed,
        result.body,
        feed_name=feed.name,
        url=result.url,
        headers=dict(result.headers),
        language=feed.language,
        now=app.clock(),
        max_items=app.config.polling.max_items,
    )
    return await asyncio.get_running_loop().run_in_executor(app.parse_pool, job)


def _hash(body: bytes | None) -> str | None:
    return hashlib.sha256(body).hexdigest() if body is not None else None


def _record_success(
    app: App,
    feed: FeedConfig,
    state: FeedState,
    result: FetchResult,
    body_hash: str | None,
    parsed: ParsedFeed | None,
) -> None:
    now = app.clock()
    if state.status not in (FeedStatus.OK, FeedStatus.NEW):
        log.warning("feed recovered", extra={"feed": feed.name, "url": state.url})
    values: dict[str, object] = {
        "status": FeedStatus.OK.value,
        "last_polled_at": now,
        "last_success_at": now,
        "last_error": None,
        "error_since": None,
        "consecutive_failures": 0,
        "next_poll_at": now + _jittered(app.config.feed_interval(feed)),
        "etag": result.headers.get("etag") or state.etag,
        "last_modified": result.headers.get("last-modified") or state.last_modified,
        "body_hash": body_hash,
    }
    if parsed is not None and parsed.title:
        values["title"] = parsed.title
    app.store.update_feed(feed.name, **values)


def _record_failure(
    app: App, feed: FeedConfig, state: FeedState, error: str, retry_after: float | None
) -> None:
    now = app.clock()
    failures = state.consecutive_failures + 1
    since = state.error_since or now
    status = FeedStatus.BROKEN if now - since >= BROKEN_AFTER else FeedStatus.DEGRADED
    if status != state.status:
        log.warning(
            "feed is %s: %s", status.value, error, extra={"feed": feed.name, "url": state.url}
        )
    delay = backoff(app.config.feed_interval(feed), failures, app.config.polling.max_interval)
    if retry_after is not None:
        delay = max(delay, min(retry_after, 86400.0))
    app.store.update_feed(
        feed.name,
        status=status.value,
        last_polled_at=now,
        last_error=error,
        error_since=since,
        consecutive_failures=failures,
        next_poll_at=now + timedelta(seconds=delay),
    )


def backoff(interval: float, failures: int, cap: float) -> float:
    """Exponential backoff with full jitter, never shorter than a minute, capped."""
    ceiling = min(cap, interval * 2 ** min(failures - 1, 16))
    return max(60.0, random.uniform(ceiling / 2, ceiling))


def _jittered(seconds: float) -> timedelta:
    """±10 %, so feeds added together do not stay in lockstep."""
    return timedelta(seconds=seconds * random.uniform(0.9, 1.1))


def next_due(states: Iterable[FeedState]) -> datetime | None:
    return min((s.next_poll_at for s in states if s.next_poll_at), default=None)
