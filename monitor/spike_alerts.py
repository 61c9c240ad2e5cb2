"""Spike and silence alerts, checked every poll cycle: count -> judge -> compose -> claim.

Each watchlist's distinct stories in the window are judged against its daily history
(monitor.spikes); a verdict becomes one message per recipient, stored in the outbox in the
transaction that records the alert (Store.claim_alert), so exactly one worker alerts once
per cool-down (spike) or per silence, and the digest tick sends it. Quiet hours defer it.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from monitor.app import App
from monitor.channels import limit_of
from monitor.chat import NoticeStory, render_notice_chat
from monitor.config import DeliveryPlan, WatchlistConfig
from monitor.delivery import UNHEALTHY
from monitor.digest import safe_link
from monitor.labels import labels, plain_problem, plain_status
from monitor.models import MessageKind, OutgoingMessage
from monitor.schedules import QuietHours
from monitor.spikes import DAY, History, Silence, Spike, SpikeSettings, silence, spike
from monitor.store import SpikeStory, Store

log = logging.getLogger(__name__)
SHOWN_STORIES = 10
SHOWN_OUTLETS = 5
SHOWN_WORDS = 8
_WORD = re.compile(r"[^\W\d_]{4,}")
# Words too common in headlines to say what rose (German and English, four letters or more).
_COMMON_WORDS = (
    "aber auch dass sich nach nicht oder eine einem einen einer eines sind wird werden wurde "
    "mehr über unter gegen beim noch schon will kann soll haben hatte seit dies diese "
    "this that with from have what when were been their about after over into than "
    "says said just could would they them news live"
)
_COMMON = frozenset(_COMMON_WORDS.split())


@dataclass(frozen=True, slots=True)
class Alert:
    """A verdict on one watchlist, with what the message shows."""

    watchlist: str
    kind: str  # "spike" | "silence"
    subject: str
    lines: tuple[str, ...]  # the text body's paragraphs, before the stories
    stories: tuple[SpikeStory, ...] = ()
    outlets: tuple[tuple[str, int], ...] = ()
    words: tuple[str, ...] = ()
    feeds: tuple[str, ...] = ()  # silence: the feeds that went wrong meanwhile


def check_spikes(app: App) -> int:
    """Judge every watchlist with spikes on, and store an alert for each verdict; returns
    how many alerts this worker stored."""
    now = app.clock()
    watched = {
        w.name: (w, app.config.spike_settings(w))
        for w in app.config.watchlists
        if app.config.spike_settings(w).enabled
    }
    stored = 0
    for window, group in _by_window(watched).items():
        settings_of = {watchlist.name: settings for watchlist, settings in group}
        for history in histories(app.store, settings_of, now, window):
            watchlist, settings = watched[history.watchlist]
            try:
                stored += _alert_on(app, watchlist, settings, history)
            except Exception:  # one watchlist's alert (a user template, say): the rest go on
                log.exception("could not compose the spike alert of watchlist %s", watchlist.name)
    return stored


def histories(
    store: Store, settings_of: Mapping[str, SpikeSettings], now: datetime, window: timedelta
) -> list[History]:
    """The watchlists' histories, with exact story counts where a spike is possible at all.

    Counted first by matches (an index range, no join): an upper bound of the stories,
    exact at zero (silence). Every threshold grows with the count, so a watchlist that
    would not fire on its matches does not fire on its stories; only the rest (none, on
    most cycles) have their distinct stories counted."""
    days = max(settings.baseline_days for settings in settings_of.values()) + 1
    bounds = store.spike_histories(settings_of, now, window, days, exact=False)
    possible = {h.watchlist for h in bounds if spike(h, settings_of[h.watchlist])}
    exact = store.window_stories(possible, now - window)
    return [
        replace(h, window=exact.get(h.watchlist, 0)) if h.watchlist in possible else h
        for h in bounds
    ]


def _by_window(
    watched: dict[str, tuple[WatchlistConfig, SpikeSettings]],
) -> dict[timedelta, list[tuple[WatchlistConfig, SpikeSettings]]]:
    groups: dict[timedelta, list[tuple[WatchlistConfig, SpikeSettings]]] = {}
    for watchlist, settings in watched.values():
        groups.setdefault(settings.window, []).append((watchlist, settings))
    return groups


def _alert_on(
    app: App, watchlist: WatchlistConfig, settings: SpikeSettings, history: History
) -> int:
    now = history.now
    if (found := spike(history, settings)) is not None:
        alert = spike_alert(app, watchlist, settings, history, found)
        not_after = now - settings.cooldown
    elif (quiet := silence(history, settings)) is not None:
        alert = silence_alert(app, watchlist, settings, quiet, now)
        # Once per silence: again only after the watchlist matched something since.
        not_after = (quiet.since or now) - timedelta(microseconds=1)
    else:
        return 0
    outgoing = [
        (render(app, alert, plan.recipient, now), _send_at(plan, now, app.config.zone))
        for plan in app.config.spike_deliveries_of(watchlist)
    ]
    if not app.store.claim_alert(watchlist.name, alert.kind, not_after, outgoing, now):
        return 0
    log.info("%s alert for %s: %s", alert.kind, watchlist.name, alert.subject)
    return 1


def spike_alert(
    app: App, watchlist: WatchlistConfig, settings: SpikeSettings, history: History, found: Spike
) -> Alert:
    """What a spike's message says: how much, the stories, the outlets, the words that rose."""
    now, since = history.now, history.now - settings.window
    language = app.config.digests.language
    words = labels(language)
    numbers = {
        "watchlist": watchlist.name,
        "count": found.count,
        "hours": _number(settings.window.total_seconds() / 3600, language),
        "factor": _number(found.factor, language, "{:.1f}"),
        "usual": _number(round(found.usual, 1), language),
    }
    stories = app.store.spike_stories(watchlist.name, since, now)
    outlets = Counter(app.store.outlets_of(watchlist.name, since, now)).most_common(SHOWN_OUTLETS)
    before = app.store.matched_titles(watchlist.name, since - settings.baseline_days * DAY, since)
    titles = [story.title for story in stories]
    share = settings.window / (settings.baseline_days * DAY)
    return Alert(
        watchlist.name,
        "spike",
        words["spike_subject"].format(**numbers),
        (words["spike_text"].format(**numbers),),
        tuple(stories[:SHOWN_STORIES]),
        tuple(outlets),
        rising_words(titles, before, share),
    )


def silence_alert(
    app: App, watchlist: WatchlistConfig, settings: SpikeSettings, quiet: Silence, now: datetime
) -> Alert:
    """What a silence's message says: since when, what is usual, which feeds went wrong."""
    language = app.config.digests.language
    words = labels(language)
    since = quiet.since or now - settings.silence_after
    local = since.astimezone(app.config.zone)
    numbers = {
        "watchlist": watchlist.name,
        "hours": _number(settings.silence_after.total_seconds() / 3600, language),
        "usual": _number(quiet.usual, language),
        "since": f"{local:%Y-%m-%d %H:%M} {local.tzname()}",
    }
    feeds = [
        f"{state.name}: {plain_status(state.status.value, language)}"
        + (f" ({plain_problem(state.last_error, language)})" if state.last_error else "")
        for state in app.store.feed_states(UNHEALTHY)
        if (not watchlist.feeds or state.name in watchlist.feeds)
        and (state.error_since is None or state.error_since >= since - DAY)
    ]
    lines = (
        words["silence_text"].format(**numbers),
        words["silence_feeds"] if feeds else words["silence_no_feeds"],
    )
    return Alert(
        watchlist.name,
        "silence",
        words["silence_subject"].format(**numbers),
        lines,
        feeds=tuple(feeds),
    )


def _number(value: float, language: str, form: str = "{:g}") -> str:
    """4.7 in English, 4,7 in German."""
    text = form.format(value)
    return text.replace(".", ",") if language == "de" else text


def rising_words(now: Sequence[str], before: Sequence[str], share: float) -> tuple[str, ...]:
    """Title words most over-represented in the window against the baseline's titles."""
    current = Counter(word for title in now for word in _words(title))
    past = Counter(word for title in before for word in _words(title))
    rose = [
        (count / (past[word] * share + 1.0), count, word)
        for word, count in current.items()
        if count >= 2
    ]
    return tuple(word for _, _, word in sorted(rose, reverse=True)[:SHOWN_WORDS])


def _words(title: str) -> set[str]:
    return {word for word in _WORD.findall(title.lower()) if word not in _COMMON}


def render(app: App, alert: Alert, recipient: str, now: datetime) -> OutgoingMessage:
    """The alert as a message to one recipient; its Message-ID names the alert. A chat
    channel gets its sentences and a line per story (chat.py)."""
    seed = f"{alert.watchlist}|{alert.kind}|{now.isoformat()}"
    channel = app.config.channels().get(recipient)
    if channel is not None:
        stories = [
            NoticeStory(s.outlet, s.title, s.url, tuple(s.also_reported_by)) for s in alert.stories
        ]
        message_id = app.renderer.notice_id("spike", recipient, seed)
        paragraphs = [*alert.lines, *(f"• {feed}" for feed in alert.feeds)]
        return render_notice_chat(
            message_id, recipient, alert.subject, paragraphs, stories, now, limit_of(channel)
        )
    context = {
        "kind": alert.kind,
        "watchlist": alert.watchlist,
        "lines": list(alert.lines),
        "stories": [
            {
                "title": story.title or story.url,
                "url": safe_link(story.url),
                "outlet": story.outlet,
                "also": list(story.also_reported_by),
            }
            for story in alert.stories
        ],
        "outlets": [{"name": name, "count": count} for name, count in alert.outlets],
        "words": list(alert.words),
        "feeds": list(alert.feeds),
    }
    return app.renderer.render_notice(
        "spike", recipient, alert.subject, context, now, seed, MessageKind.ALERT
    )


def _send_at(plan: DeliveryPlan, now: datetime, zone: ZoneInfo) -> datetime:
    """Now, or the end of the recipient's quiet hours."""
    if plan.quiet is None or not plan.quiet.contains(now, zone):
        return now
    return quiet_end(plan.quiet, now, zone)


def quiet_end(quiet: QuietHours, now: datetime, zone: ZoneInfo) -> datetime:
    """The first moment after `now` outside the quiet hours (inside them now)."""
    local = now.astimezone(zone)
    end = datetime.combine(local.date(), quiet.end, tzinfo=zone)
    if end <= local:
        end = datetime.combine(local.date() + DAY, quiet.end, tzinfo=zone)
    return end.astimezone(now.tzinfo)
