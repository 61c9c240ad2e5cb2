"""Stories: matched items clustered under the story lock, and their deliveries queued once
per story, watchlist and recipient."""

from __future__ import annotations

import threading
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import replace
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from monitor.models import DeliveryStatus, Item
from monitor.store.dialect import (
    among,
    bulk_insert,
    chunks,
    copy_rows,
    dialect_of,
    insert,
    select_among,
    stamp,
)
from monitor.store.engine import StoreBase
from monitor.store.schema import (
    Recorded,
    deliveries,
    item_from,
    item_row,
    item_sources,
    items,
    matches,
    stories,
    story_growth,
    story_members,
)
from monitor.store.told import GrowthNotes, story_recipients
from monitor.stories import (
    Candidate,
    DedupeSettings,
    assign_stories,
    compact,
    content_hash,
    fingerprints,
    shingle_hashes,
    shingles,
)

STORY_LOCK = 0x73746F72696573  # "stories": one clustering transaction at a time on PostgreSQL

_CANDIDATE_CACHE_SIZE = 100_000  # clustered items kept in memory: ~0.5 KB each


def lock_stories(tx: Connection) -> None:
    # Two workers clustering at once could each start a story for the same news. The lock is
    # taken before any insert, so it cannot deadlock with the unique indexes.
    if dialect_of(tx).row_locks:
        tx.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": STORY_LOCK})


def stories_of(tx: Connection, item_ids: Iterable[int]) -> dict[int, int]:
    """item id -> its story, for those of these items in one."""
    sql = "SELECT item_id, story_id FROM story_members WHERE item_id {among}"
    return dict(select_among(tx, sql, sorted(item_ids)))


def _story_candidates(
    tx: Connection,
    bands: Iterable[int],
    since: datetime,
    cache: dict[int, tuple[datetime, Candidate]],
    lock: threading.Lock,
) -> dict[int, list[Candidate]]:
    """band -> the stored items (first seen since `since`) that share it, with their story.

    Unrelated news shares a band now and then (docs/store.md), so
    each new item meets dozens of candidates, again in every batch: `cache` (item id ->
    first seen, candidate) keeps them, and only the (band, item id) pairs are read each time.
    An entry older than the window is read again: its id may have been reused after a prune.
    `lock` is held to change `cache`; other threads may change it meanwhile.
    """
    pairs = _band_members(tx, bands)
    missing = {i for _, i in pairs if (entry := cache.get(i)) is None or entry[0] < since}
    fetched = _candidates_by_id(tx, missing)
    with lock:
        cache.update(fetched)
    found: dict[int, list[Candidate]] = {}
    for band, item_id in pairs:
        entry = fetched.get(item_id) or cache.get(item_id)
        if entry is not None and entry[0] >= since:
            found.setdefault(band, []).append(entry[1])
    # A story takes new members for the window after it began, not for as long as each new
    # member is close to the last: a daily column carried by two feeds chained every edition
    # into its first day's story, and none was alerted again. Each candidate's story is read
    # now, not cached: a worker may have merged two stories since (merge_stories).
    current = _open_stories(tx, {c.item_id for cs in found.values() for c in cs}, since)
    return {
        band: kept
        for band, candidates in found.items()
        if (kept := [_in_story(c, current[c.item_id]) for c in candidates if c.item_id in current])
    }


def _open_stories(tx: Connection, item_ids: set[int], since: datetime) -> dict[int, int]:
    """item id -> its story, for these items in a story begun since `since`."""
    if not item_ids:
        return {}
    sql = (
        "SELECT m.item_id, m.story_id FROM story_members m JOIN stories s ON s.id = m.story_id "
        "WHERE s.created_at >= {p} AND m.item_id {among}"
    )
    return dict(select_among(tx, sql, sorted(item_ids), stamp(tx, since)))


def _in_story(candidate: Candidate, story: int) -> Candidate:
    return candidate if candidate.story_id == story else replace(candidate, story_id=story)


def _band_members(tx: Connection, bands: Iterable[int]) -> list[tuple[int, int]]:
    """(band, item id) of the stored items with any of these bands."""
    sql = "SELECT band, item_id FROM story_bands WHERE band {among}"
    pairs: list[tuple[int, int]] = select_among(tx, sql, bands)
    return pairs


def _candidates_by_id(
    tx: Connection, item_ids: Iterable[int]
) -> dict[int, tuple[datetime, Candidate]]:
    found = {}
    for chunk in chunks(item_ids):
        query = (
            sa.select(
                items.c.id,
                items.c.feed,
                items.c.title,
                items.c.summary,
                items.c.first_seen_at,
                story_members.c.story_id,
            )
            .join(story_members, story_members.c.item_id == items.c.id)
            .where(among(tx, items.c.id, chunk))
        )
        for row in tx.execute(query):
            hashes = compact(shingle_hashes(shingles(row.title, row.summary)))
            found[row.id] = (row.first_seen_at, Candidate(row.id, row.story_id, hashes, row.feed))
    return found


def story_outlets(tx: Connection, story_ids: Iterable[int]) -> dict[int, list[tuple[str, str]]]:
    """story id -> (outlet, url) of every item in it, first seen first."""
    outlets: dict[int, list[tuple[str, str]]] = {}
    for chunk in chunks(story_ids):
        query = (
            sa.select(story_members.c.story_id, item_sources.c.feed, item_sources.c.url)
            .join(item_sources, item_sources.c.item_id == story_members.c.item_id)
            .where(story_members.c.story_id.in_(chunk))
            .order_by(item_sources.c.seen_at, item_sources.c.item_id)
        )
        for row in tx.execute(query):
            outlets.setdefault(row.story_id, []).append((row.feed, row.url))
    return outlets


def _insert_bands(tx: Connection, rows: Sequence[tuple[int, int]]) -> None:
    # 32 rows per new item: straight to the driver's executemany (SQLite) or COPY, not
    # through SQLAlchemy's per-row parameter processing (docs/store.md). The
    # item ids are new, so only an item's own repeated band could conflict: set() drops it.
    ordered = sorted(set(rows))  # in key order: fewer B-tree pages touched
    if dialect_of(tx).copy:
        cursor = tx.connection.cursor()
        try:
            copy_rows(cursor, "story_bands", ("band", "item_id"), ordered)
        finally:
            cursor.close()
    else:
        sql = "INSERT OR IGNORE INTO story_bands (band, item_id) VALUES (?, ?)"
        tx.exec_driver_sql(sql, ordered)


def unsettled_matches(
    tx: Connection, since: datetime | None = None, item_ids: Collection[int] | None = None
) -> list[Recorded]:
    """Matches never queued (stored since `since`, of these items): without deliveries, of
    items in no story."""
    query = (
        sa.select(matches.c.id.label("match_id"), matches.c.watchlist, items)
        .join(items, items.c.id == matches.c.item_id)
        .where(~sa.exists().where(story_members.c.item_id == matches.c.item_id))
        .where(~sa.exists().where(deliveries.c.match_id == matches.c.id))
        .order_by(matches.c.id)
    )
    if since is not None:
        query = query.where(matches.c.created_at >= since)
    if item_ids is not None:
        query = query.where(matches.c.item_id.in_(sorted(item_ids)))
    return [
        Recorded(row.match_id, row.id, row.watchlist, item_from(row)) for row in tx.execute(query)
    ]


def merge_stories(tx: Connection, into: int, merged: int) -> None:
    """Move every member of story `merged` (and its growth notes) into story `into`, under
    the story lock: one article reached by two links (texts.py). Each recipient is then
    queued and told the story once (told.story_recipients, told.first_messages)."""
    tx.execute(
        story_members.update().where(story_members.c.story_id == merged).values(story_id=into)
    )
    tx.execute(story_growth.update().where(story_growth.c.story_id == merged).values(story_id=into))
    tx.execute(stories.delete().where(stories.c.id == merged))


def insert_revisions(
    tx: Connection, updated: Sequence[tuple[int, Item]], now: datetime
) -> list[tuple[int, int, Item]]:
    """Store each changed text as a revision item in its original's story, to alert again:
    (original id, revision id, revision) of those stored.

    The revision's key names its text, so the same change seen twice is stored once.
    """
    revised = []
    for original_id, item in updated:
        revision = replace(item, key=f"{item.key}#{content_hash(item)}")
        revision_id = tx.execute(
            insert(tx, items)
            .values(item_row(revision, now))
            .on_conflict_do_nothing(index_elements=["key"])
            .returning(items.c.id)
        ).scalar()
        if revision_id is None:
            continue
        story = tx.execute(
            sa.select(story_members.c.story_id).where(story_members.c.item_id == original_id)
        ).scalar()
        if story is None:  # the original is in no story (unmatched, or not settled yet):
            # the revision starts its own; the original's story is _settle's to decide.
            tx.execute(stories.insert().values(id=revision_id, created_at=now))
            story = revision_id
        tx.execute(
            story_members.insert().values(
                item_id=revision_id, story_id=story, similarity=1.0, revision_of=original_id
            )
        )
        revised.append((original_id, revision_id, revision))
    return revised


class StoryStore(StoreBase):
    """Clusters matched items into stories and queues their deliveries (see `settle`)."""

    def __init__(self, engine: Engine, dedupe: DedupeSettings | None = None) -> None:
        super().__init__(engine, dedupe)
        # item id -> (first seen, candidate) of clustered items: a band match then costs no
        # re-read and re-shingling of the text (see _story_candidates).
        self._candidates: dict[int, tuple[datetime, Candidate]] = {}
        # Held to change _candidates: the poller's writer, the daemon's settling (digest
        # ticks) and pruning each run in a thread of their own.
        self._candidates_lock = threading.Lock()
        # Look for matches a crash left unqueued (see ingest_many) once, with the first items.
        self._sweep = True

    def _cluster(
        self, tx: Connection, new: Sequence[tuple[int, Item]], now: datetime
    ) -> tuple[dict[int, int], list[Candidate]]:
        """Put each new item into a story (stored with its band hashes): item id -> story id,
        and the new items as candidates for later batches."""
        if not new:
            return {}, []
        prints = fingerprints([(item.title, item.summary) for _, item in new], self.dedupe)
        bands = {band for fingerprint in prints for band in fingerprint.bands}
        since = now - self.dedupe.window
        known = _story_candidates(tx, bands, since, self._candidates, self._candidates_lock)
        assigned = assign_stories(
            [(item_id, item.feed, fp) for (item_id, item), fp in zip(new, prints, strict=True)],
            known,
            self.dedupe.similarity,
        )
        pairs = [(item_id, a) for (item_id, _), a in zip(new, assigned, strict=True)]
        at = stamp(tx, now)
        created = [(i, at) for i, a in pairs if a.is_new_story(i)]
        # Under the story lock, of items in no story yet: new rows.
        bulk_insert(tx, stories, ("id", "created_at"), created, new=True)
        bulk_insert(
            tx,
            story_members,
            ("item_id", "story_id", "similarity"),
            [(i, a.story_id, a.similarity) for i, a in pairs],
            new=True,
        )
        band_rows = [
            (band, item_id)
            for (item_id, _), fp in zip(new, prints, strict=True)
            for band in fp.bands
        ]
        if band_rows:
            _insert_bands(tx, band_rows)
        clustered = [
            Candidate(item_id, a.story_id, compact(fp.hashes), item.feed)
            for (item_id, item), a, fp in zip(new, assigned, prints, strict=True)
            if fp.bands
        ]
        return {item_id: a.story_id for item_id, a in pairs}, clustered

    def _forget_candidates(self, item_ids: Iterable[int]) -> None:
        """Drop these items from the candidate cache: shingled again when next needed."""
        with self._candidates_lock:
            for item_id in item_ids:
                self._candidates.pop(item_id, None)

    def _remember(self, clustered: Sequence[Candidate], now: datetime) -> None:
        with self._candidates_lock:
            cache = self._candidates
            if len(cache) + len(clustered) > _CANDIDATE_CACHE_SIZE:
                since = now - self.dedupe.window
                for item_id in [k for k, v in cache.items() if v[0] < since]:
                    del cache[item_id]
                if len(cache) + len(clustered) > _CANDIDATE_CACHE_SIZE:
                    cache.clear()
            for candidate in clustered:
                cache[candidate.item_id] = (now, candidate)

    def _queue(
        self,
        tx: Connection,
        recorded: Sequence[Recorded],
        recipients: Mapping[str, Sequence[str]],
        now: datetime,
        in_story: Mapping[int, int] | None = None,
        *,
        told_before: bool = False,
    ) -> None:
        """Queue each recorded match for each recipient not yet queued its story (in_story:
        item id -> story id, for items that may have joined an earlier story; told_before:
        every story may have reached recipients already, even one the item began)."""
        created = stamp(tx, now)
        told: dict[tuple[int, str], set[str]] = {}  # (story, watchlist) -> queued in this call
        growth = GrowthNotes()
        rows = []
        for found in recorded:
            story = (in_story or {}).get(found.item_id, found.item_id)
            queued = told.get((story, found.watchlist))
            if queued is None:
                queued = told[story, found.watchlist] = set()
                if told_before or story != found.item_id:  # who was told already?
                    queued.update(story_recipients(tx, story, found.watchlist))
            if story != found.item_id and not told_before:  # a new member joined a story
                growth.joined(tx, story, found, recipients.get(found.watchlist, ()))
            wanted = [r for r in recipients.get(found.watchlist, ()) if r not in queued]
            queued.update(wanted)
            growth.reached(story, wanted)
            pending = DeliveryStatus.PENDING.value  # straight to the driver
            rows += [(found.match_id, found.watchlist, r, pending, created) for r in wanted]
        columns = ("match_id", "watchlist", "recipient", "status", "created_at")
        # New rows: a match is queued once, with its item's story (_settle, under the story
        # lock, skips items already in one) or as a revision just stored.
        bulk_insert(tx, deliveries, columns, rows, new=True)
        growth.insert(tx, now)

    def settle(
        self,
        recipients: Mapping[str, Sequence[str]],
        now: datetime,
        since: datetime | None = None,
    ) -> None:
        """Queue the deliveries of matches that a crash between ingest_many's two
        transactions left without any: every such match (at start), or those stored since
        `since` (the daemon looks every digest tick: another worker may have died)."""
        if since is None:  # every one: the sweep under the story lock finds them
            self._sweep = True
            self._settle([], recipients, now)
            return
        with self._read() as tx:
            found = unsettled_matches(tx, since)
        if found or self._sweep:
            self._settle(found, recipients, now)

    def _settle(
        self, unsettled: Sequence[Recorded], recipients: Mapping[str, Sequence[str]], now: datetime
    ) -> None:
        """Cluster matched items not yet in a story and queue their deliveries."""
        if not unsettled and not self._sweep:
            return
        with self._tx() as tx:
            lock_stories(tx)
            if self._sweep:  # left by a crash or a failed _settle
                unsettled = [*unsettled, *unsettled_matches(tx)]
            # Another worker's sweep may have settled some meanwhile.
            done = stories_of(tx, {r.item_id for r in unsettled})
            unsettled = [r for r in unsettled if r.item_id not in done]
            matched = {r.item_id: r.item for r in unsettled}
            in_story, clustered = self._cluster(tx, list(matched.items()), now)
            self._queue(tx, unsettled, recipients, now, in_story)
        self._sweep = False
        self._remember(clustered, now)  # only once committed: SQLite may reuse a rolled-back id
