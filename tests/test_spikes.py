"""The statistics behind spike and silence alerts (monitor/spikes.py): pure, time injected."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from monitor.config import Config
from monitor.schedules import parse_quiet_hours
from monitor.spike_alerts import quiet_end, rising_words
from monitor.spikes import (
    DAY,
    PRESETS,
    History,
    Sensitivity,
    silence,
    sparkline,
    spike,
    trend,
)

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)  # a Wednesday
BALANCED = PRESETS[Sensitivity.BALANCED]


def days(counts: list[int]) -> dict[date, int]:
    """counts[-1] is yesterday's."""
    return {NOW.date() - (len(counts) - k) * DAY: c for k, c in enumerate(counts)}


def history(counts: list[int], window: int, **more: object) -> History:
    first = NOW - len(counts) * DAY
    return History("Grok", NOW, window, days(counts), first, **more)  # type: ignore[arg-type]


def test_an_earlier_spike_does_not_hide_the_next() -> None:
    steady = [10, 11, 9, 10, 12, 10, 9, 11, 10, 60, 10, 9, 11, 10]  # a spike 5 days ago
    found = spike(history(steady, 45), BALANCED)
    assert found is not None
    assert 10 <= found.usual <= 11  # the 60 moved the median by nothing
    assert found.factor > 4


def test_all_three_thresholds_must_hold() -> None:
    quiet = [0, 1, 0, 0, 1, 0, 0, 1, 0, 0, 0, 1, 0, 0]
    assert spike(history(quiet, 4), BALANCED) is None  # 4x, high score, but under the minimum
    assert spike(history(quiet, 5), BALANCED) is not None
    busy = [100, 90, 110, 95, 105, 100, 98, 102, 97, 103, 100, 99, 101, 100]
    assert spike(history(busy, 250), BALANCED) is None  # far out, but only 2.5x
    noisy = [0, 26, 2, 24, 4, 22, 6, 20, 8, 18, 10, 16, 12, 14]
    assert spike(history(noisy, 40), BALANCED) is None  # 3x the median, within its swing
    assert spike(history(noisy, 40), replace(BALANCED, score=0)) is not None


def test_presets_order_their_sensitivity() -> None:
    steady = [10] * 14
    fired = {s: spike(history(steady, 30), PRESETS[s]) is not None for s in Sensitivity}
    assert fired == {
        Sensitivity.FEWER: False,
        Sensitivity.BALANCED: True,
        Sensitivity.MORE: True,
        Sensitivity.OFF: False,
    }


def test_silence_needs_a_usually_busy_list_and_is_reported_once() -> None:
    last = NOW - timedelta(hours=50)
    assert silence(history([5] * 14, 0, last_match=last), BALANCED) is not None
    assert silence(history([1] * 14, 0, last_match=last), BALANCED) is None  # usually quiet
    recent = NOW - timedelta(hours=30)
    assert silence(history([5] * 14, 0, last_match=recent), BALANCED) is None
    told = silence(history([5] * 14, 0, last_match=last, silenced_at=last + DAY), BALANCED)
    assert told is None


def test_trend_marks_the_days_that_would_have_fired() -> None:
    counts = [10] * 14 + [40, 10]
    shown = trend(history(counts, 8), BALANCED, 5)
    assert [d.stories for d in shown] == [10, 10, 40, 10, 8]  # today so far last
    assert [d.fired for d in shown] == [False, False, True, False, False]
    assert shown[0].usual == 10


def test_sparkline() -> None:
    assert sparkline([0, 1, 2, 8]) == "▁▂▃█"
    assert sparkline([0, 0]) == "▁▁"


def test_quiet_hours_defer_to_their_end() -> None:
    berlin = ZoneInfo("Europe/Berlin")
    quiet = parse_quiet_hours("22:00-07:00")
    late = datetime(2026, 12, 2, 22, 30, tzinfo=UTC)  # 23:30 in Berlin
    assert quiet_end(quiet, late, berlin) == datetime(2026, 12, 3, 6, 0, tzinfo=UTC)
    early = datetime(2026, 12, 3, 5, 0, tzinfo=UTC)  # 06:00 in Berlin
    assert quiet_end(quiet, early, berlin) == datetime(2026, 12, 3, 6, 0, tzinfo=UTC)


def test_rising_words_are_new_in_the_window() -> None:
    now = ["Grok leaks model weights", "Grok weights leaked online", "Grok update"]
    before = ["Grok update released", "Grok update again"] * 5
    assert rising_words(now, before, 0.07)[0] == "weights"
    assert "update" not in rising_words(now, before, 0.07)


@pytest.mark.parametrize(
    ("value", "sensitivity", "minimum"),
    [("more", "more", 3), (False, "off", 5), ({"preset": "fewer", "minimum": 20}, "fewer", 20)],
)
def test_the_spikes_key(value: object, sensitivity: str, minimum: int) -> None:
    config = Config.model_validate(
        {
            "feeds": [{"name": "a", "url": "https://a.example/rss"}],
            "watchlists": [
                {
                    "name": "Grok",
                    "terms": ["Grok"],
                    "recipients": ["a@example.org"],
                    "spikes": value,
                }
            ],
        }
    )
    settings = config.spike_settings(config.watchlists[0])
    assert (settings.sensitivity, settings.minimum) == (sensitivity, minimum)
