"""Chat channels through the outbox: a signed JSON webhook and ntfy against real HTTP servers
on 127.0.0.1; Slack, Telegram, Discord and Teams through Apprise's own plugins with their HTTP
layer replaced (those services have fixed hosts), so no request leaves the machine."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
from pytest_httpserver import HTTPServer
from requests.adapters import HTTPAdapter

from monitor import channels
from monitor.app import App, load_checked, running_app
from monitor.chat import fit, render_chat, story_line
from monitor.cli import main
from monitor.config import load_config
from monitor.delivery import run_digests
from monitor.errors import ConfigError
from monitor.models import DigestEntry, Hit, Item, MessageKind
from monitor.store.schema import messages
from tests.conftest import HungHost

SECRET = "whsec-Zr4Yx0-do-not-log"  # the webhook's signing secret
TOKEN = "TIiajkdnlazkcOXrIdevi7FQ"  # the token part of the Slack URL


@dataclass
class Clock:
    now: datetime = field(default_factory=lambda: datetime(2026, 11, 30, 6, 30, tzinfo=UTC))

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


def item(n: int, title: str = "Neues von xAI", feed: str = "heise") -> Item:
    return Item(
        f"u:example.org/{n}",
        feed,
        f"g{n}",
        f"https://example.org/{n}",
        title,
        "Zusammenfassung",
        datetime(2026, 11, 30, 6, n % 60, tzinfo=UTC),
        "de",
    )


def settings(*recipients: Any, **watchlist: Any) -> dict[str, Any]:
    return {
        "feeds": [{"name": "heise", "url": "https://heise.example/feed"}],
        "watchlists": [
            {
                "name": "xAI",
                "terms": ["xAI"],
                "priority": "immediate",
                "recipients": list(recipients),
                **watchlist,
            }
        ],
    }


def webhook(url: str, **extra: Any) -> dict[str, Any]:
    return {"name": "hook", "url": url, "secret_env": "MONITOR_TEST_HOOK_SECRET", **extra}


@pytest.fixture(autouse=True)
def _secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MONITOR_TEST_HOOK_SECRET", SECRET)
    monkeypatch.setenv("MONITOR_TEST_SLACK_URL", f"slack://T1JJ3T3L2/A1BRTD4JD/{TOKEN}/#press")


@pytest.fixture
def open_app(write_config: Callable[..., Path]) -> Callable[..., Any]:
    @asynccontextmanager
    async def make(data: dict[str, Any], clock: Clock) -> AsyncIterator[App]:
        config = load_checked(write_config(data))
        async with running_app(config, clock=clock) as app:
            for feed in config.feeds:  # polled since: a first digest is due at once
                app.store.update_feed(feed.name, last_polled_at=clock())
            yield app

    return make


def add_matches(app: App, *numbers: int, title: str = "Neues von xAI") -> None:
    items = [item(n, title) for n in numbers]
    app.store.ingest(items, app.matcher.match, app.recipients, app.clock())


def stored_ids(app: App) -> list[str]:
    with app.store.engine.connect() as tx:
        return list(
            tx.execute(messages.select().with_only_columns(messages.c.message_id)).scalars()
        )


# ------------------------------------------------------------------ the signed webhook


async def test_webhook_gets_one_signed_json_post_with_the_idempotency_key(
    httpserver: HTTPServer, open_app: Any
) -> None:
    httpserver.expect_request("/hook", method="POST").respond_with_data("ok")
    clock = Clock()
    async with open_app(settings(webhook(httpserver.url_for("/hook"))), clock) as app:
        add_matches(app, 1, 2)
        before = int(time.time())
        report = await run_digests(app, force=True)
        assert (report.composed, report.sent) == (1, 1)
        clock.advance(hours=1)
        assert (await run_digests(app, force=True)).sent == 0  # marked: never again
        [message_id] = stored_ids(app)
    [(request, _)] = httpserver.log
    body = request.get_data()
    assert request.method == "POST"
    assert request.headers["Content-Type"] == "application/json; charset=utf-8"
    assert request.headers["Idempotency-Key"] == message_id
    assert request.headers["X-Monitor-Message-Id"] == message_id
    stamp = request.headers["X-Monitor-Timestamp"]
    assert before <= int(stamp) <= int(time.time())
    expected = hmac.new(SECRET.encode(), stamp.encode() + b"." + body, hashlib.sha256)
    assert request.headers["X-Monitor-Signature"] == "sha256=" + expected.hexdigest()
    document = json.loads(body)
    assert document["message_id"] == message_id
    assert document["kind"] == "alert" and document["recipient"] == "hook"
    assert [s["url"] for s in document["stories"]] == [
        "https://example.org/2",
        "https://example.org/1",
    ]
    assert document["stories"][0]["matched"] == ["xAI"]
    assert document["title"] == "monitor alert: 2 stories for xAI"
    assert document["text"].splitlines()[0] == "• heise: [Neues von **xAI**](https://example.org/2)"


@pytest.mark.parametrize(
    ("status", "outcome"),
    [(500, "retrying"), (503, "retrying"), (429, "retrying"), (404, "dead"), (401, "dead"),
     (403, "dead"), (410, "dead")],
)  # fmt: skip
async def test_webhook_failures_are_retried_or_dead_lettered(
    httpserver: HTTPServer,
    open_app: Any,
    caplog: pytest.LogCaptureFixture,
    status: int,
    outcome: str,
) -> None:
    caplog.set_level(logging.DEBUG)
    httpserver.expect_request("/hook").respond_with_data("no", status=status)
    async with open_app(settings(webhook(httpserver.url_for("/hook"))), Clock()) as app:
        add_matches(app, 1)
        report = await run_digests(app, force=True)
        assert (report.retrying, report.dead) == ((1, 0) if outcome == "retrying" else (0, 1))
        if outcome == "dead":
            [letter] = app.store.dead_letters()
            assert letter.recipient == "hook" and f"HTTP {status}" in letter.error
            assert f":{httpserver.port}/..." in letter.error  # the path is masked
            assert "/hook" not in letter.error
        else:
            [deferred] = app.store.deferred_messages()
            assert f"HTTP {status}" in deferred.error
    logged = "\n".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
    assert f"HTTP {status}" in logged and SECRET not in logged


async def test_a_429_waits_at_least_its_retry_after_then_delivers_once(
    httpserver: HTTPServer, open_app: Any
) -> None:
    httpserver.expect_oneshot_request("/hook").respond_with_data(
        "slow down", status=429, headers={"Retry-After": "7200"}
    )
    httpserver.expect_request("/hook").respond_with_data("ok")
    clock = Clock()
    async with open_app(settings(webhook(httpserver.url_for("/hook"))), clock) as app:
        add_matches(app, 1)
        assert (await run_digests(app, force=True)).retrying == 1
        [deferred] = app.store.deferred_messages()
        assert deferred.next_attempt_at >= clock.now + timedelta(seconds=7200)
        clock.advance(minutes=90)  # the backoff alone (at most 1 min) would have retried
        assert (await run_digests(app)).sent == 0
        clock.advance(minutes=31)
        assert (await run_digests(app)).sent == 1
    assert len(httpserver.log) == 2
    assert (
        httpserver.log[0][0].headers["Idempotency-Key"]
        == httpserver.log[1][0].headers["Idempotency-Key"]
    )


async def test_a_webhook_that_never_answers_is_retried(
    hung_host: HungHost, open_app: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(channels, "WEBHOOK_TIMEOUT", 0.5)
    async with open_app(settings(webhook(hung_host.url("/hook"))), Clock()) as app:
        add_matches(app, 1)
        assert (await run_digests(app, force=True)).retrying == 1
        assert "no answer" in app.store.deferred_messages()[0].error


# ------------------------------------------------------------------ ntfy on a custom host


async def test_ntfy_on_its_own_host_gets_the_message_and_its_password_stays_out_of_the_logs(
    httpserver: HTTPServer,
    open_app: Any,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    password = "ntfy-Pa55-do-not-log"
    host = f"127.0.0.1:{httpserver.port}"
    monkeypatch.setenv("MONITOR_TEST_NTFY_URL", f"ntfy://press:{password}@{host}/alerts")
    httpserver.expect_oneshot_request("/", method="POST").respond_with_data("busy", status=503)
    httpserver.expect_request("/", method="POST").respond_with_json({"id": "x"})
    caplog.set_level(logging.DEBUG)
    clock = Clock()
    recipient = {"name": "ntfy", "url_env": "MONITOR_TEST_NTFY_URL"}
    async with open_app(settings(recipient), clock) as app:
        add_matches(app, 1)
        assert (await run_digests(app, force=True)).retrying == 1
        error = app.store.deferred_messages()[0].error
        assert "HTTP 503" in error and f"ntfy://***@{host}/alerts" in error
        clock.advance(minutes=2)
        assert (await run_digests(app)).sent == 1
    main(["--config", str(app.config.source), "status"])
    shown = capsys.readouterr()
    assert "messages:   ntfy 1 sent" in shown.out
    assert password not in shown.out + shown.err
    request = httpserver.log[-1][0]
    credentials = base64.b64encode(f"press:{password}".encode()).decode()
    assert request.headers["Authorization"] == f"Basic {credentials}"
    payload = json.loads(request.get_data())
    assert payload["topic"] == "alerts"
    assert payload["title"] == "monitor alert: 1 story for xAI"
    assert "https://example.org/1" in payload["message"]
    logged = "\n".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
    assert caplog.records  # the capture worked
    assert password not in logged and credentials not in logged
    assert password not in error


async def test_matrix_on_its_own_homeserver_gets_the_story_as_html(
    httpserver: HTTPServer, open_app: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = "syt_bW9uaXRvcg_do-not-log"
    host = f"127.0.0.1:{httpserver.port}"
    monkeypatch.setenv("MONITOR_TEST_MATRIX_URL", f"matrix://{token}@{host}/#press")
    api = "/_matrix/client/v3"
    httpserver.expect_request(f"{api}/account/whoami").respond_with_json(
        {"user_id": "@m:x"}
    )  # :x is the
    # homeserver's name, which completes the room alias #press
    httpserver.expect_request(f"{api}/join/#press:x", method="POST").respond_with_json(
        {"room_id": "!room:x"}
    )
    httpserver.expect_request(
        re.compile(rf"{api}/rooms/!room:x/send/m\.room\.message/.+"), method="PUT"
    ).respond_with_json({"event_id": "$1"})
    recipient = {"name": "matrix", "url_env": "MONITOR_TEST_MATRIX_URL"}
    async with open_app(settings(recipient), Clock()) as app:
        add_matches(app, 1)
        assert (await run_digests(app, force=True)).sent == 1
    send = httpserver.log[-1][0]
    assert send.method == "PUT" and send.headers["Authorization"] == f"Bearer {token}"
    event = json.loads(send.get_data())
    assert event["format"] == "org.matrix.custom.html"
    assert (
        '<a href="https://example.org/1">Neues von <strong>xAI</strong></a>'
        in event["formatted_body"]
    )


async def test_matrix_refusing_the_token_is_a_dead_letter(
    httpserver: HTTPServer, open_app: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(
        "MONITOR_TEST_MATRIX_URL", f"matrix://revoked@127.0.0.1:{httpserver.port}/#p"
    )
    httpserver.expect_request(re.compile("/_matrix/.*")).respond_with_json(
        {"errcode": "M_UNKNOWN_TOKEN", "error": "Invalid access token"}, status=401
    )
    recipient = {"name": "matrix", "url_env": "MONITOR_TEST_MATRIX_URL"}
    async with open_app(settings(recipient), Clock()) as app:
        add_matches(app, 1)
        assert (await run_digests(app, force=True)).dead == 1
        assert "HTTP 401" in app.store.dead_letters()[0].error


# ------------------------------------------------------------------ fixed-host services


@dataclass
class FakeServices:
    """Apprise's HTTP layer (requests' adapter) replaced: requests are recorded, answered
    with `status`, and never leave the machine."""

    status: int = 200
    body: bytes = b"ok"
    requests: list[requests.PreparedRequest] = field(default_factory=list)

    def send(self, _: HTTPAdapter, request: requests.PreparedRequest, **__: Any) -> Any:
        self.requests.append(request)
        answer = requests.Response()
        answer.status_code = self.status
        answer._content = self.body
        answer.url = request.url or ""
        answer.request = request
        return answer


@pytest.fixture
def services(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeServices]:
    fake = FakeServices()
    monkeypatch.setattr(HTTPAdapter, "send", lambda adapter, request, **kw: fake.send(
        adapter, request, **kw))  # fmt: skip
    yield fake


SERVICES = {
    "slack": ("MONITOR_TEST_SLACK_URL", "https://hooks.slack.com/services/T1JJ3T3L2/A1BRTD4JD/"),
    "telegram": ("tgram://123456789:abcdefg_hijklmnop/12315544/", "https://api.telegram.org/bot"),
    "discord": ("discord://4174216298/JHMHI8qBe7bk2ZwO5U711o3dV_js", "https://discord.com/api/"),
    "teams": (
        "workflows://prod-01.westeurope.logic.azure.com:443/abc123def/sigSECRET/",
        "https://prod-01.westeurope.logic.azure.com:443/workflows/abc123def/",
    ),
}


def _channel(name: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    url, _ = SERVICES[name]
    if not url.startswith("MONITOR_"):
        monkeypatch.setenv(f"MONITOR_TEST_{name.upper()}_URL", url)
    return {"name": name, "url_env": f"MONITOR_TEST_{name.upper()}_URL"}


@pytest.mark.parametrize("service", sorted(SERVICES))
async def test_fixed_host_services_get_one_request_with_the_story_linked(
    services: FakeServices, open_app: Any, monkeypatch: pytest.MonkeyPatch, service: str
) -> None:
    services.body = b"ok" if service == "slack" else b'{"ok": true}'
    async with open_app(settings(_channel(service, monkeypatch)), Clock()) as app:
        add_matches(app, 1)
        assert (await run_digests(app, force=True)).sent == 1
    [request] = [r for r in services.requests if r.method == "POST"]
    assert (request.url or "").startswith(SERVICES[service][1])
    body = (request.body or b"").decode() if isinstance(request.body, bytes) else request.body
    text = json.dumps(json.loads(body or "{}"), ensure_ascii=False)
    link = {
        "slack": "<https://example.org/1|Neues von *xAI*>",
        "telegram": "[Neues von *xAI*](https://example.org/1)",
        "discord": "[Neues von **xAI**](https://example.org/1)",
        "teams": "[Neues von **xAI**](https://example.org/1)",
    }[service]
    assert link in text


@pytest.mark.parametrize(
    ("status", "outcome"), [(403, "dead"), (404, "dead"), (429, "retrying"), (502, "retrying")]
)
async def test_slack_refusals_are_dead_lettered_and_overloads_retried(
    services: FakeServices,
    open_app: Any,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    status: int,
    outcome: str,
) -> None:
    services.status, services.body = status, b"invalid_token"
    caplog.set_level(logging.DEBUG)
    async with open_app(settings(_channel("slack", monkeypatch)), Clock()) as app:
        add_matches(app, 1)
        report = await run_digests(app, force=True)
        assert (report.retrying, report.dead) == ((1, 0) if outcome == "retrying" else (0, 1))
        errors = [m.error for m in app.store.deferred_messages()] + [
            d.error for d in app.store.dead_letters()
        ]
    assert f"HTTP {status}" in errors[0] and "slack://T...2/A...D/T...Q" in errors[0]
    logged = "\n".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
    assert "delivery failed" in logged or "dead-lettered" in logged
    assert TOKEN not in logged and TOKEN not in errors[0]


async def test_a_burst_of_stories_stays_within_telegrams_limit_with_the_rest_counted(
    services: FakeServices, open_app: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    services.body = b'{"ok": true}'
    long_title = "xAI " + "sehr lange Überschrift " * 8
    async with open_app(settings(_channel("telegram", monkeypatch)), Clock()) as app:
        add_matches(app, *range(1, 121), title=long_title)
        assert (await run_digests(app, force=True)).sent == 1  # a burst is one message
    [request] = [r for r in services.requests if r.method == "POST"]
    text = json.loads(request.body or b"{}")["text"]
    assert len(text) <= 4096
    shown = text.count("• heise")
    assert 5 < shown < 120
    assert text.rstrip().endswith(f"+{120 - shown} more")


async def test_status_and_metrics_count_messages_per_channel_and_state(
    httpserver: HTTPServer, open_app: Any
) -> None:
    from monitor.metrics import Metrics
    from monitor.status import status_lines, take_snapshot

    httpserver.expect_request("/hook").respond_with_data("gone", status=404)
    clock = Clock()
    data = settings("a@example.org", webhook(httpserver.url_for("/hook")))
    async with open_app(data, clock) as app:
        add_matches(app, 1)
        report = await run_digests(app, force=True)  # no smtp: the mail goes to the Maildir
        assert (report.sent, report.dead) == (1, 1)
        snapshot = take_snapshot(app.store, app.config, clock())
        metrics = Metrics()
        metrics.record_snapshot(snapshot, clock())
        lines = status_lines(snapshot, app.config, clock())
    assert "messages:   email 1 sent; webhook 1 dead" in lines
    exposed = metrics.exposition().decode()
    assert 'monitor_messages{channel="webhook",state="dead"} 1.0' in exposed
    assert 'monitor_messages{channel="email",state="sent"} 1.0' in exposed


# ------------------------------------------------------------------ the message


def entry(title: str, hits: tuple[Hit, ...], also: int = 0) -> DigestEntry:
    others = tuple((f"outlet{n}", f"https://o{n}.example/") for n in range(also))
    return DigestEntry((1,), "xAI", item(1, title), hits, also_reported_by=others)


def test_a_story_line_links_the_title_bolds_the_term_and_escapes_feed_markup() -> None:
    line = story_line(entry("*Eil* [xAI](http://evil) <b>", (Hit("xAI", "title", 7, 10),), 3))
    assert line == (
        "• heise: [\\*Eil\\* \\[**xAI**\\](http://evil) ‹b›](https://example.org/1)"
        " · also reported by 3"
    )


def test_a_summary_match_is_named_after_the_title() -> None:
    line = story_line(entry("Neues aus dem Silicon Valley", (Hit("xAI", "summary", 0, 3),)))
    assert line.endswith("(https://example.org/1) · matched **xAI**")


@pytest.mark.parametrize("limit", [40, 100, 333, 1000])
def test_fit_never_exceeds_the_limit_and_counts_what_it_cut(limit: int) -> None:
    lines = [f"• line {n} " + "x" * (n % 37) for n in range(100)]
    text = fit(lines, limit)
    assert len(text) <= limit
    kept = text.splitlines()
    assert kept[-1] == f"+{100 - (len(kept) - 1)} more"
    assert kept[:-1] == lines[: len(kept) - 1]


def test_render_chat_stores_a_json_document_under_the_message_id() -> None:
    now = datetime(2026, 11, 30, 7, 0, tzinfo=UTC)
    hit = (Hit("xAI", "title", 10, 13),)
    message = render_chat(
        "<a@b>", "hook", [entry("Neues von xAI", hit)], now, MessageKind.ALERT, 500
    )
    document = json.loads(message.mime)
    assert (message.message_id, message.recipient, message.kind) == ("<a@b>", "hook", "alert")
    assert document["text"] == "• heise: [Neues von **xAI**](https://example.org/1)"


# ------------------------------------------------------------------ config


def test_kinds_send_alerts_to_the_channel_and_digests_by_mail(
    write_config: Callable[..., Path],
) -> None:
    slack = {"name": "press-slack", "url_env": "MONITOR_TEST_SLACK_URL", "kinds": ["alerts"]}
    data = {
        "feeds": [{"name": "heise", "url": "https://heise.example/feed"}],
        "recipients": ["desk@example.org", slack],
        "watchlists": [
            {"name": "urgent", "terms": ["xAI"], "priority": "immediate"},
            {"name": "daily", "terms": ["Musk"], "digest": "daily 07:00"},
        ],
    }
    config = load_checked(write_config(data))
    urgent, daily = config.watchlists
    assert config.recipients_of(urgent) == ("desk@example.org", "press-slack")
    assert config.recipients_of(daily) == ("desk@example.org",)
    assert "press-slack" not in config.display_names()


@pytest.mark.parametrize(
    ("recipient", "message"),
    [
        (
            {"name": "s", "url": f"slack://T1JJ3T3L2/A1BRTD4JD/{TOKEN}/#press"},
            "the url holds a token (slack://T...2/A...D/T...Q/%23press); put it in the "
            "environment or a file and name it with url_env or url_file",
        ),
        (
            {"name": "hook", "url": "https://hooks.example.org/x"},
            "a webhook is signed: add secret_env (or secret_file)",
        ),
        (
            webhook("http://hooks.example.org/x"),
            "http://hooks.example.org/...: use https (http only to this machine, for tests)",
        ),
        ({"url": "ntfy://ntfy.example.org/press"}, "a channel needs a name"),
        ({"name": "t", "url": "msteams://abc/def"}, "not a URL Apprise can send to"),
        ({"name": "x", "url_env": "MONITOR_TEST_UNSET"}, "'MONITOR_TEST_UNSET', which is not set"),
    ],
)
def test_channel_mistakes_are_refused_with_what_to_do(
    write_config: Callable[..., Path], recipient: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError) as refused:
        load_checked(write_config(settings(recipient)))
    assert message in str(refused.value)
    assert TOKEN not in str(refused.value)


def test_masked_urls_keep_no_secret() -> None:
    assert channels.masked("https://hooks.example.org/T0k3n/abc") == "https://hooks.example.org/..."
    assert channels.masked("ntfy://me:pw@127.0.0.1:8/t") == "ntfy://***@127.0.0.1:8/t"
    assert TOKEN not in channels.masked(f"slack://T1JJ3T3L2/A1BRTD4JD/{TOKEN}/#press")
    assert "abcdefg" not in channels.masked("tgram://123456789:abcdefg_hijklmnop/12315544/")


# ------------------------------------------------------------------ test-send


def test_test_send_reports_the_services_answer(
    httpserver: HTTPServer, write_config: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    httpserver.expect_oneshot_request("/hook").respond_with_data("ok", status=202)
    httpserver.expect_oneshot_request("/hook").respond_with_data("gone", status=404)
    path = str(write_config(settings(webhook(httpserver.url_for("/hook")))))
    assert main(["--config", path, "test-send", "hook"]) == 0
    assert (
        f"test message to hook (http://{httpserver.host}:{httpserver.port}/...): "
        "accepted (HTTP 202)" in capsys.readouterr().out
    )
    assert main(["--config", path, "test-email", "HOOK"]) == 1  # the old name, any case
    assert "HTTP 404: refused" in capsys.readouterr().err
    assert len(httpserver.log) == 2
    assert json.loads(httpserver.log[0][0].get_data())["stories"][0]["title"].startswith(
        "monitor test"
    )


def test_load_config_accepts_a_channel_next_to_an_address(
    write_config: Callable[..., Path],
) -> None:
    config = load_config(write_config(settings("a@example.org", webhook("https://h.example/x"))))
    assert config.recipients_of(config.watchlists[0]) == ("a@example.org", "hook")
    assert set(config.channels()) == {"hook"}


def test_digest_preview_shows_a_channels_message_as_it_will_read(
    open_app: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    async def store_a_match() -> str:
        async with open_app(settings(webhook("https://hooks.example.org/x")), Clock()) as app:
            add_matches(app, 1)
            return app.config.source

    path = asyncio.run(store_a_match())
    assert main(["--config", path, "digest", "--preview"]) == 0
    shown = capsys.readouterr().out
    assert "monitor alert: 1 story for xAI" in shown
    assert "• heise: [Neues von **xAI**](https://example.org/1)" in shown


def test_a_story_that_grew_is_one_line_with_its_new_outlets() -> None:
    from monitor.chat import growth_line
    from monitor.models import StoryGrowth

    grown = StoryGrowth((7,), 3, item(1), 5, (("SPIEGEL", "https://spiegel.example/1"),), ("xAI",))
    assert growth_line(grown) == (
        "• heise: [Neues von xAI](https://example.org/1) · now in 5 outlets (+1: SPIEGEL)"
    )


async def test_a_url_file_gone_after_the_start_is_retried_and_named(
    httpserver: HTTPServer, open_app: Any, tmp_path: Path
) -> None:
    url_file = tmp_path / "hook-url"
    url_file.write_text(httpserver.url_for("/hook") + "\n", encoding="utf-8")
    recipient = {
        "name": "hook",
        "url_file": str(url_file),
        "secret_env": "MONITOR_TEST_HOOK_SECRET",
    }
    async with open_app(settings(recipient), Clock()) as app:
        url_file.unlink()
        add_matches(app, 1)
        assert (await run_digests(app, force=True)).retrying == 1
        assert str(url_file) in app.store.deferred_messages()[0].error
    assert httpserver.log == []
