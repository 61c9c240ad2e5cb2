"""When digests go out: `daily HH:MM`, `weekly MON HH:MM`, `hourly`, `immediate`.

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
_PATTERN = re.compile(
    r"^\s*(?:(?P<daily>daily)\s+(?P<dtime>\d{1,2}:\d{2})"
    r"|(?P<weekly>weekly)\s+(?P<day>[A-Za-z]{3})\s+(?P<wtime>\d{1,2}:\d{2})"
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
    at: time = time(0, 0)
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
        while (slot := self._at(day, zone)) > now:
            day -= timedelta(days=step)
        return slot.astimezone(UTC)

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
        while (slot := self._at(day, zone)) <= now:
            day += timedelta(days=step)
        return slot.astimezone(UTC)

    def _at(self, day: date, zone: ZoneInfo) -> datetime:
        return datetime.combine(day, self.at, tzinfo=zone)

    def __str__(self) -> str:
        if self.every is Every.DAILY:
            return f"daily {self.at:%H:%M}"
        if self.every is Every.WEEKLY:
            return f"weekly {_WEEKDAYS[self.weekday]} {self.at:%H:%M}"
        return self.every.value


def parse_schedule(text: str) -> Schedule:
    """Parse a schedule; raise ValueError naming the accepted forms."""
    found = _PATTERN.match(text or "")
    if not found:
        raise ValueError(
            f"{text!r} is not a schedule; write 'daily 07:00', 'weekly MON 07:00', "
            "'hourly' or 'immediate'"
        )
    if found["hourly"]:
        return Schedule(Every.HOURLY)
    if found["immediate"]:
        return Schedule(Every.IMMEDIATE)
    clock = _clock(found["dtime"] or found["wtime"])
    if found["daily"]:
        return Schedule(Every.DAILY, clock)
    day = found["day"].upper()
    if day not in _WEEKDAYS:
        raise ValueError(f"{found['day']!r} is not a weekday; use MON, TUE, ... SUN")
    return Schedule(Every.WEEKLY, clock, _WEEKDAYS.index(day))


def _clock(text: str) -> time:
    hours, minutes = (int(part) for part in text.split(":"))
    if hours > 23 or minutes > 59:
        raise ValueError(f"{text!r} is not a time of day (00:00 to 23:59)")
    return time(hours, minutes)


def check_in_zone(schedule: Schedule, zone: ZoneInfo, year: int) -> None:
    """Reject a local time that does not exist or occurs twice on a DST switch day."""
    if schedule.every not in (Every.DAILY, Every.WEEKLY):
        return
    day = date(year, 1, 1)
    while day.year == year:
        first = datetime.combine(day, schedule.at, tzinfo=zone)
        second = first.replace(fold=1)
        round_trip = first.astimezone(UTC).astimezone(zone)
        if first.utcoffset() != second.utcoffset() or round_trip.time() != schedule.at:
            raise ValueError(
                f"{schedule.at:%H:%M} does not exist or occurs twice in {zone.key} on "
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
