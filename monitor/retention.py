"""Retention: the database stays bounded, and an old item never alerts twice.

Items (texts, matches, finished deliveries, outlets, story membership) are deleted after
`retention.items` (default 30 days); their URL and GUID hashes stay as tombstones for
`retention.keys` (default 365 days after they were last seen in a feed), so an item that
reappears is still known. LSH bands are only needed within `dedupe.window`. `monitor prune`
runs this once; the daemon's daily housekeeping job calls `prune(app)`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from monitor.app import App
from monitor.config import Config
from monitor.store import Store

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class PruneReport:
    items: int  # items deleted, with their matches and deliveries
    keys: int  # tombstones expired
    bands: int  # LSH band rows older than the clustering window
    stories: int  # stories left without members
    messages: int  # sent and dead messages no delivery refers to any more
    digest_runs: int  # handled digest periods older than the items, the latest kept
    items_before: datetime
    keys_before: datetime

    def summary(self) -> str:
        return (
            f"pruned {self.items} items first seen before {self.items_before:%Y-%m-%d}, "
            f"{self.keys} keys last seen before {self.keys_before:%Y-%m-%d}, "
            f"{self.bands} story bands, {self.stories} empty stories, {self.messages} sent or "
            f"dead messages, {self.digest_runs} digest periods"
        )


def prune(app: App) -> PruneReport:
    """Apply the configured retention now (the daemon's daily housekeeping)."""
    report = prune_store(app.store, app.config, app.clock())
    log.info("%s", report.summary())
    return report


def prune_store(store: Store, config: Config, now: datetime) -> PruneReport:
    items_before = now - timedelta(seconds=config.retention.items)
    keys_before = now - timedelta(seconds=config.retention.keys)
    bands_before = now - timedelta(seconds=config.dedupe.window)
    pruned = store.prune(items_before, keys_before, bands_before)
    return PruneReport(
        pruned.items,
        pruned.keys,
        pruned.bands,
        pruned.stories,
        pruned.messages,
        pruned.digest_runs,
        items_before,
        keys_before,
    )
