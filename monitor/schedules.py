"""When digests go out: `daily HH:MM`, `weekly MON HH:MM`, `hourly`, `immediate`; daily and
weekly take several times (`daily 07:00, 16:00`) and weekdays by name (`weekly monday 07:00`).

A schedule yields *slots*: the instants a digest is due. A digest tick compares the latest
slot with the last one handled (kept in the database), so a slot missed during downtime is
caught up once, and never twice.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

_WEEKDAYS = ("MON", "TUE", "WED", "THU", "FRI", "SAT", "SUN")
_DAY_NAMES = (
    ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"),
    # German too (Montag, Mo, Di, ...): many users are German press offices.
    ("montag", "dienstag", "mittwoch", "donnerstag", "freitag", "samstag", "sonntag"),
)
_TIMES = r"\d{1,2}:\d{2}(?:\s*,\s*\d{1,2}:\d{2})*"
_PATTERN = re.compile(
    rf"^\s*(?:(?P<daily>daily)\s+(?P<dtime>{_TIMES})"
    rf"|(?P<weekly>weekly)\s+(?P<day>[A-Za-z]+)\s+(?P<wtime>{_TIMES})"
    r"|(?P<hourly>hourly)|(?P<immediate>immediate))\s*$",
    re.IGNORECASE,
)


class Every(enum.StrEnum):
    IMMEDIATE = "immediate"
    HOURLY = "hourly"
    DAILY = "daily"
    WEEKLY = "weekly"


@dataclass(frozen=True, slots=True)
class Schedule:
    every: Every
    times: tuple[time, ...] = (time(0, 0),)  # sorted; daily and weekly send at each
    weekday: int = 0  # Monday = 0, for weekly

    def latest_slot(self, now: datetime, zone: ZoneInfo) -> datetime:
        """The most recent instant at or before `now` when this digest was due (UTC)."""
        local = now.astimezone(zone)
        if self.every is Every.IMMEDIATE:
            return now.astimezone(UTC)
        if self.every is Every.HOURLY:
            start = local.replace(minute=0, second=0, microsecond=0)
            return start.astimezone(UTC)
        day = local.date()
        step = 1 if self.every is Every.DAILY else 7
        if self.every is Every.WEEKLY:
            day -= timedelta(days=(day.weekday() - self.weekday) % 7)
        while not (slots := [s for s in self._at(day, zone) if s <= now]):
            day -= timedelta(days=step)
        return max(slots).astimezone(UTC)

    def next_slot(self, now: datetime, zone: ZoneInfo) -> datetime:
        """The first instant after `now` when this digest is due (UTC)."""
        if self.every is Every.IMMEDIATE:
            return now.astimezone(UTC)
        if self.every is Every.HOURLY:
            return self.latest_slot(now, zone) + timedelta(hours=1)
        day = now.astimezone(zone).date()
        step = 1 if self.every is Every.DAILY else 7
        if self.every is Every.WEEKLY:
            day += timedelta(days=(self.weekday - day.weekday()) % 7)
        while not (slots := [s for s in self._at(day, zone) if s > now]):
            day += timedelta(days=step)
        return min(slots).astimezone(UTC)

    def _at(self, day: date, zone: ZoneInfo) -> list[datetime]:
        return [datetime.combine(day, at, tzinfo=zone) for at in self.times]

    def __str__(self) -> str:
        times = ", ".join(f"{at:%H:%M}" for at in self.times)
        if self.every is Every.DAILY:
            return f"daily {times}"
        if self.every is Every.WEEKLY:
            return f"weekly {_WEEKDAYS[self.weekday]} {times}"
        return self.every.value


def parse_schedule(text: str) -> Schedule:
    """Parse a schedule; raise ValueError naming the accepted forms."""
    found = _PATTERN.match(text or "")
    if not found:
        raise ValueError(
            f"{text!r} is not a schedule; write 'daily 07:00', 'daily 07:00, 16:00', "
            "'weekly monday 07:00', 'hourly' or 'immediate'"
        )
    if found["hourly"]:
        return Schedule(Every.HOURLY)
    if found["immediate"]:
        return Schedule(Every.IMMEDIATE)
    times = _times(found["dtime"] or found["wtime"])
    if found["daily"]:
        return Schedule(Every.DAILY, times)
    return Schedule(Every.WEEKLY, times, _weekday(found["day"]))


def _weekday(text: str) -> int:
    """'monday', 'Mon', 'MON', 'Montag', 'Mo' -> 0: a day's name, or the start of one
    that fits no other day."""
    name = text.lower()
    days = {day for names in _DAY_NAMES for day, full in enumerate(names) if full.startswith(name)}
    if len(name) < 2 or len(days) != 1:
        raise ValueError(f"{text!r} is not a weekday; write monday, tuesday, ... sunday (or MON)")
    return days.pop()


def _times(text: str) -> tuple[time, ...]:
    """'16:00, 07:00' -> (07:00, 16:00); a time given twice is a typo, said so."""
    times = [_clock(part.strip()) for part in text.split(",")]
    for at in times:
        if times.count(at) > 1:
            raise ValueError(f"{text!r} names {at:%H:%M} twice; give each time once")
    return tuple(sorted(times))


def _clock(text: str) -> time:
    hours, minutes = (int(part) for part in text.split(":"))
    if hours > 23 or minutes > 59:
        raise ValueError(f"{text!r} is not a time of day (00:00 to 23:59)")
    return time(hours, minutes)


def check_in_zone(schedule: Schedule, zone: ZoneInfo, year: int) -> None:
    """Reject a local time that does not exist or occurs twice on a DST switch day."""
    if schedule.every not in (Every.DAILY, Every.WEEKLY):
        return
    for at in schedule.times:
        _check_time_in_zone(at, zone, year)


def _check_time_in_zone(at: time, zone: ZoneInfo, year: int) -> None:
    day = date(year, 1, 1)
    while day.year == year:
        first = datetime.combine(day, at, tzinfo=zone)
        second = first.replace(fold=1)
        round_trip = first.astimezone(UTC).astimezone(zone)
        if first.utcoffset() != second.utcoffset() or round_trip.time() != at:
            raise ValueError(
                f"{at:%H:%M} does not exist or occurs twice in {zone.key} on "
                f"{day.isoformat()} (daylight saving switch); pick a time outside "
                "the switch hour, e.g. 03:00 or later"
            )
        day += timedelta(days=1)


@dataclass(frozen=True, slots=True)
class QuietHours:
    """A daily local time window in which nothing is sent; what falls in it waits."""

    start: time
    end: time

    def contains(self, now: datetime, zone: ZoneInfo) -> bool:
        clock = now.astimezone(zone).time()
        if self.start <= self.end:
            return self.start <= clock < self.end
        return clock >= self.start or clock < self.end  # the window spans midnight

    def __str__(self) -> str:
        return f"{self.start:%H:%M}-{self.end:%H:%M}"


def parse_quiet_hours(text: str) -> QuietHours:
    """'22:00-07:00' -> QuietHours; raise ValueError naming the expected form."""
    found = re.match(r"^\s*(\d{1,2}:\d{2})\s*-\s*(\d{1,2}:\d{2})\s*$", text or "")
    if not found:
        raise ValueError(f"{text!r} is not a time window; write e.g. '22:00-07:00'")
    start, end = _clock(found.group(1)), _clock(found.group(2))
    if start == end:
        raise ValueError(f"{text!r} is an empty window; start and end must differ")
    return QuietHours(start, end)
