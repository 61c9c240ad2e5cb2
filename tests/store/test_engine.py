"""Engine: migrations, the schema, SQLite readers beside the writer (monitor/store/engine.py).

Run on SQLite and on PostgreSQL (the store fixture's database_url is parametrized)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import sqlalchemy as sa

from monitor.store import open_store
from monitor.store.schema import metadata
from tests.store.common import NOW


def test_migrations_are_idempotent(database_url: str) -> None:
    open_store(database_url).close()
    second = open_store(database_url)
    assert second.ping()
    second.close()


def test_the_migrations_build_the_schema_the_code_declares(database_url: str) -> None:
    # Alembic's autogenerate comparison: a table, column, index or type that a migration
    # forgot (or the declaration in store.py) shows up as a difference.
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    store = open_store(database_url)
    try:
        with store.engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            assert compare_metadata(context, metadata) == []
    finally:
        store.close()


def test_sqlite_readers_do_not_wait_for_the_writer(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path}/monitor.db")
    store.sync_feeds({"a": "https://a.example/feed"}, NOW)
    holding, done = threading.Event(), threading.Event()

    def writer() -> None:  # holds the write lock (BEGIN IMMEDIATE) until the reads are done
        with store.engine.begin() as tx:
            tx.execute(sa.text("UPDATE feeds SET etag = 'changing'"))
            holding.set()
            done.wait(60)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        assert holding.wait(10)
        # Were reads to wait for the lock, they would fail after the 30 s busy timeout.
        assert [(f.name, f.etag) for f in store.feed_states()] == [("a", None)]
        assert store.get_meta("first_poll_done") is None
        assert store.pending_entries() == []
    finally:
        done.set()
        thread.join()
        store.close()


def test_a_schema_a_newer_monitor_migrated_is_refused_in_one_line(database_url: str) -> None:
    """Every command of an older monitor (a rolling upgrade) ended in a traceback."""
    from monitor.errors import UnavailableError

    open_store(database_url).close()
    engine = sa.create_engine(database_url)
    with engine.begin() as connection:
        # A revision this monitor does not have, beside its own heads.
        connection.execute(sa.text("INSERT INTO alembic_version VALUES ('f00dfeed')"))
    engine.dispose()
    with pytest.raises(UnavailableError, match="schema is newer than this monitor knows"):
        open_store(database_url)


def test_recipients_stored_with_an_upper_case_domain_are_the_configured_mailbox(
    database_url: str,
) -> None:
    """The config writes domains in lower case now (RFC 5321: one mailbox); what an older
    version stored under another spelling must not be left behind, never sent, and the one
    person who got two copies gets one."""
    from monitor.store import DigestRun
    from monitor.store.engine import migrate
    from tests.store.common import make_item, match_all

    store = open_store(database_url)
    try:
        twice = {"xAI": ("a@example.org", "a@EXAMPLE.org", "b@Example.ORG")}
        store.ingest([make_item(1)], match_all, twice, NOW)
        store.claim_digest(None, [], NOW, [DigestRun("xAI", "b@Example.ORG", NOW)])
        with store.engine.begin() as connection:  # as before migration 0008_i28
            connection.execute(
                sa.text("DELETE FROM alembic_version WHERE version_num = :r"),
                {"r": "0008_i28_recipient_domains"},
            )
        migrate(store.engine)
        pending = sorted(recipient for recipient, _ in store.pending_entries())
        assert pending == ["a@example.org", "b@example.org"]
        assert ("xAI", "b@example.org") in store.last_runs()
    finally:
        store.close()
