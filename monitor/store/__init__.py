"""Everything monitor keeps between runs, in SQLite (default) or PostgreSQL. Owns SQLAlchemy.

Each public method is one transaction, except those docs/store.md names (`ingest_many`:
two, see there). The outbox invariant lives here: a match is stored with its item, and its
pending deliveries follow in the next transaction or, after a crash between the two, at
the next start (`settle`); a message's bytes are stored in the transaction that claims its
deliveries, before anything is sent.

One module per entity, one mixin of `Store` each:

    schema    the tables and column types, and the readers and writers of their rows
    engine    connections, SQLite pragmas, migrations; StoreBase (`_tx`, `_read`, meta)
    dialect   what differs between SQLite and PostgreSQL, named once
    feeds     FeedStore: configured feeds and their state
    leases    LeaseStore: feed and host leases, and each poll's outcome with its release
    stories   StoryStore: clustering into stories, queueing deliveries once per story
    items     ItemStore: new items stored once with their keys and outlets, matched
    outbox    OutboxStore: pending deliveries, digest claims, messages and their sending
    told      ToldStore: what each recipient was sent, story growth still to tell
    workers   WorkerStore: running processes and their heartbeats
    prune     PruneStore: retention
    texts     TextStore: full-text feeds' article pages, claimed, stored and matched
    sites     SiteStore: the page sites' turns, back-offs and robots.txt, across workers
    spikes    SpikeStore: stories per day and window, spike and silence alerts claimed once
"""

from __future__ import annotations

import sqlalchemy as sa

from monitor.errors import UnavailableError
from monitor.store.engine import create_engine, database_trouble, hint, migrate
from monitor.store.feeds import host_of
from monitor.store.items import IngestResult, ItemStore
from monitor.store.leases import Claim, LeaseStore
from monitor.store.outbox import DeadLetter, DeferredMessage, DigestRun, Outbox, OutboxStore
from monitor.store.prune import Pruned, PruneStore
from monitor.store.schema import PageStatus
from monitor.store.sites import PageSite, SiteStore, Turn
from monitor.store.spikes import SpikeStore, SpikeStory
from monitor.store.texts import PageOutcome, PageStats, PageTask, TextStore
from monitor.store.told import ToldStore
from monitor.store.workers import WorkerInfo, WorkerStore
from monitor.stories import DedupeSettings

__all__ = [
    "Claim",
    "DeadLetter",
    "DeferredMessage",
    "DigestRun",
    "IngestResult",
    "Outbox",
    "PageOutcome",
    "PageSite",
    "PageStats",
    "PageStatus",
    "PageTask",
    "Pruned",
    "SiteStore",
    "SpikeStory",
    "Store",
    "Turn",
    "WorkerInfo",
    "create_engine",
    "database_trouble",
    "host_of",
    "migrate",
    "open_store",
]


class Store(
    ItemStore,
    TextStore,
    SiteStore,
    LeaseStore,
    OutboxStore,
    ToldStore,
    WorkerStore,
    PruneStore,
    SpikeStore,
):
    """The database, behind methods named for what the pipeline needs."""


def open_store(url: str, dedupe: DedupeSettings | None = None) -> Store:
    """Create the engine, migrate the schema to the newest version, return the Store."""
    shown = sa.engine.make_url(url).render_as_string(hide_password=True)
    try:
        engine = create_engine(url)
    except OSError as error:  # the SQLite file's directory
        raise UnavailableError(f"database {shown}: cannot create its directory: {error}") from None
    try:
        migrate(engine)
    except sa.exc.OperationalError as error:  # down, refused, a file that cannot be made
        engine.dispose()
        reason = str(error.orig or error).strip().splitlines()[0]
        raise UnavailableError(f"database {shown}: cannot open it: {reason}{hint(url)}") from None
    except BaseException:
        engine.dispose()
        raise
    return Store(engine, dedupe)
