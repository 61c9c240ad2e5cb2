"""What each recipient was told: the first message that carried each story to them, and the
story growth notes still to tell (docs/delivery.md, "One article, once per message" and
"Story growth").

A note (`story_growth`) is written, under the story lock, when a new member joins a story a
recipient already has a live delivery of; the first message to that recipient that shows
the member claims it, in the transaction that stores the message (`claim_notes`), as
deliveries are claimed. A delivery whose story an earlier message carried is bound to that
message (`bind_covered`): accounted for, never sent twice.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from monitor.models import (
    DeliveryStatus,
    EarlierMessage,
    Item,
    MessageKind,
    MessageStatus,
    StoryGrowth,
)
from monitor.store.dialect import among, aware, chunks, insert
from monitor.store.engine import StoreBase
from monitor.store.schema import (
    Recorded,
    deliveries,
    item_from,
    item_sources,
    items,
    matches,
    messages,
    story_growth,
    story_members,
)


class GrowthNotes:
    """The growth notes of one round of queueing: a recipient already reached by a story (a
    live delivery of any of its items, for any watchlist) gets a note for each new member
    that matched one of their watchlists."""

    def __init__(self) -> None:
        self._reached: dict[int, set[str]] = {}  # story -> recipients, stored or queued now
        self._notes: dict[tuple[int, str], tuple[int, str]] = {}  # (item, r) -> (story, list)

    def reached(self, story: int, recipients: Iterable[str]) -> None:
        """These recipients were just queued the story."""
        self._reached.setdefault(story, set()).update(recipients)

    def joined(
        self, tx: Connection, story: int, found: Recorded, recipients: Iterable[str]
    ) -> None:
        """A new member of `story` matched a watchlist of these recipients."""
        if story not in self._reached:
            self._reached[story] = story_recipients(tx, story)
        for recipient in recipients:
            if recipient in self._reached[story]:
                self._notes.setdefault((found.item_id, recipient), (story, found.watchlist))

    def insert(self, tx: Connection, now: datetime) -> None:
        if self._notes:
            rows = [
                {"story_id": story, "item_id": item_id, "recipient": recipient,
                 "watchlist": watchlist, "created_at": now}
                for (item_id, recipient), (story, watchlist) in sorted(self._notes.items())
            ]  # fmt: skip
            tx.execute(insert(tx, story_growth).values(rows).on_conflict_do_nothing())


def story_recipients(tx: Connection, story: int, watchlist: str | None = None) -> set[str]:
    """Recipients with a live (not dead-lettered) delivery of any item of this story (for
    this watchlist, if one is given)."""
    query = (
        sa.select(deliveries.c.recipient)
        .join(matches, matches.c.id == deliveries.c.match_id)
        .join(story_members, story_members.c.item_id == matches.c.item_id)
        .where(story_members.c.story_id == story)
        .where(deliveries.c.status != DeliveryStatus.DEAD)
        .distinct()
    )
    if watchlist is not None:
        query = query.where(deliveries.c.watchlist == watchlist)
    return set(tx.execute(query).scalars())


def bind_covered(tx: Connection, covered: Mapping[int, str]) -> bool:
    """Bind each pending delivery to the earlier message that carried its story, with that
    message's state (claimed while it waits, sent once sent). The message's row is locked
    first, so a mark_sent committing meanwhile cannot miss the delivery. False if one was
    no longer pending."""
    by_message: dict[str, list[int]] = {}
    for delivery_id, message_id in covered.items():
        by_message.setdefault(message_id, []).append(delivery_id)
    for message_id, ids in sorted(by_message.items()):
        state = messages.c.message_id == message_id
        row = tx.execute(
            sa.select(messages.c.status, messages.c.sent_at).where(state).with_for_update()
        ).first()
        if row is None:
            return False
        ready = row.status == MessageStatus.READY
        bound = tx.execute(
            deliveries.update()
            .where(among(tx, deliveries.c.id, sorted(ids)))
            .where(deliveries.c.status == DeliveryStatus.PENDING)
            .values(
                status=DeliveryStatus.CLAIMED if ready else DeliveryStatus(row.status),
                message_id=message_id,
                sent_at=row.sent_at,
            )
        ).rowcount
        if bound != len(ids):
            return False
    return True


def claim_notes(tx: Connection, note_ids: Sequence[int], message_id: str) -> bool:
    """Bind story growth notes to the message that shows them; False if one was taken."""
    claimed = tx.execute(
        story_growth.update()
        .where(among(tx, story_growth.c.id, sorted(note_ids)))
        .where(story_growth.c.message_id.is_(None))
        .values(message_id=message_id)
    ).rowcount
    return bool(claimed == len(note_ids))


def _first_items(tx: Connection, story_ids: Iterable[int]) -> dict[int, Item]:
    """story id -> its first item (else its earliest member still stored)."""
    found: dict[int, Item] = {}
    for chunk in chunks(sorted(story_ids)):
        query = (
            sa.select(story_members.c.story_id, items)
            .join(items, items.c.id == story_members.c.item_id)
            .where(story_members.c.story_id.in_(chunk))
            .where(story_members.c.revision_of.is_(None))
            .order_by(items.c.id != story_members.c.story_id, items.c.published_at, items.c.id)
        )
        for row in tx.execute(query):
            found.setdefault(row.story_id, item_from(row))
    return found


def _outlet_counts(tx: Connection, story_ids: Iterable[int]) -> dict[int, int]:
    """story id -> how many outlets carry it."""
    counts: dict[int, int] = {}
    for chunk in chunks(sorted(story_ids)):
        query = (
            sa.select(story_members.c.story_id, sa.func.count(sa.distinct(item_sources.c.feed)))
            .join(item_sources, item_sources.c.item_id == story_members.c.item_id)
            .where(story_members.c.story_id.in_(chunk))
            .group_by(story_members.c.story_id)
        )
        counts.update({story: int(count) for story, count in tx.execute(query)})
    return counts


class ToldStore(StoreBase):
    """Reads what recipients were told (see the module's docstring)."""

    def first_messages(
        self, stories: Mapping[str, Collection[int]]
    ) -> dict[tuple[str, int], EarlierMessage]:
        """(recipient, story) -> the earliest live message (stored or sent, not dead) that
        carried any item of the story (or the item, for one in no story) to the recipient,
        for these stories of each recipient (read-only)."""
        story = sa.func.coalesce(story_members.c.story_id, matches.c.item_id)
        at = sa.func.coalesce(messages.c.sent_at, messages.c.created_at)
        everyone = sorted(stories)
        found: dict[tuple[str, int], EarlierMessage] = {}
        with self._read() as tx:
            # One query per chunk of stories for every recipient: one per recipient cost a
            # round trip each on PostgreSQL.
            for chunk in chunks(sorted({s for wanted in stories.values() for s in wanted})):
                query = (
                    sa.select(
                        deliveries.c.recipient,
                        story.label("story"),
                        messages.c.message_id,
                        messages.c.kind,
                        at.label("at"),
                    )
                    .select_from(deliveries)
                    .join(matches, matches.c.id == deliveries.c.match_id)
                    .outerjoin(story_members, story_members.c.item_id == matches.c.item_id)
                    .join(messages, messages.c.message_id == deliveries.c.message_id)
                    .where(deliveries.c.recipient.in_(everyone))
                    .where(messages.c.status != MessageStatus.DEAD)
                    .where(story.in_(chunk))
                    .order_by(at, messages.c.message_id)
                )
                for row in tx.execute(query):
                    if row.story in stories[row.recipient]:
                        earlier = EarlierMessage(
                            row.message_id, MessageKind(row.kind), aware(row.at)
                        )
                        found.setdefault((row.recipient, row.story), earlier)
        return found

    def pending_growth(self, recipients: Iterable[str]) -> dict[str, list[StoryGrowth]]:
        """recipient -> the stories that gained members since they reached the recipient,
        not shown yet, first noted first (read-only). Read before the pending entries (and
        their outlets): a note's member is then among the outlets an entry shows."""
        query = (
            sa.select(
                story_growth.c.id,
                story_growth.c.recipient,
                story_growth.c.story_id,
                story_growth.c.watchlist,
                items.c.feed,
                items.c.url,
            )
            .join(items, items.c.id == story_growth.c.item_id)
            .where(story_growth.c.message_id.is_(None))
            .where(story_growth.c.recipient.in_(sorted(set(recipients))))
            .order_by(story_growth.c.id)
        )
        with self._read() as tx:
            notes = tx.execute(query).all()
            story_ids = {note.story_id for note in notes}
            first = _first_items(tx, story_ids)
            outlets = _outlet_counts(tx, story_ids)
        grouped: dict[tuple[str, int], list[Any]] = {}
        for note in notes:
            grouped.setdefault((note.recipient, note.story_id), []).append(note)
        found: dict[str, list[StoryGrowth]] = {}
        for (recipient, story), group in grouped.items():
            if story in first:
                found.setdefault(recipient, []).append(
                    _growth(story, group, first[story], outlets.get(story, 0))
                )
        return found


def _growth(story: int, notes: Sequence[Any], first: Item, outlets: int) -> StoryGrowth:
    new: dict[str, str] = {}  # outlet -> its first new link
    for note in notes:
        new.setdefault(note.feed, note.url)
    return StoryGrowth(
        tuple(note.id for note in notes),
        story,
        first,
        outlets,
        tuple(new.items()),
        tuple(dict.fromkeys(note.watchlist for note in notes)),
    )
