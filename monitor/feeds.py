"""Feed health and poll timing: the rules, as pure functions of a feed's history. No I/O.

Health states (FeedStatus), as users see them in `monitor feeds` and digests:
    ok        polled fine, new items arrive about as often as they used to
    degraded  failing since less than BROKEN_AFTER; backing off, still probed
    stale     polled fine, but no new item for much longer than its usual rhythm
    broken    failing for longer than BROKEN_AFTER; still probed at the backoff cap
    disabled  gone (HTTP 410) or switched off in the config; never polled. Gone counts as
              failing in `monitor status` and systemd's STATUS= (status.py); switched off not
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timedelta

from monitor.models import FeedStatus

BROKEN_AFTER = timedelta(hours=24)
STALE_FACTOR = 8  # stale after this many usual gaps without a new item ...
STALE_AT_LEAST = timedelta(days=2)  # ... and never sooner than this
REDIRECT_SIGHTINGS = 3  # a permanent redirect is adopted when seen this many polls in a row
RETRY_AFTER_CAP = 24 * 3600.0
VERIFY_EVERY = 8  # every 8th poll of an unchanged feed goes without validators, to catch liars
BACKOFF_FLOOR = 60.0  # a failing feed is never retried sooner than this
JITTER = 0.1  # ±10 %, so feeds added together drift apart instead of firing in the same second
ERROR_TEXT_MAX = 300  # characters of an error kept as last_error (digests, status, logs)


@dataclass(frozen=True, slots=True)
class Bounds:
    """A feed's poll interval settings, seconds."""

    default: float
    minimum: float
    maximum: float
    fixed: bool = False  # the user set this feed's interval: no adapting


def poll_interval(
    bounds: Bounds, item_gap: float | None, ttl: float | None, freshness: float | None
) -> float:
    """Poll about twice per usual item gap; not sooner than the feed's ttl or the HTTP cache
    lifetime allow; always within [minimum, maximum]."""
    if bounds.fixed:
        return bounds.default
    wanted = item_gap / 2 if item_gap else bounds.default
    for hint in (ttl, freshness):
        if hint:
            wanted = max(wanted, hint)
    return min(max(wanted, bounds.minimum), bounds.maximum)


def backlog_cutoff(now: datetime, last_success_at: datetime | None, backlog: float) -> datetime:
    """Items dated before this are a feed's backlog, not news: they were older than `backlog`
    when monitor could first have read them. That is now on the feed's first poll, and its
    last successful poll after an outage, so what appeared meanwhile still alerts."""
    seen_from = min(now, last_success_at) if last_success_at else now
    return seen_from - timedelta(seconds=backlog)


def jittered(seconds: float, rng: random.Random | None = None) -> float:
    return seconds * (rng or random).uniform(1 - JITTER, 1 + JITTER)


def backoff(interval: float, failures: int, cap: float, rng: random.Random | None = None) -> float:
    """Exponential backoff with full jitter, capped: a failing feed is probed at least every
    `cap` seconds forever, never dropped."""
    ceiling = min(cap, interval * 2 ** min(failures - 1, 20))
    return max(BACKOFF_FLOOR, (rng or random).uniform(0, ceiling))


def retry_after(seconds: float) -> float:
    """A server's Retry-After, honoured but capped so a typo cannot silence a feed for years."""
    return min(max(seconds, 1.0), RETRY_AFTER_CAP)


def failure_delay(
    interval: float,
    failures: int,
    cap: float,
    waited: float | None,
    rng: random.Random | None = None,
) -> float:
    """Seconds until a failed feed is asked again. A Retry-After is a lower bound, never a
    licence to come back sooner than BACKOFF_FLOOR (Retry-After: 0, or a date in the past,
    retried every tick forever), nor, once the feed keeps failing, sooner than its backoff.
    The first failure's Retry-After is honoured as given: the server named the moment."""
    if waited is None:
        return backoff(interval, failures, cap, rng)
    asked = max(retry_after(waited), BACKOFF_FLOOR)
    if failures <= 1:
        return asked
    return max(asked, backoff(interval, failures, cap, rng))


def error_text(message: str) -> str:
    """An error as it is stored and shown (the digests' health section, `monitor feeds`,
    the logs): one line of printable characters, at most ERROR_TEXT_MAX of them. Error
    messages quote what the server sent (aiohttp's parse errors some 64 KB of it,
    feedparser's its markup): a server must not get its own text into the digests."""
    line = "".join(char for char in " ".join(message.split()) if char.isprintable())
    if len(line) > ERROR_TEXT_MAX:
        line = line[: ERROR_TEXT_MAX - 1].rstrip() + "…"
    return line


def health_after_success(
    last_new_item_at: datetime | None, item_gap: float | None, now: datetime
) -> FeedStatus:
    return FeedStatus.STALE if is_stale(last_new_item_at, item_gap, now) else FeedStatus.OK


def is_stale(last_new_item_at: datetime | None, item_gap: float | None, now: datetime) -> bool:
    if last_new_item_at is None or not item_gap:
        return False  # no rhythm known yet: nothing to compare against
    quiet_for = now - last_new_item_at
    return quiet_for > max(STALE_AT_LEAST, timedelta(seconds=STALE_FACTOR * item_gap))


def health_after_failure(error_since: datetime, now: datetime) -> FeedStatus:
    return FeedStatus.BROKEN if now - error_since >= BROKEN_AFTER else FeedStatus.DEGRADED


def is_host_wide(status: int | None) -> bool:
    """429 Too Many Requests is the host telling this client to slow down everywhere; a 503
    (or 429-less Retry-After) speaks about the one resource asked for."""
    return status == 429


def lying_validators(
    sent_etag: str | None,
    sent_last_modified: str | None,
    etag: str | None,
    last_modified: str | None,
    changed: bool,
) -> bool:
    """The content changed but the validators the server gave for it did not: it would
    answer 304 to a changed document, so its validators must not be sent again."""
    if not changed:
        return False
    same_etag = bool(etag) and etag == sent_etag
    same_date = bool(last_modified) and last_modified == sent_last_modified and not etag
    return same_etag or same_date


def adopt_redirect(
    current_url: str, seen: str | None, count: int, target: str | None
) -> tuple[str | None, int]:
    """(redirect_url, sightings) after this poll; adopt when sightings reach REDIRECT_SIGHTINGS."""
    if not target or target == current_url:
        return None, 0
    return target, (count + 1 if target == seen else 1)
