"""The whole chain through the CLI: local feeds -> poll -> digest --send -> local SMTP."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from monitor.cli import main
from tests.conftest import SmtpRecorder
from tests.feeds import ENGLISH, GERMAN


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
    german = serve_with_etag(httpserver, "/de.xml", GERMAN)
    serve_with_etag(httpserver, "/en.xml", ENGLISH)
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
    serve_with_etag(httpserver, "/de.xml", GERMAN)
    serve_with_etag(httpserver, "/en.xml", ENGLISH)
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
    serve_with_etag(httpserver, "/de.xml", GERMAN)
    serve_with_etag(httpserver, "/en.xml", ENGLISH)
    data = config(httpserver, 1)
    del data["smtp"]
    path = str(write_config(data))
    assert main(["--config", path, "poll"]) == 0
    assert main(["--config", path, "digest", "--send"]) == 0
    files = sorted((tmp_path / "outbox" / "new").glob("*.eml"))
    assert len(files) == 2
    assert "Babuschkin verl=C3=A4sst xAI" in files[0].read_text() + files[1].read_text()
