from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from monitor.schedules import Every, check_in_zone, parse_schedule

BERLIN = ZoneInfo("Europe/Berlin")


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


@pytest.mark.parametrize(
    ("text", "every"),
    [
        ("daily 07:00", Every.DAILY),
        ("weekly mon 08:30", Every.WEEKLY),
        ("hourly", Every.HOURLY),
        ("immediate", Every.IMMEDIATE),
    ],
)
def test_parse(text: str, every: Every) -> None:
    assert parse_schedule(text).every is every


@pytest.mark.parametrize(
    "text", ["daily", "daily 7", "daily 24:00", "weekly XYZ 07:00", "often", ""]
)
def test_invalid(text: str) -> None:
    with pytest.raises(ValueError):
        parse_schedule(text)


def test_daily_slots_in_winter_and_summer() -> None:
    daily = parse_schedule("daily 07:00")
    assert daily.latest_slot(utc(2026, 1, 10, 6, 30), BERLIN) == utc(2026, 1, 10, 6, 0)  # CET
    assert daily.latest_slot(utc(2026, 7, 10, 5, 30), BERLIN) == utc(2026, 7, 10, 5, 0)  # CEST
    assert daily.latest_slot(utc(2026, 7, 10, 4, 59), BERLIN) == utc(2026, 7, 9, 5, 0)


def test_daily_slot_across_both_dst_switches() -> None:
    daily = parse_schedule("daily 07:00")
    # Spring forward: 2026-03-29. 07:00 CEST is 05:00 UTC; the day before 06:00 UTC.
    assert daily.next_slot(utc(2026, 3, 28, 6, 0), BERLIN) == utc(2026, 3, 29, 5, 0)
    # Fall back: 2026-10-25. 07:00 CET is 06:00 UTC; the day before 05:00 UTC.
    assert daily.next_slot(utc(2026, 10, 24, 5, 0), BERLIN) == utc(2026, 10, 25, 6, 0)


def test_weekly_and_hourly() -> None:
    weekly = parse_schedule("weekly MON 07:00")
    # 2026-11-29 is a Sunday: the latest Monday slot is 2026-11-23.
    assert weekly.latest_slot(utc(2026, 11, 29, 12, 0), BERLIN) == utc(2026, 11, 23, 6, 0)
    assert weekly.next_slot(utc(2026, 11, 29, 12, 0), BERLIN) == utc(2026, 11, 30, 6, 0)
    hourly = parse_schedule("hourly")
    assert hourly.latest_slot(utc(2026, 11, 29, 12, 34), BERLIN) == utc(2026, 11, 29, 12, 0)


@pytest.mark.parametrize("clock", ["02:00", "02:30", "02:59"])
def test_switch_hour_rejected(clock: str) -> None:
    with pytest.raises(ValueError, match="daylight saving"):
        check_in_zone(parse_schedule(f"daily {clock}"), BERLIN, 2026)


def test_other_hours_accepted() -> None:
    check_in_zone(parse_schedule("daily 03:00"), BERLIN, 2026)
    check_in_zone(parse_schedule("daily 01:59"), BERLIN, 2026)


def test_twice_daily_slots() -> None:
    twice = parse_schedule("daily 07:00, 16:00")
    assert str(twice) == "daily 07:00, 16:00"
    # Berlin is UTC+1 in January: 07:00 = 06:00 UTC, 16:00 = 15:00 UTC.
    assert twice.latest_slot(utc(2026, 1, 10, 12, 0), BERLIN) == utc(2026, 1, 10, 6, 0)
    assert twice.latest_slot(utc(2026, 1, 10, 15, 0), BERLIN) == utc(2026, 1, 10, 15, 0)
    assert twice.latest_slot(utc(2026, 1, 10, 5, 0), BERLIN) == utc(2026, 1, 9, 15, 0)
    assert twice.next_slot(utc(2026, 1, 10, 6, 0), BERLIN) == utc(2026, 1, 10, 15, 0)
    assert twice.next_slot(utc(2026, 1, 10, 15, 0), BERLIN) == utc(2026, 1, 11, 6, 0)
    assert parse_schedule("daily 16:00,07:00") == twice  # order and spacing do not matter


@pytest.mark.parametrize("day", ["monday", "Monday", "MON", "mon", "Mo", "Montag"])
def test_weekly_takes_day_names(day: str) -> None:
    weekly = parse_schedule(f"weekly {day} 07:00")
    assert weekly.weekday == 0 and str(weekly) == "weekly MON 07:00"


@pytest.mark.parametrize(
    ("day", "weekday"),
    [("Di", 1), ("tue", 1), ("Mittwoch", 2), ("Do", 3), ("thu", 3), ("Fr", 4), ("Sa", 5),
     ("Sonntag", 6), ("sun", 6)],
)  # fmt: skip
def test_weekly_takes_each_day_in_english_and_german(day: str, weekday: int) -> None:
    assert parse_schedule(f"weekly {day} 07:00").weekday == weekday


@pytest.mark.parametrize("day", ["s", "t", "mondays", "xyz"])
def test_a_day_that_fits_none_or_two_is_refused(day: str) -> None:
    with pytest.raises(ValueError, match="is not a weekday"):
        parse_schedule(f"weekly {day} 07:00")


def test_weekly_on_several_times_and_bad_forms() -> None:
    assert str(parse_schedule("weekly friday 07:00, 16:00")) == "weekly FRI 07:00, 16:00"
    with pytest.raises(ValueError, match="'someday' is not a weekday; write monday"):
        parse_schedule("weekly someday 07:00")
    with pytest.raises(ValueError, match="07:00 twice"):
        parse_schedule("daily 07:00, 07:00")


def test_twice_daily_switch_hour_rejected() -> None:
    with pytest.raises(ValueError, match="02:30 does not exist"):
        check_in_zone(parse_schedule("daily 07:00, 02:30"), BERLIN, 2026)
