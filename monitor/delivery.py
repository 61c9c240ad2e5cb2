"""Digests out of the outbox: compose -> claim (store bytes) -> send -> mark.

Delivery is exactly-once per recipient under normal operation and at-least-once across a
crash: a message's bytes are stored when its deliveries are claimed, so a crash between the
server's 250 and the mark re-sends the *same* bytes with the same Message-ID, once.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from monitor.app import App
from monitor.config import WatchlistConfig
from monitor.errors import DeliveryError, PermanentDeliveryError
from monitor.models import DigestEntry, OutgoingMessage
from monitor.schedules import parse_schedule

log = logging.getLogger(__name__)
FIRST_POLL_DONE = "first_poll_done"


@dataclass(frozen=True, slots=True)
class DeliveryReport:
    composed: int = 0
    sent: int = 0
    retrying: int = 0
    dead: int = 0


def due_watchlists(app: App, now: datetime) -> list[tuple[WatchlistConfig, datetime]]:
    """Watchlists whose latest schedule slot has not been handled yet, with that slot.

    A slot missed while monitor was down is still due when it comes back (catch-up), once.
    A new watchlist is due after the first poll cycle, so its first digest shows what matched.
    """
    due = []
    first_poll_done = app.store.get_meta(FIRST_POLL_DONE) is not None
    for watchlist in app.config.watchlists:
        slot = parse_schedule(watchlist.digest).latest_slot(now, app.config.zone)
        handled = app.store.last_slot(watchlist.name)
        if (handled is None and first_poll_done) or (handled is not None and slot > handled):
            due.append((watchlist, slot))
    return due


async def run_digests(
    app: App, *, force: bool = False, only: Iterable[str] | None = None
) -> DeliveryReport:
    """Compose the due digests (force: all pending, now), then send everything ready."""
    now = app.clock()
    if force:
        names = set(only) if only else {w.name for w in app.config.watchlists}
        composed = compose(app, names, now)
    else:
        due = [(w, slot) for w, slot in due_watchlists(app, now) if not only or w.name in only]
        composed = compose(app, {w.name for w, _ in due}, now)
        for watchlist, slot in due:
            app.store.set_last_slot(watchlist.name, slot)
    sent = await send_ready(app)
    return DeliveryReport(composed, *sent)


def pending_by_recipient(app: App, names: set[str]) -> dict[str, list[DigestEntry]]:
    by_recipient: dict[str, list[DigestEntry]] = {}
    if not names:
        return by_recipient
    for recipient, entry in app.store.pending_entries(names):
        by_recipient.setdefault(recipient, []).append(entry)
    return by_recipient


def compose(app: App, names: set[str], now: datetime) -> int:
    """Render one digest per recipient of the named watchlists and claim its deliveries."""
    composed = 0
    for recipient, entries in pending_by_recipient(app, names).items():
        message = app.renderer.render(recipient, entries, now)
        ids = [i for entry in entries for i in entry.delivery_ids]
        if app.store.claim(message, ids, now):
            composed += 1
    return composed


def preview(app: App, only: Iterable[str] | None = None) -> list[OutgoingMessage]:
    """Exactly what `digest --send` would send now, without claiming or marking anything."""
    names = set(only) if only else {w.name for w in app.config.watchlists}
    now = app.clock()
    return [
        app.renderer.render(recipient, entries, now)
        for recipient, entries in pending_by_recipient(app, names).items()
    ]


async def send_ready(app: App) -> tuple[int, int, int]:
    """Hand every stored, unsent message to the mailer; mark each right after its outcome."""
    counts = {"sent": 0, "retrying": 0, "dead": 0}

    async def report(message: OutgoingMessage, error: DeliveryError | None) -> None:
        now = app.clock()
        if error is None:
            app.store.mark_sent(message.message_id, now)
            counts["sent"] += 1
        elif isinstance(error, PermanentDeliveryError):
            app.store.mark_dead(message.message_id, str(error), now)
            log.error(
                "recipient refused; dead-lettered: %s",
                error,
                extra={"recipient": message.recipient},
            )
            counts["dead"] += 1
        else:
            app.store.mark_retry(message.message_id, str(error), now, retry_delay)
            log.warning(
                "delivery failed, will retry: %s", error, extra={"recipient": message.recipient}
            )
            counts["retrying"] += 1

    batch: Sequence[OutgoingMessage] = app.store.ready_messages(app.clock())
    await app.mailer.deliver(batch, report)
    return counts["sent"], counts["retrying"], counts["dead"]


def retry_delay(attempts: int) -> timedelta:
    """1 min, 2, 4, ... capped at 1 h, with jitter."""
    ceiling = min(3600.0, 60.0 * 2 ** min(attempts, 12))
    return timedelta(seconds=random.uniform(ceiling / 2, ceiling))
