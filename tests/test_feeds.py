"""The feed rules: intervals, backoff, health, redirects, lying validators. Pure functions."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

from monitor.feeds import (
    BACKOFF_FLOOR,
    ERROR_TEXT_MAX,
    Bounds,
    adopt_redirect,
    backoff,
    error_text,
    failure_delay,
    health_after_failure,
    is_stale,
    lying_validators,
    poll_interval,
    retry_after,
)
from monitor.fetch import freshness_seconds
from monitor.models import FeedStatus
from monitor.parse import item_gap

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
BOUNDS = Bounds(default=900, minimum=300, maximum=21600)


def test_interval_follows_the_item_rhythm_within_bounds() -> None:
    assert poll_interval(BOUNDS, None, None, None) == 900
    assert poll_interval(BOUNDS, 3600, None, None) == 1800  # twice per item gap
    assert poll_interval(BOUNDS, 60, None, None) == 300  # never below the minimum
    assert poll_interval(BOUNDS, 7 * 86400, None, None) == 21600  # nor above the maximum


def test_ttl_and_cache_lifetime_are_lower_bounds() -> None:
    assert poll_interval(BOUNDS, 600, 3600, None) == 3600
    assert poll_interval(BOUNDS, 600, None, 7200) == 7200
    assert poll_interval(BOUNDS, 600, None, 10**9) == 21600


def test_a_fixed_interval_is_kept() -> None:
    fixed = Bounds(default=120, minimum=300, maximum=21600, fixed=True)
    assert poll_interval(fixed, 60, 3600, 7200) == 120


def test_backoff_is_full_jitter_capped_and_never_below_the_floor() -> None:
    rng = random.Random(7)
    delays = [backoff(900, failures, 21600, rng) for failures in range(1, 40) for _ in range(20)]
    assert min(delays) >= BACKOFF_FLOOR and max(delays) <= 21600
    late = [backoff(900, 30, 21600, rng) for _ in range(200)]
    assert max(late) > 15000  # keeps probing up to the cap, spread out
    assert retry_after(10**9) == 86400 and retry_after(120) == 120


def test_retry_after_is_a_lower_bound_never_below_the_floor_nor_the_backoff() -> None:
    rng = random.Random(3)
    assert failure_delay(900, 1, 21600, 0, rng) == BACKOFF_FLOOR  # "now": not every tick
    assert failure_delay(900, 1, 21600, 120, rng) == 120  # the first one as given
    assert failure_delay(900, 1, 21600, 10**9, rng) == 86400  # capped at a day
    # Failing again and again: Retry-After 0 backs off like any failure, never below it.
    repeated = [failure_delay(900, 8, 21600, 0, rng) for _ in range(200)]
    assert min(repeated) >= BACKOFF_FLOOR and max(repeated) > 10 * BACKOFF_FLOOR
    assert min(failure_delay(900, 8, 21600, 3600, rng) for _ in range(200)) >= 3600
    without = [failure_delay(900, 3, 21600, None, random.Random(5)) for _ in range(20)]
    assert without == [backoff(900, 3, 21600, random.Random(5)) for _ in range(20)]


def test_cache_headers() -> None:
    assert freshness_seconds({"cache-control": "public, max-age=600"}, NOW) == 600
    assert freshness_seconds({"cache-control": "no-cache"}, NOW) == 0
    expires = {"expires": "Sun, 29 Nov 2026 13:00:00 GMT"}
    assert freshness_seconds(expires, NOW) == 3600
    assert freshness_seconds({"expires": "garbage"}, NOW) is None


def test_health_rules() -> None:
    assert health_after_failure(NOW - timedelta(hours=2), NOW) == FeedStatus.DEGRADED
    assert health_after_failure(NOW - timedelta(hours=25), NOW) == FeedStatus.BROKEN
    assert not is_stale(None, 3600, NOW)
    assert not is_stale(NOW - timedelta(days=1), 3600, NOW)  # at least two days
    assert is_stale(NOW - timedelta(days=3), 3600, NOW)
    assert not is_stale(NOW - timedelta(days=30), 7 * 86400, NOW)  # a weekly feed


def test_redirect_sightings_and_lying_validators() -> None:
    assert adopt_redirect("http://a/x", None, 0, "http://b/x") == ("http://b/x", 1)
    assert adopt_redirect("http://a/x", "http://b/x", 1, "http://b/x") == ("http://b/x", 2)
    assert adopt_redirect("http://a/x", "http://b/x", 2, "http://c/x") == ("http://c/x", 1)
    assert adopt_redirect("http://a/x", "http://b/x", 2, None) == (None, 0)
    assert lying_validators('"v1"', None, '"v1"', None, changed=True)
    assert not lying_validators('"v1"', None, '"v2"', None, changed=True)
    assert not lying_validators('"v1"', None, '"v1"', None, changed=False)
    assert lying_validators(None, "Sat, 28 Nov", None, "Sat, 28 Nov", changed=True)


def test_error_texts_are_one_short_line() -> None:
    assert error_text("HTTP 503 Service Unavailable") == "HTTP 503 Service Unavailable"
    assert error_text("bad line:\n  b'<html>\r\n\x1b[31m\x00'") == "bad line: b'<html> [31m'"
    long = error_text("BUY CHEAP PILLS " * 5000)
    assert len(long) == ERROR_TEXT_MAX and long.endswith("…") and "\n" not in long


def test_item_gap_from_dates() -> None:
    stamps = [NOW - timedelta(hours=n) for n in range(5)]
    assert item_gap(stamps) == 3600
    assert item_gap([NOW]) is None and item_gap([NOW, NOW]) is None
