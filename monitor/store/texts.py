"""Item texts: the main text of full-text feeds' article pages, and the matches it adds.

Each full-text feed's new item gets a `waiting` row when it is stored (ingest); a worker
claims it with a compare-and-set UPDATE (status "claimed", with a deadline): of several
workers one wins, and a worker killed while fetching leaves a claim that expires,
after which the page is claimed again. A text stored later than its item's first match
adds matches only for watchlists that had none, queued as story members' late matches
are: no watchlist and recipient hears of an item twice.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from monitor.models import Item, Match
from monitor.store.dialect import among, insert, select_among
from monitor.store.items import _grouped_keys, _record_matches, page_bodies
from monitor.store.schema import (
    PageStatus,
    Recorded,
    UTCDateTime,
    item_from,
    item_keys,
    item_texts,
    items,
)
from monitor.store.stories import (
    StoryStore,
    lock_stories,
    merge_stories,
    stories_of,
    unsettled_matches,
)
from monitor.stories import Candidate, dedupe_keys
from monitor.urls import url_identity


@dataclass(frozen=True, slots=True)
class PageTask:
    """A claimed page: the item whose link it is."""

    item_id: int
    item: Item


@dataclass(frozen=True, slots=True)
class PageOutcome:
    """What fetching an item's page came to."""

    status: PageStatus
    words: int = 0
    body: str | None = None  # stored only for TEXT
    error: str | None = None
    canonical: str | None = None  # the URL the page names as its own


@dataclass(frozen=True, slots=True)
class PageStats:
    """A feed's pages, for `monitor feeds`."""

    fetched: int  # pages requested, with an outcome (claims in flight not counted)
    extracted: int  # of which with text
    median_words: int  # of those with text
    last_error: str | None  # of the latest page without text
    refused: int = 0  # pages robots.txt disallows: never requested


class TextStore(StoryStore):
    """Claims article pages, stores their texts, and queues the matches a text adds."""

    def claim_pages(
        self,
        feeds: Collection[str],
        since: datetime,
        now: datetime,
        until: datetime,
        limit: int,
        backlog: timedelta,
    ) -> list[PageTask]:
        """Claim up to `limit` waiting pages of items of `feeds`, oldest first, and pages
        whose claim has expired (a dead worker's), till `until`. Pages wait in the queue from
        the moment their item is stored (ingest: a full-text feed's new item); a page of an
        item first seen before `since`, or of a feed no longer in `feeds`, leaves it unfetched.
        An item dated `backlog` before it was first seen alerts no one (poller.news_only):
        its page is marked OLD, never fetched."""
        texts = item_texts
        query = (
            sa.select(items, texts.c.status)
            .join(texts, texts.c.item_id == items.c.id)
            .where(_claimable(now))
            .order_by(items.c.first_seen_at, items.c.id)
            .limit(limit)
        )
        claimed = []
        with self._tx() as tx:
            _drop_unwanted(tx, set(feeds), since)
            for row in tx.execute(query).all():
                if row.published_at < row.first_seen_at - backlog:
                    tx.execute(
                        texts.update()
                        .where(texts.c.item_id == row.id)
                        .values(status=PageStatus.OLD)
                    )
                elif _claim(tx, row.id, now, until):
                    claimed.append(PageTask(row.id, item_from(row)))
        return claimed

    def release_page(self, item_id: int) -> None:
        """Give a claimed page back to the queue (its host asked to wait)."""
        with self._tx() as tx:
            tx.execute(
                item_texts.update()
                .where(item_texts.c.item_id == item_id, item_texts.c.status == PageStatus.CLAIMED)
                .values(status=PageStatus.WAITING, claimed_until=None)
            )

    def save_pages(
        self,
        outcomes: Sequence[tuple[int, PageOutcome]],
        match: Callable[[Item, str], Sequence[Match]],
        recipients: Mapping[str, Sequence[str]],
        now: datetime,
    ) -> list[list[Match]]:
        """Store pages' outcomes (item id, outcome), in one transaction; match each text
        with its item's; queue the matches of watchlists that had not matched the item.
        Returns, per page, those matches."""
        ids = [item_id for item_id, _ in outcomes]
        unsettled: list[Recorded] = []
        clustered: list[Candidate] = []
        with self._tx() as tx:
            query = sa.select(items).where(among(tx, items.c.id, ids))
            stored = {row.id: item_from(row) for row in tx.execute(query)}  # not pruned
            if texts := [_text_values(i, o, now) for i, o in outcomes if i in stored]:
                tx.execute(_SAVE_TEXT, texts)
            found = _match_texts(tx, stored, outcomes, match)
            own = [(i, o.canonical) for i, o in outcomes if i in stored and o.canonical]
            if not own and not any(found.values()):
                return [[] for _ in outcomes]
            # Before any insert (a canonical link's key, a match), as ingest takes it; after
            # the matching, which other workers' ingests need not wait for.
            lock_stories(tx)
            for item_id, canonical in own:
                item = stored[item_id]
                clustered += self._add_own_url(tx, item_id, item, canonical, recipients, now)
            had: dict[int, set[str]] = {}
            sql = "SELECT item_id, watchlist FROM matches WHERE item_id {among}"
            for item_id, watchlist in select_among(tx, sql, sorted(found)):
                had.setdefault(item_id, set()).add(watchlist)
            for item_id, candidates in found.items():
                known = had.get(item_id, set())
                found[item_id] = fresh = [m for m in candidates if m.watchlist not in known]
                if fresh:
                    item = stored[item_id]
                    unsettled += self._queue_late(tx, item_id, item, fresh, recipients, now)
        self._remember(clustered, now)  # only once committed, as _settle does
        self._settle(unsettled, recipients, now)
        return [found.get(item_id, []) for item_id in ids]

    def _add_own_url(
        self,
        tx: Connection,
        item_id: int,
        item: Item,
        own: str,
        recipients: Mapping[str, Sequence[str]],
        now: datetime,
    ) -> list[Candidate]:
        """The page's canonical link (or og:url) as one more key of its item, when it names
        another URL of the same site: another feed's later link to it (a mobile or tracking
        variant, a desktop link to an item first seen as AMP) is then this item. When an
        item with that URL is stored already, the two join its story (_join). Returns the
        items clustered meanwhile, for the candidate cache."""
        key = _own_key(item, own)
        if key is None:
            return []
        # Under the story lock (save_pages), taken before the key's insert: an ingest
        # holding the lock may insert the same key.
        first = _add_key(tx, item_id, replace(item, key=key), now)
        return [] if first is None else self._join(tx, first, item_id, recipients, now)

    def _join(
        self,
        tx: Connection,
        first: int,
        item_id: int,
        recipients: Mapping[str, Sequence[str]],
        now: datetime,
    ) -> list[Candidate]:
        """Put `item_id` (and its story) into the story of `first`, the stored item its page
        names as its own: one article, so one story, whose matches are queued once per
        watchlist and recipient (a digest shows it once, "also reported by" the other
        link). Either item in no story yet (unmatched: only matched items are clustered
        as they come) is clustered now; matches of it not queued yet are queued here, as
        _settle skips items in a story."""
        storied = stories_of(tx, {first, item_id})
        alone = [i for i in (first, item_id) if i not in storied]
        waiting = unsettled_matches(tx, item_ids=alone) if alone else []
        in_story, clustered = self._cluster(tx, _items_by_id(tx, alone), now)
        storied.update(in_story)
        into, merged = storied[first], storied[item_id]
        if merged != into:
            merge_stories(tx, into, merged)
            storied = {i: into if story == merged else story for i, story in storied.items()}
        self._queue(tx, waiting, recipients, now, storied, told_before=True)
        return [replace(c, story_id=storied.get(c.item_id, c.story_id)) for c in clustered]

    def _queue_late(
        self,
        tx: Connection,
        item_id: int,
        item: Item,
        found: Sequence[Match],
        recipients: Mapping[str, Sequence[str]],
        now: datetime,
    ) -> list[Recorded]:
        """Record the matches; queue them now if the item is in a story (to recipients the
        story has not reached); else return them for _settle, as new items' matches are."""
        late = _record_matches(tx, [(item_id, item, m) for m in found], now, new=False)
        storied = stories_of(tx, {item_id})
        if not storied:
            return late
        self._queue(tx, late, recipients, now, storied, told_before=True)
        return []

    def failing_pages(self, feeds: Collection[str], latest: int) -> list[FailingPages]:
        """The feeds whose `latest` pages (at least that many) all came without text."""
        texts = item_texts
        failing = []
        with self._read() as tx:
            for feed in sorted(feeds):
                query = (
                    sa.select(texts.c.status, texts.c.error, texts.c.fetched_at)
                    .where(texts.c.feed == feed, texts.c.fetched_at.is_not(None))
                    .where(texts.c.status.not_in(UNFETCHED))
                    .order_by(texts.c.fetched_at.desc())
                    .limit(latest)
                )
                rows = tx.execute(query).all()
                if len(rows) == latest and all(r.status != PageStatus.TEXT for r in rows):
                    failing.append(FailingPages(feed, rows[0].error or "", rows[-1].fetched_at))
        return failing

    def page_texts(self, item_ids: Collection[int]) -> dict[int, str]:
        """item id -> the stored main text of its page, for those that have one (`test`)."""
        with self._read() as tx:
            return page_bodies(tx, item_ids)

    def page_outcome(self, item_id: int) -> PageOutcome | None:
        """What came of the item's page, its text left out (`test --why-not`); None if its
        item has no page to fetch."""
        texts = item_texts
        query = sa.select(texts.c.status, texts.c.words, texts.c.error).where(
            texts.c.item_id == item_id
        )
        with self._read() as tx:
            row = tx.execute(query).first()
        return (
            None if row is None else PageOutcome(PageStatus(row.status), row.words, None, row.error)
        )

    def page_stats(self) -> dict[str, PageStats]:
        """Per feed with pages: how many were fetched, how many gave text, and so on."""
        texts = item_texts
        query = (
            sa.select(texts.c.feed, texts.c.status, texts.c.words, texts.c.error)
            .where(item_texts.c.status.not_in(UNFETCHED))
            .order_by(item_texts.c.fetched_at)
        )
        rows: dict[str, list[tuple[str, int, str | None]]] = {}
        with self._read() as tx:
            for feed, status, words, error in tx.execute(query):
                rows.setdefault(feed, []).append((status, words, error))
        return {feed: _stats(pages) for feed, pages in rows.items()}


@dataclass(frozen=True, slots=True)
class FailingPages:
    """A full-text feed whose latest pages all came without text: a consent or bot wall,
    a paywall, a site that blocks us. Its items still match on their teasers."""

    feed: str
    error: str  # the latest page's
    since: datetime | None  # the first of those pages


# Pages without an outcome yet, or never to be fetched: not in a feed's page statistics.
UNFETCHED = [PageStatus.WAITING, PageStatus.CLAIMED, PageStatus.OLD]

# One statement for a round's pages (executemany).
_SAVE_TEXT = (
    item_texts.update()
    .where(item_texts.c.item_id == sa.bindparam("id"))
    .values(
        status=sa.bindparam("status"),
        claimed_until=None,
        fetched_at=sa.bindparam("fetched_at", type_=UTCDateTime()),
        words=sa.bindparam("words"),
        body=sa.bindparam("body"),
        error=sa.bindparam("error"),
    )
)


def _text_values(item_id: int, outcome: PageOutcome, now: datetime) -> dict[str, object]:
    return {
        "id": item_id,
        "status": outcome.status.value,
        "fetched_at": now,
        "words": outcome.words,
        "body": outcome.body if outcome.status is PageStatus.TEXT else None,  # no wall's
        "error": outcome.error,
    }


def _claim(tx: Connection, item_id: int, now: datetime, until: datetime) -> bool:
    """Whether this transaction claimed the page (another worker may have just now)."""
    texts = item_texts
    taken = tx.execute(
        texts.update()
        .where(texts.c.item_id == item_id, _claimable(now))
        .values(status=PageStatus.CLAIMED, claimed_until=until)
    )
    return bool(taken.rowcount)


def _claimable(now: datetime) -> sa.ColumnElement[bool]:
    """A page waiting in the queue, or claimed by a worker that died (its claim expired)."""
    texts = item_texts
    return sa.or_(
        texts.c.status == PageStatus.WAITING,
        sa.and_(texts.c.status == PageStatus.CLAIMED, texts.c.claimed_until < now),
    )


def _drop_unwanted(tx: Connection, feeds: set[str], since: datetime) -> None:
    """Waiting pages no one will fetch: their feed's full text was switched off, or their
    item is older than `fulltext.max_age`. Their items keep their teaser matches."""
    texts = item_texts
    old = sa.select(items.c.id).where(items.c.first_seen_at < since)
    tx.execute(
        texts.delete()
        .where(texts.c.status == PageStatus.WAITING)
        .where(sa.or_(~among(tx, texts.c.feed, sorted(feeds), sa.Text), texts.c.item_id.in_(old)))
    )


def _match_texts(
    tx: Connection,
    stored: Mapping[int, Item],
    outcomes: Sequence[tuple[int, PageOutcome]],
    match: Callable[[Item, str], Sequence[Match]],
) -> dict[int, list[Match]]:
    """item id -> the matches of each page's text with its item, as its own feed's and as
    each other feed's that carried it meanwhile (a watchlist limited to that feed, as
    items._matched_elsewhere matches a copy), one per watchlist."""
    bodies = {
        item_id: outcome.body
        for item_id, outcome in outcomes
        if item_id in stored and outcome.status is PageStatus.TEXT and outcome.body
    }
    copies: dict[int, list[Item]] = {item_id: [stored[item_id]] for item_id in bodies}
    sql = "SELECT item_id, feed, url FROM item_sources WHERE item_id {among} ORDER BY seen_at"
    for item_id, feed, url in select_among(tx, sql, sorted(bodies)) if bodies else ():
        if feed != stored[item_id].feed:
            copies[item_id].append(replace(stored[item_id], feed=feed, url=url))
    found: dict[int, list[Match]] = {}
    for item_id, body in bodies.items():
        kept: dict[str, Match] = {}
        for each in copies[item_id]:
            for m in match(each, body):
                kept.setdefault(m.watchlist, m)
        found[item_id] = list(kept.values())
    return found


def _own_key(item: Item, own: str) -> str | None:
    """The key the page's own URL gives its item, if another on the same site (a
    syndicated copy's canonical names the original, on another site: not this item)."""
    key = "u:" + url_identity(own)
    if not item.key.startswith("u:") or key == item.key:
        return None
    if key[2:].split("/", 1)[0] != item.key[2:].split("/", 1)[0]:
        return None
    return key


def _add_key(tx: Connection, item_id: int, keyed: Item, now: datetime) -> int | None:
    """Store `keyed`'s key for the item; if another stored item has it, that item's id."""
    url_hash = dedupe_keys(keyed, _grouped_keys(tx))[0]
    row = {"hash": url_hash, "item_id": item_id, "last_seen_at": now}
    # RETURNING, not rowcount: psycopg counts -1 for such an insert, done or not.
    statement = insert(tx, item_keys).values(**row).on_conflict_do_nothing()
    if tx.execute(statement.returning(item_keys.c.hash)).first() is not None:
        return None
    query = (
        sa.select(items.c.id)
        .join(item_keys, item_keys.c.item_id == items.c.id)
        .where(item_keys.c.hash == url_hash)
    )
    first = tx.execute(query).scalar()  # None: pruned since, a tombstone
    return first if first != item_id else None


def _items_by_id(tx: Connection, item_ids: Collection[int]) -> list[tuple[int, Item]]:
    query = sa.select(items).where(items.c.id.in_(sorted(item_ids))).order_by(items.c.id)
    return [(row.id, item_from(row)) for row in tx.execute(query)] if item_ids else []


def _stats(pages: list[tuple[str, int, str | None]]) -> PageStats:
    words = [w for status, w, _ in pages if status == PageStatus.TEXT]
    errors = [error for status, _, error in pages if status != PageStatus.TEXT and error]
    refused = sum(status == PageStatus.REFUSED for status, _, _ in pages)
    return PageStats(
        fetched=len(pages) - refused,
        extracted=len(words),
        median_words=int(statistics.median(words)) if words else 0,
        last_error=errors[-1] if errors else None,
        refused=refused,
    )
