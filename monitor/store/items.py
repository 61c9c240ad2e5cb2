"""Items and matches: new items stored once with their dedupe keys and outlets, and matched."""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, NamedTuple

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from monitor.models import Item, Match
from monitor.store.dialect import among, bulk_insert, chunks, insert, select_among, stamp
from monitor.store.schema import (
    ITEM_COLUMNS,
    PAGE_ITEM,
    PageStatus,
    Recorded,
    hits_json,
    item_from,
    item_keys,
    item_sources,
    item_texts,
    item_values,
    items,
    matches,
    meta,
    story_members,
)
from monitor.store.stories import StoryStore, insert_revisions, lock_stories, stories_of
from monitor.stories import (
    DedupeSettings,
    dedupe_keys,
)

log = logging.getLogger("monitor.store")


@dataclass(frozen=True, slots=True)
class IngestResult:
    new_items: tuple[Item, ...]
    matches: tuple[tuple[Item, Match], ...]
    updated: tuple[Item, ...] = ()  # known items whose title or summary changed


# Match an item, with its page's stored main text when it has one (a copy in another feed,
# a revision: the page is never fetched again for them).
Matching = Callable[[Item, str | None], Sequence[Match]]

_KEY_SCHEME = "dedupe_keys"  # meta: "grouped", or no row for the earlier kind (_grouped_keys)
_TOUCH_AFTER = timedelta(days=1)  # refresh a key's last_seen_at at most daily


def _grouped_keys(tx: Connection) -> bool:
    """Whether this database's dedupe keys are grouped (stories.dedupe_keys): those of a
    database that had none when this version first stored items. One that has keys of the
    earlier, ungrouped kind keeps that kind: its keys must still find its items. Decided in
    the first ingest's transaction, so the first keys and the scheme are stored together."""
    stored = tx.execute(sa.select(meta.c.value).where(meta.c.key == _KEY_SCHEME)).scalar()
    if stored is not None:
        return bool(stored == "grouped")
    if tx.execute(sa.select(item_keys.c.hash).limit(1)).first() is not None:
        return False
    row = {"key": _KEY_SCHEME, "value": "grouped"}
    tx.execute(insert(tx, meta).values(row).on_conflict_do_nothing(index_elements=["key"]))
    return True


def _first_of_each(batch: Sequence[Item], grouped: bool) -> list[tuple[Item, tuple[int, ...]]]:
    """The batch without repeats (by any dedupe key), each item with its key hashes."""
    seen: set[int] = set()
    unique = []
    for item in batch:
        hashes = dedupe_keys(item, grouped)
        if not seen.intersection(hashes):
            unique.append((item, hashes))
        seen.update(hashes)
    return unique


class _Known(NamedTuple):
    """A stored dedupe key, with its item (feed, key, title and summary are None once the
    item was pruned)."""

    hash: int
    item_id: int | None
    stale: bool  # last seen long enough ago to refresh
    feed: str | None
    key: str | None
    title: str | None
    summary: str | None


def _known_keys(tx: Connection, hashes: Iterable[int], now: datetime) -> dict[int, _Known]:
    """hash -> what is stored under it, for the stored ones. One query per round, on the
    ingest hot path."""
    rows = select_among(
        tx,
        "SELECT k.hash, k.item_id, k.last_seen_at < {p}, i.feed, i.key, i.title, i.summary "
        "FROM item_keys k LEFT JOIN items i ON i.id = k.item_id WHERE k.hash {among}",
        set(hashes),
        stamp(tx, now - _TOUCH_AFTER),
    )
    return {row[0]: _Known(*row) for row in rows}


def _stored(known: Mapping[int, _Known], hashes: Iterable[int]) -> _Known:
    """What a known item's keys name: a live item (by the first key that has one), else a
    tombstone."""
    rows = [known[h] for h in hashes if h in known]
    return next((r for r in rows if r.key is not None), rows[0])


def _seen_again(
    tx: Connection,
    seen: Sequence[tuple[Item, tuple[int, ...]]],
    known: Mapping[int, _Known],
    now: datetime,
) -> list[tuple[int, Item, Item]]:
    """Record the outlet and any new key of each known item; return (id, item with the
    stored key, item as given) of those whose text changed in the feed that first carried
    them (the stored text is updated)."""
    sources: list[tuple[Any, ...]] = []
    new_keys: list[tuple[Any, ...]] = []
    stale: list[int] = []
    updated: list[tuple[int, Item, Item]] = []
    seen_at = stamp(tx, now)
    for item, hashes in seen:
        row = _stored(known, hashes)
        stale += [known[h].hash for h in hashes if h in known and known[h].stale]
        new_keys += [(h, row.item_id, seen_at) for h in hashes]
        if row.key is None or row.item_id is None:  # pruned: a tombstone, nothing to record
            continue
        sources.append((row.item_id, item.feed, item.url, seen_at))
        if row.feed == item.feed and (row.title, row.summary) != (item.title, item.summary):
            updated.append((row.item_id, replace(item, key=row.key), item))
    bulk_insert(tx, item_keys, ("hash", "item_id", "last_seen_at"), sorted(new_keys))
    for chunk in chunks(sorted(stale)):
        tx.execute(
            item_keys.update().where(among(tx, item_keys.c.hash, chunk)).values(last_seen_at=now)
        )
    bulk_insert(tx, item_sources, ("item_id", "feed", "url", "seen_at"), sources)
    for item_id, item, _ in updated:
        tx.execute(
            items.update()
            .where(items.c.id == item_id)
            .values(title=item.title, summary=item.summary)
        )
    return updated


def _matched_elsewhere(
    tx: Connection,
    seen: Sequence[tuple[Item, tuple[int, ...]]],
    known: Mapping[int, _Known],
    match: Matching,
) -> list[tuple[tuple[int, Item, Match], Item]]:
    """((stored item id, item, match), copy) of known items carried by another feed than
    the first, for watchlists that did not match the stored item: one limited to that feed
    or its language matches only now. The stored text is matched (the digest shows it), with
    its page's stored body, as the copy's feed and language."""
    pairs = [(_stored(known, hashes), copy) for copy, hashes in seen]
    pairs = [
        (row, copy) for row, copy in pairs if row.item_id and row.key and row.feed != copy.feed
    ]
    if not pairs:
        return []
    ids = {row.item_id for row, _ in pairs if row.item_id}
    dates, bodies = _published_of(tx, ids), page_bodies(tx, ids)
    candidates: list[tuple[tuple[int, Item, Match], Item]] = []
    for row, copy in pairs:
        assert row.item_id is not None and row.key is not None
        stored = replace(
            copy,
            key=row.key,
            title=row.title or "",
            summary=row.summary or "",
            published=dates.get(row.item_id, copy.published),  # backlog is judged by it
        )
        found = match(stored, bodies.get(row.item_id))
        candidates += [((row.item_id, stored, m), copy) for m in found]
    if not candidates:
        return []
    sql = "SELECT item_id, watchlist FROM matches WHERE item_id {among}"
    had = set(map(tuple, select_among(tx, sql, sorted({c[0][0] for c in candidates}))))
    fresh, taken = [], set(had)
    for (item_id, stored, m), copy in candidates:
        if (item_id, m.watchlist) not in taken:
            taken.add((item_id, m.watchlist))
            fresh.append(((item_id, stored, m), copy))
    return fresh


def page_bodies(tx: Connection, item_ids: Collection[int]) -> dict[int, str]:
    """item id -> the stored main text of its page (a revision's: its original's page, never
    fetched twice), for those of these items that have one."""
    query = (
        sa.select(items.c.id, item_texts.c.body)
        .outerjoin(story_members, story_members.c.item_id == items.c.id)
        .join(item_texts, item_texts.c.item_id == PAGE_ITEM)
        .where(item_texts.c.body.is_not(None))
    )
    found: dict[int, str] = {}
    for chunk in chunks(sorted(item_ids)):
        rows = tx.execute(query.where(items.c.id.in_(chunk)))
        found.update((item_id, body) for item_id, body in rows)
    return found


def _with_bodies(
    match: Callable[[Item], Sequence[Match]],
    match_body: Callable[[Item, str], Sequence[Match]] | None,
) -> Matching:
    def matched(item: Item, body: str | None) -> Sequence[Match]:
        return match_body(item, body) if body and match_body else match(item)

    return matched


def _published_of(tx: Connection, item_ids: Iterable[int]) -> dict[int, datetime]:
    """item id -> its stored date, for the few known items another feed carries."""
    query = sa.select(items.c.id, items.c.published_at).where(items.c.id.in_(sorted(item_ids)))
    return {item_id: published for item_id, published in tx.execute(query)}


def _record_repeats(
    tx: Connection,
    repeats: Sequence[tuple[Item, tuple[int, ...], Item]],
    ids: Mapping[str, int],
    now: datetime,
) -> None:
    """Items that an earlier batch of the same ingest carries as new (item, its key hashes,
    that batch's item): their keys and their outlet, as for any item seen again."""
    stored = [(item, hashes, ids[first.key]) for item, hashes, first in repeats if first.key in ids]
    seen_at = stamp(tx, now)
    keys = sorted((h, item_id, seen_at) for _, hashes, item_id in stored for h in hashes)
    bulk_insert(tx, item_keys, ("hash", "item_id", "last_seen_at"), keys)
    outlets = [(item_id, item.feed, item.url, seen_at) for item, _, item_id in stored]
    bulk_insert(tx, item_sources, ("item_id", "feed", "url", "seen_at"), outlets)


def _queue_pages(tx: Connection, stored: Sequence[tuple[int, str]], feeds: Collection[str]) -> None:
    """Queue the article pages of new items (id, feed) of full-text `feeds` (fulltext.py
    claims them from the queue)."""
    rows = [(item_id, feed, PageStatus.WAITING.value) for item_id, feed in stored if feed in feeds]
    bulk_insert(tx, item_texts, ("item_id", "feed", "status"), rows, new=True)


def _insert_items(
    tx: Connection, fresh: Sequence[tuple[Item, tuple[int, ...]]], now: datetime
) -> dict[str, int]:
    """Insert the new items with their keys and own outlet; item key -> id."""
    if not fresh:
        return {}
    seen_at = stamp(tx, now)
    inserted = bulk_insert(
        tx,
        items,
        ITEM_COLUMNS,
        # In key order, as every worker inserts them: two cannot deadlock on the index.
        sorted(item_values(item, stamp(tx, item.published), seen_at) for item, _ in fresh),
        returning=("id", "key"),
        new=True,
    )
    ids = {key: item_id for item_id, key in inserted}
    stored = [(item, hashes) for item, hashes in fresh if item.key in ids]
    bulk_insert(
        tx,
        item_keys,
        ("hash", "item_id", "last_seen_at"),
        sorted((h, ids[item.key], seen_at) for item, hashes in stored for h in hashes),
        new=True,
    )
    bulk_insert(
        tx,
        item_sources,
        ("item_id", "feed", "url", "seen_at"),
        [(ids[item.key], item.feed, item.url, seen_at) for item, _ in stored],
        new=True,
    )
    return ids


def _record_matches(
    tx: Connection, found: Sequence[tuple[int, Item, Match]], now: datetime, *, new: bool = True
) -> list[Recorded]:
    """Store (item id, item, match) rows; the recorded ones (a repeat is skipped). `new`:
    the items (or revisions) are this transaction's own, so no other worker has matches
    for them."""
    inserted = bulk_insert(
        tx,
        matches,
        ("item_id", "watchlist", "hits", "created_at"),
        [(item_id, m.watchlist, hits_json(m.hits), stamp(tx, now)) for item_id, _, m in found],
        returning=("id", "item_id", "watchlist"),
        new=new,
    )
    ids = {(item_id, watchlist): match_id for match_id, item_id, watchlist in inserted}
    recorded = []
    for item_id, item, m in found:
        match_id = ids.pop((item_id, m.watchlist), None)
        if match_id is not None:
            recorded.append(Recorded(match_id, item_id, m.watchlist, item))
    return recorded


class ItemStore(StoryStore):
    """Stores new items once, matches them, and hands the matches to `settle`."""

    def __init__(self, engine: Engine, dedupe: DedupeSettings | None = None) -> None:
        super().__init__(engine, dedupe)
        self._grouped: bool | None = None  # the dedupe key scheme, once a first ingest committed

    # ------------------------------------------------------------------ items and matches

    def ingest(
        self,
        batch: Sequence[Item],
        match: Callable[[Item], Sequence[Match]],
        recipients: Mapping[str, Sequence[str]],
        now: datetime,
        *,
        match_body: Callable[[Item, str], Sequence[Match]] | None = None,
    ) -> IngestResult:
        """Store new items; match only those; queue a delivery per match and recipient.

        A known item (same URL identity, or same feed + GUID, even long after it was pruned)
        only records its outlet. A new item that joins a story whose match was already
        queued for a watchlist and recipient queues nothing more for them. See ingest_many
        for the transactions and `match_body`.
        """
        if not batch:
            return IngestResult((), ())
        return self.ingest_many([batch], match, recipients, now, match_body=match_body)[0]

    def ingest_many(
        self,
        batches: Sequence[Sequence[Item]],
        match: Callable[[Item], Sequence[Match]],
        recipients: Mapping[str, Sequence[str]],
        now: datetime,
        *,
        match_body: Callable[[Item, str], Sequence[Match]] | None = None,
    ) -> list[IngestResult]:
        """`ingest` each batch (one feed's items), in two transactions.

        `match_body` matches a known item with its page's stored main text: a copy in
        another feed, a revision (without it, their title and summary are matched alone).

        The first stores every batch's items with their keys, outlets and matches, and may
        run beside other workers' (several feeds share one commit: it rewrites every index
        page touched). The second, one worker at a time (a story is decided once), puts the
        matched items into stories and queues their deliveries. A crash between the two
        leaves matches without deliveries: `_settle` finds them at the next start.
        """
        with self._tx() as tx:
            grouped = self._grouped if self._grouped is not None else _grouped_keys(tx)
            matching = _with_bodies(match, match_body)
            results, unsettled, rewritten = self._ingest(
                tx, batches, matching, recipients, now, grouped
            )
        self._grouped = grouped  # stored: with the first keys, the scheme's row committed
        # Items whose text changed are shingled again when next needed; dropped once
        # committed, or a settle in another thread could cache the old text meanwhile.
        self._forget_candidates(rewritten)
        try:
            self._settle(unsettled, recipients, now)
        except Exception:  # the items are stored: their deliveries follow with the next batch
            self._sweep = True
            log.exception("queueing deliveries failed; retried with the next items stored")
        return results

    def _ingest(
        self,
        tx: Connection,
        batches: Sequence[Sequence[Item]],
        match: Matching,
        recipients: Mapping[str, Sequence[str]],
        now: datetime,
        grouped: bool,
    ) -> tuple[list[IngestResult], list[Recorded], list[int]]:
        """Store every batch's new items, in a few statements for all of them (on
        PostgreSQL each statement is a round trip). An item a batch shares with an earlier
        batch of the same call is handled as that batch's item seen again. `grouped`: the
        dedupe key scheme (_grouped_keys)."""
        uniques = [_first_of_each(batch, grouped) for batch in batches]
        known = _known_keys(tx, {h for u in uniques for _, hashes in u for h in hashes}, now)
        claimed: dict[int, Item] = {}  # key hash -> the new item of this call that has it
        fresh: list[list[tuple[Item, tuple[int, ...]]]] = []
        seen: list[tuple[Item, tuple[int, ...]]] = []
        repeats: list[tuple[Item, tuple[int, ...], Item]] = []  # (item, hashes, first)
        for unique in uniques:
            fresh.append([])
            for item, hashes in unique:
                first = next((claimed[h] for h in hashes if h in claimed), None)
                if not known.keys().isdisjoint(hashes):
                    seen.append((item, hashes))
                    # Its new keys (a changed link) name the stored item from now on, also
                    # for the batches after this one.
                    row = _stored(known, hashes)
                    for h in hashes:
                        known.setdefault(h, row._replace(hash=h, stale=False))
                elif first is not None:
                    repeats.append((item, hashes, first))
                else:
                    fresh[-1].append((item, hashes))
                    claimed.update(dict.fromkeys(hashes, item))
        # A known item in another feed: watchlists limited to that feed (or its language)
        # may match it now. Those in a story are queued below, to recipients its story has
        # not reached, under the story lock as _settle queues (two workers meeting one story
        # at once must not each find no one told yet); taken before any insert, as there.
        elsewhere = _matched_elsewhere(tx, seen, known, match)
        if elsewhere:
            lock_stories(tx)
        updated = _seen_again(tx, seen, known, now)
        ids = _insert_items(tx, [pair for pairs in fresh for pair in pairs], now)
        _queue_pages(
            tx, [(ids[i.key], i.feed) for p in fresh for i, _ in p if i.key in ids], self.page_feeds
        )
        _record_repeats(tx, repeats, ids, now)
        new_items = [tuple(item for item, _ in pairs if item.key in ids) for pairs in fresh]
        found = [[(item, m) for item in items for m in match(item, None)] for items in new_items]
        # Stories group alerts: only items that matched a watchlist are clustered (by
        # _settle). A near-copy of a matched story carries the same terms, so it matches too.
        rows = [(ids[item.key], item, m) for pairs in found for item, m in pairs]
        recorded = _record_matches(tx, rows, now)
        # The late matches: those not in a story yet are settled as new matches are.
        batch_of = {id(item): n for n, unique in enumerate(uniques) for item, _ in unique}
        if elsewhere:
            late = _record_matches(tx, [row for row, _ in elsewhere], now, new=False)
            storied = stories_of(tx, {r.item_id for r in late})
            recorded += [r for r in late if r.item_id not in storied]
            into_stories = [r for r in late if r.item_id in storied]
            self._queue(tx, into_stories, recipients, now, storied, told_before=True)
            kept = {(r.item_id, r.watchlist) for r in late}
            for (item_id, item, m), copy in elsewhere:
                if (item_id, m.watchlist) in kept:
                    found[batch_of[id(copy)]].append((item, m))
        changed: dict[int, list[tuple[int, Item]]] = {}  # batch index -> (id, changed item)
        for item_id, item, original in updated:
            changed.setdefault(batch_of[id(original)], []).append((item_id, item))
        if changed and self.dedupe.realert_on_update:
            # Every feed's revisions in one insert each: each is a subtransaction on
            # PostgreSQL (_copy_new), and past 64 in one transaction every session's
            # snapshots slow down.
            again: list[tuple[int, int, Item, Match]] = []  # (batch index, id, item, match)
            # A revision is matched with its item's page, never fetched again: a changed
            # teaser rarely means a changed article, and the page is one request per item.
            bodies = page_bodies(tx, [item_id for item_id, _, _ in updated])
            for n, revised_items in changed.items():
                for of, rid, item in insert_revisions(tx, revised_items, now):
                    again += [(n, rid, item, m) for m in match(item, bodies.get(of))]
            rows = [(rid, item, m) for _, rid, item, m in again]
            self._queue(tx, _record_matches(tx, rows, now), recipients, now)
            for n, _, item, m in again:
                found[n].append((item, m))
        results = [
            IngestResult(
                new_items[n], tuple(found[n]), tuple(item for _, item in changed.get(n, ()))
            )
            for n in range(len(batches))
        ]
        return results, recorded, [item_id for item_id, _, _ in updated]

    def item_count(self) -> int:
        with self._read() as tx:
            return int(tx.execute(sa.select(sa.func.count()).select_from(items)).scalar_one())

    def recent_items(self, since: datetime) -> list[tuple[int, Item]]:
        """Items first seen at or after `since`, oldest first, with their ids (read-only)."""
        query = (
            sa.select(items)
            .where(items.c.first_seen_at >= since)
            .order_by(items.c.first_seen_at, items.c.id)
        )
        with self._read() as tx:
            return [(row.id, item_from(row)) for row in tx.execute(query)]

    def find_items(
        self, wanted: str, urls: Collection[str] = (), limit: int = 20
    ) -> list[tuple[int, Item]]:
        """Stored items by id or key; else by one of `urls`; else those whose title holds
        `wanted` in any case, up to `limit`, oldest first (read-only; `test --why-not`)."""
        by_title = sa.func.lower(items.c.title).contains(wanted.lower(), autoescape=True)
        searches = [items.c.key == wanted]
        if wanted.isdigit():
            searches[0] = sa.or_(items.c.id == int(wanted), searches[0])
        if urls:
            searches.append(items.c.url.in_(list(urls)))
        searches.append(sa.or_(by_title, items.c.title.contains(wanted, autoescape=True)))
        with self._read() as tx:
            for where in searches:
                query = sa.select(items).where(where).order_by(items.c.id).limit(limit)
                if rows := tx.execute(query).all():
                    return [(row.id, item_from(row)) for row in rows]
        return []
