"""Digests and delivery: schedules on an injected clock, a real aiosmtpd server on 127.0.0.1."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from monitor.app import App, running_app
from monitor.config import load_config
from monitor.delivery import run_digests
from monitor.models import Item
from tests.conftest import SmtpRecorder, free_port


@dataclass
class Clock:
    now: datetime

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


def item(n: int, title: str = "Neues von xAI") -> Item:
    return Item(
        f"u:example.org/{n}",
        "heise",
        f"g{n}",
        f"https://example.org/{n}",
        title,
        "Zusammenfassung über xAI",
        utc(2026, 3, 1),
        "de",
    )


def settings(port: int, **watchlist: Any) -> dict[str, Any]:
    return {
        "feeds": [{"name": "heise", "url": "https://heise.example/feed"}],
        "watchlists": [
            {
                "name": "xAI",
                "terms": ["xAI"],
                "digest": "daily 07:00",
                "recipients": ["a@example.org", "b@example.org"],
                **watchlist,
            }
        ],
        "smtp": {
            "host": "127.0.0.1",
            "port": port,
            "from": "monitor@example.org",
            "starttls": False,
            "timeout": 5,
        },
    }


@pytest.fixture
def open_app(write_config: Callable[..., Path]) -> Callable[..., Any]:
    """An App on a SQLite file with the given config and clock; its feeds polled since."""
    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def make(data: dict[str, Any], clock: Clock) -> AsyncIterator[App]:
        config = load_config(write_config(data))
        async with running_app(config, clock=clock) as app:
            for feed in config.feeds:
                app.store.update_feed(feed.name, last_polled_at=clock())
            yield app

    return make


def add_matches(app: App, *numbers: int) -> None:
    app.store.ingest([item(n) for n in numbers], app.matcher.match, app.recipients, app.clock())


async def test_daily_digest_sent_once_per_recipient_at_its_time(
    open_app: Any, smtp_server: tuple[SmtpRecorder, int]
) -> None:
    recorder, port = smtp_server
    clock = Clock(utc(2026, 11, 30, 5, 0))  # 06:00 Berlin
    async with open_app(settings(port), clock) as app:
        await run_digests(app)  # first run: the current period (yesterday 07:00) is handled
        recorder.messages.clear()
        add_matches(app, 1, 2)
        clock.advance(minutes=30)
        assert (await run_digests(app)).composed == 0  # 06:30: not yet
        clock.advance(minutes=31)  # 07:01
        report = await run_digests(app)
        assert (report.composed, report.sent) == (2, 2)
        clock.advance(minutes=10)
        assert (await run_digests(app)).composed == 0  # the period is done
    assert sorted(r[0] for _, r, _ in recorder.messages) == ["a@example.org", "b@example.org"]


async def test_one_refused_recipient_is_dead_lettered_others_delivered(
    open_app: Any, smtp_server: tuple[SmtpRecorder, int]
) -> None:
    recorder, port = smtp_server
    recorder.refuse["b@example.org"] = "550 5.1.1 mailbox unavailable"
    clock = Clock(utc(2026, 11, 30, 6, 30))
    async with open_app(settings(port), clock) as app:
        add_matches(app, 1)
        report = await run_digests(app, force=True)
        assert (report.sent, report.dead, report.retrying) == (1, 1, 0)
        assert app.store.dead_letters()[0].recipient == "b@example.org"
        assert "550" in app.store.dead_letters()[0].error
        clock.advance(hours=2)
        assert (await run_digests(app, force=True)).sent == 0  # the dead letter is not retried
    assert [r for _, r, _ in recorder.messages] == [["a@example.org"]]


async def test_dead_letters_go_out_again_once_their_cause_is_fixed(
    open_app: Any,
    smtp_server: tuple[SmtpRecorder, int],
    write_config: Callable[..., Path],
    capsys: Any,
) -> None:
    import sqlalchemy as sa

    from monitor.cli import main
    from monitor.store.schema import messages

    recorder, port = smtp_server
    recorder.refuse["b@example.org"] = "550 5.1.1 mailbox unavailable"
    clock = Clock(utc(2026, 11, 30, 6, 30))
    data = settings(port)
    async with open_app(data, clock) as app:
        add_matches(app, 1)
        assert (await run_digests(app, force=True)).dead == 1
        with app.store.engine.connect() as tx:
            dead_id = tx.execute(
                sa.select(messages.c.message_id).where(messages.c.status == "dead")
            ).scalar_one()
        del recorder.refuse["b@example.org"]  # the mailbox is back
        path = write_config(data)  # the same file and database the app uses
        assert main(["--config", str(path), "retry-dead", "--recipient", "c@example.org"]) == 0
        assert "0 dead letter(s) to c@example.org" in capsys.readouterr().out
        assert main(["--config", str(path), "dead-letters", "--recipient", "b@EXAMPLE.org"]) == 0
        assert "b@example.org" in capsys.readouterr().out  # one mailbox, however written
        assert main(["--config", str(path), "retry-dead", "--recipient", "b@EXAMPLE.org"]) == 0
        assert "1 dead letter(s) to b@example.org queued again" in capsys.readouterr().out
        assert main(["--config", str(path), "retry-dead"]) == 0
        assert "0 dead letter(s) queued again" in capsys.readouterr().out
        # A chat channel is named as configured (docs/delivery.md), not as a mailbox.
        assert main(["--config", str(path), "retry-dead", "--recipient", "press-slack"]) == 0
        assert "0 dead letter(s) to press-slack" in capsys.readouterr().out
        clock.now = datetime.now(UTC) + timedelta(minutes=1)  # the command's clock is real
        assert (await run_digests(app)).sent == 1
        assert app.store.outbox().dead == 0 and app.store.dead_letters() == []
    assert [m["To"] for m in recorder.parsed()] == ["a@example.org", "b@example.org"]
    assert recorder.parsed()[1]["Message-ID"] == dead_id  # the very message refused before


async def test_temporary_failure_is_retried_and_delivered_once(
    open_app: Any, smtp_server: tuple[SmtpRecorder, int]
) -> None:
    recorder, port = smtp_server
    recorder.data_reply.append("451 4.3.0 try again later")
    clock = Clock(utc(2026, 11, 30, 6, 30))
    async with open_app(settings(port, recipients=["a@example.org"]), clock) as app:
        add_matches(app, 1)
        assert (await run_digests(app, force=True)).retrying == 1
        assert (await run_digests(app)).sent == 0  # backoff: not yet
        clock.advance(minutes=2)
        assert (await run_digests(app)).sent == 1
        clock.advance(hours=3)
        assert (await run_digests(app)).sent == 0
    assert len(recorder.messages) == 1


async def test_server_down_then_up_delivers_once(
    open_app: Any, write_config: Callable[..., Path]
) -> None:
    from aiosmtpd.controller import Controller

    port = free_port()
    clock = Clock(utc(2026, 11, 30, 6, 30))
    async with open_app(settings(port, recipients=["a@example.org"]), clock) as app:
        add_matches(app, 1)
        assert (await run_digests(app, force=True)).retrying == 1  # connection refused
        assert app.store.outbox().ready == 1
        recorder = SmtpRecorder()
        controller = Controller(recorder, hostname="127.0.0.1", port=port)
        controller.start()
        try:
            clock.advance(minutes=2)
            assert (await run_digests(app)).sent == 1
            clock.advance(hours=2)
            await run_digests(app)
        finally:
            controller.stop()
    assert len(recorder.messages) == 1


async def test_connection_dropped_mid_data_delivers_once(
    open_app: Any, smtp_server: tuple[SmtpRecorder, int]
) -> None:
    recorder, port = smtp_server
    recorder.drop_data = 1
    clock = Clock(utc(2026, 11, 30, 6, 30))
    async with open_app(settings(port, recipients=["a@example.org"]), clock) as app:
        add_matches(app, 1, 2)
        assert (await run_digests(app, force=True)).retrying == 1
        clock.advance(minutes=2)
        assert (await run_digests(app)).sent == 1
    assert len(recorder.messages) == 1
    assert recorder.parsed()[0]["Message-ID"].startswith("<digest.")


@pytest.mark.parametrize(
    ("start", "expected_utc_hours"),
    [
        (utc(2026, 3, 27, 12, 0), [6, 5, 5, 5]),  # spring forward on Sunday 2026-03-29
        (utc(2026, 10, 23, 12, 0), [5, 6, 6, 6]),  # fall back on Sunday 2026-10-25
    ],
)
async def test_daily_0700_berlin_across_dst_switches(
    open_app: Any,
    smtp_server: tuple[SmtpRecorder, int],
    start: datetime,
    expected_utc_hours: list[int],
) -> None:
    recorder, port = smtp_server
    clock = Clock(start)
    sent_at: list[datetime] = []
    async with open_app(settings(port, recipients=["a@example.org"]), clock) as app:
        await run_digests(app)  # today's 07:00 already passed: handled
        for day in range(4):
            add_matches(app, 100 + day)
            for _ in range(24 * 6):  # a tick every 10 minutes for a day
                clock.advance(minutes=10)
                if (await run_digests(app)).sent:
                    sent_at.append(clock.now)
    assert len(sent_at) == 4 == len(recorder.messages)
    assert [moment.hour for moment in sent_at] == expected_utc_hours
    assert all(moment.minute < 10 for moment in sent_at)


async def test_missed_digest_is_caught_up_once_after_downtime(
    open_app: Any, smtp_server: tuple[SmtpRecorder, int]
) -> None:
    recorder, port = smtp_server
    clock = Clock(utc(2026, 11, 30, 5, 0))
    async with open_app(settings(port, recipients=["a@example.org"]), clock) as app:
        await run_digests(app)
        add_matches(app, 1)
        clock.advance(hours=4)  # down from 06:00 to 10:00 Berlin: the 07:00 slot passed unseen
        assert (await run_digests(app)).sent == 1
        clock.advance(minutes=10)
        assert (await run_digests(app)).sent == 0
    assert len(recorder.messages) == 1


async def test_quiet_hours_defer_never_drop(
    open_app: Any, smtp_server: tuple[SmtpRecorder, int]
) -> None:
    recorder, port = smtp_server
    clock = Clock(utc(2026, 11, 30, 5, 0))
    data = settings(port, recipients=["a@example.org"], quiet_hours="06:30-09:00")
    async with open_app(data, clock) as app:
        await run_digests(app)
        add_matches(app, 1)
        clock.advance(hours=2, minutes=5)  # 08:05 Berlin: 07:00 is due but quiet
        assert (await run_digests(app)).sent == 0
        clock.advance(hours=1)  # 09:05: quiet hours over
        assert (await run_digests(app)).sent == 1
    assert len(recorder.messages) == 1


async def test_immediate_alert_batches_a_burst(
    open_app: Any, smtp_server: tuple[SmtpRecorder, int]
) -> None:
    recorder, port = smtp_server
    clock = Clock(utc(2026, 11, 30, 12, 0))
    data = settings(port, recipients=["a@example.org"], digest="immediate")
    async with open_app(data, clock) as app:
        add_matches(app, 1)
        clock.advance(minutes=2)
        add_matches(app, 2, 3)
        assert (await run_digests(app)).sent == 0  # held: a burst is still coming in
        clock.advance(minutes=3, seconds=1)
        assert (await run_digests(app)).sent == 1
        clock.advance(minutes=10)
        assert (await run_digests(app)).sent == 0
    (message,) = recorder.parsed()
    assert message["Subject"] == "monitor alert: 3 new for xAI"
    assert message.get_body(("plain",)).get_content().count("* Neues von xAI") == 3  # type: ignore[union-attr]


async def test_empty_digests_are_skipped_unless_configured(
    open_app: Any, smtp_server: tuple[SmtpRecorder, int], write_config: Callable[..., Path]
) -> None:
    recorder, port = smtp_server
    clock = Clock(utc(2026, 11, 30, 5, 0))
    async with open_app(settings(port, recipients=["a@example.org"]), clock) as app:
        await run_digests(app)
        clock.advance(days=1)
        assert (await run_digests(app)).sent == 0
    data = settings(port, recipients=["a@example.org"])
    data["digests"] = {"send_empty": True}
    data["database"] = str(Path(write_config({}).parent / "other.db"))
    clock = Clock(utc(2026, 11, 30, 5, 0))
    async with open_app(data, clock) as app:
        await run_digests(app)
        clock.advance(days=1)
        assert (await run_digests(app)).sent == 1
    assert "Nothing new" in recorder.parsed()[-1].get_body(("plain",)).get_content()  # type: ignore[union-attr]


async def test_feed_health_section_lists_broken_feeds(
    open_app: Any, smtp_server: tuple[SmtpRecorder, int]
) -> None:
    recorder, port = smtp_server
    clock = Clock(utc(2026, 11, 30, 6, 30))
    async with open_app(settings(port, recipients=["a@example.org"]), clock) as app:
        app.store.update_feed(
            "heise", status="broken", last_error="HTTP 500", error_since=clock.now
        )
        add_matches(app, 1)
        await run_digests(app, force=True)
    html = recorder.parsed()[0].get_body(("html",)).get_content()  # type: ignore[union-attr]
    assert "Feed health" in html
    assert "heise: the server has a problem of its own (HTTP 500) (broken since" in html


def test_test_email_command(
    smtp_server: tuple[SmtpRecorder, int], write_config: Callable[..., Path], capsys: Any
) -> None:
    from monitor.cli import main

    recorder, port = smtp_server
    path = str(write_config(settings(port)))
    assert main(["--config", path, "test-email", "ops@example.org"]) == 0
    assert "handed to SMTP 127.0.0.1" in capsys.readouterr().out
    (message,) = recorder.parsed()
    assert message["To"] == "ops@example.org"
    assert "Grüße von monitor" in message.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    recorder.refuse["nobody@example.org"] = "550 no such user"
    assert main(["--config", path, "test-email", "nobody@example.org"]) == 1
    assert "550" in capsys.readouterr().err
    assert main(["--config", path, "test-email", "not an address"]) == 2


def test_a_test_email_or_preview_with_a_staged_config_leaves_the_polled_feeds_alone(
    smtp_server: tuple[SmtpRecorder, int], write_config: Callable[..., Path]
) -> None:
    """Which feeds are polled is recorded by the last process that loaded a config: a
    `test-email` with a staged config that lacked a feed stopped every worker polling it."""
    import sqlalchemy as sa

    from monitor.cli import main
    from monitor.store import open_store
    from monitor.store.schema import feeds

    _, port = smtp_server
    data = settings(port)
    data["feeds"].append({"name": "golem", "url": "https://golem.example/feed"})
    running = write_config(data)
    assert main(["--config", str(running), "poll", "--feed", "golem"]) == 0  # records both
    del data["feeds"][1]  # a staged config without golem
    staged = write_config(data, "staged.yaml")
    assert main(["--config", str(staged), "test-email", "ops@example.org"]) == 0
    preview_dir = str(staged.parent / "preview")
    assert main(["--config", str(staged), "digest", "--preview", "--out", preview_dir]) == 0
    store = open_store(load_config(running).database)
    with store.engine.connect() as connection:
        active = dict(connection.execute(sa.select(feeds.c.name, feeds.c.active)).all())
    store.close()
    assert active == {"heise": True, "golem": True}


async def test_priority_immediate_watchlist_sends_alerts(
    open_app: Any, smtp_server: tuple[SmtpRecorder, int]
) -> None:
    recorder, port = smtp_server
    clock = Clock(utc(2026, 11, 30, 12, 0))
    data = settings(port, recipients=["a@example.org"], priority="immediate")
    async with open_app(data, clock) as app:
        add_matches(app, 1)
        clock.advance(minutes=5)
        assert (await run_digests(app)).sent == 1  # not waiting for tomorrow's 07:00
    assert recorder.parsed()[0]["Subject"].startswith("monitor alert:")


async def test_an_alert_queued_late_with_the_time_of_a_sent_one_still_goes_out(
    open_app: Any, smtp_server: tuple[SmtpRecorder, int]
) -> None:
    """A write round stores its feeds' items with the round's time; if they commit minutes
    apart, an alert may be sent for the first before the second is queued, with the same
    time. That time was the alert's slot, already handled: the pair was never due again."""
    recorder, port = smtp_server
    clock = Clock(utc(2026, 11, 30, 12, 0))
    data = settings(port, recipients=["a@example.org"], priority="immediate")
    async with open_app(data, clock) as app:
        queued = clock()
        add_matches(app, 1)
        clock.advance(minutes=5)
        assert (await run_digests(app)).sent == 1
        app.store.ingest([item(2)], app.matcher.match, app.recipients, queued)
        assert (await run_digests(app)).sent == 1
        clock.advance(hours=1)
        add_matches(app, 3)
        clock.advance(minutes=5)
        assert (await run_digests(app)).sent == 1
        assert app.store.pending_entries() == []
    assert len(recorder.messages) == 3


async def test_a_message_that_fails_to_render_holds_back_only_its_recipient(
    open_app: Any,
    smtp_server: tuple[SmtpRecorder, int],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A user template that fails for some items only (the sample at load time renders):
    that recipient's matches stay pending and are named in the log; the other recipients'
    alerts go out. It used to raise out of the tick, and nothing was sent to anyone."""
    recorder, port = smtp_server
    templates = tmp_path / "templates"
    templates.mkdir()
    (templates / "alert.txt.j2").write_text(
        "{% if watchlists[0].entries | length > 1 %}{{ no_such_name }}{% endif %}{{ subject }}\n",
        encoding="utf-8",
    )
    data = settings(port, recipients=["a@example.org"], priority="immediate")
    data["watchlists"].append(
        {
            "name": "Grok",
            "terms": ["Grok"],
            "priority": "immediate",
            "recipients": ["b@example.org"],
        }
    )
    data["digests"] = {"templates_dir": str(templates)}
    clock = Clock(utc(2026, 11, 30, 12, 0))
    async with open_app(data, clock) as app:
        items = [item(1, "xAI eins"), item(2, "xAI zwei"), item(3, "Grok drei")]
        app.store.ingest(items, app.matcher.match, app.recipients, clock())
        clock.advance(minutes=5)
        with caplog.at_level(logging.ERROR, logger="monitor.delivery"):
            report = await run_digests(app)
        assert (report.composed, report.sent, report.held_back) == (1, 1, 1)
        assert {r for r, _ in app.store.pending_entries()} == {"a@example.org"}
    assert [r[0] for _, r, _ in recorder.messages] == ["b@example.org"]
    assert "could not render the alert for a@example.org (watchlists xAI)" in caplog.text


async def test_each_message_is_leased_right_before_it_is_sent(
    open_app: Any, smtp_server: tuple[SmtpRecorder, int]
) -> None:
    """A batch can outlast a send lease. When this worker's leases have run out while it
    sends the first message, another worker may take the second: this one must not send
    it too (it used to lease the whole batch up front and never look again)."""
    from email import message_from_bytes

    import sqlalchemy as sa

    from monitor.delivery import SEND_LEASE
    from monitor.store.schema import messages

    recorder, port = smtp_server
    clock = Clock(utc(2026, 11, 30, 12, 0))
    async with open_app(settings(port, priority="immediate"), clock) as app:
        add_matches(app, 1)
        clock.advance(minutes=10)
        taken: list[str] = []

        def meanwhile(raw: bytes) -> None:
            if taken:
                return
            sending = message_from_bytes(raw)["Message-ID"]
            with app.store.engine.begin() as tx:  # this worker's leases run out
                tx.execute(messages.update().values(lease_until=clock() - timedelta(minutes=1)))
                others = tx.execute(
                    sa.select(messages.c.message_id).where(messages.c.message_id != sending)
                ).scalars()
            for other in others:
                if app.store.lease_message(other, "w2", clock(), clock() + SEND_LEASE):
                    taken.append(other)

        recorder.on_data = meanwhile
        report = await run_digests(app)
        assert report.composed == 2 and report.sent == 1 and len(taken) == 1
        assert len(recorder.messages) == 1  # the other is w2's to send
        with app.store.engine.connect() as tx:
            row = tx.execute(
                sa.select(messages.c.status, messages.c.lease_owner).where(
                    messages.c.message_id == taken[0]
                )
            ).one()
        assert tuple(row) == ("ready", "w2")


async def test_a_sent_message_is_not_dead_lettered_by_a_late_refusal(open_app: Any) -> None:
    clock = Clock(utc(2026, 11, 30, 12, 0))
    async with open_app(settings(free_port(), priority="immediate"), clock) as app:
        add_matches(app, 1)
        clock.advance(minutes=10)
        await run_digests(app)  # composed; the server is down
        (first, _) = app.store.ready_messages(clock() + timedelta(days=1))
        app.store.mark_sent(first.message_id, clock())
        app.store.mark_dead(first.message_id, "550 late", clock())
        assert app.store.outbox().dead == 0


async def test_new_deliveries_on_reused_ids_get_a_new_message_id(
    open_app: Any, smtp_server: tuple[SmtpRecorder, int]
) -> None:
    """SQLite hands the ids of deliveries pruned from the end of the table to new ones: the
    Message-ID must still be new, or mail clients hide the message as a repeat."""
    from monitor.models import DigestEntry

    _, port = smtp_server
    clock = Clock(utc(2026, 11, 30, 12, 0))
    async with open_app(settings(port), clock) as app:
        renderer = app.renderer
        old = renderer.message_id("a@example.org", [DigestEntry((7,), "xAI", item(1))])
        again = renderer.message_id("a@example.org", [DigestEntry((7,), "xAI", item(1))])
        new = renderer.message_id("a@example.org", [DigestEntry((7,), "xAI", item(2))])
        assert old == again != new


def test_test_emails_have_message_ids_of_their_own(
    smtp_server: tuple[SmtpRecorder, int], write_config: Callable[..., Path]
) -> None:
    from monitor.cli import main

    recorder, port = smtp_server
    path = str(write_config(settings(port)))
    assert main(["--config", path, "test-email", "ops@example.org"]) == 0
    assert main(["--config", path, "test-email", "ops@example.org"]) == 0
    first, second = recorder.parsed()
    assert first["Message-ID"] != second["Message-ID"]


async def test_preview_renders_an_immediate_watchlist_as_its_alert(
    open_app: Any, smtp_server: tuple[SmtpRecorder, int]
) -> None:
    from email import message_from_bytes, policy

    from monitor.delivery import preview

    recorder, port = smtp_server
    clock = Clock(utc(2026, 11, 30, 12, 0))
    data = settings(port, recipients=["a@example.org"], priority="immediate")
    async with open_app(data, clock) as app:
        add_matches(app, 1)
        (shown,) = preview(app)
        clock.advance(minutes=10)
        await run_digests(app)
    (sent,) = recorder.parsed()
    subject = str(message_from_bytes(shown.mime, policy=policy.default)["Subject"])
    assert subject == sent["Subject"] and subject.startswith("monitor alert:")


async def test_a_pair_added_on_a_used_database_waits_for_its_feeds_polls_not_a_day(
    open_app: Any, smtp_server: tuple[SmtpRecorder, int], write_config: Callable[..., Path]
) -> None:
    """Issue 23: a new (watchlist, recipient) pair's first digest is due once the feeds it
    reads have been polled since it appeared (here by a reload), never before: a digest tick
    between the reload and the poll used to mark today's period handled, empty. A feed with
    a long interval of its own is not waited for."""
    recorder, port = smtp_server
    clock = Clock(utc(2026, 11, 30, 12, 0))
    data = settings(port, recipients=["a@example.org"])
    data["feeds"].append({"name": "Wochenblatt", "url": "https://weekly.example/feed"})
    async with open_app(data, clock) as app:
        await run_digests(app)  # a's first digest period: handled (nothing matched)
        assert app.store.last_runs().keys() == {("xAI", "a@example.org")}
        app.store.update_feed("Wochenblatt", next_poll_at=clock() + timedelta(days=7))

        clock.advance(minutes=5)
        data["watchlists"][0]["recipients"] = ["a@example.org", "c@example.org"]
        app.apply_config(load_config(write_config(data)))
        clock.advance(minutes=1)
        assert (await run_digests(app)).composed == 0  # heise not polled since: wait
        assert ("xAI", "c@example.org") not in app.store.last_runs()

        add_matches(app, 1)  # the poll's matches, queued to c (and a) as they are stored
        app.store.update_feed("heise", last_polled_at=clock())
        report = await run_digests(app)
        assert (report.composed, report.sent) == (1, 1)  # c's first digest; a's waits for 07:00
    assert [r for _, r, _ in recorder.messages] == [["c@example.org"]]


def slow_server_settings(port: int, **smtp: Any) -> dict[str, Any]:
    data = settings(port, recipients=["a@example.org"])
    data["smtp"].update(smtp)
    return data


async def test_a_server_slow_to_answer_the_end_of_a_message_gets_one_copy(
    open_app: Any, smtp_server: tuple[SmtpRecorder, int]
) -> None:
    """A server that answers 250 after the command timeout (scanning, say) kept the message,
    and every retry sent it another copy: the wait for that reply is RFC 5321's own."""
    recorder, port = smtp_server
    recorder.data_delay = 3.5
    clock = Clock(utc(2026, 11, 30, 6, 30))
    async with open_app(slow_server_settings(port, timeout=2), clock) as app:
        add_matches(app, 1)
        assert (await run_digests(app, force=True)).sent == 1
        clock.advance(hours=2)
        assert (await run_digests(app, force=True)).sent == 0
    assert len(recorder.messages) == 1


async def test_no_reply_to_the_end_of_a_message_allows_one_resend_then_a_dead_letter(
    open_app: Any, smtp_server: tuple[SmtpRecorder, int], caplog: pytest.LogCaptureFixture
) -> None:
    """No reply within data_timeout: the server may have the message (RFC 1047). It is sent
    once more, never a third time; then it is a dead letter that says why."""
    recorder, port = smtp_server
    recorder.data_delay = 2.0
    clock = Clock(utc(2026, 11, 30, 6, 30))
    async with open_app(slow_server_settings(port, data_timeout="0.5s"), clock) as app:
        add_matches(app, 1)
        assert (await run_digests(app, force=True)).retrying == 1
        assert app.store.outbox().ready == 1
        for _ in range(3):
            clock.advance(hours=2)
            await run_digests(app)
        assert app.store.outbox().ready == 0
        (dead,) = app.store.dead_letters()
        recipient, error = dead.recipient, dead.error
    assert len(recorder.messages) == 2  # the first and the one resend, each kept by the server
    assert recipient == "a@example.org"
    assert "no reply to the end of the message within 0.5 s" in error
    assert "not sent a third time" in error and "monitor retry-dead" in error
    assert "dead-lettered" in caplog.text


async def test_a_sent_mark_the_database_refuses_is_retried_never_the_send(
    open_app: Any,
    smtp_server: tuple[SmtpRecorder, int],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Another process holds SQLite's write lock (longer than the busy timeout) while the
    server accepts a message: the "sent" mark failed, and the message went out again."""
    import sqlite3
    import threading
    import time

    import sqlalchemy as sa

    from monitor.store.schema import messages

    recorder, port = smtp_server
    clock = Clock(utc(2026, 11, 30, 6, 30))
    async with open_app(settings(port, recipients=["a@example.org"]), clock) as app:
        add_matches(app, 1)

        def short_busy_timeout(connection: Any, _: Any) -> None:
            connection.execute("PRAGMA busy_timeout=200")  # ms, after the store's own

        sa.event.listen(app.store.engine, "connect", short_busy_timeout)
        app.store.engine.dispose()
        refused, released = threading.Event(), threading.Event()

        class Refusals(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                if "sent mark could not be written" in record.getMessage():
                    refused.set()

        watcher = Refusals()
        logging.getLogger("monitor.delivery").addHandler(watcher)

        def hold_the_write_lock(_: bytes) -> None:  # while the message is in transmission
            other = sqlite3.connect(
                tmp_path / "monitor.db", isolation_level=None, check_same_thread=False
            )
            other.execute("BEGIN IMMEDIATE")

            def release() -> None:  # once a mark was refused, and a retry or two later
                refused.wait(timeout=60)
                time.sleep(1.0)
                other.rollback()
                other.close()
                released.set()

            threading.Thread(target=release, daemon=True).start()

        recorder.on_data = hold_the_write_lock
        try:
            report = await run_digests(app, force=True)
        finally:
            logging.getLogger("monitor.delivery").removeHandler(watcher)
        assert released.is_set() and report.sent == 1
        assert (
            "the sent mark could not be written: (sqlite3.OperationalError) database is locked"
            in caplog.text
        )
        recorder.on_data = None
        for _ in range(3):
            clock.advance(minutes=11)  # past any lease
            await run_digests(app)
        with app.store.engine.connect() as tx:
            status = tx.execute(sa.select(messages.c.status)).scalars().all()
        assert app.accepted == {}
    assert status == ["sent"]
    assert len(recorder.messages) == 1


async def test_one_mailbox_written_two_ways_gets_one_copy(
    open_app: Any, smtp_server: tuple[SmtpRecorder, int]
) -> None:
    recorder, port = smtp_server
    clock = Clock(utc(2026, 11, 30, 6, 30))
    data = settings(port, recipients=["a@example.org", "a@EXAMPLE.org", "b@Example.Org"])
    async with open_app(data, clock) as app:
        add_matches(app, 1)
        assert (await run_digests(app, force=True)).sent == 2
    assert sorted(r for _, (r,), _ in recorder.messages) == ["a@example.org", "b@example.org"]
