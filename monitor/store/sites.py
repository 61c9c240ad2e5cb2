"""Page sites: each site's article-page politeness, shared by every worker (pages.py).

One row per site (scheme://host[:port]). Every operation is one atomic statement sequence
on the site's row: PostgreSQL re-reads a conditional UPDATE's condition after a concurrent
update's commit and holds the row until the transaction ends; SQLite runs one writer at a
time. So of two workers taking a turn at once exactly one wins, and two back-off answers
counted at once are two strikes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from monitor.store.dialect import insert
from monitor.store.engine import StoreBase
from monitor.store.schema import page_sites


@dataclass(frozen=True, slots=True)
class PageSite:
    """A site's politeness state, as the store has it."""

    site: str
    next_at: datetime | None = None  # no page request starts before this
    blocked_until: datetime | None = None  # left alone until then (403/429/503)
    blocked_why: str = ""
    strikes: int = 0  # back-off answers in a row
    robots: str | None = None  # robots.txt as read; None: not read yet
    robots_at: datetime | None = None

    def is_blocked(self, now: datetime) -> bool:
        return self.blocked_until is not None and now < self.blocked_until


@dataclass(frozen=True, slots=True)
class Turn:
    """The outcome of `take_turn`: whether this worker may start a request now, and the
    site as it is after the attempt (the loser reads when to try again in `next_at`)."""

    taken: bool
    site: PageSite


class SiteStore(StoreBase):
    """Turns, back-offs and robots.txt of the sites article pages come from."""

    def page_site(self, site: str) -> PageSite:
        with self._read() as tx:
            return _read(tx, site)

    def take_turn(self, site: str, now: datetime, gap: timedelta) -> Turn:
        """Start a page request to `site` at `now` if none may be under way (the last one
        started `gap` or more ago) and it is not blocked; then the next may start at
        now + gap. Else nothing changes and the Turn says until when to wait."""
        rows = page_sites.c
        with self._tx() as tx:
            _ensure(tx, site)
            taken = tx.execute(
                page_sites.update()
                .where(rows.site == site)
                .where(sa.or_(rows.next_at.is_(None), rows.next_at <= now))
                .where(sa.or_(rows.blocked_until.is_(None), rows.blocked_until <= now))
                .values(next_at=now + gap)
            ).rowcount
            return Turn(bool(taken), _read(tx, site))

    def block_site(
        self, site: str, why: str, wait: Callable[[int], timedelta], now: datetime
    ) -> PageSite:
        """Count one more back-off answer of `site` and leave it alone for `wait(strikes)`
        from now, strikes counting this one; a block that ends later stands."""
        rows = page_sites.c
        with self._tx() as tx:
            _ensure(tx, site)
            where = rows.site == site
            tx.execute(page_sites.update().where(where).values(strikes=rows.strikes + 1))
            strikes = tx.execute(sa.select(rows.strikes).where(where)).scalar_one()
            until = now + wait(strikes)
            tx.execute(
                page_sites.update()
                .where(where)
                .where(sa.or_(rows.blocked_until.is_(None), rows.blocked_until < until))
                .values(blocked_until=until, blocked_why=why)
            )
            return _read(tx, site)

    def clear_strikes(self, site: str) -> None:
        """The site answered a page: the next back-off answer counts from one again."""
        rows = page_sites.c
        with self._tx() as tx:
            tx.execute(
                page_sites.update().where(rows.site == site, rows.strikes > 0).values(strikes=0)
            )

    def save_robots(self, site: str, robots: str, now: datetime) -> PageSite:
        """Keep the site's robots.txt, read at `now` (trusted for fulltext.robots_ttl)."""
        with self._tx() as tx:
            _ensure(tx, site)
            tx.execute(
                page_sites.update()
                .where(page_sites.c.site == site)
                .values(robots=robots, robots_at=now)
            )
            return _read(tx, site)

    def blocked_sites(self, now: datetime) -> list[PageSite]:
        """The sites whose pages are left alone at `now`, by site."""
        rows = page_sites.c
        query = sa.select(page_sites).where(rows.blocked_until > now).order_by(rows.site)
        with self._read() as tx:
            return [_site_from(row) for row in tx.execute(query)]


def _ensure(tx: Connection, site: str) -> None:
    tx.execute(insert(tx, page_sites).values(site=site).on_conflict_do_nothing())


def _read(tx: Connection, site: str) -> PageSite:
    row = tx.execute(sa.select(page_sites).where(page_sites.c.site == site)).first()
    return _site_from(row) if row is not None else PageSite(site)


def _site_from(row: Any) -> PageSite:
    return PageSite(
        site=row.site,
        next_at=row.next_at,
        blocked_until=row.blocked_until,
        blocked_why=row.blocked_why,
        strikes=row.strikes,
        robots=row.robots,
        robots_at=row.robots_at,
    )
