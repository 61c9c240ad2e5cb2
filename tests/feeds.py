"""Feed documents for tests, generated (publisher text stays out of the repo)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from xml.sax.saxutils import escape


def rss(
    title: str,
    entries: list[tuple[str, str, str]],
    base: str = "https://news.example.org",
    start: datetime | None = None,
) -> bytes:
    """An RSS 2.0 document; entries are (slug, title, description), dated a minute apart
    from `start` (default 2026-11-28 08:00 UTC, for tests on an injected clock)."""
    start = start or datetime(2026, 11, 28, 8, 0, tzinfo=UTC)
    items = "".join(
        f"<item><title>{escape(headline)}</title><link>{base}/{slug}?utm_source=rss</link>"
        f"<guid>{base}/{slug}</guid><description>{escape(text)}</description>"
        f"<pubDate>{format_datetime(start + timedelta(minutes=n))}</pubDate></item>"
        for n, (slug, headline, text) in enumerate(entries)
    )
    return (
        '<?xml version="1.0" encoding="utf-8"?><rss version="2.0"><channel>'
        f"<title>{escape(title)}</title><link>{base}</link><language>de</language>{items}"
        "</channel></rss>"
    ).encode()


def german(start: datetime | None = None) -> bytes:
    return rss("Nachrichten", _GERMAN, start=start)


def english(start: datetime | None = None) -> bytes:
    return rss("Tech News", _ENGLISH, base="https://tech.example.com", start=start)


_GERMAN = [
    (
        "xai-babuschkin",
        "Babuschkin verlässt xAI",
        "Der Mitgründer Igor Babuschkin gründet eine Firma für KI-Sicherheit.",
    ),
    (
        "grok-update",
        "Grok-Chatbot: Neue Version mit Bildern",
        "xAI veröffentlicht Grok 5 – größer und schneller.",
    ),
    ("wetter", "Wetter: Schnee in München", "Am Wochenende wird es kälter."),
]
_ENGLISH = [
    ("musk-keele", "Robert Keele leaves xAI", "Elon Musk's AI company loses its legal chief."),
    ("weather", "Storm warning", "Heavy rain expected."),
]
GERMAN = german()
ENGLISH = english()
# For tests on the real clock (a daemon, the CLI): dated an hour before the run, news that
# alerts, not a backlog older than `backlog` (48 h).
RECENT = datetime.now(UTC) - timedelta(hours=1)
GERMAN_NOW = german(RECENT)
ENGLISH_NOW = english(RECENT)
