"""The outbox: pending deliveries, digest periods claimed, messages stored before they are
sent, sent under a lease, marked sent, retried or dead-lettered."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from monitor.models import (
    DeliveryStatus,
    DigestEntry,
    Hit,
    MessageKind,
    MessageStatus,
    OutgoingMessage,
)
from monitor.store.dialect import among, aware, chunks, insert
from monitor.store.engine import StoreBase
from monitor.store.schema import (
    PAGE_ITEM,
    deliveries,
    digest_runs,
    hits_from,
    item_from,
    item_texts,
    items,
    matches,
    messages,
    story_members,
)
from monitor.store.stories import story_outlets
from monitor.store.told import bind_covered, claim_notes


@dataclass(frozen=True, slots=True)
class DigestRun:
    """One digest period handled for one recipient of one watchlist."""

    watchlist: str
    recipient: str
    slot: datetime


@dataclass(frozen=True, slots=True)
class Outbox:
    """Counts for status displays."""

    pending: int  # deliveries (a watchlist's match for a recipient) not yet accepted
    ready: int  # messages stored, waiting to be sent
    dead: int  # dead letters: messages the server refused for good
    oldest_pending: datetime | None


@dataclass(frozen=True, slots=True)
class DeferredMessage:
    """A message whose last attempt failed for a reason that may pass; it waits its turn."""

    recipient: str
    kind: MessageKind
    attempts: int
    next_attempt_at: datetime
    error: str


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A message the server refused for good; `monitor retry-dead` sends it again."""

    message_id: str
    recipient: str
    kind: MessageKind
    since: datetime  # when it was refused
    error: str


# What is told about a message without its bytes.
_ABOUT_MESSAGE = [c for c in messages.c if c.name != "mime"]


def _one_entry_per_story(
    rows: Sequence[Any], outlets: Mapping[int, Sequence[tuple[str, str]]]
) -> list[tuple[str, DigestEntry]]:
    """One entry per recipient, watchlist and story, under the story's first item (else its
    earliest), naming the other outlets that carried it; every delivery id is kept."""
    groups: dict[tuple[str, str, Any], list[Any]] = {}
    for row in rows:
        story = row.story_id if row.story_id is not None else ("item", row.item_pk)
        groups.setdefault((row.recipient, row.watchlist, story), []).append(row)
    entries = []
    for (recipient, watchlist, _), group in groups.items():
        shown = min(group, key=lambda r: (r.item_pk != r.story_id, r.published_at))
        also: dict[str, str] = {}  # outlet -> its first link to the story
        for outlet, url in outlets.get(shown.story_id, ()):
            if outlet != shown.feed:
                also.setdefault(outlet, url)
        excerpt, hits = body_excerpt(shown.page_text, hits_from(shown.hits))
        entry = DigestEntry(
            tuple(r.id for r in group),
            watchlist,
            item_from(shown),
            hits,
            also_reported_by=tuple(also.items()),
            updated=shown.revision_of is not None,
            story=shown.story_id if shown.story_id is not None else shown.item_pk,
            excerpt=excerpt,
        )
        entries.append((recipient, entry))
    return entries


def store_message(
    tx: Connection, message: OutgoingMessage, now: datetime, send_at: datetime | None = None
) -> bool:
    """Store a rendered message, ready to be sent at `send_at` (now by default), in the
    caller's transaction: the bytes are kept before anything is sent, so a resend uses
    them. False if a message with its Message-ID is stored already (told by RETURNING:
    psycopg reports no row count for an INSERT compiled by SQLAlchemy 2.1, -1 either way)."""
    stored = tx.execute(
        insert(tx, messages)
        .values(
            message_id=message.message_id,
            recipient=message.recipient,
            mime=message.mime,
            kind=message.kind,
            status=MessageStatus.READY,
            next_attempt_at=send_at or now,
            created_at=now,
        )
        .on_conflict_do_nothing(index_elements=["message_id"])
        .returning(messages.c.message_id)
    ).first()
    return stored is not None


_EXCERPT_CHARS = 400  # of the article around its first body hit: the digest cuts ~25 words


def body_excerpt(text: str | None, hits: tuple[Hit, ...]) -> tuple[str, tuple[Hit, ...]]:
    """A window of the article around its first body hit, "…" where it is cut, and the
    hits with their body offsets moved into it: a digest quotes a snippet, never the
    article."""
    body = sorted((h for h in hits if h.field == "body"), key=lambda h: h.start)
    others = tuple(h for h in hits if h.field != "body")
    if not text or not body:
        return "", others
    start = max(0, body[0].start - _EXCERPT_CHARS // 3)
    if start and (space := text.find(" ", start, body[0].start)) >= 0:
        start = space + 1
    end = min(len(text), start + _EXCERPT_CHARS)
    if end < len(text) and (space := text.rfind(" ", body[0].end, end)) >= 0:
        end = space
    lead = "… " if start else ""
    shift = len(lead) - start
    # Hits past the window are kept (their terms are listed) but fall outside the excerpt,
    # so nothing highlights them.
    inside = tuple(replace(h, start=h.start + shift, end=h.end + shift) for h in body)
    excerpt = lead + text[start:end].replace("\n", " ")  # paragraphs as one line, same offsets
    return excerpt + (" …" if end < len(text) else ""), others + inside


class OutboxStore(StoreBase):
    # ------------------------------------------------------------------ outbox

    def pending_entries(
        self, watchlists: Iterable[str] | None = None
    ) -> list[tuple[str, DigestEntry]]:
        """Pending deliveries as (recipient, entry), oldest item first."""
        query = (
            sa.select(
                deliveries.c.id,
                deliveries.c.recipient,
                deliveries.c.watchlist,
                matches.c.hits,
                items,
                items.c.id.label("item_pk"),
                story_members.c.story_id,
                story_members.c.revision_of,
                item_texts.c.body.label("page_text"),
            )
            .join(matches, deliveries.c.match_id == matches.c.id)
            .join(items, matches.c.item_id == items.c.id)
            .outerjoin(story_members, story_members.c.item_id == items.c.id)
            # A revision quotes its item's page (fetched once, for the item).
            .outerjoin(item_texts, item_texts.c.item_id == PAGE_ITEM)
            .where(deliveries.c.status == DeliveryStatus.PENDING)
            .order_by(items.c.published_at.desc(), deliveries.c.id)
        )
        if watchlists is not None:
            query = query.where(deliveries.c.watchlist.in_(list(watchlists)))
        with self._read() as tx:
            rows = tx.execute(query).all()
            outlets = story_outlets(tx, {r.story_id for r in rows if r.story_id is not None})
        return _one_entry_per_story(rows, outlets)

    def claim_digest(
        self,
        message: OutgoingMessage | None,
        delivery_ids: Sequence[int],
        now: datetime,
        runs: Sequence[DigestRun] = (),
        *,
        covered: Mapping[int, str] | None = None,
        notes: Sequence[int] = (),
    ) -> bool:
        """Record the digest runs, store the rendered message and bind its deliveries, at once.

        `covered`: delivery id -> the earlier message that already carried its story to the
        recipient, which accounts for it (store/told.py). `notes`: the story growth notes
        the message shows. Returns False, storing nothing, when another process already
        handled one of the runs or claimed one of the deliveries or notes: exactly one
        worker composes each digest period.
        """
        with self._tx() as tx:
            if covered and not bind_covered(tx, covered):
                tx.rollback()
                return False
            message_id = message.message_id if message else None
            if runs:
                recorded = tx.execute(
                    insert(tx, digest_runs)
                    .values(
                        [
                            {
                                "watchlist": r.watchlist,
                                "recipient": r.recipient,
                                "slot": r.slot,
                                "message_id": message_id,
                                "created_at": now,
                            }
                            for r in runs
                        ]
                    )
                    .on_conflict_do_nothing()
                    .returning(digest_runs.c.watchlist)
                ).all()
                if len(recorded) != len(runs):
                    tx.rollback()
                    return False
            if message is None:
                return True
            if not store_message(tx, message, now):  # another worker composed it first
                tx.rollback()
                return False
            if delivery_ids:
                # One bound array, not a parameter per id: a digest binds hundreds, and
                # each count would make a statement of its own to compile and plan.
                claimed = tx.execute(
                    deliveries.update()
                    .where(among(tx, deliveries.c.id, sorted(delivery_ids)))
                    .where(deliveries.c.status == DeliveryStatus.PENDING)
                    .values(status=DeliveryStatus.CLAIMED, message_id=message.message_id)
                ).rowcount
                if claimed != len(delivery_ids):
                    tx.rollback()
                    return False
            if notes and not claim_notes(tx, notes, message.message_id):
                tx.rollback()
                return False
        return True

    def last_runs(self) -> dict[tuple[str, str], datetime]:
        """The latest handled slot per (watchlist, recipient)."""
        query = sa.select(
            digest_runs.c.watchlist, digest_runs.c.recipient, sa.func.max(digest_runs.c.slot)
        ).group_by(digest_runs.c.watchlist, digest_runs.c.recipient)
        with self._read() as tx:
            return {(w, r): aware(slot) for w, r, slot in tx.execute(query)}

    def pending_since(self) -> dict[tuple[str, str], datetime]:
        """When the oldest pending delivery of each (watchlist, recipient) was queued."""
        query = (
            sa.select(
                deliveries.c.watchlist, deliveries.c.recipient, sa.func.min(deliveries.c.created_at)
            )
            .where(deliveries.c.status == DeliveryStatus.PENDING)
            .group_by(deliveries.c.watchlist, deliveries.c.recipient)
        )
        with self._read() as tx:
            return {(w, r): aware(created) for w, r, created in tx.execute(query)}

    def ready_messages(self, now: datetime, *, flush: bool = False) -> list[OutgoingMessage]:
        """Messages stored but not yet accepted by the server, due (flush: waiting for a
        retry or not, as `postqueue -f`), and not being sent."""
        query = (
            sa.select(messages.c.message_id, messages.c.recipient, messages.c.mime, messages.c.kind)
            .where(messages.c.status == MessageStatus.READY)
            .where(sa.or_(messages.c.lease_until.is_(None), messages.c.lease_until <= now))
            .order_by(messages.c.created_at)
        )
        if not flush:
            query = query.where(messages.c.next_attempt_at <= now)
        with self._read() as tx:
            return [
                OutgoingMessage(r.message_id, r.recipient, bytes(r.mime), MessageKind(r.kind))
                for r in tx.execute(query)
            ]

    def release_message_leases(self) -> int:
        """Forget every send lease; only for a process that knows it is the sole sender.

        SQLite deployments hold a file lock, so a lease found at start-up belongs to a process
        that died mid-send: its message is resent now (the at-most-one repeat), not in 10 min.
        """
        with self._tx() as tx:
            return int(
                tx.execute(
                    messages.update()
                    .where(messages.c.lease_owner.is_not(None))
                    .values(lease_owner=None, lease_until=None)
                ).rowcount
            )

    def lease_message(self, message_id: str, owner: str, now: datetime, until: datetime) -> bool:
        """Take the right to send a message now; False if another worker holds it."""
        with self._tx() as tx:
            taken = tx.execute(
                messages.update()
                .where(messages.c.message_id == message_id)
                .where(messages.c.status == MessageStatus.READY)
                .where(
                    sa.or_(
                        messages.c.lease_until.is_(None),
                        messages.c.lease_until <= now,
                        messages.c.lease_owner == owner,
                    )
                )
                .values(lease_owner=owner, lease_until=until)
            ).rowcount
        return bool(taken)

    def mark_sent(self, message_id: str, now: datetime) -> None:
        self._finish(message_id, MessageStatus.SENT, now, None)

    def mark_dead(self, message_id: str, error: str, now: datetime) -> None:
        self._finish(message_id, MessageStatus.DEAD, now, error)

    def _finish(
        self, message_id: str, status: MessageStatus, now: datetime, error: str | None
    ) -> None:
        """A sent message stays sent: a refusal reported late (by a worker whose lease ran
        out meanwhile) does not turn it, or its deliveries, into dead letters."""
        with self._tx() as tx:
            changed = tx.execute(
                messages.update()
                .where(messages.c.message_id == message_id)
                .where(messages.c.status != MessageStatus.SENT)
                .values(
                    status=status,
                    sent_at=now,
                    last_error=error,
                    attempts=messages.c.attempts + 1,
                    lease_owner=None,
                    lease_until=None,
                )
            ).rowcount
            if changed:
                tx.execute(
                    deliveries.update()
                    .where(deliveries.c.message_id == message_id)
                    .values(status=DeliveryStatus(status.value), sent_at=now)
                )

    def note_unconfirmed(self, message_id: str, now: datetime) -> bool:
        """Record that the server may have this message (no reply to its end); True the
        first time for this message, False ever after."""
        with self._tx() as tx:
            noted = tx.execute(
                messages.update()
                .where(messages.c.message_id == message_id)
                .where(messages.c.unconfirmed_at.is_(None))
                .values(unconfirmed_at=now)
            ).rowcount
        return bool(noted)

    def mark_retry(
        self, message_id: str, error: str, now: datetime, delay: Callable[[int], timedelta]
    ) -> None:
        """Record a transient failure; the next attempt waits delay(failed attempts so far)."""
        with self._tx() as tx:
            attempts = (
                tx.execute(
                    sa.select(messages.c.attempts).where(messages.c.message_id == message_id)
                ).scalar_one()
                + 1
            )
            tx.execute(
                messages.update()
                .where(messages.c.message_id == message_id)
                .values(
                    last_error=error,
                    attempts=attempts,
                    next_attempt_at=now + delay(attempts),
                    lease_owner=None,
                    lease_until=None,
                )
            )

    def outbox(self) -> Outbox:
        with self._read() as tx:
            pending = tx.execute(
                sa.select(sa.func.count(), sa.func.min(deliveries.c.created_at)).where(
                    deliveries.c.status.in_((DeliveryStatus.PENDING, DeliveryStatus.CLAIMED))
                )
            ).one()
            ready = tx.execute(
                sa.select(sa.func.count()).where(messages.c.status == MessageStatus.READY)
            ).scalar_one()
            dead = tx.execute(
                sa.select(sa.func.count()).where(messages.c.status == MessageStatus.DEAD)
            ).scalar_one()
        oldest = aware(pending[1]) if pending[1] is not None else None
        return Outbox(int(pending[0]), int(ready), int(dead), oldest)

    def message_counts(self) -> dict[tuple[str, MessageStatus], int]:
        """How many messages each recipient has in each state (ready, sent, dead)."""
        query = sa.select(messages.c.recipient, messages.c.status, sa.func.count()).group_by(
            messages.c.recipient, messages.c.status
        )
        with self._read() as tx:
            return {(r, MessageStatus(status)): int(n) for r, status, n in tx.execute(query)}

    def retry_dead(self, now: datetime, recipient: str | None = None) -> int:
        """Send dead letters (of one recipient, or all) again, once their cause is fixed (a
        mailbox restored, a sender allowed): the same bytes and Message-ID, ready now, and
        their deliveries claimed by them again. Returns how many."""
        query = sa.select(messages.c.message_id).where(messages.c.status == MessageStatus.DEAD)
        if recipient is not None:
            query = query.where(messages.c.recipient == recipient)
        with self._tx() as tx:
            found = sorted(tx.execute(query).scalars())
            for chunk in chunks(found):
                tx.execute(
                    messages.update()
                    .where(among(tx, messages.c.message_id, chunk, sa.Text))
                    .values(
                        status=MessageStatus.READY,
                        attempts=0,
                        last_error=None,
                        next_attempt_at=now,
                        sent_at=None,
                        lease_owner=None,
                        lease_until=None,
                    )
                )
                tx.execute(
                    deliveries.update()
                    .where(among(tx, deliveries.c.message_id, chunk, sa.Text))
                    .where(deliveries.c.status == DeliveryStatus.DEAD)
                    .values(status=DeliveryStatus.CLAIMED, sent_at=None)
                )
        return len(found)

    def dead_letters(self, recipient: str | None = None) -> list[DeadLetter]:
        """Each message the server refused for good (of one recipient), oldest first."""
        query = (
            sa.select(*_ABOUT_MESSAGE)
            .where(messages.c.status == MessageStatus.DEAD)
            .order_by(messages.c.sent_at, messages.c.recipient)
        )
        if recipient is not None:
            query = query.where(messages.c.recipient == recipient)
        with self._read() as tx:
            return [
                DeadLetter(
                    row.message_id,
                    row.recipient,
                    MessageKind(row.kind),
                    aware(row.sent_at or row.created_at),
                    row.last_error or "",
                )
                for row in tx.execute(query)
            ]

    def deferred_messages(self) -> list[DeferredMessage]:
        """Messages waiting for another attempt after a failure that may pass, soonest first."""
        query = (
            sa.select(*_ABOUT_MESSAGE)
            .where(messages.c.status == MessageStatus.READY)
            .where(messages.c.attempts > 0)
            .order_by(messages.c.next_attempt_at, messages.c.recipient)
        )
        with self._read() as tx:
            return [
                DeferredMessage(
                    row.recipient,
                    MessageKind(row.kind),
                    row.attempts,
                    aware(row.next_attempt_at),
                    row.last_error or "",
                )
                for row in tx.execute(query)
            ]
