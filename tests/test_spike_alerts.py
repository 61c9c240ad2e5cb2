"""Spike and silence alerts end to end: synthetic histories stored through the real store
(SQLite and PostgreSQL), judged by check_spikes with an injected clock, the alerts read back
from the outbox (monitor/spike_alerts.py, monitor/store/spikes.py)."""

from __future__ import annotations

import email
import itertools
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from email import policy
from email.message import Message
from pathlib import Path
from typing import Any, cast

import pytest
from pytest_httpserver import HTTPServer

from monitor.app import App, build_mailer, build_renderer
from monitor.cli import main
from monitor.config import Config, load_config
from monitor.models import Item
from monitor.spike_alerts import check_spikes
from monitor.spikes import DAY
from monitor.store import open_store
from monitor.store.schema import feeds
from monitor.watchlists import Matcher

MONDAY = datetime(2026, 11, 2, tzinfo=UTC)  # day 0 of every history here
_numbers = itertools.count()


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


MakeApp = Callable[..., App]


@pytest.fixture
def make_app(database_url: str, tmp_path: Path) -> Iterator[MakeApp]:
    """An App (a worker) on the test database, its watchlist Grok with `spikes` as given."""
    apps: list[App] = []

    def make(clock: Clock, spikes: Any = "balanced", **watchlist: Any) -> App:
        config = Config.model_validate(
            {
                "database": database_url,
                "outbox": str(tmp_path / "outbox"),
                "feeds": [
                    {"name": f"feed{k}", "url": f"https://f{k}.example/rss"} for k in range(3)
                ],
                "watchlists": [
                    {
                        "name": "Grok",
                        "terms": ["Grok"],
                        "recipients": ["a@example.org", "b@example.org"],
                        "spikes": spikes,
                        **watchlist,
                    }
                ],
            }
        )
        store = open_store(database_url)
        store.sync_feeds(config.feed_urls(), clock(), config.polled_feeds())
        app = App(
            config,
            store,
            Matcher(config.watchlists),
            cast(Any, None),  # no fetching here
            build_renderer(config),
            build_mailer(config),
            cast(Any, None),
            clock=clock,
        )
        app.apply_config(config)
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.store.close()


def story(feed: str = "feed0", n: int | None = None, url: str | None = None) -> Item:
    """A new story about Grok: words of its own, so it clusters with nothing else."""
    n = next(_numbers) if n is None else n
    words = " ".join(f"s{n}w{k}" for k in range(12))
    return Item(
        url or f"u:example.org/{n}",
        feed,
        f"g{n}-{feed}",
        url or f"https://example.org/{n}",
        f"Grok meldet Neues {words[:20]}",
        f"Bericht {words}",
        MONDAY,
        "de",
    )


def add(app: App, at: datetime, items: list[Item]) -> None:
    if items:
        app.store.ingest(items, app.matcher.match, app.recipients, at)


def history(app: App, days: int, per_day: Callable[[int], int], hour: int = 6) -> None:
    """`per_day(d)` new stories on each of days 0..days-1, all at `hour`."""
    for day in range(days):
        add(app, MONDAY + day * DAY + timedelta(hours=hour), [story() for _ in range(per_day(day))])


def alerts(app: App) -> list[Message]:
    ready = app.store.ready_messages(app.clock() + 7 * DAY)
    return [email.message_from_bytes(message.mime, policy=policy.default) for message in ready]


def body(message: Message) -> str:
    for part in message.walk():
        if part.get_content_type() == "text/plain":
            return str(part.get_payload(decode=True).decode("utf-8"))  # type: ignore[union-attr]
    return ""


def test_a_real_surge_fires_once_and_the_cooldown_holds_the_next_hour(make_app: MakeApp) -> None:
    clock = Clock(MONDAY)
    app = make_app(clock)
    history(app, 15, lambda day: 10)  # 10 a day, days 0..14 (day 14 at 06:00)
    clock.now = MONDAY + 14 * DAY + timedelta(hours=10)
    assert check_spikes(app) == 0  # a usual day so far
    surge = MONDAY + 14 * DAY + timedelta(hours=11)
    add(app, surge, [story(feed=f"feed{n % 3}") for n in range(40)])
    clock.now = surge + timedelta(hours=1)
    assert check_spikes(app) == 1
    clock.now += timedelta(hours=1)
    assert check_spikes(app) == 0  # still high, but inside the 6 h cool-down
    sent = alerts(app)
    assert sorted(m["To"] for m in sent) == ["a@example.org", "b@example.org"]
    assert sent[0]["Subject"] == "Grok: 50 stories in 24 h, 5.0x the usual"
    text = body(sent[0])
    assert "Grok meldet Neues" in text
    assert "Outlets with most stories: feed0" in text


def test_a_story_syndicated_to_40_feeds_is_one_story(make_app: MakeApp) -> None:
    clock = Clock(MONDAY)
    app = make_app(clock)
    history(app, 14, lambda day: 3)
    wire = story()
    copies = [
        story(feed=f"outlet{k}", n=10_000 + k, url=f"https://outlet{k}.example/grok")
        for k in range(40)
    ]
    copies = [
        Item(c.key, c.feed, c.guid, c.url, wire.title, wire.summary, c.published, "de")
        for c in copies
    ]
    at = MONDAY + 14 * DAY + timedelta(hours=9)
    for copy in copies:  # as 40 feeds deliver it, one poll each
        add(app, at, [copy])
    clock.now = at + timedelta(hours=1)
    (found,) = app.store.spike_histories(["Grok"], clock.now, DAY, 15)
    assert found.window == 1  # not 40
    assert check_spikes(app) == 0
    assert alerts(app) == []


def test_a_low_volume_executive_does_not_fire_on_two_articles_after_a_quiet_week(
    make_app: MakeApp,
) -> None:
    clock = Clock(MONDAY)
    app = make_app(clock)
    history(app, 14, lambda day: day % 2)  # one article every other day ...
    quiet_week_over = MONDAY + 21 * DAY + timedelta(hours=8)  # ... then a quiet week
    add(app, quiet_week_over, [story(), story()])
    clock.now = quiet_week_over + timedelta(hours=1)
    assert check_spikes(app) == 0
    more = make_app(clock, spikes="more")  # even the most sensitive preset holds
    assert check_spikes(more) == 0
    assert alerts(app) == []


def test_monday_peaks_of_a_weekly_rhythm_do_not_fire_under_balanced(make_app: MakeApp) -> None:
    clock = Clock(MONDAY)
    app = make_app(clock)
    history(app, 21, lambda day: 30 if day % 7 == 0 else 8)  # days 0, 7, 14 are Mondays
    monday = MONDAY + 21 * DAY
    add(app, monday + timedelta(hours=6), [story() for _ in range(30)])
    clock.now = monday + timedelta(hours=23)  # Monday night
    assert check_spikes(app) == 0
    clock.now = monday + timedelta(hours=29)  # Tuesday morning: Monday still in the window
    assert check_spikes(app) == 0
    wednesday = MONDAY + 23 * DAY + timedelta(hours=6)  # the same volume on a Wednesday is news
    add(app, wednesday, [story() for _ in range(30)])
    clock.now = wednesday + timedelta(hours=6)
    assert check_spikes(app) == 1


def test_no_alert_before_the_warm_up(make_app: MakeApp) -> None:
    clock = Clock(MONDAY)
    app = make_app(clock)
    history(app, 6, lambda day: 5)
    surge = MONDAY + 6 * DAY + timedelta(hours=10)
    add(app, surge, [story() for _ in range(60)])
    clock.now = surge + timedelta(hours=1)  # 6 days of history
    assert check_spikes(app) == 0
    clock.now = MONDAY + 7 * DAY + timedelta(hours=7)  # warm now, surge still in the window
    assert check_spikes(app) == 1


def test_silence_after_a_feed_died_names_it_once(make_app: MakeApp) -> None:
    clock = Clock(MONDAY)
    app = make_app(clock)
    history(app, 14, lambda day: 5)
    last = MONDAY + 13 * DAY + timedelta(hours=6)
    with app.store.engine.begin() as connection:
        connection.execute(
            feeds.update()
            .where(feeds.c.name == "feed0")
            .values(status="broken", error_since=last + timedelta(hours=2), last_error="HTTP 404")
        )
    clock.now = last + timedelta(hours=40)
    assert check_spikes(app) == 0  # quiet, but not yet 48 h
    clock.now = last + timedelta(hours=49)
    assert check_spikes(app) == 1
    clock.now += timedelta(hours=12)
    assert check_spikes(app) == 0  # one alert per silence
    sent = alerts(app)
    assert len(sent) == 2  # one per recipient
    assert sent[0]["Subject"] == "Grok: no stories for 48 h (usually 5 a day)"
    assert "feed0: broken" in body(sent[0])
    assert "HTTP 404" in body(sent[0])
    assert "feed1" not in body(sent[0])  # healthy feeds are not blamed


def test_two_workers_judging_the_same_watchlist_send_one_alert(make_app: MakeApp) -> None:
    clock = Clock(MONDAY)
    first, second = make_app(clock), make_app(clock)
    history(first, 14, lambda day: 10)
    surge = MONDAY + 14 * DAY + timedelta(hours=8)
    add(first, surge, [story() for _ in range(50)])
    clock.now = surge + timedelta(hours=1)
    with ThreadPoolExecutor(2) as pool:
        stored = list(pool.map(check_spikes, [first, second]))
    assert sorted(stored) == [0, 1]
    assert len(alerts(first)) == 2  # one message per recipient, not per worker


def test_quiet_hours_hold_the_alert_until_they_end(make_app: MakeApp) -> None:
    clock = Clock(MONDAY)
    app = make_app(clock, quiet_hours="22:00-07:00")  # Europe/Berlin
    history(app, 14, lambda day: 10)
    night = MONDAY + 14 * DAY + timedelta(hours=1)  # 02:00 in Berlin
    add(app, night, [story() for _ in range(50)])
    clock.now = night + timedelta(minutes=30)
    assert check_spikes(app) == 1
    assert app.store.ready_messages(clock.now) == []
    seven = MONDAY + 14 * DAY + timedelta(hours=6)  # 07:00 in Berlin
    assert len(app.store.ready_messages(seven)) == 2


def test_spikes_off_never_alerts(make_app: MakeApp) -> None:
    clock = Clock(MONDAY)
    app = make_app(clock, spikes=False)  # YAML's bare `off`
    history(app, 14, lambda day: 10)
    add(app, MONDAY + 14 * DAY, [story() for _ in range(80)])
    clock.now = MONDAY + 14 * DAY + timedelta(hours=1)
    assert check_spikes(app) == 0


def test_trends_charts_each_day_and_the_days_that_would_have_fired(
    write_config: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_config(
        {
            "feeds": [{"name": "feed0", "url": "https://f0.example/rss"}],
            "watchlists": [{"name": "Grok", "terms": ["Grok"], "recipients": ["a@example.org"]}],
        }
    )
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    config = load_config(path)
    store = open_store(config.database)
    matcher = Matcher(config.watchlists)
    recipients = {"Grok": ("a@example.org",)}
    for back in range(20, 0, -1):  # 10 a day; 40 three days ago
        count = 40 if back == 3 else 10
        store.ingest([story() for _ in range(count)], matcher.match, recipients, today - back * DAY)
    store.close()
    assert main(["--config", str(path), "trends", "--days", "5"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("Grok  ")
    assert "spikes: balanced, 1 day(s) would have fired" in out[0]
    days = out[1:6]  # 4 days ago .. today
    assert days[0].split()[-3:] == ["10", "usual", "10"]
    assert days[1].endswith(" 40  usual 10  ◀ would have fired")
    assert [line.split()[-3:] for line in days[2:4]] == [["10", "usual", "10"]] * 2
    assert days[4].endswith(" 0  usual 10  (today so far)")
    assert main(["--config", str(path), "trends", "--watchlist", "Nope"]) == 2
    capsys.readouterr()
    # The options work after the command too, as for every other command (README).
    assert main(["trends", "--config", str(path), "--days", "5"]) == 0
    assert capsys.readouterr().out.splitlines()[0].startswith("Grok  ")


def test_monitor_poll_judges_spikes_after_its_cycle(
    write_config: Callable[..., Path],
    httpserver: HTTPServer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    empty = '<?xml version="1.0"?><rss version="2.0"><channel><title>w</title></channel></rss>'
    httpserver.expect_request("/rss").respond_with_data(empty, content_type="application/rss+xml")
    path = write_config(
        {
            "feeds": [{"name": "feed0", "url": httpserver.url_for("/rss")}],
            "watchlists": [{"name": "Grok", "terms": ["Grok"], "recipients": ["a@example.org"]}],
        }
    )
    now = datetime.now(UTC)
    config = load_config(path)
    store = open_store(config.database)
    matcher = Matcher(config.watchlists)
    for back in range(14, 0, -1):  # 5 a day for two weeks, then 40 in the last hour
        store.ingest([story() for _ in range(5)], matcher.match, {"Grok": ("a@example.org",)},
                     now - back * DAY)  # fmt: skip
    surge = [story() for _ in range(40)]
    store.ingest(surge, matcher.match, {"Grok": ("a@example.org",)}, now - timedelta(hours=1))
    store.close()
    assert main(["--config", str(path), "poll"]) == 0
    assert "; 1 spike/silence alert(s) queued" in capsys.readouterr().out
    store = open_store(config.database)
    subjects = [
        email.message_from_bytes(m.mime)["Subject"] for m in store.ready_messages(now + DAY)
    ]
    store.close()
    assert subjects == ["Grok: 40 stories in 24 h, 8.0x the usual"]


def test_alerts_speak_the_digests_language(database_url: str, tmp_path: Path) -> None:
    clock = Clock(MONDAY)
    config = Config.model_validate(
        {
            "database": database_url,
            "outbox": str(tmp_path / "outbox"),
            "digests": {"language": "de"},
            "feeds": [{"name": "feed0", "url": "https://f0.example/rss"}],
            "watchlists": [{"name": "Grok", "terms": ["Grok"], "recipients": ["a@example.org"]}],
        }
    )
    store = open_store(database_url)
    app = App(config, store, Matcher(config.watchlists), cast(Any, None),
              build_renderer(config), build_mailer(config), cast(Any, None), clock=clock)  # fmt: skip
    app.apply_config(config)
    try:
        history(app, 14, lambda day: 4)
        add(app, MONDAY + 14 * DAY, [story() for _ in range(30)])
        clock.now = MONDAY + 14 * DAY + timedelta(hours=1)
        assert check_spikes(app) == 1
        (sent,) = alerts(app)
        assert sent["Subject"] == "Grok: 34 Meldungen in 24 h, 8,5-mal so viele wie üblich"
        assert "Die Meldungen dahinter:" in body(sent)
    finally:
        store.close()


def test_a_spike_alert_reaches_the_kinds_that_take_spikes_a_channel_as_chat_text(
    make_app: MakeApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    import json

    from monitor.chat import chat_text

    monkeypatch.setenv("MONITOR_TEST_HOOK_SECRET", "s3cret")
    hook = {
        "name": "hook",
        "url": "https://hooks.example.org/monitor",
        "secret_env": "MONITOR_TEST_HOOK_SECRET",
        "kinds": ["spikes"],
    }
    digests_only = {"address": "b@example.org", "kinds": ["digests"]}
    clock = Clock(MONDAY)
    app = make_app(clock, recipients=["a@example.org", hook, digests_only])
    history(app, 15, lambda day: 10)
    surge = MONDAY + 14 * DAY + timedelta(hours=11)
    add(app, surge, [story(feed=f"feed{n % 3}") for n in range(40)])
    clock.now = surge + timedelta(hours=1)
    assert check_spikes(app) == 1
    ready = {m.recipient: m for m in app.store.ready_messages(clock.now + 7 * DAY)}
    assert set(ready) == {"a@example.org", "hook"}  # b takes digests only
    document = json.loads(ready["hook"].mime)
    assert document["kind"] == "spike" and document["stories"]
    text = chat_text(ready["hook"].mime)
    mail = email.message_from_bytes(ready["a@example.org"].mime, policy=policy.default)
    assert text.title == str(mail["Subject"])
    assert "• feed" in text.text and "](https://example.org/" in text.text
