"""Is this unusual? Spike and silence verdicts over a watchlist's daily story counts.

Pure functions: counts and times in, frozen verdicts out; the store counts, the clock is
passed in. A count is of distinct stories (a wire story carried by 40 outlets is one), so
syndication never looks like a surge.

A spike needs all three: at least `minimum` stories in the window, at least `ratio` times
the usual, and a robust score (distance from the usual in median absolute deviations) of
at least `score`. The usual is the median day of the baseline, or the median of the same
weekday when that is higher (a Monday peak is usual on Mondays). Median and MAD, not mean
and standard deviation: one earlier spike in the baseline does not hide the next one.
"""

from __future__ import annotations

import enum
import functools
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import date, datetime, timedelta

DAY = timedelta(days=1)
_MAD_TO_SIGMA = 1.4826  # a normal distribution's sigma, measured by its MAD


class Sensitivity(enum.StrEnum):
    FEWER = "fewer"
    BALANCED = "balanced"
    MORE = "more"
    OFF = "off"


@dataclass(frozen=True, slots=True)
class SpikeSettings:
    """One watchlist's thresholds: a preset's, with any numbers the user overrode."""

    sensitivity: Sensitivity = Sensitivity.BALANCED
    window: timedelta = DAY
    baseline_days: int = 14
    minimum: int = 5
    ratio: float = 3.0
    score: float = 3.5
    warmup_days: int = 7
    cooldown: timedelta = timedelta(hours=6)
    silence_median: float = 3.0
    silence_after: timedelta = timedelta(hours=48)

    @property
    def enabled(self) -> bool:
        return self.sensitivity is not Sensitivity.OFF


# Each preset moves the three thresholds together; window, baseline, warm-up, cool-down and
# silence stay as the defaults above.
PRESETS: dict[Sensitivity, SpikeSettings] = {
    Sensitivity.FEWER: SpikeSettings(Sensitivity.FEWER, minimum=8, ratio=4.0, score=5.0),
    Sensitivity.BALANCED: SpikeSettings(),
    Sensitivity.MORE: SpikeSettings(Sensitivity.MORE, minimum=3, ratio=2.0, score=2.5),
    Sensitivity.OFF: SpikeSettings(Sensitivity.OFF),
}


def settings_for(sensitivity: Sensitivity, **overrides: object) -> SpikeSettings:
    """A preset with the numbers given (None: the preset's) put in."""
    given = {key: value for key, value in overrides.items() if value is not None}
    return replace(PRESETS[sensitivity], **given)  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class History:
    """What the store knows of one watchlist at `now`.

    `days` holds complete days' story counts by day (UTC); a day missing is a day with none.
    `window` is the number of distinct stories matched in the window ending at `now`.
    """

    watchlist: str
    now: datetime
    window: int
    days: Mapping[date, int]
    first_match: datetime | None  # the watchlist's history starts here
    last_match: datetime | None = None  # `now` when the window has stories
    spiked_at: datetime | None = None  # the last spike alert
    silenced_at: datetime | None = None  # the last silence alert


@dataclass(frozen=True, slots=True)
class Spike:
    count: int
    usual: float  # stories per window on a usual day
    factor: float  # count / usual (usual of at least one story)
    score: float


@dataclass(frozen=True, slots=True)
class Silence:
    usual: float  # the median stories per day before it went quiet
    since: datetime | None  # the last match


def baseline(history: History, settings: SpikeSettings, end: date) -> list[tuple[date, int]]:
    """The baseline days before `end` that lie inside the watchlist's history, oldest first."""
    first = history.first_match.date() if history.first_match else end
    start = max(first, end - settings.baseline_days * DAY)
    count = (end - start).days
    return [(day, history.days.get(day, 0)) for day in (start + k * DAY for k in range(count))]


def is_warm(history: History, settings: SpikeSettings) -> bool:
    """Enough history to know what is usual."""
    if history.first_match is None:
        return False
    return history.now - history.first_match >= settings.warmup_days * DAY


def usual_day(days: Sequence[tuple[date, int]], weekdays: Sequence[int]) -> float:
    """The median day, or the median of one of `weekdays` when higher (a weekly rhythm)."""
    overall = statistics.median(count for _, count in days)
    same = [
        statistics.median(c for d, c in days if d.weekday() == weekday)
        for weekday in weekdays
        if any(d.weekday() == weekday for d, _ in days)
    ]
    return max([overall, *same])


def spread(days: Sequence[tuple[date, int]], usual: float) -> float:
    """The noise around the usual day: MAD as sigma, never below Poisson's sqrt(usual) nor 1
    (a quiet list's MAD is 0, and its second article would otherwise be a sensation)."""
    counts = [count for _, count in days]
    center = statistics.median(counts)
    mad = statistics.median(abs(count - center) for count in counts)
    return max(_MAD_TO_SIGMA * mad, math.sqrt(usual), 1.0)


def spike(history: History, settings: SpikeSettings) -> Spike | None:
    """The spike in the window ending at history.now, if all three thresholds are met."""
    if not settings.enabled or not is_warm(history, settings):
        return None
    if history.spiked_at is not None and history.now - history.spiked_at < settings.cooldown:
        return None
    start = history.now - settings.window
    return judge(history, settings, history.window, start, history.now)


def judge(
    history: History, settings: SpikeSettings, count: int, start: datetime, end: datetime
) -> Spike | None:
    """Would `count` stories between start and end be a spike against the days before?"""
    if count < settings.minimum:
        return None
    days = tuple(baseline(history, settings, start.date()))
    if not days:
        return None
    share = (end - start) / DAY  # a 6 h window is measured against a quarter day
    weekdays = tuple(sorted({start.weekday(), (end - timedelta(microseconds=1)).weekday()}))
    usual, noise = _level(days, weekdays, share)
    factor = count / max(usual, 1.0)
    score = (count - usual) / noise
    fired = count >= settings.minimum and factor >= settings.ratio and score >= settings.score
    return Spike(count, usual, factor, score) if fired else None


@functools.lru_cache(maxsize=8192)
def _level(
    days: tuple[tuple[date, int], ...], weekdays: tuple[int, ...], share: float
) -> tuple[float, float]:
    """The usual count in a window of `share` days, and its noise: the same all day long
    for a watchlist, so each cycle after the first finds them here (a cache, by value)."""
    usual = usual_day(days, weekdays) * share
    return usual, spread(days, usual) * math.sqrt(share)


def silence(history: History, settings: SpikeSettings) -> Silence | None:
    """A watchlist that usually matches has matched nothing for `silence_after`."""
    if not settings.enabled or not is_warm(history, settings):
        return None
    quiet_since = history.now - settings.silence_after
    if history.last_match is not None and history.last_match > quiet_since:
        return None
    if history.silenced_at is not None and (
        history.last_match is None or history.silenced_at > history.last_match
    ):
        return None  # this silence was reported
    days = baseline(history, settings, quiet_since.date())
    if not days:
        return None
    usual = float(statistics.median(count for _, count in days))
    return Silence(usual, history.last_match) if usual >= settings.silence_median else None


@dataclass(frozen=True, slots=True)
class TrendDay:
    day: date
    stories: int
    usual: float | None  # None: still warming up
    fired: bool


def trend(history: History, settings: SpikeSettings, days: int) -> list[TrendDay]:
    """The last `days` complete days (and today so far), each with its usual level and
    whether a whole day like it would have fired: for tuning a preset on one's own history."""
    today = history.now.date()
    shown = []
    for k in range(days - 1, -1, -1):
        day = today - k * DAY
        count = history.window if k == 0 else history.days.get(day, 0)
        start = datetime.combine(day, datetime.min.time(), history.now.tzinfo)
        past = replace(history, now=start + DAY)
        warm = is_warm(past, settings) and bool(baseline(past, settings, day))
        usual = usual_day(baseline(past, settings, day), [day.weekday()]) if warm else None
        fired = warm and settings.enabled and judge(past, settings, count, start, start + DAY)
        shown.append(TrendDay(day, count, usual, bool(fired)))
    return shown


def sparkline(counts: Sequence[int]) -> str:
    """▁▂▃█ for a row of counts, the highest the full block."""
    bars = "▁▂▃▄▅▆▇█"
    top = max(counts, default=0)
    if top <= 0:
        return bars[0] * len(counts)
    return "".join(bars[min(7, round(count / top * 7))] for count in counts)
