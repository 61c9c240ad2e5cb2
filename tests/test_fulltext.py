"""Full text through the whole chain: a local feed whose items carry only a teaser, their
article pages on the same local server, polled, fetched, extracted, stored and matched."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from monitor.app import App, running_app
from monitor.config import Config
from monitor.fulltext import fetch_pages
from monitor.poller import poll_due
from monitor.store.schema import item_texts
from tests.feeds import rss

pytestmark = pytest.mark.asyncio

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


@asynccontextmanager
async def app_for(config: Config, clock: Callable[[], datetime] | None = None) -> AsyncIterator[App]:
    if clock is None:
        async with running_app(config) as app:
            yield app
    else:
        async with running_app(config, clock=clock) as app:
            yield app


def texts(app: App) -> dict[str, tuple[str, int, str | None, str | None]]:
    """item URL -> (status, words, body, error)."""
    query = sa.text(
        "SELECT i.url, t.status, t.words, t.body, t.error FROM item_texts t "
        "JOIN items i ON i.id = t.item_id"
    )
    with app.store.engine.connect() as connection:
        return {row[0]: tuple(row[1:]) for row in connection.execute(query)}  # type: ignore[misc]


def deliveries(app: App) -> list[tuple[str, str, str]]:
    """(item URL, watchlist, recipient) of every queued delivery."""
    query = sa.text(
        "SELECT i.url, d.watchlist, d.recipient FROM deliveries d JOIN matches m "
        "ON m.id = d.match_id JOIN items i ON i.id = m.item_id ORDER BY 1, 2, 3"
    )
    with app.store.engine.connect() as connection:
        return [tuple(row) for row in connection.execute(query)]  # type: ignore[misc]


def requests_to(httpserver: HTTPServer, path: str) -> int:
    return [request.path for request, _ in httpserver.log].count(path)


async def test_a_name_only_in_the_article_matches_through_the_body(
    httpserver: HTTPServer, sqlite_url: str
) -> None:
    home = base(httpserver)
    feed = rss(
        "Tech",
        [("keele", "Legal chief leaves AI start-up", "A departure at the top.")],
        base=home,
    )
    httpserver.expect_request("/feed.xml").respond_with_data(feed, content_type="application/rss+xml")
    page = article("Legal chief leaves", "Robert Keele, the general counsel of xAI, has left.")
    httpserver.expect_request("/keele").respond_with_data(page, content_type="text/html")
    httpserver.expect_request("/robots.txt").respond_with_data("", status=404)

    async with app_for(settings(sqlite_url, {"Tech": httpserver.url_for("/feed.xml")})) as app:
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
    (status, words, body, error), = stored.values()
    assert status == "text" and error is None and words > 20
    assert body is not None and "Robert Keele" in body
    assert "Impressum" not in body and "Politik" not in body  # boilerplate stays out
    assert again.fetched == 0
    assert requests_to(httpserver, "/keele") == 1
