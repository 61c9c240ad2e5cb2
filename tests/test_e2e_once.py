"""Each article once per message, and a sent story's growth, read as the recipient reads
the mail: local feeds -> `monitor poll` -> `monitor digest --send` -> local SMTP, on SQLite
and PostgreSQL (issue 23, points 2 and 5)."""

from __future__ import annotations

import html as html_module
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from monitor.cli import main
from tests.conftest import SmtpRecorder
from tests.feeds import rss

RECIPIENT = "a@example.org"
# A wire story as three outlets carry it (tests/data/story_pairs.yaml's first pair).
BABUSCHKIN = "Igor Babuschkin verlässt xAI"
BABUSCHKIN_TEXT = (
    "Der Mitgründer des KI-Unternehmens xAI, Igor Babuschkin, verlässt die Firma von Elon "
    "Musk. Er will einen eigenen Risikokapitalfonds für KI-Sicherheit gründen, teilte er am "
    "Mittwoch auf X mit."
)
BABUSCHKIN_COPY = (
    "Igor Babuschkin, Mitgründer des KI-Unternehmens xAI, verlässt die Firma von Elon Musk. "
    "Er will einen eigenen Risikokapitalfonds für KI-Sicherheit gründen, wie er am Mittwoch "
    "auf der Plattform X mitteilte."
)
WEATHER = [("wetter", "Wetter: Schnee in München", "Am Wochenende wird es kälter.")]


class Feeds:
    """Feeds on the local HTTP server whose documents the test changes between polls."""

    def __init__(self, httpserver: HTTPServer) -> None:
        self.httpserver = httpserver
        self.documents: dict[str, bytes] = {}

    def serve(self, name: str, entries: list[tuple[str, str, str]]) -> str:
        """Serve these entries, dated now (new, not backlog), as /name.xml; its URL."""
        base = f"https://{name.lower()}.example"
        self.documents[name] = rss(name, entries, base, datetime.now(UTC) - timedelta(hours=1))
        path = f"/{name}.xml"

        def handler(_: Request) -> Response:
            return Response(self.documents[name], content_type="application/rss+xml")

        self.httpserver.expect_request(path).respond_with_handler(handler)
        return self.httpserver.url_for(path)


def smtp(port: int) -> dict[str, Any]:
    return {"host": "127.0.0.1", "port": port, "from": "monitor@example.org", "starttls": False}


def text_of(message: EmailMessage) -> str:
    return str(message.get_body(("plain",)).get_content())  # type: ignore[union-attr]


def html_of(message: EmailMessage) -> str:
    """The HTML part as a mail client shows it: the text without its tags."""
    html = str(message.get_body(("html",)).get_content())  # type: ignore[union-attr]
    return html_module.unescape(re.sub(r"<[^>]+>", "", html.split("<body", 1)[1]))


def deliveries(database: str) -> list[tuple[str, str, str | None]]:
    """(watchlist, status, message_id) of every delivery row."""
    engine = sa.create_engine(database if "://" in database else f"sqlite:///{database}")
    try:
        with engine.connect() as connection:
            rows = connection.execute(
                sa.text("SELECT watchlist, status, message_id FROM deliveries ORDER BY id")
            )
            return [tuple(row) for row in rows]
    finally:
        engine.dispose()


def test_an_article_matching_three_watchlists_is_listed_once_with_their_tags(
    httpserver: HTTPServer,
    smtp_server: tuple[SmtpRecorder, int],
    write_config: Callable[..., Path],
    database_url: str,
    capsys: Any,
) -> None:
    recorder, port = smtp_server
    feeds = Feeds(httpserver)
    data = {
        "database": database_url,
        "feeds": [{"name": "n-tv", "url": feeds.serve("n-tv", WEATHER)}],
        "watchlists": [  # config order ranks them: an article is listed under its first
            {"name": "xAI", "terms": ["xAI"], "recipients": [RECIPIENT]},
            {"name": "Grok", "terms": ["Grok"], "recipients": [RECIPIENT]},
            {"name": "Elon Musk", "terms": ["Elon Musk"], "recipients": [RECIPIENT]},
        ],
        "smtp": smtp(port),
    }
    path = str(write_config(data))
    assert main(["--config", path, "poll"]) == 0  # the feed as it was before: nothing matched
    feeds.serve(
        "n-tv",
        [
            ("grok-5", "Elon Musk zeigt Grok 5", "Das Modell von xAI soll schneller antworten."),
            ("grok-bilder", "Grok-Chatbot malt jetzt Bilder", "Neue Funktion für Abonnenten."),
            *WEATHER,
        ],
    )
    assert main(["--config", path, "poll", "--all"]) == 0
    assert "2 new items, 4 matches" in capsys.readouterr().out
    assert main(["--config", path, "digest", "--send"]) == 0

    (message,) = recorder.parsed()
    text, html = text_of(message), html_of(message)
    # Articles, not matches; every list with news, also one without a section of its own:
    # "2 new for xAI, Grok" told an Elon Musk reader there was nothing for them.
    assert message["Subject"] == "monitor digest: 2 new for xAI, Grok, Elon Musk"
    assert text.count("Elon Musk zeigt Grok 5") == 1, text
    assert html.count("Elon Musk zeigt Grok 5") == 1, html
    assert text.count("soll schneller antworten") == 1  # its snippet, once
    assert "xAI · Grok · Elon Musk" in text and "xAI · Grok · Elon Musk" in html
    # Under xAI, the first in the config of the watchlists it matched; Elon Musk has no
    # article of its own left, so no section.
    assert text.index("xAI (1)") < text.index("Elon Musk zeigt") < text.index("Grok (1)")
    assert text.index("Grok (1)") < text.index("Grok-Chatbot malt")
    assert "Elon Musk (" not in text
    rows = deliveries(database_url)
    assert len(rows) == 4  # every match's delivery is accounted for, by this message
    assert {(status, mid) for _, status, mid in rows} == {("sent", message["Message-ID"])}


def test_a_sent_story_that_gains_an_outlet_is_in_the_next_digest_once(
    httpserver: HTTPServer,
    smtp_server: tuple[SmtpRecorder, int],
    write_config: Callable[..., Path],
    database_url: str,
    capsys: Any,
) -> None:
    recorder, port = smtp_server
    feeds = Feeds(httpserver)
    outlets = ("n-tv", "stern", "SPIEGEL")
    data = {
        "database": database_url,
        "feeds": [{"name": name, "url": feeds.serve(name, WEATHER)} for name in outlets],
        "watchlists": [{"name": "xAI", "terms": ["xAI"], "recipients": [RECIPIENT]}],
        "smtp": smtp(port),
    }
    path = str(write_config(data))
    assert main(["--config", path, "poll"]) == 0
    feeds.serve("n-tv", [("babuschkin", BABUSCHKIN, BABUSCHKIN_TEXT)])
    assert main(["--config", path, "poll", "--all"]) == 0
    feeds.serve("stern", [("babuschkin-geht", f"Mitgründer {BABUSCHKIN}", BABUSCHKIN_COPY)])
    assert main(["--config", path, "poll", "--all"]) == 0
    assert main(["--config", path, "digest", "--send"]) == 0
    first = text_of(recorder.parsed()[0])
    assert "Also reported by: stern <https://stern.example/babuschkin-geht>" in first

    # SPIEGEL carries the story a day later: not a new alert, but news for a PR team.
    feeds.serve("SPIEGEL", [("xai-babuschkin", f"{BABUSCHKIN} – Fonds geplant", BABUSCHKIN_TEXT)])
    assert main(["--config", path, "poll", "--all"]) == 0
    capsys.readouterr()
    assert main(["--config", path, "digest", "--send"]) == 0
    assert "1 digest(s) composed, 1 sent" in capsys.readouterr().out
    second = recorder.parsed()[1]
    text, html = text_of(second), html_of(second)
    assert "now in 3 outlets (+1: SPIEGEL)" in text and "now in 3 outlets (+1: SPIEGEL)" in html
    assert "https://spiegel.example/xai-babuschkin" in text
    assert text.count(BABUSCHKIN) == 1  # the story in one line, its first title
    assert "Risikokapitalfonds" not in text  # not the article again
    assert "https://n-tv.example/babuschkin" not in text  # nor links already sent
    assert "stern.example" not in text
    assert second["Subject"] == "monitor digest: 1 new for xAI"

    # Said once: nothing new, nothing sent (and the notes survive each command's restart).
    assert main(["--config", path, "poll", "--all"]) == 0
    capsys.readouterr()
    assert main(["--config", path, "digest", "--send"]) == 0
    assert "0 digest(s) composed, 0 sent" in capsys.readouterr().out
    assert len(recorder.messages) == 2
