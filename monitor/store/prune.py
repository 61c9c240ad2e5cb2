"""Retention: what `prune` deletes, and what it keeps as tombstones."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa

from monitor.models import DeliveryStatus, MessageStatus
from monitor.store.schema import (
    deliveries,
    digest_runs,
    item_keys,
    items,
    matches,
    messages,
    stories,
    story_bands,
    story_members,
    workers,
)
from monitor.store.stories import StoryStore


@dataclass(frozen=True, slots=True)
class Pruned:
    """Rows deleted by one `Store.prune`."""

    items: int
    keys: int
    bands: int
    stories: int
    messages: int
    digest_runs: int


class PruneStore(StoryStore):
    def prune(
        self, items_before: datetime, keys_before: datetime, bands_before: datetime
    ) -> Pruned:
        """Delete items first seen before items_before (unless a delivery of theirs is still
        pending), with their matches, deliveries, outlets and memberships; keep their keys as
        tombstones until keys_before; drop LSH bands of items older than bands_before (the
        clustering window), sent and dead messages that no longer have deliveries (a dead
        letter of a pruned item would otherwise be kept, and `retry-dead` send a digest
        months old), digest periods handled before items_before but the latest of each
        recipient of each watchlist (the one the schedule needs), and the rows of workers
        silent since before items_before (each crash left one)."""
        busy = (
            sa.select(matches.c.item_id)
            .join(deliveries, deliveries.c.match_id == matches.c.id)
            .where(deliveries.c.status.in_((DeliveryStatus.PENDING, DeliveryStatus.CLAIMED)))
        )
        old = (
            sa.select(items.c.id)
            .where(items.c.first_seen_at < items_before)
            .where(items.c.id.not_in(busy))
        )
        recent = sa.select(items.c.id).where(items.c.first_seen_at >= bands_before)
        with self._candidates_lock:  # SQLite may give a deleted item's id to a new one
            self._candidates.clear()
        with self._tx() as tx:
            tx.execute(item_keys.update().where(item_keys.c.item_id.in_(old)).values(item_id=None))
            bands = tx.execute(story_bands.delete().where(story_bands.c.item_id.not_in(recent)))
            gone = tx.execute(items.delete().where(items.c.id.in_(old)))
            members = sa.select(story_members.c.story_id)
            empty = tx.execute(stories.delete().where(stories.c.id.not_in(members)))
            bound = sa.select(deliveries.c.message_id).where(deliveries.c.message_id.is_not(None))
            sent = tx.execute(
                messages.delete()
                .where(messages.c.status.in_((MessageStatus.SENT, MessageStatus.DEAD)))
                .where(messages.c.created_at < items_before)
                .where(messages.c.message_id.not_in(bound))
            )
            keys = tx.execute(item_keys.delete().where(item_keys.c.last_seen_at < keys_before))
            pair = (digest_runs.c.watchlist, digest_runs.c.recipient)
            latest = sa.select(*pair, sa.func.max(digest_runs.c.slot)).group_by(*pair)
            runs = tx.execute(
                digest_runs.delete()
                .where(digest_runs.c.slot < items_before)
                .where(sa.tuple_(*pair, digest_runs.c.slot).not_in(latest))
            )
            tx.execute(workers.delete().where(workers.c.heartbeat_at < items_before))
        return Pruned(
            gone.rowcount,
            keys.rowcount,
            bands.rowcount,
            empty.rowcount,
            sent.rowcount,
            runs.rowcount,
        )
