"""Full text through the whole chain: a local feed whose items carry only a teaser, their
article pages on the same local server, polled, fetched, extracted, stored and matched."""

from __future__ import annotations

import asyncio
import email
import email.policy
import itertools
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from monitor.app import App, running_app, utc_now
from monitor.cli import SHOWN_HITS, main
from monitor.config import Config, load_config
from monitor.daemon import Daemon, Ticks
from monitor.delivery import FAILING_PAGES, feed_health, preview, run_digests
from monitor.extract import own_url
from monitor.fulltext import fetch_pages
from monitor.metrics import Metrics
from monitor.notify import Notifier
from monitor.poller import poll_due
from tests.conftest import CORPUS

ARTICLE = (
    "<html><head><title>{title}</title></head><body><nav>Home | Politik | Sport</nav>"
    "<article><h1>{title}</h1>{paragraphs}</article>"
    "<footer>Impressum Datenschutz</footer></body></html>"
)
FILLER = (
    "Die Verhandlungen dauerten bis in die Nacht, und am Ende stand ein Ergebnis, mit dem "
    "nach Angaben aller Beteiligten niemand ganz zufrieden sein konnte, das aber allen "
    "Seiten genug Raum lässt, ihr Gesicht zu wahren und weiter zu verhandeln."
)


def article(title: str, *sentences: str) -> bytes:
    """A news page: navigation, the article (the sentences between filler), a footer."""
    paragraphs = "".join(f"<p>{FILLER}</p><p>{s}</p>" for s in sentences) + f"<p>{FILLER}</p>"
    return ARTICLE.format(title=title, paragraphs=paragraphs).encode()


def base(httpserver: HTTPServer) -> str:
    return httpserver.url_for("/").rstrip("/")


def settings(database: str, feeds: dict[str, str], **fulltext: Any) -> Config:
    data: dict[str, Any] = {
        "database": database,
        "feeds": [{"name": name, "url": url, "fulltext": True} for name, url in feeds.items()],
        "fulltext": {"min_gap": 0.01, "min_words": 20, **fulltext},
        "polling": {"parse_workers": 1},
        "watchlists": [
            {"name": "Keele", "terms": ["Robert Keele"], "recipients": ["a@example.org"]},
            {
                "name": "xAI",
                "terms": ["xAI"],
                "recipients": ["a@example.org", "b@example.org"],
            },
        ],
    }
    return Config.model_validate(data)


def app_for(config: Config, clock: Callable[[], datetime] = utc_now) -> Any:
    return running_app(config, clock=clock)


def texts(app: App) -> dict[str, tuple[str, int, str | None, str | None]]:
    """item URL -> (status, words, body, error)."""
    query = sa.text(
        "SELECT i.url, t.status, t.words, t.body, t.error FROM item_texts t "
        "JOIN items i ON i.id = t.item_id"
    )
    with app.store.engine.connect() as connection:
        return {row[0]: tuple(row[1:]) for row in connection.execute(query)}


def deliveries(app: App) -> list[tuple[str, str, str]]:
    """(item URL, watchlist, recipient) of every queued delivery."""
    query = sa.text(
        "SELECT i.url, d.watchlist, d.recipient FROM deliveries d JOIN matches m "
        "ON m.id = d.match_id JOIN items i ON i.id = m.item_id ORDER BY 1, 2, 3"
    )
    with app.store.engine.connect() as connection:
        return [tuple(row) for row in connection.execute(query)]


def requests_to(httpserver: HTTPServer, path: str) -> int:
    return [request.path for request, _ in httpserver.log].count(path)


async def test_a_name_only_in_the_article_matches_through_the_body(
    httpserver: HTTPServer, database_url: str
) -> None:
    home = base(httpserver)
    feed = news([("keele", "Legal chief leaves AI start-up", "A departure at the top.")], home)
    httpserver.expect_request("/feed.xml").respond_with_data(
        feed, content_type="application/rss+xml"
    )
    page = article("Legal chief leaves", "Robert Keele, the general counsel of xAI, has left.")
    httpserver.expect_request("/keele").respond_with_data(page, content_type="text/html")
    httpserver.expect_request("/robots.txt").respond_with_data("", status=404)

    async with app_for(settings(database_url, {"Tech": httpserver.url_for("/feed.xml")})) as app:
        polled = await poll_due(app)
        assert (polled.new_items, polled.matches) == (1, 0)  # the teaser names no one
        report = await fetch_pages(app, drain=True)
        assert (report.fetched, report.extracted, report.matches) == (1, 1, 2)
        stored = texts(app)
        assert deliveries(app) == [
            (f"{home}/keele", "Keele", "a@example.org"),
            (f"{home}/keele", "xAI", "a@example.org"),
            (f"{home}/keele", "xAI", "b@example.org"),
        ]
        again = await fetch_pages(app, drain=True)  # fetched once, never twice
    ((status, words, body, error),) = stored.values()
    assert status == "text" and error is None and words > 20
    assert body is not None and "Robert Keele" in body
    assert "Impressum" not in body and "Politik" not in body  # boilerplate stays out
    assert again.fetched == 0
    assert requests_to(httpserver, "/keele") == 1


def news(entries: list[tuple[str, str, str]], home: str, age: timedelta = timedelta()) -> bytes:
    """An RSS document of `entries` (slug, title, description) dated now (less `age`):
    news, not backlog (config `backlog`)."""
    items = "".join(
        f"<item><title>{escape(title)}</title><link>{home}/{slug}</link><guid>{home}/{slug}</guid>"
        f"<description>{escape(text)}</description><pubDate>"
        f"{format_datetime(datetime.now(UTC) - age - timedelta(minutes=n))}</pubDate></item>"
        for n, (slug, title, text) in enumerate(entries)
    )
    channel = f"<title>Tech</title><link>{home}</link><language>en</language>{items}"
    return f'<?xml version="1.0" encoding="utf-8"?><rss version="2.0"><channel>{channel}</channel></rss>'.encode()


def serve_feed(
    httpserver: HTTPServer,
    path: str,
    entries: list[tuple[str, str, str]],
    age: timedelta = timedelta(),
) -> str:
    feed = news(entries, base(httpserver), age)
    httpserver.expect_request(path).respond_with_data(feed, content_type="application/rss+xml")
    return httpserver.url_for(path)


def serve_page(httpserver: HTTPServer, path: str, body: bytes, **headers: str) -> None:
    kind = headers.pop("content_type", "text/html; charset=utf-8")
    httpserver.expect_request(path).respond_with_data(body, content_type=kind, headers=headers)


KEELE = article("Departure", "Robert Keele, the general counsel of xAI, has left.")


async def poll_and_fetch(config: Config, **kwargs: Any) -> tuple[Any, dict[str, Any], Any]:
    async with app_for(config, **kwargs) as app:
        await poll_due(app)
        report = await fetch_pages(app, drain=True)
        return report, texts(app), deliveries(app)


async def test_robots_txt_that_disallows_keeps_the_page_unfetched(
    httpserver: HTTPServer, sqlite_url: str
) -> None:
    url = serve_feed(httpserver, "/feed.xml", [("private/keele", "Departure", "At the top.")])
    robots = "User-agent: *\nDisallow: /private/\n"
    httpserver.expect_request("/robots.txt").respond_with_data(robots, content_type="text/plain")
    serve_page(httpserver, "/private/keele", KEELE)

    report, stored, queued = await poll_and_fetch(settings(sqlite_url, {"Tech": url}))

    assert requests_to(httpserver, "/private/keele") == 0
    assert (report.fetched, report.extracted) == (1, 0)
    ((status, _, body, error),) = stored.values()
    assert status == "refused" and body is None and "robots.txt" in (error or "")
    assert queued == []


@pytest.mark.parametrize("status", [401, 403])
async def test_a_robots_txt_refused_to_us_disallows_everything(
    httpserver: HTTPServer, sqlite_url: str, status: int
) -> None:
    url = serve_feed(httpserver, "/feed.xml", [("keele", "Departure", "At the top.")])
    httpserver.expect_request("/robots.txt").respond_with_data("no", status=status)
    serve_page(httpserver, "/keele", KEELE)

    _, stored, _ = await poll_and_fetch(settings(sqlite_url, {"Tech": url}))

    assert requests_to(httpserver, "/keele") == 0
    assert [s[0] for s in stored.values()] == ["refused"]


async def test_an_unreachable_robots_txt_allows_and_is_read_once_per_host(
    httpserver: HTTPServer, sqlite_url: str
) -> None:
    entries = [(f"a{n}", f"Departure {n}", "At the top.") for n in range(3)]
    url = serve_feed(httpserver, "/feed.xml", entries)
    httpserver.expect_request("/robots.txt").respond_with_data("down", status=503)
    for n in range(3):
        serve_page(httpserver, f"/a{n}", KEELE)

    report, _, _ = await poll_and_fetch(settings(sqlite_url, {"Tech": url}))

    assert report.extracted == 3
    assert requests_to(httpserver, "/robots.txt") == 1


async def test_page_requests_to_one_host_keep_the_minimum_gap(
    httpserver: HTTPServer, sqlite_url: str
) -> None:
    entries = [(f"a{n}", f"Departure {n}", "At the top.") for n in range(3)]
    url = serve_feed(httpserver, "/feed.xml", entries)
    serve_page(httpserver, "/robots.txt", b"", content_type="text/plain")
    started: list[float] = []

    def page(request: Request) -> Response:
        started.append(time.monotonic())
        return Response(KEELE, content_type="text/html")

    for n in range(3):
        httpserver.expect_request(f"/a{n}").respond_with_handler(page)

    await poll_and_fetch(settings(sqlite_url, {"Tech": url}, min_gap="0.5s"))

    assert len(started) == 3
    gaps = [b - a for a, b in itertools.pairwise(started)]
    # The server sees each request a varying moment after its turn (0.49-0.52 s apart under
    # load); without the gap they are a millisecond apart.
    assert min(gaps) >= 0.4


async def test_429_with_retry_after_backs_off_the_hosts_pages_not_its_feed(
    httpserver: HTTPServer, sqlite_url: str
) -> None:
    entries = [("a0", "Departure", "At the top."), ("a1", "Arrival", "At the top.")]
    url = serve_feed(httpserver, "/feed.xml", entries)
    serve_page(httpserver, "/robots.txt", b"", content_type="text/plain")
    asked: list[str] = []

    def page(request: Request) -> Response:  # whichever page comes first is refused
        asked.append(request.path)
        if len(asked) == 1:
            return Response("slow down", status=429, headers={"Retry-After": "3600"})
        return Response(KEELE, content_type="text/html")

    for path in ("/a0", "/a1"):
        httpserver.expect_request(path).respond_with_handler(page)
    config = settings(sqlite_url, {"Tech": url})

    async with app_for(config) as app:
        await poll_due(app)
        report = await fetch_pages(app, drain=True)
        polled = await poll_due(app, force=True)  # the feed itself is asked as ever
        stored = texts(app)

    assert (report.fetched, report.deferred) == (0, 2)  # both wait in the queue
    assert len(asked) == 1  # no page request after the 429
    assert {row[0] for row in stored.values()} == {"waiting"}  # fetched once the hour is over
    assert len(stored) == 2
    assert polled.failed == 0 and requests_to(httpserver, "/feed.xml") == 2


async def test_the_queue_waits_out_the_retry_after(httpserver: HTTPServer, sqlite_url: str) -> None:
    url = serve_feed(httpserver, "/feed.xml", [("a0", "Departure", "At the top.")])
    serve_page(httpserver, "/robots.txt", b"", content_type="text/plain")
    answers = [Response("wait", status=503, headers={"Retry-After": "120"})]

    def page(request: Request) -> Response:
        return answers.pop() if answers else Response(KEELE, content_type="text/html")

    httpserver.expect_request("/a0").respond_with_handler(page)
    now = [datetime.now(UTC)]
    async with app_for(settings(sqlite_url, {"Tech": url}), clock=lambda: now[0]) as app:
        await poll_due(app)
        first = await fetch_pages(app, drain=True)
        now[0] += timedelta(seconds=60)
        early = await fetch_pages(app, drain=True)
        now[0] += timedelta(seconds=61)
        late = await fetch_pages(app, drain=True)
        queued = deliveries(app)

    assert (first.deferred, early.deferred, early.fetched, late.extracted) == (1, 1, 0, 1)
    assert requests_to(httpserver, "/a0") == 2
    assert len(queued) == 3


async def test_a_huge_a_pdf_and_a_wall_page_are_skipped_with_a_reason_teasers_still_match(
    httpserver: HTTPServer, sqlite_url: str
) -> None:
    entries = [
        ("huge", "xAI: huge", "At the top."),
        ("paper", "xAI: the paper", "At the top."),
        ("wall", "xAI: behind a wall", "At the top."),
    ]
    url = serve_feed(httpserver, "/feed.xml", entries)
    serve_page(httpserver, "/robots.txt", b"", content_type="text/plain")
    chunk = b"<p>" + b"x" * (1024 * 1024) + b"</p>"

    def huge(request: Request) -> Response:
        return Response((chunk for _ in range(50)), content_type="text/html")  # 50 MiB, chunked

    httpserver.expect_request("/huge").respond_with_handler(huge)
    serve_page(httpserver, "/paper", b"%PDF-1.7 ...", content_type="application/pdf")
    wall = b"<html><body><div>Wir brauchen Ihre Zustimmung. Akzeptieren</div></body></html>"
    serve_page(httpserver, "/wall", wall)

    report, stored, queued = await poll_and_fetch(settings(sqlite_url, {"Tech": url}))

    home = base(httpserver)
    assert report.fetched == 3 and report.extracted == 0
    assert stored[f"{home}/huge"][0] == "failed"
    assert "exceeds the 5242880-byte cap" in (stored[f"{home}/huge"][3] or "")
    assert stored[f"{home}/paper"][0] == "failed"
    assert "not an HTML page (application/pdf)" in (stored[f"{home}/paper"][3] or "")
    assert stored[f"{home}/wall"][0] == "short"
    assert "words of text" in (stored[f"{home}/wall"][3] or "")
    # Each still matched on its teaser, for both recipients.
    assert len(queued) == 6


async def test_a_page_that_never_ends_is_cut_off_at_its_deadline(
    httpserver: HTTPServer, sqlite_url: str
) -> None:
    url = serve_feed(httpserver, "/feed.xml", [("slow", "Departure", "At the top.")])
    serve_page(httpserver, "/robots.txt", b"", content_type="text/plain")

    def endless(request: Request) -> Response:
        def trickle() -> Any:
            yield b"<html><body><p>"
            for _ in range(600):  # a minute at most, should the client not hang up
                time.sleep(0.1)
                yield b"more "

        return Response(trickle(), content_type="text/html")

    httpserver.expect_request("/slow").respond_with_handler(endless)

    started = time.monotonic()
    _, stored, _ = await poll_and_fetch(settings(sqlite_url, {"Tech": url}, timeout="1s"))

    ((status, _, _, error),) = stored.values()
    assert status == "failed" and "took longer than 1 s" in (error or "")
    assert time.monotonic() - started < 50  # cut off, not read to its (far) end


async def test_iso_8859_1_with_only_a_meta_charset_is_decoded(
    httpserver: HTTPServer, sqlite_url: str
) -> None:
    url = serve_feed(httpserver, "/feed.xml", [("koeln", "Ein Abschied", "An der Spitze.")])
    serve_page(httpserver, "/robots.txt", b"", content_type="text/plain")
    page = article("Abschied", "Robert Keele verlässt xAI; in Köln spricht man über Größe.")
    latin = page.decode().replace(
        "<head>", '<head><meta http-equiv="Content-Type" content="text/html; charset=iso-8859-1">'
    )
    serve_page(httpserver, "/koeln", latin.encode("iso-8859-1"), content_type="text/html")

    _, stored, queued = await poll_and_fetch(settings(sqlite_url, {"Tech": url}))

    ((status, _, body, _),) = stored.values()
    assert status == "text" and body is not None
    assert "Robert Keele verlässt xAI; in Köln spricht man über Größe." in body
    assert "\ufffd" not in body
    assert {watchlist for _, watchlist, _ in queued} == {"Keele", "xAI"}


async def test_the_same_link_in_two_feeds_is_fetched_once(
    httpserver: HTTPServer, database_url: str
) -> None:
    entry = [("keele", "Departure", "At the top.")]
    feeds = {
        "One": serve_feed(httpserver, "/one.xml", entry),
        "Two": serve_feed(httpserver, "/two.xml", entry),
    }
    serve_page(httpserver, "/robots.txt", b"", content_type="text/plain")
    serve_page(httpserver, "/keele", KEELE)

    report, stored, queued = await poll_and_fetch(settings(database_url, feeds))

    assert requests_to(httpserver, "/keele") == 1
    assert report.fetched == 1 and len(stored) == 1
    assert len(queued) == 3  # Keele to a, xAI to a and b: once each


async def test_a_body_match_after_the_teaser_match_is_delivered_once_per_recipient(
    httpserver: HTTPServer, database_url: str
) -> None:
    url = serve_feed(httpserver, "/feed.xml", [("keele", "xAI loses its lawyer", "At the top.")])
    serve_page(httpserver, "/robots.txt", b"", content_type="text/plain")
    serve_page(httpserver, "/keele", KEELE)  # names xAI again, and Robert Keele
    home = base(httpserver)

    async with app_for(settings(database_url, {"Tech": url})) as app:
        polled = await poll_due(app)
        before = deliveries(app)
        report = await fetch_pages(app, drain=True)
        after = deliveries(app)

    assert polled.matches == 1  # xAI on the teaser
    assert before == [
        (f"{home}/keele", "xAI", "a@example.org"),
        (f"{home}/keele", "xAI", "b@example.org"),
    ]
    assert report.matches == 1  # only Keele is new; xAI had matched already
    assert after == [
        (f"{home}/keele", "Keele", "a@example.org"),
        (f"{home}/keele", "xAI", "a@example.org"),
        (f"{home}/keele", "xAI", "b@example.org"),
    ]


async def test_a_feed_without_fulltext_fetches_no_page(
    httpserver: HTTPServer, sqlite_url: str
) -> None:
    url = serve_feed(httpserver, "/feed.xml", [("keele", "Departure", "At the top.")])
    serve_page(httpserver, "/keele", KEELE)
    config = settings(sqlite_url, {"Tech": url})
    feeds = [feed.model_copy(update={"fulltext": None}) for feed in config.feeds]
    config = config.model_copy(update={"feeds": tuple(feeds)})

    report, stored, _ = await poll_and_fetch(config)

    assert report.fetched == 0 and stored == {}
    assert requests_to(httpserver, "/keele") == 0 and requests_to(httpserver, "/robots.txt") == 0


def test_killed_during_a_page_fetch_the_page_is_fetched_again_and_nothing_lost(
    httpserver: HTTPServer, write_config: Callable[..., Path], tmp_path: Path
) -> None:
    url = serve_feed(httpserver, "/feed.xml", [("keele", "xAI loses its lawyer", "At the top.")])
    serve_page(httpserver, "/robots.txt", b"", content_type="text/plain")
    arrived, release = threading.Event(), threading.Event()

    def page(request: Request) -> Response:
        if not arrived.is_set():
            arrived.set()
            release.wait(60)  # the fetching process dies meanwhile
        return Response(KEELE, content_type="text/html")

    httpserver.expect_request("/keele").respond_with_handler(page)
    config = settings(f"sqlite:///{tmp_path / 'monitor.db'}", {"Tech": url})
    path = write_config(config.model_dump(mode="json", exclude={"source"}, exclude_none=True))
    command = [sys.executable, "-m", "monitor", "--config", str(path), "poll"]
    poller = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert arrived.wait(60), "the page was never asked for"
        os.kill(poller.pid, signal.SIGKILL)
        poller.wait(timeout=60)
    finally:
        release.set()
        if poller.poll() is None:
            poller.kill()
    assert poller.returncode == -signal.SIGKILL

    async def after_the_claim_expired() -> tuple[Any, Any, Any, int]:
        later = datetime.now(UTC) + timedelta(minutes=10)
        async with running_app(load_config(path), clock=lambda: later) as app:
            before = deliveries(app)
            report = await fetch_pages(app, drain=True)
            return before, report, deliveries(app), app.store.item_count()

    before, report, after, count = asyncio.run(after_the_claim_expired())
    home = base(httpserver)
    assert count == 1 and len(before) == 2  # the item and its teaser match were kept
    assert report.extracted == 1 and report.matches == 1
    assert requests_to(httpserver, "/keele") == 2
    assert (f"{home}/keele", "Keele", "a@example.org") in after and len(after) == 3


ARTICLES = CORPUS.parent / "articles"
CORPUS_PAGES = 40  # of 466: enough to compare, quick enough for the suite


def _score(text: str, case: dict[str, Any]) -> tuple[int, int, int, int]:
    """(with-phrases found, with-phrases not in the teaser, without-phrases found, all)."""
    teaser = f"{case['title']} {case['description']}".lower()
    wanted = [phrase for phrase in case["with"] if phrase.lower() not in teaser]
    found = sum(phrase in text for phrase in wanted)
    leaked = sum(phrase in text for phrase in case["without"])
    return found, len(wanted), leaked, len(case["without"])


async def test_corpus_recall_and_boilerplate_through_the_chain_match_trafilatura_alone(
    httpserver: HTTPServer, sqlite_url: str
) -> None:
    if not (ARTICLES / "cases.jsonl").is_file():
        pytest.skip(f"article corpus not found at {ARTICLES} (../shared is absent)")
    import trafilatura

    lines = (ARTICLES / "cases.jsonl").read_text(encoding="utf-8").splitlines()
    cases = [json.loads(line) for line in lines][:CORPUS_PAGES]
    entries = []
    for n, case in enumerate(cases):
        raw = (ARTICLES / case["file"]).read_bytes()
        httpserver.expect_request(f"/p{n}").respond_with_data(raw, content_type="text/html")
        entries.append((f"p{n}", case["title"] or f"Page {n}", case["description"]))
    url = serve_feed(httpserver, "/feed.xml", entries)
    serve_page(httpserver, "/robots.txt", b"", content_type="text/plain")
    config = settings(sqlite_url, {"Tech": url}, min_words=1, per_cycle=CORPUS_PAGES)

    _, stored, _ = await poll_and_fetch(config)

    home = base(httpserver)
    chain, alone = [0, 0, 0, 0], [0, 0, 0, 0]
    for n, case in enumerate(cases):
        body = stored[f"{home}/p{n}"][2] or ""
        raw = (ARTICLES / case["file"]).read_bytes()
        reference = trafilatura.extract(raw, url=case["url"]) or ""
        for total, text in ((chain, body), (alone, reference)):
            for index, value in enumerate(_score(text, case)):
                total[index] += value
    recall, recall_alone = chain[0] / chain[1], alone[0] / alone[1]
    leak, leak_alone = chain[2] / chain[3], alone[2] / alone[3]
    assert len(stored) == CORPUS_PAGES
    assert recall >= 0.98 * recall_alone, (recall, recall_alone)
    assert leak <= leak_alone, (leak, leak_alone)


async def test_the_digest_quotes_about_25_words_around_the_body_hit_never_the_article(
    httpserver: HTTPServer, sqlite_url: str
) -> None:
    url = serve_feed(httpserver, "/feed.xml", [("keele", "Departure", "At the top.")])
    serve_page(httpserver, "/robots.txt", b"", content_type="text/plain")
    long_page = article("Departure", *([FILLER] * 6), "Robert Keele has left.", FILLER)
    serve_page(httpserver, "/keele", long_page)
    config = settings(sqlite_url, {"Tech": url})

    async with app_for(config) as app:
        await poll_due(app)
        await fetch_pages(app, drain=True)
        entries = [e for r, e in app.store.pending_entries() if r == "a@example.org"]
        message = app.renderer.render("a@example.org", entries, datetime.now(UTC))

    parsed = email.message_from_bytes(message.mime, policy=email.policy.default)
    text = parsed.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    html = parsed.get_body(("html",)).get_content()  # type: ignore[union-attr]
    assert "*Robert Keele* has left." in text
    assert "<mark>Robert Keele</mark>" in html or ">Robert Keele</mark>" in html
    body_words = len(text.split("*Robert Keele*")[0].rsplit("\n", 1)[-1].split())
    assert body_words < 25  # the words before the hit: a snippet, not the article
    assert text.count("Verhandlungen") <= 2  # the filler repeats 8 times in the article


def config_file(config: Config, write_config: Callable[..., Path]) -> str:
    return str(write_config(config.model_dump(mode="json", exclude={"source"}, exclude_none=True)))


def test_test_url_shows_the_extracted_text_and_where_the_watchlists_match(
    httpserver: HTTPServer, sqlite_url: str, write_config: Callable[..., Path], capsys: Any
) -> None:
    serve_page(httpserver, "/robots.txt", b"", content_type="text/plain")
    serve_page(httpserver, "/keele", KEELE)
    path = config_file(
        settings(sqlite_url, {"Tech": httpserver.url_for("/feed.xml")}), write_config
    )

    assert main(["--config", path, "test", "--url", httpserver.url_for("/keele")]) == 0

    out = capsys.readouterr().out
    assert ": text, " in out and " words, " in out
    assert "  | Departure\n  | Die Verhandlungen dauerten" in out  # its first lines
    assert "Keele: Robert Keele" in out
    assert "'Robert Keele' in body: … " in out and "*Robert Keele*, the general counsel" in out
    assert "Impressum" not in out


def test_test_url_says_when_robots_txt_forbids_the_page(
    httpserver: HTTPServer, sqlite_url: str, write_config: Callable[..., Path], capsys: Any
) -> None:
    httpserver.expect_request("/robots.txt").respond_with_data("User-agent: *\nDisallow: /\n")
    serve_page(httpserver, "/keele", KEELE)
    path = config_file(
        settings(sqlite_url, {"Tech": httpserver.url_for("/feed.xml")}), write_config
    )

    assert main(["--config", path, "test", "--url", httpserver.url_for("/keele")]) == 1

    assert "robots.txt of http://localhost" in capsys.readouterr().err
    assert requests_to(httpserver, "/keele") == 0


def test_poll_returns_with_the_pages_matched_and_test_stored_sees_the_body(
    httpserver: HTTPServer, sqlite_url: str, write_config: Callable[..., Path], capsys: Any
) -> None:
    url = serve_feed(httpserver, "/feed.xml", [("keele", "Departure", "At the top.")])
    serve_page(httpserver, "/robots.txt", b"", content_type="text/plain")
    serve_page(httpserver, "/keele", KEELE)
    path = config_file(settings(sqlite_url, {"Tech": url}), write_config)

    assert main(["--config", path, "poll"]) == 0
    out = capsys.readouterr().out
    assert "1 new items, 0 matches" in out
    assert "pages: 1 fetched, 1 with text, 2 more matches" in out

    assert main(["--config", path, "test", "--stored"]) == 0
    out = capsys.readouterr().out
    assert "'Robert Keele' in body: … " in out and "*Robert Keele*, the general" in out

    assert main(["--config", path, "test", "--why-not", "Departure", "--watchlist", "Keele"]) == 0
    out = capsys.readouterr().out
    assert "Keele: matches" in out and "(body: … " in out and "*Robert Keele*, the" in out

    assert main(["--config", path, "feeds"]) == 0
    out = capsys.readouterr().out
    assert "  full text: 1 pages fetched, 100 % with text, median 8" in out


async def test_a_backlog_items_page_is_never_fetched(
    httpserver: HTTPServer, sqlite_url: str
) -> None:
    url = serve_feed(
        httpserver, "/feed.xml", [("keele", "Old news", "At the top.")], timedelta(days=5)
    )
    serve_page(httpserver, "/robots.txt", b"", content_type="text/plain")
    serve_page(httpserver, "/keele", KEELE)

    report, stored, queued = await poll_and_fetch(settings(sqlite_url, {"Tech": url}))

    assert report.fetched == 0 and [s[0] for s in stored.values()] == ["old"]
    assert requests_to(httpserver, "/keele") == 0 and queued == []


async def test_the_text_goes_with_its_item_at_retention(
    httpserver: HTTPServer, database_url: str
) -> None:
    url = serve_feed(httpserver, "/feed.xml", [("keele", "Departure", "At the top.")])
    serve_page(httpserver, "/robots.txt", b"", content_type="text/plain")
    serve_page(httpserver, "/keele", article("Departure", "Nothing anyone watches."))

    async with app_for(settings(database_url, {"Tech": url})) as app:
        await poll_due(app)
        await fetch_pages(app, drain=True)
        assert len(texts(app)) == 1
        later = datetime.now(UTC) + timedelta(days=60)
        app.store.prune(later, later - timedelta(days=400), later)
        with app.store.engine.connect() as connection:
            left = connection.execute(sa.text("SELECT count(*) FROM item_texts")).scalar()

    assert left == 0


async def test_a_429_on_the_feed_holds_back_its_sites_pages_too(
    httpserver: HTTPServer, sqlite_url: str
) -> None:
    document = news([("keele", "Departure", "At the top.")], base(httpserver))
    polls: list[Request] = []

    def feed(request: Request) -> Response:
        polls.append(request)
        if len(polls) == 2:
            return Response("slow down", status=429, headers={"Retry-After": "3600"})
        return Response(document, content_type="application/rss+xml")

    httpserver.expect_request("/feed.xml").respond_with_handler(feed)
    serve_page(httpserver, "/robots.txt", b"", content_type="text/plain")
    serve_page(httpserver, "/keele", KEELE)

    async with app_for(settings(sqlite_url, {"Tech": httpserver.url_for("/feed.xml")})) as app:
        await poll_due(app)
        await poll_due(app, force=True)  # 429: the host is left alone for an hour
        report = await fetch_pages(app, drain=True)
        stored = texts(app)

    assert report.deferred == 1  # waits in the queue, not failed
    assert [row[0] for row in stored.values()] == ["waiting"]
    assert requests_to(httpserver, "/keele") == 0


async def test_a_site_whose_pages_keep_failing_is_in_the_digests_health_section(
    httpserver: HTTPServer, sqlite_url: str
) -> None:
    entries = [(f"w{n}", f"xAI news {n}", "At the top.") for n in range(FAILING_PAGES)]
    url = serve_feed(httpserver, "/feed.xml", entries)
    serve_page(httpserver, "/robots.txt", b"", content_type="text/plain")
    wall = b"<html><body><div>Wir brauchen Ihre Zustimmung. Akzeptieren</div></body></html>"
    for n in range(FAILING_PAGES):
        serve_page(httpserver, f"/w{n}", wall)

    async with app_for(settings(sqlite_url, {"Tech": url})) as app:
        await poll_due(app)
        assert feed_health(app) == []  # no page yet: nothing to say
        await fetch_pages(app, drain=True)
        health = feed_health(app)
        queued = deliveries(app)

    assert [(h.name, h.status) for h in health] == [("Tech", "pages")]
    assert "words of text" in health[0].error
    assert len(queued) == 2 * FAILING_PAGES  # every item still matched on its teaser


async def test_the_pages_canonical_link_joins_another_feeds_link_to_the_same_item(
    httpserver: HTTPServer, database_url: str
) -> None:
    home = base(httpserver)
    mobile = serve_feed(httpserver, "/mobile.xml", [("mobil/keele-123", "Departure", "Top.")])
    desktop = serve_feed(httpserver, "/desktop.xml", [("news/keele", "Departure", "Top.")])
    serve_page(httpserver, "/robots.txt", b"", content_type="text/plain")
    page = KEELE.replace(b"<head>", b'<head><link rel="canonical" href="/news/keele">')
    serve_page(httpserver, "/mobil/keele-123", page)
    config = settings(database_url, {"Mobile": mobile, "Desktop": desktop})

    async with app_for(config) as app:
        first = await poll_due(app, ["Mobile"])
        await fetch_pages(app, drain=True)
        second = await poll_due(app, ["Desktop"])
        count = app.store.item_count()
        with app.store.engine.connect() as connection:
            outlets = connection.execute(sa.text("SELECT feed, url FROM item_sources")).all()

    assert (first.new_items, second.new_items, count) == (1, 0, 1)
    assert sorted(outlets) == [
        ("Desktop", f"{home}/news/keele"),
        ("Mobile", f"{home}/mobil/keele-123"),
    ]


def test_own_url_is_the_canonical_link_else_og_url_made_absolute() -> None:
    page = "https://example.org/a/amp/story"
    canonical = '<link href="/a/story?x=1&amp;y=2" rel="canonical">'
    og = '<meta content="https://example.org/og" property="og:url">'
    assert own_url(f"<head>{og}{canonical}</head>", page) == "https://example.org/a/story?x=1&y=2"
    assert own_url(f"<head>{og}</head>", page) == "https://example.org/og"
    assert own_url("<head><link rel=canonical href='javascript:x'></head>", page) is None
    assert own_url("<head></head>", page) is None


# ------------------------------------------------------------- the stored body in every path


def config_with(
    database: str, feeds: dict[str, str], *watchlists: dict[str, Any], **top: Any
) -> Config:
    """settings(), with more watchlists and top-level sections."""
    data = settings(database, feeds).model_dump(mode="json", exclude={"source"}, exclude_none=True)
    data["watchlists"] += list(watchlists)
    return Config.model_validate({**data, **top})


async def test_another_feeds_copy_of_a_fetched_item_matches_its_watchlists_on_the_body(
    httpserver: HTTPServer, database_url: str
) -> None:
    entry = [("keele", "Departure", "At the top.")]
    feeds = {
        "One": serve_feed(httpserver, "/one.xml", entry),
        "Two": serve_feed(httpserver, "/two.xml", entry),
    }
    serve_page(httpserver, "/robots.txt", b"", content_type="text/plain")
    serve_page(httpserver, "/keele", KEELE)
    only_two = {"name": "Two's", "terms": ["Robert Keele"], "feeds": ["Two"]}
    config = config_with(database_url, feeds, {**only_two, "recipients": ["c@example.org"]})

    async with app_for(config) as app:
        await poll_due(app, ["One"])
        await fetch_pages(app, drain=True)  # the body names Robert Keele: Keele, xAI
        polled = await poll_due(app, ["Two"])  # the same link: the stored item, the stored body
        report = await fetch_pages(app, drain=True)
        queued = deliveries(app)

    assert polled.new_items == 0 and polled.matches == 1
    assert (f"{base(httpserver)}/keele", "Two's", "c@example.org") in queued
    assert len(queued) == 4 and report.fetched == 0
    assert requests_to(httpserver, "/keele") == 1


async def test_a_body_read_after_another_feed_carried_the_item_matches_that_feeds_watchlists(
    httpserver: HTTPServer, database_url: str
) -> None:
    entry = [("keele", "Departure", "At the top.")]
    feeds = {
        "One": serve_feed(httpserver, "/one.xml", entry),
        "Two": serve_feed(httpserver, "/two.xml", entry),
    }
    serve_page(httpserver, "/robots.txt", b"", content_type="text/plain")
    serve_page(httpserver, "/keele", KEELE)
    only_two = {"name": "Two's", "terms": ["Robert Keele"], "feeds": ["Two"]}
    config = config_with(database_url, feeds, {**only_two, "recipients": ["c@example.org"]})

    async with app_for(config) as app:
        await poll_due(app, ["One"])
        await poll_due(app, ["Two"])  # before the page is read
        report = await fetch_pages(app, drain=True)
        queued = deliveries(app)

    assert report.matches == 3  # Keele, xAI as One's; Two's as Two's copy
    assert (f"{base(httpserver)}/keele", "Two's", "c@example.org") in queued
    assert len(queued) == 4 and requests_to(httpserver, "/keele") == 1


async def test_a_revision_is_matched_with_its_items_stored_body_and_its_page_not_fetched_again(
    httpserver: HTTPServer, database_url: str, tmp_path: Path
) -> None:
    home = base(httpserver)
    first = news([("keele", "Departure", "At the top.")], home)
    revised = news([("keele", "Departure, updated", "At the top, a lawyer leaves.")], home)
    documents = iter([first, revised])

    def feed(request: Request) -> Response:
        return Response(next(documents, revised), content_type="application/rss+xml")

    httpserver.expect_request("/feed.xml").respond_with_handler(feed)
    serve_page(httpserver, "/robots.txt", b"", content_type="text/plain")
    serve_page(httpserver, "/keele", KEELE)
    feeds = {"Tech": httpserver.url_for("/feed.xml")}
    maildir = str(tmp_path / "outbox")
    config = config_with(database_url, feeds, dedupe={"realert_on_update": True}, outbox=maildir)

    async with app_for(config) as app:
        await poll_due(app)
        await fetch_pages(app, drain=True)
        assert len(deliveries(app)) == 3  # Keele to a, xAI to a and b: on the body
        assert (await run_digests(app, force=True)).sent == 2
        again = await poll_due(app, force=True)  # the teaser changed: a revision, alerted again
        queued = deliveries(app)
        report = await fetch_pages(app, drain=True)
        entries = [e for r, e in app.store.pending_entries() if r == "a@example.org"]

    assert again.matches == 2  # the revision, on the stored body: Keele and xAI
    assert len(queued) == 6
    assert report.fetched == 0 and requests_to(httpserver, "/keele") == 1  # never twice
    assert {e.watchlist for e in entries if e.updated} == {"Keele", "xAI"}
    assert all("Robert Keele" in e.excerpt for e in entries)  # quoted from the item's body


AMP_PAGE = KEELE.replace(b"<head>", b'<head><link rel="canonical" href="/news/keele">')
DESKTOP_ENTRY = (
    "news/keele",
    "xAI's general counsel leaves the company",
    "The company did not comment on the reasons for the departure of its top lawyer.",
)
AMP_ENTRY = ("amp/keele", "Top lawyer quits at xAI", "AMP")


@pytest.mark.parametrize("order", [["Desktop", "AMP"], ["AMP", "Desktop"]])
async def test_an_amp_and_a_desktop_link_to_one_article_are_one_story_in_either_order(
    httpserver: HTTPServer, database_url: str, order: list[str]
) -> None:
    feeds = {
        "Desktop": serve_feed(httpserver, "/desktop.xml", [DESKTOP_ENTRY]),
        "AMP": serve_feed(httpserver, "/amp.xml", [AMP_ENTRY]),
    }
    serve_page(httpserver, "/robots.txt", b"", content_type="text/plain")
    serve_page(httpserver, "/amp/keele", AMP_PAGE)  # names the desktop URL as its own
    serve_page(httpserver, "/news/keele", KEELE)

    async with app_for(settings(database_url, feeds)) as app:
        for name in order:
            await poll_due(app, [name])
            await fetch_pages(app, drain=True)
        entries = app.store.pending_entries()
        messages = {m.recipient: m for m in preview(app)}

    # Each watchlist and recipient has one entry: the article, also reported by the other.
    assert sorted((r, e.watchlist) for r, e in entries) == [
        ("a@example.org", "Keele"),
        ("a@example.org", "xAI"),
        ("b@example.org", "xAI"),
    ]
    assert len({e.story for _, e in entries}) == 1
    text = email.message_from_bytes(messages["b@example.org"].mime, policy=email.policy.default)
    plain = text.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    titles = plain.count(DESKTOP_ENTRY[1]) + plain.count(AMP_ENTRY[1])
    assert titles == 1, plain


def test_feeds_says_which_site_is_left_alone_until_when_and_why(
    httpserver: HTTPServer, sqlite_url: str, write_config: Callable[..., Path], capsys: Any
) -> None:
    url = serve_feed(httpserver, "/feed.xml", [("keele", "Departure", "At the top.")])
    serve_page(httpserver, "/robots.txt", b"", content_type="text/plain")
    httpserver.expect_request("/keele").respond_with_data("no", status=403)
    path = config_file(settings(sqlite_url, {"Tech": url}), write_config)
    assert main(["--config", path, "poll"]) == 0
    assert "1 waiting for its site" in capsys.readouterr().out

    assert main(["--config", path, "feeds"]) == 0
    out = capsys.readouterr().out

    assert f"pages of {base(httpserver)} are left alone until " in out
    local = (datetime.now(UTC) + timedelta(hours=1)).astimezone(ZoneInfo("Europe/Berlin"))
    assert f"until {local:%Y-%m-%d %H:}" in out  # in the config's time zone, as the rest
    assert f" {local:%Z}: it answered HTTP 403" in out


async def test_pages_done_together_are_stored_together_and_a_failure_loses_no_other(
    httpserver: HTTPServer, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pages are stored in rounds (one transaction each); when a round fails, its pages
    are stored one by one, so only the page that fails is left to be fetched again."""
    slugs = [f"p{n}" for n in range(6)]
    url = serve_feed(httpserver, "/feed.xml", [(s, f"Story {s}", "At the top.") for s in slugs])
    httpserver.expect_request("/robots.txt").respond_with_data("", status=404)
    for slug in slugs:
        serve_page(httpserver, f"/{slug}", article(slug, f"Robert Keele on {slug}."))
    config = settings(database_url, {"Tech": url})
    async with app_for(config) as app:
        await poll_due(app)
        real = app.store.save_pages
        rounds: list[list[str]] = []
        ids = {item_id: url.rsplit("/", 1)[1] for item_id, url in _item_urls(app).items()}

        def failing_at_p3(outcomes: Any, *args: Any) -> Any:
            names = [ids[item_id] for item_id, _ in outcomes]
            rounds.append(names)
            if len(rounds) == 1:  # a slow first round: the other pages are done meanwhile
                time.sleep(1.0)
            if "p3" in names:
                raise RuntimeError("disk I/O error")
            return real(outcomes, *args)

        monkeypatch.setattr(app.store, "save_pages", failing_at_p3)
        report = await fetch_pages(app, drain=False)
        stored = texts(app)
    assert report.fetched == 5  # all but p3
    assert sorted(u.rsplit("/", 1)[1] for u, row in stored.items() if row[0] == "text") == [
        "p0",
        "p1",
        "p2",
        "p4",
        "p5",
    ]
    assert stored[f"{base(httpserver)}/p3"][0] == "claimed"  # fetched again once it expires
    assert any(len(names) > 1 for names in rounds)  # pages done meanwhile share a round


def _item_urls(app: App) -> dict[int, str]:
    with app.store.engine.connect() as connection:
        return dict(connection.execute(sa.text("SELECT id, url FROM items")).all())


def test_the_parse_processes_share_trafilatura_preloaded_by_the_fork_server(
    tmp_path: Path,
) -> None:
    """With full text on, trafilatura and the caches of its first extraction (jusText's stop
    words) are made once in the fork server, frozen for the garbage collector, and
    inherited by every parse process. A process of its own: the fork server is one per
    process, started by the first pool (in a test run, one without full text)."""
    script = tmp_path / "preloaded.py"  # a file: the pool pickles `state` by its module
    script.write_text(
        "import asyncio, sys\n"
        "from monitor.parse_pool import ParsePool\n"
        "def state():\n"
        "    import gc\n"
        "    before = 'trafilatura' in sys.modules\n"
        "    from trafilatura import external\n"
        "    return before, external.JT_STOPLIST is not None, gc.get_freeze_count() > 10000\n"
        "async def main():\n"
        "    pool = ParsePool(1, 30, 2**30, ['monitor.extract_preload'])\n"
        "    print(await pool.run(state))\n"
        "    pool.close()\n"
        "if __name__ == '__main__':\n"
        "    asyncio.run(main())\n"
    )
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120, check=True
    )
    assert done.stdout.strip() == "(True, True, True)"


def test_why_not_says_what_came_of_the_items_article_page(
    httpserver: HTTPServer, sqlite_url: str, write_config: Callable[..., Path], capsys: Any
) -> None:
    """Without a word on the page, `body: no` read as if the article lacked the term."""
    entries = [
        ("paper", "Annual report", "At the top."),
        ("wall", "Behind a wall", "At the top."),
        ("keele", "Departure", "At the top."),
    ]
    unlabelled = news(entries, base(httpserver)).replace(b"<language>en</language>", b"")
    serve_page(httpserver, "/feed.xml", unlabelled, content_type="application/rss+xml")
    url = httpserver.url_for("/feed.xml")
    serve_page(httpserver, "/robots.txt", b"", content_type="text/plain")
    serve_page(httpserver, "/paper", b"%PDF-1.7 ...", content_type="application/pdf")
    wall = b"<html><body><div>Wir brauchen Ihre Zustimmung. Akzeptieren</div></body></html>"
    serve_page(httpserver, "/wall", wall)
    serve_page(httpserver, "/keele", KEELE)
    path = config_file(settings(sqlite_url, {"Tech": url}), write_config)
    assert main(["--config", path, "poll"]) == 0
    capsys.readouterr()

    def why_not(title: str) -> list[str]:
        main(["--config", path, "test", "--why-not", title, "--watchlist", "Keele"])
        return capsys.readouterr().out.splitlines()

    paper, wall_lines, keele = (
        why_not("Annual report"),
        why_not("Behind a wall"),
        why_not("Departure"),
    )
    assert paper[0].endswith("[Tech] Annual report")  # no empty language after the feed
    assert paper[1] == (
        "  article page: no text (not an HTML page (application/pdf)): "
        "title and summary were matched"
    )
    assert wall_lines[1].startswith("  article page: no text (only 5 words of text (a consent")
    assert keele[1].startswith("  article page: ") and keele[1].endswith(
        " words of text, matched as body"
    )


def test_poll_counts_a_page_left_waiting_once_and_says_why_it_waits(
    httpserver: HTTPServer, sqlite_url: str, write_config: Callable[..., Path], capsys: Any
) -> None:
    """A page given back by its round was claimed again by the next round and counted twice:
    `poll` said "2 deferred (their sites asked to wait)" for one page its site refused."""
    document = news([("locked", "Locked", "x"), ("keele", "Dep", "y")], base(httpserver))
    other_site = base(httpserver).replace("localhost", "127.0.0.1")  # the same server
    document = document.replace(
        f"{base(httpserver)}/locked".encode(), f"{other_site}/locked".encode()
    )
    serve_page(httpserver, "/feed.xml", document, content_type="application/rss+xml")
    serve_page(httpserver, "/robots.txt", b"", content_type="text/plain")
    serve_page(httpserver, "/keele", KEELE)
    httpserver.expect_request("/locked").respond_with_data("no", status=403)
    url = httpserver.url_for("/feed.xml")
    path = config_file(settings(sqlite_url, {"Tech": url}), write_config)

    assert main(["--config", path, "poll"]) == 0

    out = capsys.readouterr().out
    assert requests_to(httpserver, "/keele") == 1 and requests_to(httpserver, "/locked") == 1
    assert "pages: 1 fetched, 1 with text, 2 more matches, 1 waiting for its site" in out


async def test_the_daemon_logs_pages_that_only_wait_for_their_site_at_debug(
    httpserver: HTTPServer, sqlite_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A page whose site answered 403 waits an hour; the pages tick logged '0 fetched, ...,
    1 deferred' at INFO every few seconds of it."""
    url = serve_feed(httpserver, "/feed.xml", [("locked", "Locked", "x")])
    serve_page(httpserver, "/robots.txt", b"", content_type="text/plain")
    httpserver.expect_request("/locked").respond_with_data("no", status=403)

    async with app_for(settings(sqlite_url, {"Tech": url})) as app:
        await poll_due(app)
        daemon = Daemon(app, Path("config.yaml"), Ticks.from_env({}), Notifier({}), Metrics())
        with caplog.at_level(logging.DEBUG, logger="monitor"):
            for _ in range(3):
                await daemon.pages_tick()

    said = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "monitor.daemon"]
    assert len(said) == 3 and all(level == logging.DEBUG for level, _ in said)
    told = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
    assert len(told) == 1 and "left alone until" in told[0] and "HTTP 403" in told[0]
    assert requests_to(httpserver, "/locked") == 1


def test_test_url_of_a_page_without_text_says_why_not_how_many_words_it_lacks(
    httpserver: HTTPServer, sqlite_url: str, write_config: Callable[..., Path], capsys: Any
) -> None:
    serve_page(httpserver, "/robots.txt", b"", content_type="text/plain")
    serve_page(httpserver, "/paper", b"%PDF-1.7 ...", content_type="application/pdf")
    path = config_file(
        settings(sqlite_url, {"Tech": httpserver.url_for("/feed.xml")}), write_config
    )

    assert main(["--config", path, "test", "--url", httpserver.url_for("/paper")]) == 1

    said = capsys.readouterr()
    assert (
        said.out == f"{httpserver.url_for('/paper')}: no text: not an HTML page (application/pdf)\n"
    )
    assert "no watchlist matched" not in said.err  # there was nothing to match


def test_test_stored_shows_a_few_hits_per_match_and_counts_the_rest(
    httpserver: HTTPServer, sqlite_url: str, write_config: Callable[..., Path], capsys: Any
) -> None:
    """An article naming the term 23 times filled 23 lines of `test --stored` for one item."""
    url = serve_feed(httpserver, "/feed.xml", [("keele", "Departure", "At the top.")])
    serve_page(httpserver, "/robots.txt", b"", content_type="text/plain")
    sentences = [f"Robert Keele said thing number {n}." for n in range(7)]
    serve_page(httpserver, "/keele", article("Departure", *sentences))
    path = config_file(settings(sqlite_url, {"Tech": url}), write_config)
    assert main(["--config", path, "poll"]) == 0
    capsys.readouterr()

    assert main(["--config", path, "test", "--stored", "--watchlist", "Keele"]) == 0

    lines = capsys.readouterr().out.splitlines()
    hits = [line for line in lines if "'Robert Keele' in body" in line]
    assert len(hits) == SHOWN_HITS
    assert f"    +{7 - SHOWN_HITS} more in body" in lines


async def test_pages_waiting_for_their_sites_turn_hold_no_fetch_slot(
    httpserver: HTTPServer, sqlite_url: str
) -> None:
    """A cycle's pages come a feed at a time, mostly from one site, min_gap apart. They
    must not take every fetch slot while they wait for their turns: another site's pages
    go meanwhile. (With polling.concurrency 2, the second site's first page waited for the
    first site's third, two gaps.)"""
    port = httpserver.port
    slow, other = f"http://127.0.0.1:{port}", f"http://localhost:{port}"
    links = [f"{slow}/a{n}" for n in range(4)] + [f"{other}/b{n}" for n in range(2)]
    items = "".join(
        f"<item><title>Story {n}</title><link>{link}</link><guid>{link}</guid>"
        f"<description>At the top.</description>"
        f"<pubDate>{format_datetime(datetime.now(UTC) - timedelta(minutes=n))}</pubDate></item>"
        for n, link in enumerate(links)
    )
    feed = (
        f'<?xml version="1.0"?><rss version="2.0"><channel><title>T</title>{items}</channel></rss>'
    )
    httpserver.expect_request("/feed.xml").respond_with_data(
        feed, content_type="application/rss+xml"
    )
    arrived: dict[str, float] = {}

    def page(request: Request) -> Response:
        arrived[f"{request.host.split(':')[0]}{request.path}"] = time.monotonic()
        return Response(KEELE, content_type="text/html")

    for path in ("/a0", "/a1", "/a2", "/a3", "/b0", "/b1", "/robots.txt"):
        httpserver.expect_request(path).respond_with_handler(page)
    # The feed is on the slow site: the other site's pages need not wait for the gap the
    # feeds' politeness keeps after a request to its host (polling.min_gap).
    config = settings(sqlite_url, {"Tech": f"{slow}/feed.xml"}, min_gap="1s")
    config = config.model_copy(
        update={"polling": config.polling.model_copy(update={"concurrency": 2})}
    )

    report, _, _ = await poll_and_fetch(config)

    assert report.fetched == 6
    # The other site's first page (either: they start in any order) went before the slow
    # site's second turn came.
    assert min(arrived["localhost/b0"], arrived["localhost/b1"]) < arrived["127.0.0.1/a1"]


def test_feeds_counts_pages_robots_txt_refused_apart_from_those_fetched(
    httpserver: HTTPServer, sqlite_url: str, write_config: Callable[..., Path], capsys: Any
) -> None:
    entries = [("private/a", "One", "At the top."), ("keele", "Two", "At the top.")]
    url = serve_feed(httpserver, "/feed.xml", entries)
    robots = "User-agent: *\nDisallow: /private/\n"
    httpserver.expect_request("/robots.txt").respond_with_data(robots, content_type="text/plain")
    serve_page(httpserver, "/keele", KEELE)
    path = config_file(settings(sqlite_url, {"Tech": url}), write_config)
    assert main(["--config", path, "poll"]) == 0
    capsys.readouterr()

    assert main(["--config", path, "feeds"]) == 0
    out = capsys.readouterr().out
    assert (
        "full text: 1 pages fetched, 100 % with text, median 88 words, 1 not fetched (robots.txt)"
        in out
    )
    assert main(["--config", path, "feeds", "--json"]) == 0
    (feed,) = json.loads(capsys.readouterr().out)
    assert (feed["pages"]["fetched"], feed["pages"]["refused"]) == (1, 1)
