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
JITTER = 0.1  # up to 10 % sooner, so feeds added together drift apart, not fire in one second
ERROR_TEXT_MAX = 300  # characters of an error kept as last_error (digests, status, logs)


@dataclass(frozen=True, slots=True)
class Bounds:
    """A feed's poll interval settings, seconds."""

    default: float  # the configured interval: the longest wait for a healthy feed
    minimum: float  # a busy feed, or a server asking for less, is polled no sooner than this
    fixed: bool = False  # the user set this feed's interval: no adapting


@dataclass(frozen=True, slots=True)
class Interval:
    """The wait until a healthy feed's next poll, and why, as `monitor feeds` shows it."""

    seconds: float
    reason: str  # "every 15m (configured)", "every 4m (busy feed)", ...


def poll_interval(
    bounds: Bounds, item_gap: float | None, ttl: float | None, freshness: float | None
) -> Interval:
    """Never longer than the configured interval: that is the user's promise of how late an
    alert may be. Sooner for a server that asks for less (its RSS <ttl>/sy:updatePeriod or
    HTTP cache lifetime), else for a busy feed (twice per usual gap between its items), but
    not below the minimum. A server asking for *more* is shown, not obeyed: a conditional
    request to an unchanged feed costs it a 304, and a server that must be spared says so
    with 429/503 Retry-After, which is always honoured. A feed's own interval is kept."""
    if bounds.fixed:
        return _every(bounds.default, "this feed's interval")
    ask = _server_ask(ttl, freshness)
    if ask is not None and ask[0] < bounds.default:
        seconds = min(max(ask[0], bounds.minimum), bounds.default)
        return _every(seconds, f"server asks {span(ask[0])}: {ask[1]}")
    busy = item_gap / 2 if item_gap else None
    if ask is None and busy is not None and busy < bounds.default:
        return _every(min(max(busy, bounds.minimum), bounds.default), "busy feed")
    asked = f"; server asks {span(ask[0])}: {ask[1]}" if ask is not None else ""
    return _every(bounds.default, f"configured{asked}")


def _server_ask(ttl: float | None, freshness: float | None) -> tuple[float, str] | None:
    """The longer of the feed's ttl and the HTTP cache lifetime, with its name."""
    asks = [(seconds, name) for seconds, name in ((ttl, "ttl"), (freshness, "max-age")) if seconds]
    return max(asks) if asks else None


def _every(seconds: float, reason: str) -> Interval:
    return Interval(seconds, f"every {span(seconds)} ({reason})")


def span(seconds: float) -> str:
    """A duration as a person writes it: 45s, 15m, 1h30m, 2d."""
    whole = round(seconds)
    if whole < 60:
        return f"{whole}s"
    minutes = round(seconds / 60)
    if minutes < 60:
        return f"{minutes}m"
    hours, rest = divmod(minutes, 60)
    if hours < 48:
        return f"{hours}h{rest}m" if rest else f"{hours}h"
    return f"{round(hours / 24)}d"


def backlog_cutoff(now: datetime, last_success_at: datetime | None, backlog: float) -> datetime:
    """Items dated before this are a feed's backlog, not news: they were older than `backlog`
    when monitor could first have read them. That is now on the feed's first poll, and its
    last successful poll after an outage, so what appeared meanwhile still alerts."""
    seen_from = min(now, last_success_at) if last_success_at else now
    return seen_from - timedelta(seconds=backlog)


def jittered(seconds: float, rng: random.Random | None = None) -> float:
    """Up to JITTER sooner, never later: the interval is a longest wait."""
    return seconds * (rng or random).uniform(1 - JITTER, 1)


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


def failure_reason(failures: int, waited: float | None) -> str:
    """Why a failed feed's next poll is when it is (see failure_delay)."""
    if waited is not None and failures <= 1:
        return f"server asked to wait (Retry-After {span(retry_after(waited))})"
    return f"backing off after {failures} failure{'s' if failures != 1 else ''}"


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
