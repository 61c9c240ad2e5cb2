"""`monitor trends`: each watchlist's daily stories as a terminal chart, with its usual level
and the days its spike preset would have fired, to tune a preset on one's own history."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from monitor.config import Config
from monitor.spikes import DAY, TrendDay, sparkline, trend
from monitor.store import Store

BAR = 40  # characters for the busiest day


def trend_lines(
    store: Store, config: Config, names: Iterable[str], days: int, now: datetime
) -> list[str]:
    """The chart of each named watchlist over the last `days` days, today (so far) last."""
    wanted = [w for w in config.watchlists if w.name in set(names)]
    longest = max((config.spike_settings(w).baseline_days for w in wanted), default=0)
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    histories = store.spike_histories([w.name for w in wanted], now, now - midnight, days + longest)
    by_name = {history.watchlist: history for history in histories}
    lines: list[str] = []
    for watchlist in wanted:
        settings = config.spike_settings(watchlist)
        shown = trend(by_name[watchlist.name], settings, days)
        fired = sum(day.fired for day in shown)
        lines += [
            f"{watchlist.name}  {sparkline([day.stories for day in shown])}  "
            f"spikes: {settings.sensitivity.value}, {fired} day(s) would have fired",
            *chart(shown),
            "",
        ]
    return lines


def recent_counts(
    store: Store, names: Iterable[str], now: datetime, days: int = 14, *, count: bool = True
) -> dict[str, list[int]]:
    """Each watchlist's distinct stories per UTC day, the last `days` days, today (so far)
    last. count=False: only the days already counted (writes nothing)."""
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    counts = {}
    for history in store.spike_histories(names, now, now - midnight, days, count=count):
        past = [
            history.days.get((midnight - back * DAY).date(), 0) for back in range(days - 1, 0, -1)
        ]
        counts[history.watchlist] = [*past, history.window]
    return counts


def chart(shown: list[TrendDay]) -> list[str]:
    """One line per day: a bar, the count, the usual level (│ on the bar) and a mark."""
    top = max([day.stories for day in shown] + [day.usual or 0 for day in shown] + [1])
    lines = []
    for index, day in enumerate(shown):
        cells = [" "] * BAR
        filled = round(day.stories / top * BAR)
        cells[:filled] = ["█"] * filled
        if day.usual is not None:
            cells[min(BAR - 1, round(day.usual / top * BAR))] = "│"
        usual = "warming up" if day.usual is None else f"usual {day.usual:g}"
        today = "  (today so far)" if index == len(shown) - 1 else ""
        mark = "  ◀ would have fired" if day.fired else ""
        lines.append(
            f"  {day.day:%m-%d %a} {''.join(cells)} {day.stories:>4}  {usual}{mark}{today}"
        )
    return lines
