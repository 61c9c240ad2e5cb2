"""`monitor migrate-db`: SQLite state copied into PostgreSQL, and monitor carries on there."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from pytest_httpserver import HTTPServer

from monitor.cli import main
from monitor.store import open_store
from tests.conftest import SmtpRecorder
from tests.feeds import ENGLISH, GERMAN


def test_sqlite_state_moves_to_postgresql_and_digests_continue(
    httpserver: HTTPServer,
    smtp_server: tuple[SmtpRecorder, int],
    postgres_url: str,
    write_config: Callable[..., Path],
    capsys: Any,
) -> None:
    recorder, port = smtp_server
    httpserver.expect_request("/de.xml").respond_with_data(GERMAN)
    httpserver.expect_request("/en.xml").respond_with_data(ENGLISH)
    data = {
        "feeds": [
            {"name": "de", "url": httpserver.url_for("/de.xml")},
            {"name": "en", "url": httpserver.url_for("/en.xml")},
        ],
        "watchlists": [{"name": "xAI", "terms": ["xAI"], "recipients": ["a@example.org"]}],
        "smtp": {"host": "127.0.0.1", "port": port, "from": "m@example.org", "starttls": False},
    }
    path = write_config(data)
    assert main(["--config", str(path), "poll"]) == 0
    source = open_store(yaml.safe_load(path.read_text())["database"].join(["sqlite:///", ""]))
    before = (source.item_count(), source.outbox().pending)
    source.close()

    assert main(["--config", str(path), "migrate-db", "--to", postgres_url]) == 0
    assert "now point `database:`" in capsys.readouterr().out
    target = open_store(postgres_url)
    assert (target.item_count(), target.outbox().pending) == before == (5, 3)
    target.close()

    # A second copy into the now non-empty target is refused, nothing changes.
    assert main(["--config", str(path), "migrate-db", "--to", postgres_url]) == 1
    assert "already has rows" in capsys.readouterr().err

    moved = write_config({**data, "database": postgres_url}, name="pg.yaml")
    assert main(["--config", str(moved), "digest", "--send"]) == 0
    assert len(recorder.messages) == 1
    assert main(["--config", str(moved), "poll", "--all"]) == 0
    assert "0 new items" in capsys.readouterr().out  # the dedupe keys came along
