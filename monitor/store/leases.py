"""Feed and host leases: which worker polls a feed now, and asks a host now."""

from __future__ import annotations

import functools
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Connection

from monitor.models import FeedState, FeedStatus, FeedUpdate
from monitor.store.dialect import POSTGRESQL, Dialect, among, dialect_of, listed, listed_select
from monitor.store.feeds import FeedStore, ensure_hosts, feed_from, host_of, lock_feeds
from monitor.store.schema import UTCDateTime, feeds, hosts


@dataclass(frozen=True, slots=True)
class Claim:
    """Feeds leased to one worker, and when each of their hosts was last asked."""

    feeds: list[FeedState]
    last_requests: dict[str, datetime | None]


def release_hosts(
    tx: Connection, releases: Sequence[tuple[str, str, datetime, datetime | None]]
) -> None:
    """(host, owner, last request, blocked until). A host released twice in one call keeps
    the later request and the later block. On SQLite in host order; on PostgreSQL one
    statement locks them in the order its plan reads them. Claims never wait for a host
    (SKIP LOCKED) and a worker releases only hosts it holds (or a free host, repeating a
    release), so two releases of the same hosts at once are rare; should they deadlock,
    PostgreSQL aborts one, and the poller's writer retries its jobs one by one."""
    merged: dict[tuple[str, str], tuple[datetime, datetime | None]] = {}
    for host, owner, last, blocked in releases:
        if (host, owner) in merged:
            before, block = merged[host, owner]
            last = max(last, before)
            blocked = max(blocked, block) if blocked and block else blocked or block
        merged[host, owner] = (last, blocked)
    if not merged:
        return
    ordered = sorted(merged.items())
    dialect = dialect_of(tx)
    if dialect.arrays:  # one UPDATE ... FROM unnest(arrays)
        as_naive = UTCDateTime().process_bind_param
        tx.execute(
            _release_statement(dialect),
            {
                "released_hosts": listed(dialect, [host for (host, _), _ in ordered]),
                "owners": listed(dialect, [owner for (_, owner), _ in ordered]),
                "lasts": [as_naive(last, tx.dialect) for _, (last, _) in ordered],
                "blocks": [as_naive(block, tx.dialect) for _, (_, block) in ordered],
            },
        )
        return
    rows = [
        {"released_host": host, "owner": owner, "last": last, "blocked": blocked}
        for (host, owner), (last, blocked) in ordered
    ]
    tx.execute(_release_statement(dialect), rows)


@functools.cache
def _release_statement(dialect: Dialect) -> Any:
    """release_hosts' UPDATE, built once: it runs with most claims and writer rounds. On
    PostgreSQL one statement for all the hosts (executemany ran one UPDATE per host: as
    long as the claim it came with); on SQLite one per host."""
    if dialect.arrays:
        released = (
            sa.func.unnest(
                sa.cast(sa.bindparam("released_hosts", type_=sa.Text), postgresql.ARRAY(sa.Text)),
                sa.cast(sa.bindparam("owners", type_=sa.Text), postgresql.ARRAY(sa.Text)),
                sa.bindparam("lasts", type_=postgresql.ARRAY(sa.DateTime)),
                sa.bindparam("blocks", type_=postgresql.ARRAY(sa.DateTime)),
            )
            .table_valued("host", "owner", "last", "blocked")
            .render_derived(name="released")
        )
        host, owner, last, blocked = (
            released.c.host,
            released.c.owner,
            released.c.last,
            released.c.blocked,
        )
    else:
        host = sa.bindparam("released_host")
        owner = sa.bindparam("owner")
        last = sa.bindparam("last", type_=hosts.c.last_request_at.type)
        blocked = sa.bindparam("blocked", type_=hosts.c.blocked_until.type)
    # A feed of the host claimed meanwhile keeps the host leased, to be released with that
    # feed: the worker's count of the host's feeds in flight can reach 0 just before it
    # counts a claim made in the same writer round.
    busy = (
        sa.exists()
        .where(feeds.c.host == hosts.c.host)
        .where(feeds.c.lease_owner == owner)
        .where(feeds.c.lease_expires_at > last)
    )
    return (
        hosts.update()
        .where(hosts.c.host == host)
        .where(sa.or_(hosts.c.lease_owner == owner, hosts.c.lease_owner.is_(None)))
        .values(
            lease_owner=sa.case((busy, hosts.c.lease_owner), else_=None),
            lease_expires_at=sa.case((busy, hosts.c.lease_expires_at), else_=None),
            # Never back: a release repeated after another worker asked the host (a claim
            # that failed after its releases committed, on PostgreSQL) keeps the newer time.
            last_request_at=sa.case(
                (sa.or_(hosts.c.last_request_at.is_(None), hosts.c.last_request_at < last), last),
                else_=hosts.c.last_request_at,
            ),
            # A host-wide Retry-After only ever moves later: it ends by itself.
            blocked_until=sa.case(
                (sa.or_(blocked.is_(None), hosts.c.blocked_until > blocked), hosts.c.blocked_until),
                else_=blocked,
            ),
        )
    )


@functools.cache
def _claim_query(dialect: Dialect, named: bool, force: bool, with_disabled: bool) -> Any:
    """The due feeds a claim may take, with bound parameters now, owner, cycle, limit (and
    names): built and compiled once, not on every claim (SQLAlchemy's construction was most
    of a claim's own CPU time).

    It reads the due feeds in (next_poll_at, id) order from ix_feeds_due, each with its
    host, and stops at the limit: the cost follows the due feeds, not all feeds. A feed
    whose row, or host's row, another claim has locked is skipped (SKIP LOCKED); only the
    hosts of the rows returned are locked."""
    now = sa.bindparam("now", type_=UTCDateTime())
    owner = sa.bindparam("owner", type_=sa.Text)
    query = (
        sa.select(feeds)
        .join(hosts, hosts.c.host == feeds.c.host)
        .where(
            sa.or_(
                hosts.c.lease_owner.is_(None),
                hosts.c.lease_owner == owner,
                hosts.c.lease_expires_at <= now,
            )
        )
        .where(sa.or_(hosts.c.blocked_until.is_(None), hosts.c.blocked_until <= now))
        .where(sa.or_(feeds.c.lease_owner.is_(None), feeds.c.lease_expires_at <= now))
        .where(feeds.c.poll_cycle.is_distinct_from(sa.bindparam("cycle", type_=sa.Text)))
        .order_by(feeds.c.next_poll_at, feeds.c.id)
        .limit(sa.bindparam("limit", type_=sa.Integer))
        .with_for_update(skip_locked=True, of=[feeds, hosts])
    )
    if not with_disabled:  # only a user naming a feed polls a disabled one
        # In the SQL text, not a parameter: once psycopg prepares the claim, PostgreSQL may
        # plan it for any parameters, and guessed from `status <> $n` (every feed has the
        # same status) that almost no feed qualifies: it read and sorted all feeds on each
        # claim instead of taking the first due ones from ix_feeds_due.
        disabled = sa.literal_column(f"'{FeedStatus.DISABLED.value}'", sa.Text)  # fixed word
        query = query.where(feeds.c.status != disabled)
    if not force:  # never NULL when due: only a disabled feed has no next poll
        query = query.where(feeds.c.next_poll_at <= now)
    if named:
        names = sa.bindparam("names", type_=sa.Text)
        query = query.where(feeds.c.name.in_(listed_select(dialect, names)))
    else:
        query = query.where(feeds.c.active)
    return query


@functools.cache
def _claim_statement(named: bool, force: bool, with_disabled: bool) -> Any:
    """PostgreSQL's claim in one statement: the picked feeds leased and marked with the
    cycle, their hosts leased, each feed returned with its host's last request
    (data-modifying CTEs)."""
    lease = {
        "lease_owner": sa.bindparam("owner", type_=sa.Text),
        "lease_expires_at": sa.bindparam("lease_until", type_=UTCDateTime()),
    }
    picked = _claim_query(POSTGRESQL, named, force, with_disabled)
    picked = picked.with_only_columns(feeds.c.id).cte("picked")
    leased = (
        feeds.update()
        .where(feeds.c.id.in_(sa.select(picked.c.id)))
        .values(**lease, poll_cycle=sa.bindparam("cycle", type_=sa.Text))
        .returning(*feeds.c)
        .cte("leased")
    )
    leased_hosts = (
        hosts.update()
        .where(hosts.c.host.in_(sa.select(leased.c.host)))
        .values(**lease)
        .returning(hosts.c.host, hosts.c.last_request_at)
        .cte("leased_hosts")
    )
    return (
        sa.select(leased, leased_hosts.c.last_request_at.label("host_last_request_at"))
        .join_from(leased, leased_hosts, leased.c.host == leased_hosts.c.host)
        .order_by(leased.c.next_poll_at, leased.c.id)
    )


class LeaseStore(FeedStore):
    # ------------------------------------------------------------------ feed and host leases

    def claim_feeds(
        self,
        owner: str,
        now: datetime,
        lease_until: datetime,
        limit: int,
        names: Iterable[str] | None = None,
        force: bool = False,
        releases: Sequence[tuple[str, str, datetime, datetime | None]] = (),
        *,
        cycle: str | None = None,
    ) -> Claim:
        """Lease up to `limit` due feeds, and their hosts, to `owner`: one poller per feed.
        With them, when each of their hosts was last asked (by any worker), for the gap.

        Without `names`, the feeds the configuration polls (sync_feeds), oldest due first;
        with them, just those (and with `force`, whether due or not, even disabled). A claim
        marks its feeds with `cycle`: later claims of the same cycle skip them, so a cycle
        polls each feed once (no cycle given: a cycle of its own). `releases` (as for
        `release_host`) are given back first: the owner's idle hosts, which this claim may
        lease again (on SQLite in the claim's transaction, on PostgreSQL just before it; a
        release repeated later is harmless).

        On PostgreSQL feed and host rows are taken FOR UPDATE SKIP LOCKED, so workers claiming
        at the same moment get disjoint sets; on SQLite BEGIN IMMEDIATE serializes claims.
        A host leased by another worker is skipped whole, so per-host politeness holds across
        workers. The leases of a worker that dies expire at `lease_until`.
        """
        dialect = dialect_of(self.engine)
        named, with_disabled = names is not None, bool(force and names is not None)
        values: dict[str, Any] = {
            "now": now,
            "owner": owner,
            "limit": limit,
            "cycle": cycle or uuid.uuid4().hex,
            "lease_until": lease_until,
        }
        if names is not None:
            values["names"] = listed(dialect, sorted(names))
        if dialect.row_locks:
            # Pick, lease the feeds, lease their hosts and read the hosts' last requests in
            # one statement, each statement in its own transaction: a claim was six round
            # trips to the server. One statement is atomic by itself, and releasing the idle
            # hosts a moment before the claim needs no shared transaction.
            with self.engine.connect() as connection:
                autocommit = connection.execution_options(isolation_level="AUTOCOMMIT")
                release_hosts(autocommit, releases)
                statement = _claim_statement(named, force, with_disabled)
                picked = autocommit.execute(statement, values).all()
            last_requests = {row.host: row.host_last_request_at for row in picked}
            return Claim([feed_from(row) for row in picked], last_requests)
        with self._tx() as tx:
            release_hosts(tx, releases)
            rows = tx.execute(_claim_query(dialect, named, force, with_disabled), values).all()
            last_requests = {}
            if rows:
                lease = {"lease_owner": owner, "lease_expires_at": lease_until}
                ids = [row.id for row in rows]
                tx.execute(
                    feeds.update()
                    .where(among(tx, feeds.c.id, ids))
                    .values(**lease, poll_cycle=values["cycle"])
                )
                taken = sorted({row.host for row in rows})
                where = among(tx, hosts.c.host, taken, sa.Text)
                returning = (hosts.c.host, hosts.c.last_request_at)
                leased = tx.execute(
                    hosts.update().where(where).values(**lease).returning(*returning)
                )
                last_requests = {row.host: row.last_request_at for row in leased}
        return Claim([feed_from(row) for row in rows], last_requests)

    def renew_leases(
        self, owner: str, names: Sequence[str], held: Sequence[str], until: datetime
    ) -> None:
        """Extend `owner`'s leases of these feeds and hosts to `until`: its polls of them
        are still running. A lease another worker holds by now is left alone."""
        with self._tx() as tx:
            lock_feeds(tx, names)  # the poller records outcomes of some of them meanwhile
            for key, keys in ((feeds.c.name, names), (hosts.c.host, held)):
                if keys:
                    table = key.table
                    tx.execute(
                        table.update()
                        .where(table.c.lease_owner == owner)
                        .where(among(tx, key, sorted(keys), sa.Text))
                        .values(lease_expires_at=until)
                    )

    def release_feed_leases(self) -> None:
        """Drop every feed and host lease: on SQLite only one process runs, so they are stale."""
        with self._tx() as tx:
            tx.execute(feeds.update().values(lease_owner=None, lease_expires_at=None))
            tx.execute(hosts.update().values(lease_owner=None, lease_expires_at=None))

    def release_host(
        self, host: str, owner: str, last_request_at: datetime, blocked_until: datetime | None
    ) -> None:
        """Give a host back after this worker's polls of it; keep its Retry-After, if any."""
        self.finish_polls((), [(host, owner, last_request_at, blocked_until)])

    def give_back(
        self, owner: str, names: Sequence[str], hosts: Sequence[str], now: datetime
    ) -> None:
        """Release feeds `owner` leased but will not poll (its cycle was cancelled), with
        no outcome recorded, and then their hosts. A feed leased by another worker since is
        left alone."""
        with self._tx() as tx:
            if names:
                lock_feeds(tx, names)
                tx.execute(
                    feeds.update()
                    .where(among(tx, feeds.c.name, sorted(names), sa.Text))
                    .where(feeds.c.lease_owner == owner)
                    .values(lease_owner=None, lease_expires_at=None)
                )
            release_hosts(tx, [(host, owner, now, None) for host in hosts])

    def finish_poll(self, name: str, update: FeedUpdate) -> None:
        """Record one poll's outcome and release the feed's lease, in one transaction."""
        self.finish_polls([(name, update)])

    def finish_polls(
        self,
        outcomes: Sequence[tuple[str, FeedUpdate]],
        releases: Sequence[tuple[str, str, datetime, datetime | None]] = (),
    ) -> None:
        """`finish_poll` for many feeds and `release_host` for many (host, owner, last
        request, blocked until), in one transaction: one executemany per set of columns
        changed (SQLAlchemy built one statement per feed, the writer's main cost)."""
        groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
        changed = [(name, update.columns()) for name, update in outcomes]
        for name, values in changed:
            row = {f"new_{column}": value for column, value in values.items()}
            groups.setdefault(tuple(sorted(values)), []).append({"feed_name": name, **row})
        with self._tx() as tx:
            lock_feeds(tx, [name for name, _ in outcomes])
            for columns, rows in groups.items():
                changes = {c: sa.bindparam(f"new_{c}", type_=feeds.c[c].type) for c in columns}
                tx.execute(
                    feeds.update()
                    .where(feeds.c.name == sa.bindparam("feed_name"))
                    .values(**changes, lease_owner=None, lease_expires_at=None),
                    rows,
                )
            urls = [str(values["url"]) for _, values in changed if "url" in values]
            if urls:
                ensure_hosts(tx, {host_of(url) for url in urls})
            release_hosts(tx, releases)
