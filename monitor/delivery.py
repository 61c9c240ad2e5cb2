"""Digests and alerts out of the outbox: due -> compose and claim (store bytes) -> send -> mark.

Delivery is exactly-once per recipient in normal operation and at-least-once across a crash:
a message's bytes are stored in the transaction that claims its deliveries (and records the
digest period as handled), so a crash between the server's 250 and the mark re-sends the
*same* bytes with the same Message-ID, once. Several workers may run this concurrently: the
digest_runs rows make exactly one of them compose a period, and a send lease on each stored
message makes exactly one of them send it.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from monitor.app import App
from monitor.channels import ChatSender, limit, limit_of
from monitor.chat import render_chat
from monitor.config import DeliveryPlan
from monitor.contents import Contents, plan, ranking
from monitor.digest import PAGES, FeedHealth
from monitor.errors import DeliveryError, PermanentDeliveryError, UnconfirmedDeliveryError
from monitor.models import (
    DigestEntry,
    FeedState,
    FeedStatus,
    Hit,
    Item,
    MessageKind,
    OutgoingMessage,
)
from monitor.schedules import Every
from monitor.store import DigestRun
from monitor.trends import recent_counts

log = logging.getLogger(__name__)
UNSETTLED_WINDOW = timedelta(days=1)  # how far back each digest tick looks for unqueued matches
SEND_LEASE = timedelta(minutes=10)  # at least; longer than one message takes (send_lease)
MARK_RETRY = (0.5, 30.0)  # seconds: the first wait before writing a "sent" mark again, the most
UNHEALTHY = (FeedStatus.DEGRADED, FeedStatus.STALE, FeedStatus.BROKEN, FeedStatus.DISABLED)


@dataclass(frozen=True, slots=True)
class DeliveryReport:
    composed: int = 0
    sent: int = 0
    retrying: int = 0
    dead: int = 0
    held_back: int = 0  # recipients whose message could not be rendered (logged)


@dataclass(frozen=True, slots=True)
class Due:
    """A (watchlist, recipient) pair whose digest period has come, with that period's slot."""

    plan: DeliveryPlan
    slot: datetime


async def run_digests(
    app: App, *, force: bool = False, only: Iterable[str] | None = None, flush: bool = False
) -> DeliveryReport:
    """Compose what is due (force: everything pending, now), then send everything stored
    that is due (flush: waiting for a retry or not; see send_ready).

    Database work and rendering run in a thread: on SQLite a write waits for the poll
    writer's transaction, and the event loop must keep fetching meanwhile.
    """
    now = app.clock()
    try:
        composed, held = await asyncio.to_thread(_compose_due, app, now, force, only)
    except Exception:  # what is stored goes out even when composing failed (a bug, say)
        await send_ready(app, flush=flush)
        raise
    sent, retrying, dead = await send_ready(app, flush=flush)
    return DeliveryReport(composed, sent, retrying, dead, held)


def _compose_due(
    app: App, now: datetime, force: bool, only: Iterable[str] | None
) -> tuple[int, int]:
    # A worker that died between storing matches and queueing them (see Store.ingest_many)
    # leaves them to whoever looks next.
    app.store.settle(app.recipients, now, since=now - UNSETTLED_WINDOW)
    due = all_plans(app, only, now) if force else due_plans(app, now, only)
    return compose(app, due, now, record_runs=not force)


def all_plans(app: App, only: Iterable[str] | None, now: datetime) -> list[Due]:
    wanted = set(only) if only else None
    return [
        Due(plan, now)
        for watchlist in app.config.watchlists
        if wanted is None or watchlist.name in wanted
        for plan in app.config.deliveries_of(watchlist)
    ]


def due_plans(app: App, now: datetime, only: Iterable[str] | None = None) -> list[Due]:
    """The (watchlist, recipient) pairs whose latest schedule slot has not been handled.

    A slot missed while monitor was down (or inside quiet hours) is still due afterwards:
    catch-up, once. A new pair (never handled) is due once the feeds it reads have been
    polled since it appeared in the configuration (`first_polls_done`), so its first digest
    shows what they matched, whatever the database saw before. An immediate pair is due
    once its oldest pending match has waited `hold`.
    """
    zone = app.config.zone
    handled = app.store.last_runs()
    waiting = app.store.pending_since()
    states: dict[str, FeedState] | None = None  # read once, only while a pair is new
    hold = timedelta(seconds=app.config.digests.hold)
    due = []
    for due_pair in all_plans(app, only, now):
        plan = due_pair.plan
        key = (plan.watchlist, plan.recipient)
        if plan.quiet and plan.quiet.contains(now, zone):
            continue
        last = handled.get(key)
        if plan.schedule.every is Every.IMMEDIATE:
            since = waiting.get(key)
            if since is not None and now - since >= hold:
                # The slot is the oldest waiting match: workers that see it due together
                # record the same digest_runs row, and only one of them composes. Always
                # after the last slot handled: a match queued late with an older time (a
                # write round's batches share one time, and may commit minutes apart) had
                # the slot of an alert already sent, and its pair was never due again.
                if last is not None and since <= last:
                    since = last + timedelta(microseconds=1)
                due.append(Due(plan, since))
            continue
        slot = plan.schedule.latest_slot(now, zone)
        if last is None:
            if states is None:
                states = {state.name: state for state in app.store.feed_states()}
            if first_polls_done(app, plan.watchlist, app.configured_at.get(key, now), states):
                due.append(Due(plan, slot))
        elif slot > last:
            due.append(Due(plan, slot))
    return due


def first_polls_done(
    app: App, watchlist: str, since: datetime, states: Mapping[str, FeedState]
) -> bool:
    """Whether each feed the watchlist reads has been polled since `since`, when its pair
    appeared in the configuration: items are matched as they are stored, so only those
    polls bring its matches. Not waited for: a feed failing or gone, and one not due within
    `polling.interval` of `since` (its own, longer interval)."""
    config = app.config
    reads = next((w.feeds for w in config.watchlists if w.name == watchlist), ())
    horizon = since + timedelta(seconds=config.polling.interval)
    return all(
        _polled_since(states.get(feed.name), since, horizon)
        for feed in config.feeds
        if feed.enabled and (not reads or feed.name in reads)
    )


def _polled_since(state: FeedState | None, since: datetime, horizon: datetime) -> bool:
    if state is None or (state.last_polled_at is not None and state.last_polled_at >= since):
        return True
    if state.consecutive_failures or state.status is FeedStatus.DISABLED:
        return True
    return state.next_poll_at is None or state.next_poll_at > horizon


def compose(
    app: App, due: Sequence[Due], now: datetime, *, record_runs: bool = True
) -> tuple[int, int]:
    """Render one message per recipient from its due pairs, and claim it. Returns how many,
    and how many recipients' messages could not be rendered (their matches stay pending)."""
    by_recipient = _by_recipient(due)
    planned = plan_messages(app, by_recipient)
    health = feed_health(app) if by_recipient else []
    trends = recent_counts(app.store, {p.plan.watchlist for p in due}, now) if by_recipient else {}
    composed = held = 0
    for recipient, pairs in by_recipient.items():
        contents = planned[recipient]
        runs = (
            [DigestRun(p.plan.watchlist, recipient, p.slot) for p in pairs] if record_runs else []
        )
        # send_empty is for digests: an alert with nothing new is never sent.
        empty_digest = record_runs and _kind(pairs) is MessageKind.DIGEST
        if not contents.is_news and not (app.config.digests.send_empty and empty_digest):
            if runs or contents.covered:  # the period is handled: nothing new to say
                app.store.claim_digest(None, [], now, runs, covered=contents.covered)
            continue
        try:
            message = _render(app, recipient, contents, now, _kind(pairs), health, trends)
        except Exception:  # one recipient's items (a user template's branch) only
            log.exception(
                "could not render the %s for %s (watchlists %s); its matches stay pending, "
                "the other recipients' messages go out",
                _kind(pairs),
                recipient,
                ", ".join(sorted({pair.plan.watchlist for pair in pairs})),
            )
            held += 1
            continue
        if app.store.claim_digest(
            message,
            contents.delivery_ids,
            now,
            runs,
            covered=contents.covered,
            notes=contents.notes,
        ):
            composed += 1
    return composed, held


def plan_messages(app: App, by_recipient: Mapping[str, Sequence[Due]]) -> dict[str, Contents]:
    """What each recipient's message holds: each story once, ranked and tagged, none sent
    before, and the growth of stories sent before (monitor/contents.py)."""
    if not by_recipient:
        return {}
    growth = app.store.pending_growth(by_recipient)  # before the entries: see pending_growth
    lists = {
        w.name
        for w in app.config.watchlists
        if set(app.config.recipients_of(w)) & set(by_recipient)
    }
    pending = _pending(app, lists)
    stories = {
        r: {e.story for e in pending.get(r, [])} | {g.story for g in growth.get(r, [])}
        for r in by_recipient
    }
    earlier = app.store.first_messages(stories)
    rank = ranking([w.name for w in app.config.watchlists])
    planned = {}
    for recipient, pairs in by_recipient.items():
        names = {pair.plan.watchlist for pair in pairs}
        mine = pending.get(recipient, [])
        told = {story: m for (r, story), m in earlier.items() if r == recipient}
        planned[recipient] = plan(
            [e for e in mine if e.watchlist in names],
            [e for e in mine if e.watchlist not in names],
            told,
            growth.get(recipient, []),
            rank,
            _kind(pairs),
        )
    return planned


def _render(
    app: App,
    recipient: str,
    contents: Contents,
    now: datetime,
    kind: MessageKind,
    health: Sequence[FeedHealth],
    trends: Mapping[str, Sequence[int]],
) -> OutgoingMessage:
    """A mail for an address; a short chat message for a channel (chat.py)."""
    channel = app.config.channels().get(recipient)
    if channel is not None:
        message_id = app.renderer.message_id(recipient, contents.entries, now, contents.notes)
        size = limit_of(channel)
        return render_chat(
            message_id, recipient, contents.entries, now, kind, size, contents.growth
        )
    return app.renderer.render(
        recipient,
        contents.entries,
        now,
        kind=kind,
        health=health,
        already=contents.already,
        growth=contents.growth,
        trends=trends,
    )


def _by_recipient(due: Sequence[Due]) -> dict[str, list[Due]]:
    by_recipient: dict[str, list[Due]] = {}
    for pair in due:
        by_recipient.setdefault(pair.plan.recipient, []).append(pair)
    return by_recipient


def _kind(pairs: Sequence[Due]) -> MessageKind:
    """A recipient's message is an alert when every list in it is immediate."""
    alert = pairs and all(p.plan.schedule.every is Every.IMMEDIATE for p in pairs)
    return MessageKind.ALERT if alert else MessageKind.DIGEST


def _pending(app: App, names: set[str]) -> dict[str, list[DigestEntry]]:
    by_recipient: dict[str, list[DigestEntry]] = {}
    if names:
        for recipient, entry in app.store.pending_entries(names):
            by_recipient.setdefault(recipient, []).append(entry)
    return by_recipient


# A full-text feed whose last this many pages all came without text is reported.
FAILING_PAGES = 5


def feed_health(app: App) -> list[FeedHealth]:
    """Configured feeds that are not well, for the digest's health section; and full-text
    feeds whose pages keep coming without text (their items match on teasers only)."""
    configured = {feed.name for feed in app.config.feeds}
    unwell = [
        FeedHealth(state.name, state.status.value, state.last_error or "", state.error_since)
        for state in app.store.feed_states(UNHEALTHY)
        if state.name in configured
    ]
    fulltext = app.config.fulltext_feeds()
    if fulltext:
        unwell += [
            FeedHealth(f.feed, PAGES, f.error, f.since)
            for f in app.store.failing_pages(fulltext, FAILING_PAGES)
        ]
    return unwell


def preview(app: App, only: Iterable[str] | None = None) -> list[OutgoingMessage]:
    """Exactly what `digest --send` would send now, without claiming or marking anything."""
    now = app.clock()
    pairs = _by_recipient(all_plans(app, only, now))
    health = feed_health(app)
    # Read only: the days the daemon has counted (a preview writes nothing).
    names = {due.plan.watchlist for dues in pairs.values() for due in dues}
    trends = recent_counts(app.store, names, now, count=False)
    return [
        _render(app, recipient, contents, now, _kind(pairs[recipient]), health, trends)
        for recipient, contents in plan_messages(app, pairs).items()
        if contents.is_news
    ]


async def send_ready(app: App, *, flush: bool = False) -> tuple[int, int, int]:
    """Hand every stored, unsent message to the mailer; mark each right after its outcome.

    flush: also those waiting for their retry. An operator's `digest --send` after fixing
    the server, as `postqueue -f`: it must not wait for a backoff of up to an hour.
    """
    counts = {"sent": 0, "retrying": 0, "dead": 0}
    lease = send_lease(app)

    async def report(message: OutgoingMessage, error: DeliveryError | None) -> None:
        now = app.clock()
        if error is None:
            await record_sent(app, message, now)
            counts["sent"] += 1
        elif isinstance(error, PermanentDeliveryError):
            await asyncio.to_thread(app.store.mark_dead, message.message_id, str(error), now)
            log.error("recipient refused; dead-lettered: %s", error, extra=_fields(message))
            counts["dead"] += 1
        elif isinstance(error, UnconfirmedDeliveryError) and not await _first_doubt(app, message):
            reason = f"{error}, again after the one resend: {MAYBE_TWICE}"
            await asyncio.to_thread(app.store.mark_dead, message.message_id, reason, now)
            log.error("not sent a third time; dead-lettered: %s", reason, extra=_fields(message))
            counts["dead"] += 1
        else:
            mark_retry = app.store.mark_retry
            delay = _respecting(error.retry_after)
            await asyncio.to_thread(mark_retry, message.message_id, str(error), now, delay)
            log.warning("delivery failed, will retry: %s", error, extra=_fields(message))
            counts["retrying"] += 1

    async def take(message: OutgoingMessage) -> bool:
        """Lease the message right before it is handed over, not the batch up front: a
        batch can outlast any lease (a slow server, a backlog after an outage), and another
        worker would then send the rest too. A message the server accepted whose mark is
        not written yet is never handed over again."""
        if message.message_id in app.accepted:
            return False
        now = app.clock()
        return await asyncio.to_thread(
            app.store.lease_message, message.message_id, app.worker_id, now, now + lease
        )

    for message_id, accepted_at in list(app.accepted.items()):  # a mark left from before
        await _write_sent_mark(app, message_id, accepted_at)
    batch = await asyncio.to_thread(app.store.ready_messages, app.clock(), flush=flush)
    await app.mailer.deliver(batch, report, take)
    return counts["sent"], counts["retrying"], counts["dead"]


MAYBE_TWICE = (
    "it may have arrived twice already, so it is not sent a third time; ask the recipient, "
    "and if it did not arrive, `monitor retry-dead` sends it once more"
)


async def _first_doubt(app: App, message: OutgoingMessage) -> bool:
    """Whether this is the first time a server left the end of this message unanswered."""
    return await asyncio.to_thread(app.store.note_unconfirmed, message.message_id, app.clock())


async def record_sent(app: App, message: OutgoingMessage, accepted_at: datetime) -> None:
    """Mark a message the server accepted as sent; the mark, not the send, is what is
    retried when the database refuses it (locked by another process, say). Until it is
    written the fact lives in app.accepted, and `take` never hands the message over again."""
    app.accepted[message.message_id] = accepted_at
    await _write_sent_mark(app, message.message_id, accepted_at)


async def _write_sent_mark(app: App, message_id: str, accepted_at: datetime) -> None:
    wait, longest = MARK_RETRY
    failures = 0
    while True:
        try:
            await asyncio.to_thread(app.store.mark_sent, message_id, accepted_at)
        except Exception as error:  # the database: locked, gone, full; never a reason to resend
            failures += 1
            if failures == 1:  # once, not at every try: the outcome is logged below
                log.warning(
                    "accepted by the server, but the sent mark could not be written: %s; "
                    "writing it again until it is (the message is not sent again)",
                    str(error).splitlines()[0],
                    extra={"message_id": message_id},
                )
            await asyncio.sleep(wait)
            wait = min(wait * 2, longest)
        else:
            del app.accepted[message_id]
            if failures:
                log.info(
                    "sent mark written after %d failed tries",
                    failures,
                    extra={"message_id": message_id},
                )
            return


def send_lease(app: App) -> timedelta:
    """How long this worker holds a message it hands over: longer than the longest the
    server may take (MAIL, RCPT and DATA each a command timeout, then the wait for the
    reply to the end of the message), so no other worker sends it meanwhile."""
    smtp = app.config.smtp
    if smtp is None:
        return SEND_LEASE
    longest = timedelta(seconds=3 * smtp.timeout + smtp.data_timeout) + timedelta(minutes=1)
    return max(SEND_LEASE, longest)


def _fields(message: OutgoingMessage) -> dict[str, str]:
    return {"recipient": message.recipient, "message_id": message.message_id}


def _respecting(retry_after: float | None) -> Callable[[int], timedelta]:
    """The backoff, but never sooner than the service asked (Retry-After of a 429, 503)."""
    if retry_after is None:
        return retry_delay
    return lambda attempts: max(retry_delay(attempts), timedelta(seconds=retry_after))


def retry_delay(attempts: int) -> timedelta:
    """1 min, 2, 4, ... capped at 1 h, with jitter, so a recovering server is not stampeded."""
    ceiling = min(3600.0, 60.0 * 2 ** min(attempts - 1, 12))
    return timedelta(seconds=random.uniform(ceiling / 2, ceiling))


async def send_test_chat(app: App, name: str) -> str:
    """Send one sample chat message to the channel `name`, bypassing the outbox; the
    service's answer, or DeliveryError saying it."""
    now = app.clock()
    entry = DigestEntry((0,), "test", _sample(now), (Hit("monitor", "title", 0, 7),))
    message_id = app.renderer.message_id(name, [entry], now)
    url = app.config.channels()[name].channel_url()
    message = render_chat(message_id, name, [entry], now, MessageKind.ALERT, limit(url))
    return await ChatSender(app.config.channels()).send(message)


def _sample(now: datetime) -> Item:
    return Item(
        key=f"test:{now.isoformat()}",  # a Message-ID of its own: clients hide repeats
        feed="monitor",
        guid="test",
        url="https://example.org/monitor-test",
        title="monitor test: Grüße von monitor",
        summary="If you can read this, with umlauts intact (äöü ß), delivery works.",
        published=now,
        language="de",
    )


async def send_test_email(app: App, address: str) -> DeliveryError | None:
    """Send one sample digest to address through the configured mailer, bypassing the outbox."""
    now = app.clock()
    sample = Item(
        key=f"test:{now.isoformat()}",  # a Message-ID of its own: clients hide repeats
        feed="monitor",
        guid="test",
        url="https://example.org/monitor-test",
        title="Testnachricht: Grüße von monitor",
        summary="If you can read this, with umlauts intact (äöü ß), delivery works.",
        published=now,
        language="de",
    )
    message = app.renderer.render(address, [DigestEntry((0,), "test", sample)], now)
    outcome: list[DeliveryError | None] = []

    async def report(_: OutgoingMessage, error: DeliveryError | None) -> None:
        outcome.append(error)

    await app.mailer.deliver([message], report)
    return outcome[0] if outcome else DeliveryError("the mailer reported nothing")
