"""The whole chain through the CLI: local feeds -> poll -> digest --send -> local SMTP."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from monitor.cli import main
from tests.conftest import SmtpRecorder
from tests.feeds import ENGLISH_NOW, GERMAN_NOW


def serve_with_etag(httpserver: HTTPServer, path: str, body: bytes) -> list[str | None]:
    """Serve body with an ETag; return the list of If-None-Match values received."""
    seen: list[str | None] = []

    def handler(request: Request) -> Response:
        seen.append(request.headers.get("If-None-Match"))
        if request.headers.get("If-None-Match") == '"v1"':
            return Response(status=304)
        return Response(body, headers={"ETag": '"v1"', "Content-Type": "application/rss+xml"})

    httpserver.expect_request(path).respond_with_handler(handler)
    return seen


def config(httpserver: HTTPServer, port: int) -> dict[str, Any]:
    return {
        "feeds": [
            {"name": "Nachrichten", "url": httpserver.url_for("/de.xml")},
            {"name": "Tech News", "url": httpserver.url_for("/en.xml")},
            {"name": "Kaputt", "url": httpserver.url_for("/missing.xml")},
        ],
        "watchlists": [
            {
                "name": "xAI",
                "terms": ["xAI", "Grok"],
                "recipients": ["a@example.org", "b@example.org"],
            },
            {"name": "Elon Musk", "terms": ["Elon Musk"], "recipients": ["a@example.org"]},
        ],
        "smtp": {
            "host": "127.0.0.1",
            "port": port,
            "from": "monitor@example.org",
            "starttls": False,
        },
    }


def test_poll_then_send_delivers_one_multipart_digest_per_recipient(
    httpserver: HTTPServer,
    smtp_server: tuple[SmtpRecorder, int],
    write_config: Callable[..., Path],
    capsys: Any,
) -> None:
    recorder, port = smtp_server
    german = serve_with_etag(httpserver, "/de.xml", GERMAN_NOW)
    serve_with_etag(httpserver, "/en.xml", ENGLISH_NOW)
    path = str(write_config(config(httpserver, port)))

    assert main(["--config", path, "poll"]) == 0
    out = capsys.readouterr().out
    assert "polled 3 feeds: 5 new items, 4 matches, 1 failed" in out
    assert "Kaputt: FAILED: HTTP 500" in out  # pytest-httpserver answers unknown paths with 500

    assert main(["--config", path, "digest", "--send"]) == 0
    messages = {m["To"]: m for m in recorder.parsed()}
    assert sorted(messages) == ["a@example.org", "b@example.org"]
    first = messages["a@example.org"]
    assert first.get_content_type() == "multipart/alternative"
    text = first.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    html = first.get_body(("html",)).get_content()  # type: ignore[union-attr]
    assert "Babuschkin verlässt xAI" in text
    assert "Babuschkin verlässt <mark" in html and ">xAI</mark>" in html  # highlighted hit
    assert "Robert Keele leaves xAI" in text  # under both watchlists
    assert "Elon Musk" in text and "Wetter" not in text
    assert "https://news.example.org/xai-babuschkin" in html  # tracking parameter removed
    assert "utm_source" not in html
    second = messages["b@example.org"]
    assert "Elon Musk (" not in second.get_body(("plain",)).get_content()  # type: ignore[union-attr]

    # Unchanged feeds: conditional requests, nothing new, nothing sent again.
    assert main(["--config", path, "poll", "--all"]) == 0
    assert "0 new items, 0 matches" in capsys.readouterr().out
    assert german == [None, '"v1"']
    assert main(["--config", path, "digest", "--send"]) == 0
    assert len(recorder.messages) == 2


def test_smtp_down_keeps_everything_pending(
    httpserver: HTTPServer, write_config: Callable[..., Path], capsys: Any
) -> None:
    serve_with_etag(httpserver, "/de.xml", GERMAN_NOW)
    serve_with_etag(httpserver, "/en.xml", ENGLISH_NOW)
    from tests.conftest import free_port

    path = str(write_config(config(httpserver, free_port())))  # nothing listens there
    assert main(["--config", path, "poll"]) == 0
    assert main(["--config", path, "digest", "--send"]) == 1
    assert "2 deferred" in capsys.readouterr().out
    from monitor.config import load_config
    from monitor.store import open_store

    store = open_store(load_config(path).database)
    try:
        outbox = store.outbox()
        assert outbox.ready == 2 and outbox.pending == 7 and outbox.dead == 0
    finally:
        store.close()


def test_without_smtp_digests_land_in_the_maildir_outbox(
    httpserver: HTTPServer, write_config: Callable[..., Path], tmp_path: Path
) -> None:
    serve_with_etag(httpserver, "/de.xml", GERMAN_NOW)
    serve_with_etag(httpserver, "/en.xml", ENGLISH_NOW)
    data = config(httpserver, 1)
    del data["smtp"]
    path = str(write_config(data))
    assert main(["--config", path, "poll"]) == 0
    assert main(["--config", path, "digest", "--send"]) == 0
    files = sorted((tmp_path / "outbox" / "new").glob("*.eml"))
    assert len(files) == 2
    assert "Babuschkin verl=C3=A4sst xAI" in files[0].read_text() + files[1].read_text()


# --------------------------------------------------------------------------- backlog (issue 23)


def dated_rss(title: str, entries: list[tuple[str, str, datetime | None]], base: str) -> bytes:
    """An RSS document whose entries (slug, title, date or None: undated) carry real dates."""
    from email.utils import format_datetime
    from xml.sax.saxutils import escape

    items = "".join(
        f"<item><title>{escape(headline)}</title><link>{base}/{slug}</link>"
        + (f"<pubDate>{format_datetime(date)}</pubDate>" if date else "")
        + "</item>"
        for slug, headline, date in entries
    )
    return (
        '<?xml version="1.0" encoding="utf-8"?><rss version="2.0"><channel>'
        f"<title>{escape(title)}</title><link>{base}</link>{items}</channel></rss>"
    ).encode()


def test_a_feeds_backlog_is_stored_and_searchable_but_never_alerted(
    httpserver: HTTPServer,
    smtp_server: tuple[SmtpRecorder, int],
    write_config: Callable[..., Path],
    capsys: Any,
) -> None:
    """The first poll of a feed lists its archive: an item dated longer ago than `backlog`
    (48 h) is stored, deduplicated and found by `test --stored`, but no one is alerted,
    neither then nor when another outlet carries it later (a watchlist limited to that
    outlet matches it only then), nor when the feed lists another old piece later. Undated
    items count as new."""
    recorder, port = smtp_server
    now = datetime.now(UTC)
    archive = "https://archiv.example.org"
    first = dated_rss(
        "Archiv",
        [
            ("xai-2017", "Musk gründet xAI-Vorläufer", datetime(2017, 5, 2, 9, 0, tzinfo=UTC)),
            ("xai-old", "xAI: Grok vor fünf Tagen", now - timedelta(days=5)),
            ("xai-fresh", "xAI: Grok heute früh", now - timedelta(hours=1)),
            ("xai-undated", "xAI: Grok ohne Datum", None),
        ],
        archive,
    )
    later = dated_rss(
        "Archiv",
        [("xai-2019", "Grok im Jahr 2019", datetime(2019, 1, 1, tzinfo=UTC))],
        archive,
    )
    documents = [first, later]
    httpserver.expect_request("/archiv.xml").respond_with_handler(
        lambda _: Response(documents.pop(0) if len(documents) > 1 else documents[0])
    )
    # Another outlet carries the 2017 piece, undated: the stored article is still from 2017.
    copy = dated_rss("Kopie", [("xai-2017", "Musk gründet xAI-Vorläufer", None)], archive)
    httpserver.expect_request("/kopie.xml").respond_with_data(copy)
    data = {
        "feeds": [
            {"name": "Archiv", "url": httpserver.url_for("/archiv.xml")},
            {"name": "Kopie", "url": httpserver.url_for("/kopie.xml"), "enabled": False},
        ],
        "watchlists": [
            {"name": "xAI", "terms": ["xAI", "Grok"], "recipients": ["a@example.org"]},
            {
                "name": "Kopien",
                "terms": ["xAI"],
                "feeds": ["Kopie"],
                "recipients": ["b@example.org"],
            },
        ],
        "smtp": {"host": "127.0.0.1", "port": port, "from": "m@example.org", "starttls": False},
    }
    path = str(write_config(data))

    assert main(["--config", path, "poll"]) == 0
    assert (
        "polled 1 feeds: 4 new items (2 older than `backlog`: stored, not alerted), 2 matches"
        in capsys.readouterr().out
    )
    assert main(["--config", path, "digest", "--send"]) == 0
    assert [str(m["To"]) for m in recorder.parsed()] == ["a@example.org"]
    text = recorder.parsed()[0].get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert "Grok heute früh" in text and "Grok ohne Datum" in text
    assert "2017" not in text and "vor fünf Tagen" not in text

    assert main(["--config", path, "test", "--stored", "--since", "1d"]) == 0
    found = capsys.readouterr().out
    assert "Musk gründet xAI-Vorläufer" in found and "xAI: Grok vor fünf Tagen" in found
    assert "4 of 4 stored items matched" in found

    data["feeds"][1]["enabled"] = True  # a feed added to a database that has seen the item
    path = str(write_config(data))
    assert main(["--config", path, "poll", "--all"]) == 0
    assert (  # Archiv's 2019 piece
        "1 new items (1 older than `backlog`: stored, not alerted), 0 matches"
        in capsys.readouterr().out
    )
    assert main(["--config", path, "digest", "--send"]) == 0
    assert len(recorder.messages) == 1  # nothing for a, nothing for b


# --------------------------------------------------------------------------- poll timing (issue 23)


def test_interval_is_the_longest_wait_and_feeds_says_why(
    httpserver: HTTPServer, write_config: Callable[..., Path], capsys: Any
) -> None:
    """`polling.interval` (15m) is the longest wait between two polls of a healthy feed: a
    quiet feed is not stretched to hours; a busy one is polled sooner (not below
    min_interval); a server asking for less is honoured, one asking for more is not (the
    promise wins; `monitor feeds` shows the ask). Failing feeds back off as before."""
    now = datetime.now(UTC)
    base = "https://rhythm.example.org"

    def spaced(name: str, gap: timedelta) -> bytes:
        entries = [(f"{name}-{n}", f"{name} {n}", now - n * gap) for n in range(6)]
        return dated_rss(name, entries, base)

    quiet = spaced("ruhig", timedelta(days=1))
    httpserver.expect_request("/ruhig.xml").respond_with_data(quiet)
    httpserver.expect_request("/eilig.xml").respond_with_data(
        spaced("eilig", timedelta(minutes=16))
    )
    short_ttl = quiet.replace(b"<channel>", b"<channel><ttl>10</ttl>")
    httpserver.expect_request("/ttl.xml").respond_with_data(short_ttl)
    httpserver.expect_request("/cache.xml").respond_with_data(
        quiet, headers={"Cache-Control": "max-age=7200"}
    )
    names = {"Ruhig": "/ruhig.xml", "Eilig": "/eilig.xml", "TTL": "/ttl.xml", "Cache": "/cache.xml"}
    feeds = [{"name": name, "url": httpserver.url_for(url)} for name, url in names.items()]
    feeds.append({"name": "Kaputt", "url": httpserver.url_for("/missing.xml")})
    data = {
        "feeds": feeds,
        "watchlists": [{"name": "w", "terms": ["xAI"], "recipients": ["a@example.org"]}],
        "polling": {"interval": "15m", "min_interval": "5m", "max_interval": "6h"},
    }
    path = str(write_config(data))
    assert main(["--config", path, "poll"]) == 0
    capsys.readouterr()

    from monitor.config import load_config
    from monitor.store import open_store

    store = open_store(load_config(path).database)
    try:
        states = {state.name: state for state in store.feed_states()}
    finally:
        store.close()

    def wait(name: str) -> float:
        state = states[name]
        assert state.next_poll_at is not None and state.last_polled_at is not None
        return (state.next_poll_at - state.last_polled_at).total_seconds()

    assert 0.85 * 900 <= wait("Ruhig") <= 900  # jitter only ever makes it sooner
    assert 0.85 * 480 <= wait("Eilig") <= 480  # twice per usual gap of 16 minutes
    assert 0.85 * 600 <= wait("TTL") <= 600
    assert 0.85 * 900 <= wait("Cache") <= 900

    assert main(["--config", path, "feeds"]) == 0
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()[1:]}
    assert "every 15m (configured)" in rows["Ruhig"]
    assert "every 8m (busy feed)" in rows["Eilig"]
    assert "every 10m (server asks 10m: ttl)" in rows["TTL"]
    assert "every 15m (configured; server asks 2h: max-age)" in rows["Cache"]
    assert "backing off after 1 failure" in rows["Kaputt"]
