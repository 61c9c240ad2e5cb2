"""Feeds: what the configuration lists, their state between polls, and each poll's outcome."""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from monitor.models import FeedState, FeedStatus
from monitor.store.dialect import among, aware, dialect_of, insert
from monitor.store.engine import StoreBase
from monitor.store.schema import feeds, hosts

log = logging.getLogger("monitor.store")


def feed_from(row: Any) -> FeedState:
    return FeedState(
        name=row.name,
        url=row.url,
        status=FeedStatus(row.status),
        etag=row.etag,
        last_modified=row.last_modified,
        body_hash=row.body_hash,
        next_poll_at=row.next_poll_at,
        last_success_at=row.last_success_at,
        last_error=row.last_error,
        error_since=row.error_since,
        consecutive_failures=row.consecutive_failures,
        items_total=row.items_total,
        host=row.host or host_of(row.url),
        last_polled_at=row.last_polled_at,
        last_new_item_at=row.last_new_item_at,
        last_error_at=row.last_error_at,
        redirect_url=row.redirect_url,
        redirect_count=row.redirect_count,
        ignore_validators=bool(row.ignore_validators),
        unchanged_streak=row.unchanged_streak,
        item_gap=row.item_gap,
        interval=row.interval,
        poll_reason=row.poll_reason,
        ttl=row.ttl,
    )


def lock_feeds(tx: Connection, names: Sequence[str]) -> None:
    """On PostgreSQL, lock these feed rows in name order before updating them, as every
    writer of several feed rows does: no deadlock between workers."""
    if names and dialect_of(tx).row_locks:
        tx.execute(
            sa.select(feeds.c.id)
            .where(among(tx, feeds.c.name, sorted(names), sa.Text))
            .order_by(feeds.c.name)
            .with_for_update()
        )


def ensure_hosts(tx: Connection, names: Iterable[str]) -> None:
    rows = [{"host": name} for name in sorted(set(names))]
    if rows:
        tx.execute(insert(tx, hosts).on_conflict_do_nothing(index_elements=["host"]), rows)


def host_of(url: str) -> str:
    """The host a feed URL points at: the unit of politeness."""
    return (urlsplit(url).hostname or "").lower()


class FeedStore(StoreBase):
    # ------------------------------------------------------------------ feeds

    def sync_feeds(
        self, configured: Mapping[str, str], now: datetime, polled: Collection[str] | None = None
    ) -> None:
        """Make the feeds table hold the configured feeds (name -> URL); new ones are due now.
        Claims take only the `polled` ones (default: all configured): a feed removed from the
        configuration, or switched off in it, keeps its history but is no longer polled."""
        active = set(configured if polled is None else polled)
        with self._tx() as tx:
            known = {row.name: row for row in tx.execute(sa.select(feeds))}
            added = [
                {
                    "name": name,
                    "url": url,
                    "config_url": url,
                    "host": host_of(url),
                    "status": "new",
                    "next_poll_at": now,
                }
                for name, url in configured.items()
                if name not in known
            ]
            if added:  # workers starting together add the same feeds: the first one wins
                tx.execute(insert(tx, feeds).on_conflict_do_nothing(index_elements=["name"]), added)
            for name, url in sorted(configured.items()):  # rows locked in name order
                row = known.get(name)
                if row is not None and row.config_url != url:  # changed URL: start over
                    tx.execute(
                        feeds.update()
                        .where(feeds.c.name == name)
                        .values(
                            url=url,
                            config_url=url,
                            host=host_of(url),
                            status="new",
                            redirect_url=None,
                            redirect_count=0,
                            ignore_validators=False,
                            etag=None,
                            last_modified=None,
                            body_hash=None,
                            next_poll_at=now,
                        )
                    )
            ensure_hosts(tx, [host_of(url) for url in configured.values()])
            switched = [row.name for row in known.values() if row.active != (row.name in active)]
            switched += [row["name"] for row in added if row["name"] not in active]
            lock_feeds(tx, switched)
            for value in (True, False):
                names = sorted(name for name in switched if (name in active) is value)
                if names:
                    tx.execute(
                        feeds.update()
                        .where(among(tx, feeds.c.name, names, sa.Text))
                        .values(active=value)
                    )
                    if known.keys() & set(names):
                        log.info(
                            "feeds %s: %s",
                            "polled again" if value else "no longer polled",
                            ", ".join(name for name in names if name in known),
                        )

    def feed_states(self, statuses: Iterable[FeedStatus] | None = None) -> list[FeedState]:
        """Every feed's state, by name; only those in `statuses` when given (the digest's
        health section asks for the unwell few on every compose)."""
        query = sa.select(feeds).order_by(feeds.c.name)
        if statuses is not None:
            query = query.where(feeds.c.status.in_([status.value for status in statuses]))
        with self._read() as tx:
            return [feed_from(row) for row in tx.execute(query)]

    def feed_statuses(self) -> dict[str, FeedStatus]:
        """feed name -> status: what the status line and gauges count, every health tick,
        without reading (and converting) every feed's whole row."""
        with self._read() as tx:
            rows = tx.execute(sa.select(feeds.c.name, feeds.c.status))
            return {name: FeedStatus(status) for name, status in rows}

    def last_poll_at(self) -> datetime | None:
        """When any feed was last polled, by the daemon or by `monitor poll`."""
        with self._read() as tx:
            last = tx.execute(sa.select(sa.func.max(feeds.c.last_polled_at))).scalar()
        return aware(last) if last is not None else None

    def feed_state(self, name: str) -> FeedState | None:
        with self._read() as tx:
            row = tx.execute(sa.select(feeds).where(feeds.c.name == name)).first()
            return feed_from(row) if row else None

    def due_feeds(self, names: Iterable[str], now: datetime) -> list[FeedState]:
        query = (
            sa.select(feeds)
            .where(feeds.c.name.in_(list(names)))
            .where(feeds.c.status != FeedStatus.DISABLED.value)
            .where(sa.or_(feeds.c.next_poll_at.is_(None), feeds.c.next_poll_at <= now))
            .order_by(feeds.c.next_poll_at)
        )
        with self._read() as tx:
            return [feed_from(row) for row in tx.execute(query)]

    def update_feed(self, name: str, **values: Any) -> None:
        with self._tx() as tx:
            tx.execute(feeds.update().where(feeds.c.name == name).values(**values))
