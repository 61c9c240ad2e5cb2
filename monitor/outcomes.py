"""What a poll's result means for its feed: the next poll, its health, its validators and
redirects, as a FeedUpdate for the store and a PollReport for the caller.

`poller.poll_feed` fetches and parses; these functions decide. Each health change is logged
once, when it happens (under the poller's log name, which users know).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from monitor import feeds as rules
from monitor.app import App
from monitor.config import FeedConfig
from monitor.errors import FetchError, ParseError
from monitor.fetch import FetchResult
from monitor.models import KEEP, FeedState, FeedStatus, FeedUpdate
from monitor.parse import ParsedFeed
from monitor.store import host_of

log = logging.getLogger("monitor.poller")


@dataclass(frozen=True, slots=True)
class PollReport:
    feed: str
    new_items: int = 0
    matches: int = 0
    backlog: int = 0  # of the new items, those older than `backlog`: stored, never alerted
    unchanged: bool = False
    error: str | None = None
    status: FeedStatus = FeedStatus.OK
    host_blocked_until: datetime | None = None  # left alone until then (429, or a timeout)
    fetch_seconds: float | None = None  # how long the HTTP exchange took, when it completed
    # Not asked: its host is blocked (429, or a timeout). Rescheduled to the block's end,
    # not a failure, and `unchanged` too (nothing was fetched, so nothing changed).
    deferred: bool = False


def unchanged(
    app: App, feed: FeedConfig, state: FeedState, result: FetchResult
) -> tuple[FeedUpdate, PollReport]:
    """304, or the same bytes as last time."""
    update = _success(app, feed, state, result, state.item_gap, state.ttl, new_items=0)
    update = replace(update, unchanged_streak=state.unchanged_streak + 1)
    status = update.status if update.status is not KEEP else state.status
    return update, PollReport(feed.name, unchanged=True, status=status)


def changed(
    app: App,
    feed: FeedConfig,
    state: FeedState,
    result: FetchResult,
    parsed: ParsedFeed,
    new_items: int,
) -> FeedUpdate:
    """A new document, parsed; `new_items` of its items were new."""
    gap = parsed.item_gap or state.item_gap
    update = _success(app, feed, state, result, gap, parsed.ttl, new_items)
    update = replace(update, item_gap=gap, unchanged_streak=0, ttl=parsed.ttl)
    if parsed.title:
        update = replace(update, title=parsed.title)
    if parsed.warning:
        log.debug("lenient parse", extra={"feed": feed.name, "detail": parsed.warning})
    if parsed.left_out:
        _log_left_out(app, feed, parsed, result)
    etag, modified = result.headers.get("etag"), result.headers.get("last-modified")
    if not state.ignore_validators and rules.lying_validators(
        state.etag, state.last_modified, etag, modified, changed=state.body_hash is not None
    ):
        log.warning(
            "server's validators lie (content changed, ETag/Last-Modified did not); "
            "polling this feed without them from now on",
            extra={"feed": feed.name, "url": state.url},
        )
        update = replace(update, ignore_validators=True)
    return update


def _log_left_out(app: App, feed: FeedConfig, parsed: ParsedFeed, result: FetchResult) -> None:
    """Once per feed (then at debug level): a feed of 100,000 items is read in part at
    every poll, and a line each time says nothing new."""
    first = feed.name not in app.long_feeds
    app.long_feeds.add(feed.name)
    log.log(
        logging.INFO if first else logging.DEBUG,
        "feed lists %d items in %.1f MB, more than polling.max_items (%d): the newest %d "
        "were read, the %d older ones left out (logged once)",
        len(parsed.items) + parsed.left_out,
        len(result.body or b"") / 1e6,
        app.config.polling.max_items,
        len(parsed.items),
        parsed.left_out,
        extra={"feed": feed.name},
    )


def _success(
    app: App,
    feed: FeedConfig,
    state: FeedState,
    result: FetchResult,
    item_gap: float | None,
    ttl: float | None,
    new_items: int,
) -> FeedUpdate:
    now = app.clock()
    wait = rules.poll_interval(_bounds(app, feed), item_gap, ttl, result.freshness(now))
    last_new = now if new_items else state.last_new_item_at
    status = rules.health_after_success(last_new, item_gap, now)
    _log_change(feed, state, status, "")
    update = FeedUpdate(
        status=status,
        last_polled_at=now,
        last_success_at=now,
        last_error=None,
        error_since=None,
        consecutive_failures=0,
        interval=wait.seconds,
        next_poll_at=now + timedelta(seconds=rules.jittered(wait.seconds)),
        poll_reason=wait.reason,
        etag=result.headers.get("etag") or state.etag,
        last_modified=result.headers.get("last-modified") or state.last_modified,
    )
    if new_items:  # the lease makes this worker the feed's only writer meanwhile
        update = replace(update, items_total=state.items_total + new_items, last_new_item_at=now)
    return _redirect(feed, state, result, update)


def _bounds(app: App, feed: FeedConfig) -> rules.Bounds:
    polling = app.config.polling
    return rules.Bounds(
        default=app.config.feed_interval(feed),
        minimum=polling.min_interval,
        fixed=feed.interval is not None,
    )


def _redirect(
    feed: FeedConfig, state: FeedState, result: FetchResult, update: FeedUpdate
) -> FeedUpdate:
    """A permanent redirect is counted, and adopted once seen often enough in a row."""
    seen, count = rules.adopt_redirect(
        state.url, state.redirect_url, state.redirect_count, result.permanent_redirect
    )
    if seen is None or count < rules.REDIRECT_SIGHTINGS:
        return replace(update, redirect_url=seen, redirect_count=count)
    log.warning(
        "feed moved permanently to %s (seen %d times); polling the new URL from now on",
        seen,
        count,
        extra={"feed": feed.name, "url": state.url},
    )
    return replace(update, url=seen, host=host_of(seen), redirect_url=None, redirect_count=0)


def deferred(feed: FeedConfig, state: FeedState, until: datetime) -> tuple[FeedUpdate, PollReport]:
    """The feed's host said 429, or let a request time out (to another of its feeds),
    while this one waited for its turn: nothing was sent, so its health and failure count
    stay as they are; it is due again when the block ends."""
    report = PollReport(
        feed.name, unchanged=True, status=state.status, host_blocked_until=until, deferred=True
    )
    return FeedUpdate(next_poll_at=until, poll_reason="its host asked to wait"), report


def failed(
    app: App, feed: FeedConfig, state: FeedState, error: FetchError | ParseError
) -> tuple[FeedUpdate, PollReport]:
    """A fetch or parse failed: backed off, or disabled for good on 410 Gone."""
    now = app.clock()
    status_code = getattr(error, "status", None)
    since = state.error_since or now
    failures = state.consecutive_failures + 1
    message = rules.error_text(str(error))  # parse errors quote the document too
    if status_code == 410:
        status = FeedStatus.DISABLED
        message = "HTTP 410 Gone: the feed was removed; change its URL to re-enable"
        next_poll: datetime | None = None
        why = "never (HTTP 410 Gone)"
    else:
        status = rules.health_after_failure(since, now)
        delay = _failure_delay(app, feed, state, failures, error)
        next_poll = now + timedelta(seconds=delay)
        why = rules.failure_reason(failures, getattr(error, "retry_after", None))
    update = FeedUpdate(
        status=status,
        last_polled_at=now,
        last_error=message,
        last_error_at=now,
        error_since=since,
        consecutive_failures=failures,
        next_poll_at=next_poll,
        poll_reason=why,
    )
    _log_change(feed, state, status, message)
    block = getattr(error, "host_blocked_until", None)  # the fetcher held off the host
    return update, PollReport(feed.name, error=message, status=status, host_blocked_until=block)


def _failure_delay(
    app: App, feed: FeedConfig, state: FeedState, failures: int, error: FetchError | ParseError
) -> float:
    waited = getattr(error, "retry_after", None)
    interval = state.interval or app.config.feed_interval(feed)
    return rules.failure_delay(interval, failures, app.config.polling.max_interval, waited)


def _log_change(feed: FeedConfig, state: FeedState, status: FeedStatus, error: str) -> None:
    """Log a health change once, when it happens, not on every poll."""
    if status == state.status or (state.status == FeedStatus.NEW and status == FeedStatus.OK):
        return
    extra = {"feed": feed.name, "url": state.url}
    if status == FeedStatus.OK:
        log.info("feed is ok again (was %s)", state.status.value, extra=extra)
    elif status == FeedStatus.STALE:
        log.warning("feed is stale: no new item for much longer than usual", extra=extra)
    else:
        log.warning("feed is %s: %s", status.value, error, extra=extra)
