"""Wiring: every dependency is built here, once, and passed in. No module-level state."""

from __future__ import annotations

import gc
import os
import socket
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Protocol

from monitor.channels import ChatSender, Dispatcher
from monitor.channels import problems as channel_problems
from monitor.config import Config, load_config
from monitor.digest import DigestSettings, Renderer
from monitor.errors import ConfigError
from monitor.fetch import Fetcher
from monitor.mailer import MaildirMailer, Mailer, SmtpMailer
from monitor.pages import Pages
from monitor.parse_pool import ParsePool
from monitor.store import Store, open_store
from monitor.stories import DedupeSettings
from monitor.watchlists import Matcher


class Clock(Protocol):
    def __call__(self) -> datetime: ...


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass
class App:
    """What the orchestrators (poller, delivery) need; built by `running_app`."""

    config: Config
    store: Store
    matcher: Matcher
    fetcher: Fetcher
    renderer: Renderer
    mailer: Mailer
    parse_pool: ParsePool
    clock: Clock = utc_now
    recipients: dict[str, tuple[str, ...]] = field(default_factory=dict)
    worker_id: str = field(default_factory=lambda: new_worker_id())
    # Feeds another worker's config polls and this one's does not, already logged: a claim
    # takes them again and again while the configs differ (a warning per claim, before).
    foreign_feeds: set[str] = field(default_factory=set)
    pages: Pages | None = None  # full-text feeds' article pages (fulltext.py)
    # When each (watchlist, recipient) pair appeared in this process's configuration (at
    # start, or a reload): its first digest waits for the feeds' polls since (delivery.py).
    configured_at: dict[tuple[str, str], datetime] = field(default_factory=dict)
    # Message-ID -> when the server accepted it, while its "sent" mark is not yet written
    # (delivery.record_sent): such a message is never handed to the server again.
    accepted: dict[str, datetime] = field(default_factory=dict)
    # Feeds listing more items than max_items, already logged (with the numbers) at a poll
    # that read them: not again at every poll.
    long_feeds: set[str] = field(default_factory=set)

    def apply_config(self, config: Config) -> None:
        """Swap in a new validated config (SIGHUP); feeds are synced by the caller."""
        now = self.clock()
        pairs = {
            (w.name, address) for w in config.watchlists for address in config.recipients_of(w)
        }
        self.configured_at = {pair: self.configured_at.get(pair, now) for pair in pairs}
        self.config = config
        self.matcher = Matcher(config.watchlists)
        self.renderer = build_renderer(config)
        self.mailer = build_mailer(config)
        self.recipients = {w.name: config.recipients_of(w) for w in config.watchlists}
        self.store.dedupe = build_dedupe(config)
        self.store.page_feeds = frozenset(config.fulltext_feeds())
        if self.pages is not None:
            self.pages.settings = config.fulltext


def build_dedupe(config: Config) -> DedupeSettings:
    return DedupeSettings(
        similarity=config.dedupe.similarity,
        window=timedelta(seconds=config.dedupe.window),
        realert_on_update=config.dedupe.realert_on_update,
    )


def new_worker_id() -> str:
    """Names this process in leases, so a worker can tell its own from another's."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def load_checked(path: Path) -> Config:
    """The config at `path`, validated (config.load_config), and its digests rendered once
    with a sample: ConfigError lists every problem, a broken template's with its file and
    line. Used by every command and by a reload, so no tick meets them first."""
    config = load_config(path)
    if problems := build_renderer(config).problems():
        raise ConfigError([f"{path}: digests: {problem}" for problem in problems])
    if problems := channel_problems(config.channels()):
        raise ConfigError([f"{path}: recipients: {problem}" for problem in problems])
    return config


def build_renderer(config: Config) -> Renderer:
    sender = config.smtp.sender if config.smtp else "monitor@localhost.invalid"
    settings = DigestSettings(
        sender=sender,
        zone=config.zone,
        max_per_watchlist=config.digests.max_per_watchlist,
        subject=config.digests.subject,
        alert_subject=config.digests.alert_subject_set(),
        language=config.digests.language,
        names=tuple(config.display_names().items()),
        source=config.source,
        unsubscribe_url=config.digests.unsubscribe_url,
    )
    templates = Path(config.digests.templates_dir) if config.digests.templates_dir else None
    return Renderer(settings, templates)


def build_mailer(config: Config) -> Dispatcher:
    """Mail through SMTP (or into the Maildir outbox), chat messages to their channels."""
    mail: Mailer = SmtpMailer(config.smtp) if config.smtp else MaildirMailer(Path(config.outbox))
    return Dispatcher(mail, ChatSender(config.channels()))


def build_parse_pool(config: Config) -> ParsePool:
    polling = config.polling
    # With full text on, the parse processes share one copy of trafilatura and its caches.
    preload = ["monitor.extract_preload"] if config.fulltext_feeds() else []
    return ParsePool(polling.parse_workers, polling.parse_timeout, polling.parse_memory, preload)


# The interpreter's cyclic garbage collector looks at the youngest objects after every 700
# more allocated than freed. A cycle keeps tens of thousands of items and rows alive for a
# while, so it ran 510 times in a cold cycle of 1,000 feeds, 0.5-0.7 s of the main process's
# CPU (a tenth); every 10,000, 20 times, 0.1 s. Almost everything here is freed by reference
# counting anyway; the few cycles just wait a little longer.
_GC_YOUNG_THRESHOLD = 10_000


@asynccontextmanager
async def running_app(
    config: Config, clock: Clock = utc_now, *, takes_part: bool = True
) -> AsyncIterator[App]:
    """Open the store (migrating it), the HTTP session and the parse pool; close them after.

    `takes_part`: this process does the fleet's work with this config (run, poll, digest
    --send): it records which feeds the config polls, queues matches a crash left without
    deliveries, and on SQLite takes back stale leases. Not so for a look or a test
    (`digest --preview`, `test-email`), maybe with a staged config: it used to stop every
    worker polling the feeds the staged config lacked."""
    store = open_store(config.database, build_dedupe(config))
    pool = build_parse_pool(config)
    thresholds = gc.get_threshold()
    gc.set_threshold(max(thresholds[0], _GC_YOUNG_THRESHOLD), *thresholds[1:])
    try:
        async with Fetcher(config.polling) as fetcher:
            app = App(
                config=config,
                store=store,
                matcher=Matcher(()),  # apply_config below compiles the watchlists, once
                fetcher=fetcher,
                renderer=build_renderer(config),
                mailer=build_mailer(config),
                parse_pool=pool,
                clock=clock,
                pages=Pages(fetcher, config.fulltext, clock, store),
            )
            app.apply_config(config)
            if takes_part:
                store.sync_feeds(config.feed_urls(), clock(), config.polled_feeds())
                store.settle(app.recipients, clock())  # matches a crash left undelivered
                if store.is_sqlite:  # one process per SQLite file (lock.py): leases are ours
                    store.release_message_leases()
                    store.release_feed_leases()
            yield app
    finally:
        pool.close()
        store.close()
        gc.set_threshold(*thresholds)
