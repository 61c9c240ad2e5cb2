"""Commands a person reads, end to end through the CLI: local feeds on 127.0.0.1 -> poll ->
preview, explain, list feeds, send to a local SMTP server."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from pytest_httpserver import HTTPServer

from monitor.cli import main
from monitor.config import load_config
from monitor.lock import database_lock
from tests.conftest import SmtpRecorder, free_port
from tests.feeds import ENGLISH_NOW, GERMAN_NOW, RECENT, rss

Write = Callable[..., Path]
LONG_NAME = "Süddeutsche Zeitung – Wirtschaft und Finanzen"


def serve(httpserver: HTTPServer) -> None:
    httpserver.expect_request("/de.xml").respond_with_data(
        GERMAN_NOW, content_type="application/rss+xml"
    )
    httpserver.expect_request("/en.xml").respond_with_data(
        ENGLISH_NOW, content_type="application/rss+xml"
    )
    page = "<!DOCTYPE html><html><head><title>Startseite</title></head><body>Hallo</body></html>"
    httpserver.expect_request("/page").respond_with_data(page, content_type="text/html")
    httpserver.expect_request("/missing").respond_with_data("not here", status=404)


def settings(
    httpserver: HTTPServer, smtp_port: int | None = None, **digests: Any
) -> dict[str, Any]:
    data: dict[str, Any] = {
        "feeds": [
            {"name": "Nachrichten", "url": httpserver.url_for("/de.xml")},
            {"name": LONG_NAME, "url": httpserver.url_for("/en.xml")},
        ],
        "watchlists": [
            {
                "name": "Grok",
                "terms": ["xAI", "Grok"],
                "recipients": ["Jane Doe <jane@example.org>", "b@example.org"],
            },
            {
                "name": "Regulation",
                "query": "OpenAI AND (Regulierung OR regulation)",
                "exclude": ["Werbung"],
                "recipients": ["b@example.org"],
            },
        ],
    }
    if digests:
        data["digests"] = digests
    if smtp_port is not None:
        data["smtp"] = {
            "host": "127.0.0.1",
            "port": smtp_port,
            "from": "monitor@example.org",
            "starttls": False,
        }
    return data


@pytest.fixture
def polled(httpserver: HTTPServer, write_config: Write) -> Path:
    """A config whose feeds have been polled once: matches pending for two recipients."""
    serve(httpserver)
    path = write_config(settings(httpserver))
    assert main(["--config", str(path), "poll"]) == 0
    return path


def out_of(capsys: pytest.CaptureFixture[str]) -> tuple[str, str]:
    captured = capsys.readouterr()
    return captured.out, captured.err


def pending_deliveries(path: Path) -> int:
    engine = sa.create_engine(load_config(path).database)
    with engine.connect() as connection:
        count = connection.execute(
            sa.text("SELECT count(*) FROM deliveries WHERE status = 'pending'")
        ).scalar_one()
    engine.dispose()
    return int(count)


# --------------------------------------------------------------------------- options, names


def test_options_work_after_the_command(polled: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "--config", str(polled)]) == 0
    assert "OK: 2 feeds, 2 watchlists" in out_of(capsys)[0]
    assert main(["feeds", "--config", str(polled), "-v", "--log-format", "json"]) == 0
    assert main(["--config", "/nonexistent.yaml", "check", "--config", str(polled)]) == 0


def test_names_on_the_command_line_match_case_insensitively(
    polled: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--config", str(polled), "test", "--watchlist", "grok", "Grok 5 ist da"]) == 0
    assert "Grok:" in out_of(capsys)[0]
    assert main(["--config", str(polled), "poll", "--feed", "nachrichten"]) == 0
    assert "polled 1 feeds" in out_of(capsys)[0]
    assert main(["--config", str(polled), "digest", "--preview", "--watchlist", "GROK"]) == 0
    assert "Babuschkin verlässt xAI" in out_of(capsys)[0]

    assert main(["--config", str(polled), "test", "--watchlist", "Grk", "Grok"]) == 2
    assert "no watchlist named 'Grk'; did you mean 'Grok'?" in out_of(capsys)[1]
    assert main(["--config", str(polled), "poll", "--feed", "Nachrichtn"]) == 2
    assert "no feed named 'Nachrichtn'; did you mean 'Nachrichten'?" in out_of(capsys)[1]


def test_a_name_that_differs_only_in_case_from_two_is_ambiguous(
    httpserver: HTTPServer, write_config: Write, capsys: pytest.CaptureFixture[str]
) -> None:
    data = settings(httpserver)
    data["watchlists"].append({"name": "GROK", "terms": ["Grok"], "recipients": ["c@example.org"]})
    path = write_config(data)
    assert main(["--config", str(path), "test", "--watchlist", "grok", "Grok"]) == 2
    assert "'grok' could be 'GROK' or 'Grok'; give the exact name" in out_of(capsys)[1]
    assert main(["--config", str(path), "test", "--watchlist", "GROK", "Grok"]) == 0  # exact


# --------------------------------------------------------------------------- digest --preview


def test_preview_prints_what_each_recipient_reads(
    polled: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--config", str(polled), "digest", "--preview"]) == 0
    out = out_of(capsys)[0]
    assert "Babuschkin verlässt xAI" in out  # decoded, not quoted-printable
    assert "=C3=A4" not in out and "Content-Transfer-Encoding" not in out
    assert "To: Jane Doe <jane@example.org>" in out
    assert "To: b@example.org" in out
    assert "Subject: monitor digest: 3 new for Grok" in out
    assert "\r" not in out
    assert pending_deliveries(polled) > 0  # nothing claimed or marked


def test_preview_out_writes_an_html_and_an_eml_file_per_recipient(
    polled: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "preview"
    assert main(["--config", str(polled), "digest", "--preview", "--out", str(target)]) == 0
    assert sorted(p.name for p in target.iterdir()) == [
        "b@example.org.eml",
        "b@example.org.html",
        "jane@example.org.eml",
        "jane@example.org.html",
    ]
    html = (target / "jane@example.org.html").read_text(encoding="utf-8")
    assert html.startswith("<!DOCTYPE html>") and "Babuschkin verlässt <mark" in html
    message = message_from_bytes(
        (target / "jane@example.org.eml").read_bytes(), policy=policy.default
    )
    assert isinstance(message, EmailMessage)
    assert message["To"] == "Jane Doe <jane@example.org>"
    assert message.get_content_type() == "multipart/alternative"
    assert f"2 digest(s) written to {target}" in out_of(capsys)[0]
    afile = tmp_path / "a-file"
    afile.write_text("x")
    assert main(["--config", str(polled), "digest", "--preview", "--out", str(afile)]) == 2
    assert "--out takes a directory" in out_of(capsys)[1]


def test_preview_works_while_the_daemon_holds_the_lock(
    polled: Path, smtp_server: tuple[SmtpRecorder, int], write_config: Write, capsys: Any
) -> None:
    database = load_config(polled).database
    before = pending_deliveries(polled)
    with database_lock(database, "monitor run"):
        assert main(["--config", str(polled), "digest", "--preview"]) == 0
        assert "Babuschkin" in out_of(capsys)[0]
        assert main(["--config", str(polled), "digest", "--send"]) == 1  # a writer still waits
        assert "another monitor process (monitor run" in out_of(capsys)[1]
    assert pending_deliveries(polled) == before
    engine = sa.create_engine(database)
    with engine.connect() as connection:
        assert connection.execute(sa.text("SELECT count(*) FROM digest_runs")).scalar() == 0
    engine.dispose()


# --------------------------------------------------------------------------- test, --why-not


def test_why_not_finds_an_item_by_title_fragment_or_url_even_if_it_matched_nothing(
    polled: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--config", str(polled), "test", "--why-not", "schnee in"]) == 1
    out = out_of(capsys)[0]
    assert "Wetter: Schnee in München" in out
    assert "Grok: no match\n" in out and "Regulation: no match\n" in out
    url = "https://news.example.org/wetter"
    assert main(["--config", str(polled), "test", "--why-not", url]) == 1
    assert "Wetter: Schnee in München" in out_of(capsys)[0]
    assert main(["--config", str(polled), "test", "--why-not", url + "?utm_source=rss"]) == 1

    assert main(["--config", str(polled), "test", "--why-not", "xai"]) == 2  # two titles
    err = out_of(capsys)[1]
    assert "2 stored items fit 'xai'" in err and "Babuschkin verlässt xAI" in err
    assert "give one's id" in err
    assert main(["--config", str(polled), "test", "--why-not", "Mondlandung"]) == 2
    assert "no stored item has the id, URL or a title with 'Mondlandung'" in out_of(capsys)[1]


def test_why_not_shows_the_matched_words_in_context(
    polled: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--config", str(polled), "test", "--why-not", "Babuschkin verlässt"]) == 0
    out = out_of(capsys)[0]
    assert "Grok: matches" in out
    assert "yes  xAI  (title: Babuschkin verlässt *xAI*)" in out
    assert "[" not in out.split("\n", 1)[1]  # no character offsets


def test_test_text_shows_words_in_context_not_offsets(
    polled: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--config", str(polled), "test", "Grüße von xAIs Team"]) == 0
    out = out_of(capsys)[0]
    assert "Grok: xAI\n  'xAI' in title: Grüße von *xAIs* Team" in out
    assert "[10:14]" not in out
    long = "Ein sehr langer Vorspann " * 4 + "über xAI und " + "noch viel mehr Text " * 4
    assert main(["--config", str(polled), "test", long]) == 0
    line = out_of(capsys)[0].splitlines()[1]
    assert "*xAI*" in line and line.count("…") == 2 and len(line) < 110


def test_test_text_says_which_exclusion_removed_a_match(
    polled: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--config", str(polled), "test", "OpenAI: Werbung statt Regulierung"]) == 1
    out, err = out_of(capsys)
    assert "Regulation: excluded by Werbung" in out
    assert "'Werbung' in title: OpenAI: *Werbung* statt Regulierung" in out
    assert "would match: OpenAI, Regulierung" in out
    assert "no watchlist matched (1 excluded)" in err


def test_test_text_says_what_a_site_or_language_filter_needs_and_takes_a_url(
    httpserver: HTTPServer, write_config: Write, capsys: pytest.CaptureFixture[str]
) -> None:
    """A text has no link and no language: a query with site: or language: cannot hold. It
    used to say only "no watchlist matched", as if the query were wrong."""
    data = settings(httpserver)
    data["watchlists"] = [
        {
            "name": "Grok auf n-tv",
            "query": "site:n-tv.de AND Grok",
            "recipients": ["a@example.org"],
        },
        {"name": "Grok auf Deutsch", "query": "language:de AND Grok"},
    ]
    data["recipients"] = ["a@example.org"]
    path = write_config(data)
    assert main(["--config", str(path), "test", "Grok ist da"]) == 1
    out, err = out_of(capsys)
    assert "Grok auf n-tv: needs the item's link for site:n-tv.de; add --url LINK" in out
    assert "Grok auf Deutsch: needs the item's language for language:de; add --language de" in (out)
    assert "no watchlist matched" in err
    link = "https://www.n-tv.de/technik/Grok-article1.html"
    assert main(["--config", str(path), "test", "--url", link, "Grok ist da"]) == 0
    out = out_of(capsys)[0]
    assert out.startswith("Grok auf n-tv: Grok\n")
    assert "Grok auf Deutsch: needs" in out  # still not told the language
    assert main(["--config", str(path), "test", "--url", "https://bild.de/x", "Grok"]) == 1
    assert "needs the item's link" not in out_of(capsys)[0]  # known, and not n-tv.de


def test_poll_says_how_many_new_items_are_backlog(
    httpserver: HTTPServer, write_config: Write, capsys: pytest.CaptureFixture[str]
) -> None:
    """The first poll of real feeds said "363 new items, 6 matches": with no word that 350
    of them were months old and stored without alerts, it read as if matching were broken."""
    old = datetime.now(UTC) - timedelta(days=90)
    archive = [("grok-alt", "Grok 1 erscheint", "Alt."), ("xai-alt", "xAI gegründet", "Alt.")]
    news = rss("Nachrichten", [("grok-neu", "Grok 5 erscheint", "Neu.")], start=RECENT)
    document = news.replace(b"</channel>", _items_of(rss("x", archive, start=old)) + b"</channel>")
    httpserver.expect_request("/de.xml").respond_with_data(
        document, content_type="application/rss+xml"
    )
    data = settings(httpserver)
    data["feeds"] = data["feeds"][:1]
    path = write_config(data)
    assert main(["--config", str(path), "poll"]) == 0
    out = out_of(capsys)[0]
    assert (
        "polled 1 feeds: 3 new items (2 older than `backlog`: stored, not alerted), 1 matches"
        in out
    )


def _items_of(document: bytes) -> bytes:
    return b"<item>" + document.split(b"<item>", 1)[1].rsplit(b"</channel>", 1)[0]


def test_why_not_says_when_the_exclusion_removed_a_stored_item(
    httpserver: HTTPServer, write_config: Write, capsys: pytest.CaptureFixture[str]
) -> None:
    serve(httpserver)
    data = settings(httpserver)
    data["watchlists"][0]["exclude"] = "Bildern OR Wetter"
    path = write_config(data)
    assert main(["--config", str(path), "poll"]) == 0
    assert main(["--config", str(path), "test", "--why-not", "Neue Version"]) == 1
    out = out_of(capsys)[0]
    assert "Grok: no match: its exclusion removed it" in out
    assert "yes  Bildern  (title: Grok-Chatbot: Neue Version mit *Bildern*)" in out


# --------------------------------------------------------------------------- feeds


def broken_feeds(httpserver: HTTPServer, write_config: Write) -> Path:
    serve(httpserver)
    data = settings(httpserver, free_port())  # the SMTP port: nothing listens there
    data["feeds"] += [
        {"name": "Startseite", "url": httpserver.url_for("/page")},
        {"name": "Verschwunden", "url": httpserver.url_for("/missing")},
        {"name": "Abgeschaltet", "url": f"http://127.0.0.1:{free_port()}/feed"},
    ]
    path = write_config(data)
    assert main(["--config", str(path), "poll"]) == 0
    return path


def test_feeds_shows_whole_names_failing_and_json(
    httpserver: HTTPServer, write_config: Write, capsys: pytest.CaptureFixture[str]
) -> None:
    path = broken_feeds(httpserver, write_config)
    capsys.readouterr()
    assert main(["--config", str(path), "feeds"]) == 0
    out = out_of(capsys)[0]
    assert LONG_NAME in out  # not cut at 24 characters
    assert main(["--config", str(path), "feeds", "--wide"]) == 0
    wide = out_of(capsys)[0]
    assert all(len(line.split("  ")) > 1 for line in wide.splitlines())
    assert any(LONG_NAME in line and "ok" in line for line in wide.splitlines())

    assert main(["--config", str(path), "feeds", "--failing"]) == 0
    failing = out_of(capsys)[0]
    assert "Startseite" in failing and "Verschwunden" in failing and "Abgeschaltet" in failing
    assert "Nachrichten" not in failing and LONG_NAME not in failing

    assert main(["--config", str(path), "feeds", "--json"]) == 0
    rows = {row["name"]: row for row in json.loads(out_of(capsys)[0])}
    assert rows[LONG_NAME]["state"] == "ok" and rows[LONG_NAME]["consecutive_failures"] == 0
    assert rows["Verschwunden"]["last_error"].startswith("HTTP 404")
    assert rows["Verschwunden"]["problem"] == "the address leads to no page (HTTP 404)"
    assert rows["Nachrichten"]["last_success"].endswith("+00:00")  # ISO 8601, UTC
    assert main(["--config", str(path), "feeds", "--json", "--failing"]) == 0
    assert len(json.loads(out_of(capsys)[0])) == 3


def test_digest_health_box_speaks_plain_words_and_the_log_keeps_the_details(
    httpserver: HTTPServer,
    write_config: Write,
    smtp_server: tuple[SmtpRecorder, int],
    capsys: pytest.CaptureFixture[str],
) -> None:
    recorder, port = smtp_server
    path = broken_feeds(httpserver, write_config)
    data = load_config(path)
    text = path.read_text().replace(f"port: {data.smtp.port}", f"port: {port}")  # type: ignore[union-attr]
    path.write_text(text)
    assert main(["--config", str(path), "digest", "--send"]) == 0
    message = next(m for m in recorder.parsed() if "b@example.org" in m["To"])
    body = message.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert "Startseite: the server sent a web page, not a feed" in body
    assert "Verschwunden: the address leads to no page (HTTP 404)" in body
    assert "Abgeschaltet: the server refused the connection" in body
    assert "is the URL the feed's?" not in body and "Errno" not in body
    assert main(["--config", str(path), "feeds", "--wide"]) == 0
    assert "the server sent an HTML page, not a feed" in out_of(capsys)[0]  # details kept


# --------------------------------------------------------------------------- language, subjects


def rendered(recorder: SmtpRecorder, to: str) -> tuple[EmailMessage, str, str]:
    message = next(m for m in recorder.parsed() if to in m["To"])
    text = message.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    html = message.get_body(("html",)).get_content()  # type: ignore[union-attr]
    return message, text, html


@pytest.mark.parametrize(
    ("language", "words"),
    [
        ("de", ['<html lang="de"', "Gesendet von monitor an", "Treffer: xAI", "Feed-Zustand"]),
        ("en", ['<html lang="en"', "Sent by monitor to", "matched: xAI", "Feed health"]),
    ],
)
def test_digest_labels_in_the_recipients_language(
    httpserver: HTTPServer,
    write_config: Write,
    smtp_server: tuple[SmtpRecorder, int],
    language: str,
    words: list[str],
) -> None:
    recorder, port = smtp_server
    serve(httpserver)
    data = settings(httpserver, port, language=language)
    data["feeds"].append({"name": "Startseite", "url": httpserver.url_for("/page")})
    path = write_config(data)
    assert main(["--config", str(path), "poll"]) == 0
    assert main(["--config", str(path), "digest", "--send"]) == 0
    _, text, html = rendered(recorder, "jane@example.org")
    for word in words:
        assert word in html or word in text, word
    plain = {"de": "der Server schickte eine Webseite, keinen Feed", "en": "a web page, not a feed"}
    assert plain[language] in text


def test_alerts_take_the_subject_the_user_set(
    httpserver: HTTPServer, write_config: Write, smtp_server: tuple[SmtpRecorder, int]
) -> None:
    recorder, port = smtp_server
    serve(httpserver)
    data = settings(httpserver, port, subject="Pressespiegel: {count} zu {watchlists}", hold="1s")
    data["watchlists"][0]["priority"] = "immediate"
    path = write_config(data)
    assert main(["--config", str(path), "poll"]) == 0
    assert main(["--config", str(path), "digest", "--send"]) == 0
    message, _, _ = rendered(recorder, "jane@example.org")
    assert message["Subject"] == "Pressespiegel: 3 zu Grok"


def test_a_recipient_with_a_display_name_gets_it_in_the_to_header(
    httpserver: HTTPServer, write_config: Write, smtp_server: tuple[SmtpRecorder, int]
) -> None:
    recorder, port = smtp_server
    serve(httpserver)
    data = settings(httpserver, port)
    data["watchlists"][0]["recipients"] = [
        "Jane Doe <jane@example.org>",
        '"Müller, Jürgen" <j@example.org>',
        {"address": "ops@example.org", "name": "Presse, Team: Süd"},
    ]
    path = write_config(data)
    assert main(["--config", str(path), "poll"]) == 0
    assert main(["--config", str(path), "digest", "--send"]) == 0
    envelopes = sorted(rcpt for _, tos, _ in recorder.messages for rcpt in tos)
    assert envelopes == ["j@example.org", "jane@example.org", "ops@example.org"]
    by_address = {m["To"].addresses[0].addr_spec: m for m in recorder.parsed()}
    assert str(by_address["jane@example.org"]["To"]) == "Jane Doe <jane@example.org>"
    jurgen = by_address["j@example.org"]["To"].addresses[0]
    assert jurgen.display_name == "Müller, Jürgen"
    raw = next(raw for _, tos, raw in recorder.messages if tos == ["j@example.org"])
    to_line = next(line for line in raw.splitlines() if line.startswith(b"To:"))
    assert to_line.isascii() and b"=?utf-8?" in to_line  # encoded, never raw 8-bit
    ops = by_address["ops@example.org"]["To"].addresses[0]
    assert ops.display_name == "Presse, Team: Süd" and ops.addr_spec == "ops@example.org"


def test_twice_daily_and_weekly_by_day_name_load(write_config: Write) -> None:
    data = {
        "feeds": [{"name": "f", "url": "https://example.org/feed"}],
        "watchlists": [
            {"name": "a", "terms": ["x"], "recipients": ["a@example.org"],
             "digest": "daily 07:00, 16:00"},
            {"name": "b", "terms": ["x"], "recipients": ["a@example.org"],
             "digest": "weekly monday 07:00"},
        ],
    }  # fmt: skip
    config = load_config(write_config(data))
    schedules = [config.deliveries_of(w)[0].schedule for w in config.watchlists]
    assert [str(s) for s in schedules] == ["daily 07:00, 16:00", "weekly MON 07:00"]
    assert main(["--config", str(write_config(data)), "check"]) == 0


def test_a_display_name_a_header_could_misread_is_refused(write_config: Write) -> None:
    from monitor.errors import ConfigError

    data = {
        "feeds": [{"name": "f", "url": "https://example.org/feed"}],
        "watchlists": [
            {"name": "w", "terms": ["x"], "recipients": ["=?utf-8?q?Boss?= <a@example.org>"]}
        ],
    }
    with pytest.raises(ConfigError) as refused:
        load_config(write_config(data))
    assert "watchlists[0].recipients[0]" in refused.value.problems[0]
    assert "'=?', which mail programs read as an encoded word" in refused.value.problems[0]


def test_feeds_wraps_a_long_error_on_a_narrow_terminal(
    httpserver: HTTPServer,
    write_config: Write,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    path = broken_feeds(httpserver, write_config)
    capsys.readouterr()
    monkeypatch.setenv("COLUMNS", "120")
    monkeypatch.setattr("sys.stdout.isatty", lambda: True)
    assert main(["--config", str(path), "feeds"]) == 0
    lines = out_of(capsys)[0].splitlines()
    assert all(len(line) <= 120 for line in lines), lines
    name = lines.index(LONG_NAME)  # whole, on a line of its own, its row below
    assert lines[name + 1].startswith(" " * 24 + " ok ")
    page = next(n for n, line in enumerate(lines) if line.startswith("Startseite"))
    assert lines[page + 1].startswith("    the server sent an HTML page")  # the error, below
    assert lines[-1] == "(why each next poll is when it is: monitor feeds --wide)"


def test_test_takes_an_articles_text_for_a_body_query(
    httpserver: HTTPServer, write_config: Write, capsys: pytest.CaptureFixture[str]
) -> None:
    """A watchlist reading only body: (the article) could not be tried on a text: `test`
    had no field for it, and said "no watchlist matched"."""
    data = settings(httpserver)
    data["watchlists"] = [{"name": "Abmahnungen", "query": "body:Abmahnung*"}]
    data["recipients"] = ["a@example.org"]
    path = write_config(data)
    text = "Denn eine Abmahnung für zwei Bilder kostet schnell mal 1600 Euro."

    assert main(["--config", str(path), "test", "--title", "Bilder", "--body", text]) == 0

    out = out_of(capsys)[0]
    assert out.startswith("Abmahnungen: Abmahnung*\n")
    assert "'Abmahnung*' in body: Denn eine *Abmahnung* für zwei Bilder" in out
