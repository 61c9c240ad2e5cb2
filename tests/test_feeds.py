"""The feed rules: intervals, backoff, health, redirects, lying validators. Pure functions."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

from monitor.feeds import (
    BACKOFF_FLOOR,
    ERROR_TEXT_MAX,
    Bounds,
    Interval,
    adopt_redirect,
    backoff,
    error_text,
    failure_delay,
    failure_reason,
    health_after_failure,
    is_stale,
    jittered,
    lying_validators,
    poll_interval,
    retry_after,
    span,
)
from monitor.fetch import freshness_seconds
from monitor.models import FeedStatus
from monitor.parse import item_gap

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
BOUNDS = Bounds(default=900, minimum=300)


def wait(bounds: Bounds, gap: float | None, ttl: float | None, fresh: float | None) -> float:
    return poll_interval(bounds, gap, ttl, fresh).seconds


def test_the_configured_interval_is_the_longest_wait_busy_feeds_go_faster() -> None:
    assert poll_interval(BOUNDS, None, None, None) == Interval(900, "every 15m (configured)")
    assert poll_interval(BOUNDS, 1200, None, None) == Interval(600, "every 10m (busy feed)")
    assert wait(BOUNDS, 60, None, None) == 300  # never below the minimum
    assert wait(BOUNDS, 7 * 86400, None, None) == 900  # a quiet feed: not stretched


def test_a_server_asking_for_less_is_honoured_one_asking_for_more_is_shown() -> None:
    assert poll_interval(BOUNDS, None, 600, None) == Interval(
        600, "every 10m (server asks 10m: ttl)"
    )
    assert wait(BOUNDS, 120, 600, None) == 600  # a busy feed: not sooner than its server asks
    assert wait(BOUNDS, None, None, 60) == 300  # not below the minimum either
    assert poll_interval(BOUNDS, 600, None, 7200) == Interval(
        900, "every 15m (configured; server asks 2h: max-age)"
    )
    assert wait(BOUNDS, 600, 3600, 10**9) == 900
    assert wait(BOUNDS, None, None, 0) == 900  # no-cache asks nothing


def test_an_interval_below_the_minimum_is_kept_and_a_fixed_one_too() -> None:
    assert wait(Bounds(default=120, minimum=300), 60, None, None) == 120
    fixed = Bounds(default=7200, minimum=300, fixed=True)
    assert poll_interval(fixed, 60, 600, None) == Interval(7200, "every 2h (this feed's interval)")


def test_jitter_only_ever_polls_sooner() -> None:
    rng = random.Random(5)
    spread = [jittered(900, rng) for _ in range(500)]
    assert 810 <= min(spread) < 830 and 880 < max(spread) <= 900


def test_spans_read_as_written() -> None:
    assert [span(s) for s in (45, 600, 3600, 5400, 7 * 3600, 3 * 86400)] == [
        "45s",
        "10m",
        "1h",
        "1h30m",
        "7h",
        "3d",
    ]


def test_failures_say_why_they_wait() -> None:
    assert failure_reason(1, None) == "backing off after 1 failure"
    assert failure_reason(3, 120) == "backing off after 3 failures"
    assert failure_reason(1, 600) == "server asked to wait (Retry-After 10m)"


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
