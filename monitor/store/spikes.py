"""Spikes and silences: each watchlist's distinct stories per day and in the current window,
the stories behind a spike, and the alert claimed once per watchlist and cool-down.

A story is a story_members.story_id; a matched item in no story counts as a story of its
own (its id: a story's id is its first item's, which is always a member). Complete UTC days
are counted once into story_days (a cycle then reads 15 small rows per watchlist, not 15
days of matches); the window is counted live from the ix_matches_created index.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from monitor.models import MessageStatus, OutgoingMessage
from monitor.spikes import DAY, History
from monitor.store.dialect import aware, chunks, insert
from monitor.store.engine import StoreBase
from monitor.store.schema import (
    item_sources,
    items,
    matches,
    messages,
    meta,
    spike_watchlists,
    story_days,
    story_members,
)
from monitor.store.stories import story_outlets

COUNTED_THROUGH = "spikes_counted_through"  # meta: the last complete day in story_days
SETTLE = timedelta(hours=1)  # a day is counted an hour after it ended: late commits land
STORY = sa.func.coalesce(story_members.c.story_id, matches.c.item_id)


@dataclass(frozen=True, slots=True)
class SpikeStory:
    """A story matched in a window, shown under its first item there."""

    title: str
    url: str
    outlet: str
    published: datetime
    also_reported_by: tuple[str, ...]


def _day(column: sa.ColumnElement[datetime]) -> sa.ColumnElement[date]:
    # date() is SQLite's function and PostgreSQL's cast; SQLAlchemy's Date reads both.
    return sa.func.date(column, type_=sa.Date)


def _stories_since(since: datetime, until: datetime | None = None) -> sa.Select[Any]:
    query = (
        sa.select(matches.c.watchlist, sa.func.count(sa.distinct(STORY)))
        .select_from(matches)
        .outerjoin(story_members, story_members.c.item_id == matches.c.item_id)
        .where(matches.c.created_at >= since)
        .group_by(matches.c.watchlist)
    )
    return query if until is None else query.where(matches.c.created_at < until)


def _matches_since(since: datetime) -> sa.Select[Any]:
    """Matches per watchlist since `since`, from an index alone (no join): SQLite skip-scans
    ix_matches_watchlist_created, PostgreSQL range-scans ix_matches_created."""
    return (
        sa.select(matches.c.watchlist, sa.func.count())
        .where(matches.c.created_at >= since)
        .group_by(matches.c.watchlist)
    )


class SpikeStore(StoreBase):
    # The counted days last read, by (first day, last day counted): complete days do not
    # change, so a cycle reads them again only when a day was counted (once a day).
    _days_read: tuple[tuple[date, str | None], dict[str, dict[date, int]]] | None = None

    def spike_histories(
        self,
        names: Iterable[str],
        now: datetime,
        window: timedelta,
        days: int,
        *,
        count: bool = True,
        exact: bool = True,
    ) -> list[History]:
        """Each watchlist's last `days` complete days, its stories in the window ending now,
        and, for those with none in it, its last match. count=False: read only the days
        counted before (a read-only look beside the daemon). exact=False: the window holds
        the watchlist's matches, an upper bound of its stories read from the index alone
        (`window_stories` then counts the few that matter)."""
        if count:
            self._count_days(now)
        wanted = sorted(set(names))
        daily = self._counted_days(now.date() - days * DAY)
        with self._read() as tx:
            states = {row.watchlist: row for row in tx.execute(sa.select(spike_watchlists))}
            query = _stories_since(now - window) if exact else _matches_since(now - window)
            current = {n: int(c) for n, c in tx.execute(query)}
            last = {name: _last_match(tx, name) for name in wanted if not current.get(name)}
        return [
            History(
                name,
                now,
                current.get(name, 0),
                daily.get(name, {}),
                _moment(states, name, "first_match_at"),
                last.get(name, now if current.get(name) else None),
                _moment(states, name, "spike_at"),
                _moment(states, name, "silence_at"),
            )
            for name in wanted
        ]

    def window_stories(self, names: Iterable[str], since: datetime) -> dict[str, int]:
        """The distinct stories each named watchlist matched since `since`."""
        wanted = sorted(set(names))
        if not wanted:
            return {}
        query = _stories_since(since).where(matches.c.watchlist.in_(wanted))
        with self._read() as tx:
            return {name: int(count) for name, count in tx.execute(query)}

    def _counted_days(self, first: date) -> dict[str, dict[date, int]]:
        with self._read() as tx:
            counted = tx.execute(
                sa.select(meta.c.value).where(meta.c.key == COUNTED_THROUGH)
            ).scalar()
            if self._days_read is not None and self._days_read[0] == (first, counted):
                return self._days_read[1]
            daily: dict[str, dict[date, int]] = {}
            for row in tx.execute(sa.select(story_days).where(story_days.c.day >= first)):
                daily.setdefault(row.watchlist, {})[row.day] = row.stories
        self._days_read = ((first, counted), daily)
        return daily

    def _count_days(self, now: datetime) -> None:
        """Count the complete days not yet counted (the first call: every day matched).
        Looks first without the write lock: on SQLite every cycle would otherwise queue
        behind (and hold up) the poll's writes for a day counted once a day."""
        through = (now - SETTLE).date() - DAY
        with self._read() as tx:
            last = tx.execute(sa.select(meta.c.value).where(meta.c.key == COUNTED_THROUGH))
            if (done := last.scalar()) is not None and date.fromisoformat(done) >= through:
                return
        with self._tx() as tx:
            counted = tx.execute(sa.select(meta.c.value).where(meta.c.key == COUNTED_THROUGH))
            done = counted.scalar()
            if done is not None:
                start = date.fromisoformat(done) + DAY
            else:
                earliest = tx.execute(sa.select(sa.func.min(matches.c.created_at))).scalar()
                start = aware(earliest).date() if earliest is not None else through + DAY
            if start <= through:
                _count(tx, start, through)
            if done is None or start <= through:
                value = through.isoformat()
                tx.execute(
                    insert(tx, meta)
                    .values(key=COUNTED_THROUGH, value=value)
                    .on_conflict_do_update(index_elements=["key"], set_={"value": value})
                )

    def spike_stories(self, watchlist: str, since: datetime, until: datetime) -> list[SpikeStory]:
        """The stories a watchlist matched between since and until, most outlets first."""
        query = (
            sa.select(items, STORY.label("story"))
            .select_from(matches)
            .join(items, items.c.id == matches.c.item_id)
            .outerjoin(story_members, story_members.c.item_id == matches.c.item_id)
            .where(matches.c.watchlist == watchlist)
            .where(matches.c.created_at >= since, matches.c.created_at < until)
            .order_by(items.c.published_at)
        )
        with self._read() as tx:
            rows = tx.execute(query).all()
            outlets = story_outlets(tx, {row.story for row in rows})
        shown: dict[int, SpikeStory] = {}
        for row in rows:
            if row.story in shown:
                continue
            carried = dict.fromkeys(feed for feed, _ in outlets.get(row.story, ()))
            carried.pop(row.feed, None)
            shown[row.story] = SpikeStory(
                row.title, row.url, row.feed, aware(row.published_at), tuple(carried)
            )
        return sorted(shown.values(), key=lambda story: -len(story.also_reported_by))

    def matched_titles(self, watchlist: str, since: datetime, until: datetime) -> list[str]:
        """The titles of the items a watchlist matched between since and until."""
        query = (
            sa.select(items.c.title)
            .join(matches, matches.c.item_id == items.c.id)
            .where(matches.c.watchlist == watchlist)
            .where(matches.c.created_at >= since, matches.c.created_at < until)
        )
        with self._read() as tx:
            return list(tx.execute(query).scalars())

    def outlets_of(self, watchlist: str, since: datetime, until: datetime) -> dict[str, int]:
        """Outlet -> how many of the watchlist's items it carried between since and until."""
        query = (
            sa.select(item_sources.c.feed, sa.func.count())
            .join(matches, matches.c.item_id == item_sources.c.item_id)
            .where(matches.c.watchlist == watchlist)
            .where(matches.c.created_at >= since, matches.c.created_at < until)
            .group_by(item_sources.c.feed)
        )
        with self._read() as tx:
            return {feed: int(count) for feed, count in tx.execute(query)}

    def claim_alert(
        self,
        watchlist: str,
        kind: str,
        not_after: datetime,
        outgoing: Sequence[tuple[OutgoingMessage, datetime]],
        now: datetime,
    ) -> bool:
        """Record a `kind` ("spike" or "silence") alert of a watchlist at `now` and store its
        messages (each sent from its time: quiet hours), at once; False, storing nothing,
        when one was recorded after `not_after` (cool-down; another worker was first).

        A compare-and-set on the watchlist's row: PostgreSQL re-reads the condition after a
        concurrent update's commit, SQLite runs one writer at a time, so exactly one of two
        workers evaluating the same watchlist wins.
        """
        column = {"spike": spike_watchlists.c.spike_at, "silence": spike_watchlists.c.silence_at}
        at = column[kind]
        with self._tx() as tx:
            tx.execute(
                insert(tx, spike_watchlists).values(watchlist=watchlist).on_conflict_do_nothing()
            )
            won = tx.execute(
                spike_watchlists.update()
                .where(spike_watchlists.c.watchlist == watchlist)
                .where(sa.or_(at.is_(None), at <= not_after))
                .values({at.name: now})
            ).rowcount
            if not won:
                tx.rollback()
                return False
            for message, send_at in outgoing:
                tx.execute(
                    insert(tx, messages)
                    .values(
                        message_id=message.message_id,
                        recipient=message.recipient,
                        mime=message.mime,
                        kind=message.kind,
                        status=MessageStatus.READY,
                        next_attempt_at=send_at,
                        created_at=now,
                    )
                    .on_conflict_do_nothing(index_elements=["message_id"])
                )
        return True


def _count(tx: Connection, start: date, through: date) -> None:
    """Store the stories per watchlist of the days start..through, and each watchlist's
    first match if it had none."""
    since = _midnight(start)
    day = _day(matches.c.created_at)
    query = (
        sa.select(
            matches.c.watchlist,
            day.label("day"),
            sa.func.count(sa.distinct(STORY)).label("stories"),
            sa.func.min(matches.c.created_at).label("first"),
        )
        .select_from(matches)
        .outerjoin(story_members, story_members.c.item_id == matches.c.item_id)
        .where(matches.c.created_at >= since, matches.c.created_at < _midnight(through + DAY))
        .group_by(matches.c.watchlist, day)
    )
    rows = tx.execute(query).all()
    for chunk in chunks(rows):
        tx.execute(
            insert(tx, story_days)
            .values([{"day": r.day, "watchlist": r.watchlist, "stories": r.stories} for r in chunk])
            .on_conflict_do_nothing()
        )
    firsts: dict[str, datetime] = {}
    for row in rows:
        first = aware(row.first)
        firsts[row.watchlist] = min(first, firsts.get(row.watchlist, first))
    for chunk in chunks(sorted(firsts.items())):
        tx.execute(
            insert(tx, spike_watchlists)
            .values([{"watchlist": name, "first_match_at": first} for name, first in chunk])
            .on_conflict_do_nothing()
        )


def _moment(states: dict[str, Any], name: str, column: str) -> datetime | None:
    value = getattr(states[name], column) if name in states else None
    return aware(value) if value is not None else None


def _last_match(tx: Connection, watchlist: str) -> datetime | None:
    found = tx.execute(
        sa.select(sa.func.max(matches.c.created_at)).where(matches.c.watchlist == watchlist)
    ).scalar()
    return aware(found) if found is not None else None


def _midnight(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)
