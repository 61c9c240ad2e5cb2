"""`monitor migrate-db`: SQLite state copied into PostgreSQL, and monitor carries on there."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import yaml
from pytest_httpserver import HTTPServer

from monitor.cli import main
from monitor.store import open_store
from tests.conftest import SmtpRecorder
from tests.feeds import ENGLISH_NOW, GERMAN_NOW


def test_sqlite_state_moves_to_postgresql_and_digests_continue(
    httpserver: HTTPServer,
    smtp_server: tuple[SmtpRecorder, int],
    postgres_url: str,
    write_config: Callable[..., Path],
    capsys: Any,
) -> None:
    recorder, port = smtp_server
    httpserver.expect_request("/de.xml").respond_with_data(GERMAN_NOW)
    httpserver.expect_request("/en.xml").respond_with_data(ENGLISH_NOW)
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


def test_leases_of_the_stopped_sqlite_process_are_not_copied(
    tmp_path: Path, postgres_url: str
) -> None:
    """A message leased by a daemon killed mid-send waited 10 minutes on the new database
    for a lease no process held."""
    import sqlalchemy as sa

    from monitor.migrate_db import copy_database
    from monitor.models import OutgoingMessage
    from tests.test_stories import NOW, RECIPIENTS, make_item, watch_xai

    url = f"sqlite:///{tmp_path / 'm.db'}"
    source = open_store(url)
    source.sync_feeds({"heise": "https://heise.example/feed"}, NOW)
    source.claim_feeds("dead-worker", NOW, NOW + timedelta(hours=1), 10, force=True)
    source.ingest([make_item("1", title="xAI")], watch_xai, RECIPIENTS, NOW)
    ids = [i for _, entry in source.pending_entries() for i in entry.delivery_ids]
    assert source.claim_digest(OutgoingMessage("<m@test>", "a@example.org", b"x"), ids, NOW)
    assert source.lease_message("<m@test>", "dead-worker", NOW, NOW + timedelta(minutes=10))
    source.close()

    copy_database(url, postgres_url)
    target = open_store(postgres_url)
    with target.engine.connect() as connection:
        held = [
            connection.execute(
                sa.text(f"SELECT count(*) FROM {table} WHERE lease_owner IS NOT NULL")
            ).scalar_one()
            for table in ("messages", "feeds", "hosts")
        ]
    target.close()
    assert held == [0, 0, 0]
