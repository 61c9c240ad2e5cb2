"""Polling: fetch -> parse -> store/dedupe -> match -> outbox, for each due feed.

`poll_feed` is the recipe for one feed; `poll_due` leases due feeds from the store in small
batches and runs `poll_feed` on them concurrently, so several workers sharing one database
split the work and no feed is polled twice at once. A failing feed is recorded, backed off
and reported, never dropped; its health state changes are logged once each.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import hashlib
import logging
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Concatenate, ParamSpec, TypeVar

from monitor import feeds as rules
from monitor.app import App
from monitor.config import FeedConfig
from monitor.errors import FetchError, ParseError
from monitor.fetch import FetchResult, HostBlocked
from monitor.models import FeedState, FeedUpdate, Item, Match
from monitor.outcomes import PollReport, changed, deferred, failed, unchanged
from monitor.parse import ParsedFeed, parse_feed
from monitor.store import Claim, IngestResult, database_trouble

log = logging.getLogger(__name__)
T = TypeVar("T")
P = ParamSpec("P")

_FEEDS_PER_TRANSACTION = 32  # bounds how long the writer holds SQLite's write lock
# A claim costs about 2 ms beyond its rows on PostgreSQL (round trips, the statement's own
# work): two windows per claim halve the claims of a cycle (bench_workers: 16 instead of 31
# per 600-feed warm cycle, lease calls 7-8 % of it instead of 9-11 %).
_CLAIM_WINDOWS = 2
# While the parse processes have more work queued than they can start, a writer round with
# fewer feeds' items than _GATHER_FEEDS waits (up to _GATHER_SECONDS) for more: the fixed
# cost of a round (three transactions, each statement's overhead) is then shared. With no
# backlog the round runs at once, so that the polls it holds free their places in the window
# and the parse processes get work. Alerts wait at most that much longer.
_GATHER_FEEDS = 16
_GATHER_SECONDS = 0.1
_GATHER_CHECK = 0.01  # seconds between looks at the backlog while gathering
# A round of poll outcomes alone (a warm cycle's: every feed unchanged) waits for more for
# up to as long as the last round took, at most _GATHER_OUTCOMES_SECONDS: the round's fixed
# cost (on PostgreSQL a few round trips, milliseconds; on SQLite under one) is then shared
# by about twice as many feeds, and an outcome's time in the writer at most doubles.
_GATHER_OUTCOMES_SECONDS = 0.02
# A host busy this long without an answer (hung, or timing out) is not making progress:
# the polls waiting for it leave the window, so other hosts' feeds are claimed meanwhile (a
# hung host's 40 due feeds held a 20-feed window until the first of them timed out). With
# polls in flight, a cycle looks at its window at least this often: that sends no event.
_UNANSWERED_SECONDS = 2.0


@dataclass(frozen=True, slots=True)
class CycleReport:
    polls: tuple[PollReport, ...]

    @property
    def new_items(self) -> int:
        return sum(p.new_items for p in self.polls)

    @property
    def matches(self) -> int:
        return sum(p.matches for p in self.polls)

    @property
    def backlog(self) -> int:
        return sum(p.backlog for p in self.polls)

    @property
    def failed(self) -> int:
        return sum(1 for p in self.polls if p.error)


async def poll_due(
    app: App, names: Iterable[str] | None = None, force: bool = False, *, owner: str | None = None
) -> CycleReport:
    """Poll every due feed (or the named ones; force: whether due or not) concurrently."""
    configured = {feed.name: feed for feed in app.config.feeds if feed.enabled}
    wanted = None if names is None else [n for n in names if n in configured]
    if not configured or wanted == []:
        return CycleReport(())
    cycle = _Cycle(app, owner or app.worker_id, configured)
    return CycleReport(tuple(await cycle.run(wanted, force)))


@dataclass
class _Cycle:
    """One pass over the due feeds: claim a batch whenever the window has room, poll it."""

    app: App
    owner: str
    configured: dict[str, FeedConfig]
    in_flight: dict[asyncio.Task[PollReport], str] = field(default_factory=dict)  # -> feed
    finished: list[asyncio.Task[PollReport]] = field(default_factory=list)  # not yet collected
    polled: asyncio.Event = field(default_factory=asyncio.Event)  # set as each poll ends
    host_load: dict[str, int] = field(default_factory=dict)  # feeds in flight per leased host
    host_blocks: dict[str, datetime] = field(default_factory=dict)
    # Hosts with no feed in flight, still leased: (last request, blocked until). The next
    # claim releases them (or the next lease renewal, if no claim came), and often leases
    # them again at once: a release per host and window would cost a statement each.
    idle: dict[str, tuple[datetime, datetime | None]] = field(default_factory=dict)
    exhausted: bool = False  # no claim is coming: idle hosts are released at once
    renewing: bool = True  # until the cycle ends: a renewal still queued then does nothing
    cycle: str = field(default_factory=lambda: uuid.uuid4().hex)  # marks the feeds it claimed
    writer: _Writer = field(init=False)

    def __post_init__(self) -> None:
        self.writer = _Writer(self.app)

    async def run(self, wanted: list[str] | None, force: bool) -> list[PollReport]:
        """Poll the due feeds (or the `wanted` ones), each at most once, even when forced:
        the claims mark what they took with this cycle."""
        batch = self.app.config.polling.concurrency
        remaining = None if wanted is None else set(wanted)
        reports: list[PollReport] = []
        renewer = asyncio.create_task(self._renew_leases())
        try:
            while True:
                if not self.exhausted and self._working() <= batch:
                    # Once a window (the concurrency) has room, claim _CLAIM_WINDOWS: a claimed
                    # feed waits in this process for its turn at its host, and must be polled
                    # well within its lease. Polls that only wait for the writer (which
                    # gathers several feeds per round) leave the window, so that the fetches
                    # and parses never run dry meanwhile.
                    names = None if remaining is None else sorted(remaining)
                    claimed = await self._claim(names, _CLAIM_WINDOWS * batch, force)
                    if remaining is not None:
                        remaining.difference_update(claimed)
                    self.exhausted = not claimed or remaining == set()
                    if self.exhausted:
                        await self._release_idle()
                if not self.in_flight:
                    if self.exhausted:
                        return reports
                    continue  # the claim took only feeds this worker does not poll
                for task in await self._next_done():
                    del self.in_flight[task]
                    reports.append(task.result())
        except asyncio.CancelledError:  # shutdown, after its grace period: stop the polls too
            for task in self.in_flight:
                task.cancel()
            raise
        finally:  # a failed claim or a shutdown: no claim is coming to release the idle hosts
            try:
                await self._wind_down()
            finally:
                self.renewing = False
                renewer.cancel()

    def _working(self) -> int:
        """The polls that fill the window: those in flight, less those only waiting for
        the writer (which gathers several feeds per round) and those waiting at a host that
        does not answer."""
        stuck = self.app.fetcher.waiting_at_unanswering_hosts(_UNANSWERED_SECONDS)
        return len(self.in_flight) - self.writer.holding - stuck

    async def _next_done(self) -> list[asyncio.Task[PollReport]]:
        """The polls done by now, once one is, or once a poll is handed to the writer while
        a claim may follow (the window has room then). Each poll reports its end itself
        (_collect): waiting on every poll in flight each time cost a pass over all of them
        per poll done (about 0.1 s of the event loop's CPU in a cold cycle of 1,000 feeds)."""
        if not self.finished:
            self.polled.clear()
            waiting = {asyncio.ensure_future(self.polled.wait())}
            if not self.exhausted:
                self.writer.handed.clear()
                waiting.add(asyncio.ensure_future(self.writer.handed.wait()))
            try:
                look_again = None if self.exhausted else _UNANSWERED_SECONDS
                await asyncio.wait(waiting, timeout=look_again, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for waiter in waiting:
                    waiter.cancel()
        done, self.finished = self.finished, []
        return done

    def _collect(self, task: asyncio.Task[PollReport]) -> None:
        self.finished.append(task)
        self.polled.set()

    async def _renew_leases(self) -> None:
        """Every third of the lease, extend this cycle's leases: a feed waiting for its turn
        at a slow host, or a long poll, must not lose its lease (and be polled by a second
        worker) while this worker is alive. A worker that dies or hangs stops renewing."""
        lease = self.app.config.polling.lease
        while True:
            await asyncio.sleep(lease / 3)
            names, busy = sorted(self.in_flight.values()), sorted(self.host_load)
            until = self.app.clock() + timedelta(seconds=lease)
            renew = functools.partial(self._renew, names, busy, until)
            try:
                # Idle hosts are not renewed but given back: no claim may come for a while
                # (the window stays full at a slow host), and other workers may want them.
                await self._release_idle()
                if names or busy:
                    await self.writer.call(renew)
            except Exception:  # the database is away: the next renewal tries again
                log.warning("could not renew the leases of %d feeds", len(names), exc_info=True)

    def _renew(self, names: list[str], busy: list[str], until: datetime) -> None:
        """store.renew_leases, in the writer's thread, unless the cycle ended meanwhile."""
        if self.renewing:
            self.app.store.renew_leases(self.owner, names, busy, until)

    async def _wind_down(self) -> None:
        """After a failed or cancelled cycle: let the polls end (each records its outcome
        and gives its host back), then give back the idle hosts."""
        self.exhausted = True
        if self.in_flight:
            await asyncio.gather(*self.in_flight, return_exceptions=True)
        if idle := sorted(self.idle):
            try:
                await asyncio.shield(self._release_idle())
            except Exception:  # the database is gone: the leases expire
                log.warning("could not release hosts %s", ", ".join(idle))

    async def _claim(self, wanted: list[str] | None, limit: int, force: bool) -> list[str]:
        """Lease up to `limit` feeds and start polling them; return their names."""
        store, now = self.app.store, self.app.clock()
        lease_until = now + timedelta(seconds=self.app.config.polling.lease)
        idle, self.idle = self.idle, {}
        releases = [(host, self.owner, at, block) for host, (at, block) in idle.items()]
        claim_feeds = functools.partial(
            store.claim_feeds,
            self.owner,
            now,
            lease_until,
            limit,
            wanted,
            force,
            releases,
            cycle=self.cycle,
        )
        call = asyncio.ensure_future(self.writer.call(claim_feeds))
        try:
            claim = await asyncio.shield(call)
        except asyncio.CancelledError:  # the writer finishes a claim it has begun: undo it
            try:
                await self._give_back(call, idle)
            except Exception:  # the database is gone: the leases expire
                log.warning("could not give back a cancelled claim", exc_info=True)
            raise
        except BaseException:
            # Maybe still leased (on PostgreSQL the releases commit before the claim runs):
            # released with the next claim, or at the end; a repeated release is harmless.
            self.idle.update(idle)
            raise
        states = [state for state in claim.feeds if state.name in self.configured]
        for host in {state.host for state in states} & set(self.idle):
            # Went idle while this claim ran, and leased again by it: busy, not idle. A block
            # it reported meanwhile waits for its next release.
            _, block = self.idle.pop(host)
            if block is not None:
                self.host_blocks[host] = max(block, self.host_blocks.get(host, block))
        new_hosts = {state.host for state in states} - set(self.host_load)
        for state in states:
            self.host_load[state.host] = self.host_load.get(state.host, 0) + 1
        self._hold_off({host: claim.last_requests.get(host) for host in new_hosts}, now)
        for state in states:
            task = asyncio.create_task(self._poll(state))
            task.add_done_callback(self._collect)
            self.in_flight[task] = state.name
        if len(states) < len(claim.feeds):
            await self._hand_over(claim, now)
        return [state.name for state in claim.feeds]

    async def _hand_over(self, claim: Claim, now: datetime) -> None:
        """Give back at once the claimed feeds this cycle does not poll, for the workers
        whose configuration does (this cycle does not claim them again): another worker's
        config, or a reload here since the cycle began, has more feeds."""
        unknown = sorted(state.name for state in claim.feeds if state.name not in self.configured)
        reloaded = self.app.config.polled_feeds()
        others = [n for n in unknown if n not in reloaded and n not in self.app.foreign_feeds]
        self.app.foreign_feeds.update(others)
        if others:
            log.warning(
                "feeds %s are polled by another worker's configuration, not this one's: "
                "left to that worker (all workers should read the same config)",
                ", ".join(others),
            )
        give_back = functools.partial(self.app.store.give_back, self.owner, unknown, [], now)
        try:  # shielded: a shutdown meanwhile must not leave them leased
            await asyncio.shield(self.writer.call(give_back))
        except Exception:  # the database is away: their leases expire
            log.warning("could not give back feeds %s", ", ".join(unknown), exc_info=True)
        finally:
            for host in {state.host for state in claim.feeds} - set(self.host_load):
                # Leased by the claim for nothing: idle now, released as the others are.
                self.idle.setdefault(host, (claim.last_requests.get(host) or now, None))

    async def _give_back(
        self, call: asyncio.Future[Claim], idle: dict[str, tuple[datetime, datetime | None]]
    ) -> None:
        """Release what a claim whose cycle was cancelled took, once it has run: the feeds
        would otherwise wait, unpolled, for their lease to expire."""
        try:
            claim = await call
        except Exception:  # it failed: the idle hosts it carried may still be leased
            self.idle.update(idle)
            return
        names = [state.name for state in claim.feeds]
        give_back = self.app.store.give_back
        now = self.app.clock()
        await self.writer.call(
            functools.partial(give_back, self.owner, names, sorted(claim.last_requests), now)
        )

    def _hold_off(self, last_requests: Mapping[str, datetime | None], now: datetime) -> None:
        """Keep the minimum gap after another worker's last request to the same host."""
        gap = self.app.config.polling.min_gap
        for host, at in last_requests.items():
            if at is not None and (wait := gap - (now - at).total_seconds()) > 0:
                self.app.fetcher.hold_off(host, min(wait, gap))

    async def _poll(self, state: FeedState) -> PollReport:
        try:
            feed = self.configured[state.name]
            report = await poll_feed(self.app, feed, state, self.writer)
        except BaseException:  # cancelled: give the feed back unpolled, then its host
            give_back = self.app.store.give_back
            now = self.app.clock()
            with contextlib.suppress(Exception):
                # After the poll's outcome, if it queued one: by the writer that records it.
                await self.writer.call(
                    functools.partial(give_back, self.owner, [state.name], [], now),
                    after_outcomes=True,
                )
            await self._release(state.host)
            raise
        if (block := report.host_blocked_until) is not None:  # before the release records it
            self.host_blocks[state.host] = max(block, self.host_blocks.get(state.host, block))
        await self._release(state.host)
        return report

    async def _release(self, host: str) -> None:
        self.host_load[host] -= 1
        if self.host_load[host] == 0:
            del self.host_load[host]
            self.idle[host] = (self.app.clock(), self.host_blocks.pop(host, None))
            if self.exhausted:
                await self._release_idle()

    async def _release_idle(self) -> None:
        """Give back the idle hosts now (store.release_host), with no claim to carry them."""
        idle, self.idle = self.idle, {}
        await asyncio.gather(
            *(self.writer.release(self.owner, h, at, block) for h, (at, block) in idle.items())
        )


@dataclass
class _Writer:
    """A cycle's database work, run in one thread, all that waits in each round.

    SQLite has one write lock. Writes from several threads would queue for it in SQLite's
    busy handler, which sleeps up to 100 ms between tries, and a write from the event loop
    would stall every fetch meanwhile. Here the event loop only queues work and keeps
    fetching and parsing; each round stores up to _FEEDS_PER_TRANSACTION feeds' items in
    one transaction (a commit rewrites every page the LSH band inserts touched, spread over
    the whole index, so many feeds share one), then every waiting poll outcome in another.
    A job is queued only once what it depends on is done, so a round may run them in any
    order.

    On PostgreSQL the lease jobs (claims, renewals, host releases, give-backs) go to a
    second writer, `leases`, with a thread of its own: a claim waited for the round running
    before it, 50 ms and more, while the window emptied and the parse process ran dry
    (bench_workers' poll pipeline: a 40 ms gap every 200 ms; its cold cycle, five
    interleaved pairs, 3.44-3.55 s -> 3.14-3.26 s, SQLite's 2.80-2.87 s). The two writers
    share feed rows (outcomes, renewals, give-backs: each locks them in name order) and host
    rows (only lease jobs lock those; an outcome of a redirect may wait for one, holding no
    host row): no cycle of waits. A poll's give-back after a cancel goes with the outcomes,
    after its own. On SQLite a second writer would only queue for the one write lock.
    """

    app: App
    jobs: list[_Job] = field(default_factory=list)
    task: asyncio.Task[None] | None = None
    round: list[_Job] = field(default_factory=list)  # the jobs the thread is running
    handed: asyncio.Event = field(default_factory=asyncio.Event)  # set by each poll's job
    last_round: float = 0.0  # seconds the thread took for the last round
    leases: _Writer | None = None  # PostgreSQL: the writer of lease jobs
    of_leases: bool = False  # this is that writer

    def __post_init__(self) -> None:
        if not self.of_leases and not self.app.store.is_sqlite:
            self.leases = _Writer(self.app, of_leases=True)

    @property
    def holding(self) -> int:
        """Polls waiting for the writer: done with the network and their parse."""
        return sum(job.kind in ("ingest", "finish") for job in (*self.round, *self.jobs))

    async def ingest(self, items: Sequence[Item], backlog_before: datetime) -> IngestResult:
        """Store one feed's items; those dated before `backlog_before` alert no one."""
        result: IngestResult = await self._queue("ingest", (items, backlog_before))
        return result

    async def finish(self, name: str, update: FeedUpdate) -> None:
        """Record a poll's outcome and release the feed's lease."""
        await self._queue("finish", (name, update))

    async def release(
        self, owner: str, host: str, last_request: datetime, blocked_until: datetime | None
    ) -> None:
        """Give a host back (store.release_host) once this worker's polls of it are done."""
        await self._lane()._queue("release", (host, owner, last_request, blocked_until))

    async def call(self, function: Callable[[], T], after_outcomes: bool = False) -> T:
        """Run a lease job (a claim, a renewal, a give-back) in a writer's thread; with
        `after_outcomes`, in this writer's, after the outcomes queued before it."""
        writer = self if after_outcomes else self._lane()
        result: T = await writer._queue("call", function)
        return result

    def _lane(self) -> _Writer:
        """The writer of lease jobs."""
        return self.leases or self

    async def _queue(self, kind: str, payload: Any) -> Any:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.jobs.append(_Job(kind, payload, future))
        if kind in ("ingest", "finish"):
            self.handed.set()
        if self.task is None or self.task.done():
            self.task = asyncio.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        taken: list[_Job] = []
        try:
            while self.jobs:
                await self._gather()
                taken, self.jobs = _one_round(self.jobs)
                self.round = taken
                began = time.monotonic()
                try:
                    results = await asyncio.to_thread(self._round, taken)
                finally:
                    self.round = []
                    self.last_round = time.monotonic() - began
                for job, result in zip(taken, results, strict=True):
                    if job.future.done():  # its poll was cancelled
                        continue
                    if isinstance(result, _Failed):
                        job.future.set_exception(result.error)
                    else:
                        job.future.set_result(result)
                taken = []
        finally:  # cancelled: the polls waiting are cancelled too, never left hanging
            for job in taken + self.jobs:
                if not job.future.done():
                    job.future.cancel()

    async def _gather(self) -> None:
        """Wait while more work is surely on its way and this round would be small: feeds'
        items while the parse processes are backlogged; poll outcomes alone, briefly (see
        _GATHER_OUTCOMES_SECONDS). Never while a claim waits: the feeds it brings keep the
        fetches and parses going."""
        started = time.monotonic()
        outcomes_for = min(self.last_round, _GATHER_OUTCOMES_SECONDS)
        while not any(job.kind == "call" for job in self.jobs):
            waited = time.monotonic() - started
            ingests = sum(job.kind == "ingest" for job in self.jobs)
            if self.app.parse_pool.backlogged and not self.of_leases:
                if ingests >= _GATHER_FEEDS or waited >= _GATHER_SECONDS:
                    return
                await asyncio.sleep(_GATHER_CHECK)
                continue
            if ingests or len(self.jobs) >= _GATHER_FEEDS or waited >= outcomes_for:
                return
            await asyncio.sleep(min(_GATHER_CHECK, outcomes_for - waited))

    def _round(self, jobs: list[_Job]) -> list[Any]:
        """Each job's result (or _Failed), in the jobs' order."""
        store = self.app.store
        results: list[Any] = [None] * len(jobs)
        ingests = [n for n, job in enumerate(jobs) if job.kind == "ingest"]
        if ingests:
            payloads = [jobs[n].payload for n in ingests]
            cutoffs = {items[0].feed: cutoff for items, cutoff in payloads if items}
            batches = [items for items, _ in payloads]
            match = news_only(self.app.matcher.match, cutoffs)
            # Known items (another feed's copy, a revision) are matched with their stored page.
            body = news_only(self.app.matcher.match_with_body, cutoffs)
            recipients, now = self.app.recipients, self.app.clock()
            try:
                stored: list[Any] = store.ingest_many(
                    batches, match, recipients, now, match_body=body
                )
            except Exception:  # one feed's failure must not fail the others: each on its own
                one = functools.partial(store.ingest, match_body=body)
                stored = [_attempt(one, b, match, recipients, now) for b in batches]
            for n, result in zip(ingests, stored, strict=True):
                results[n] = result
        outcomes = [n for n, job in enumerate(jobs) if job.kind == "finish"]
        releases = [n for n, job in enumerate(jobs) if job.kind == "release"]
        if outcomes or releases:
            try:  # one transaction
                store.finish_polls(
                    [jobs[n].payload for n in outcomes], [jobs[n].payload for n in releases]
                )
            except Exception:  # each on its own, so that one bad job fails alone
                for n in outcomes:
                    results[n] = _attempt(store.finish_poll, *jobs[n].payload)
                for n in releases:
                    results[n] = _attempt(store.release_host, *jobs[n].payload)
        for n, job in enumerate(jobs):
            if job.kind == "call":
                results[n] = _attempt(job.payload)
        return results


@dataclass(frozen=True, slots=True)
class _Job:
    # ingest: (items, backlog cutoff) | finish: (name, FeedUpdate) | release: (host,
    # owner, last request, blocked until) | call: a function of no arguments
    kind: str
    payload: Any
    future: asyncio.Future[Any]


def news_only(
    match: Callable[Concatenate[Item, P], Sequence[Match]], cutoffs: Mapping[str, datetime]
) -> Callable[Concatenate[Item, P], Sequence[Match]]:
    """`match` for news only: an item dated before its feed's backlog cutoff matches no
    watchlist, so it is stored (deduplicated, searchable with `test --stored`) and alerts no
    one, not even later as another outlet's copy (the store matches those with the stored
    item's date) or as an updated text."""

    def matched(item: Item, /, *args: P.args, **kwargs: P.kwargs) -> Sequence[Match]:
        cutoff = cutoffs.get(item.feed)
        if cutoff is not None and item.published < cutoff:
            return ()
        return match(item, *args, **kwargs)

    return matched


def _one_round(jobs: list[_Job]) -> tuple[list[_Job], list[_Job]]:
    """(this round's jobs, the rest): every job but the feeds' items past the first
    _FEEDS_PER_TRANSACTION, which wait for the next round."""
    taken: list[_Job] = []
    rest: list[_Job] = []
    ingests = 0
    for job in jobs:
        if job.kind == "ingest":
            ingests += 1
            if ingests > _FEEDS_PER_TRANSACTION:
                rest.append(job)
                continue
        taken.append(job)
    return taken, rest


@dataclass(frozen=True, slots=True)
class _Failed:
    error: BaseException


def _attempt(function: Callable[..., Any], *args: Any) -> Any:
    """function(*args), or its exception wrapped in _Failed."""
    try:
        return function(*args)
    except Exception as error:
        return _Failed(error)


async def poll_feed(
    app: App, feed: FeedConfig, state: FeedState, writer: _Writer | None = None
) -> PollReport:
    """Fetch one feed, ingest what is new, record the outcome and release the feed's lease."""
    writer = writer or _Writer(app)
    started, fetched = time.monotonic(), None
    try:
        conditional = _conditional(state)
        result = await _fetch(app, feed, state, conditional)
        fetched = time.monotonic() - started
        backlog_before = rules.backlog_cutoff(
            app.clock(), state.last_success_at, app.config.backlog
        )
        try:
            body_hash = _hash(result.body)
            parsed = await _parse_if_changed(app, feed, state, result, body_hash)
            retried = False
        except ParseError as error:
            if not conditional:
                raise
            # A 200 without a feed to a conditional request (typically an empty body, a
            # CGI's "nothing changed"): the validators may be to blame, and the lying-
            # validator check only looks after a streak of unchanged answers. Ask once more
            # without them; if that parses, they are dropped below.
            log.info(
                "conditional request answered with no feed (%s); asking again without "
                "ETag/Last-Modified",
                rules.error_text(str(error)),
                extra={"feed": feed.name, "url": state.url},
            )
            result = await _fetch(app, feed, state, conditional=False)
            body_hash = _hash(result.body)
            parsed = await _parse_if_changed(app, feed, state, result, body_hash)
            retried = True
        if parsed is None:
            if _verifying(state) and result.body is not None:
                # The document has not changed for a while, and came whole: its items' dedupe
                # keys are seen again. They are refreshed only when seen in a parsed document,
                # and must not expire while the feed still lists its (maybe pruned) items, or
                # those alert again once it changes.
                await writer.ingest((await _parse(app, feed, result)).items, backlog_before)
            update, report = unchanged(app, feed, state, result)
        else:
            found = await writer.ingest(parsed.items, backlog_before)
            old = _log_backlog(feed, found, backlog_before)
            update = changed(app, feed, state, result, parsed, len(found.new_items))
            update = dataclasses.replace(update, body_hash=body_hash)
            report = PollReport(feed.name, len(found.new_items), len(found.matches), old)
        if retried and update.ignore_validators is not True:
            log.warning(
                "server answers a conditional request with no feed, the same request "
                "without validators with the feed; polling this feed without them from now on",
                extra={"feed": feed.name, "url": state.url},
            )
            update = dataclasses.replace(update, ignore_validators=True)
    except HostBlocked as blocked:
        update, report = deferred(feed, state, blocked.until)
    except (FetchError, ParseError) as error:
        update, report = failed(app, feed, state, error)
    except Exception as error:  # a bug must not stop the other feeds
        if database_trouble(error):  # not the feed's: the cycle fails, and says so once
            raise
        log.exception("unexpected error while polling", extra={"feed": feed.name, "url": state.url})
        update, report = failed(app, feed, state, FetchError(f"internal error: {error!r}"))
    await writer.finish(feed.name, update)
    return dataclasses.replace(report, fetch_seconds=fetched)


def _log_backlog(feed: FeedConfig, found: IngestResult, backlog_before: datetime) -> int:
    """How many new items are backlog, said in the log once per poll."""
    old = sum(1 for item in found.new_items if item.published < backlog_before)
    if old:
        log.info(
            "%d new items dated before %s (older than `backlog`) stored without alerts",
            old,
            f"{backlog_before:%Y-%m-%d %H:%M} UTC",
            extra={"feed": feed.name},
        )
    return old


def _verifying(state: FeedState) -> bool:
    """Every VERIFY_EVERY-th poll of an unchanged feed goes without validators, to catch a
    server that answers 304 although its document changed."""
    return state.unchanged_streak > 0 and state.unchanged_streak % rules.VERIFY_EVERY == 0


def _conditional(state: FeedState) -> bool:
    """Whether this poll sends the feed's validators."""
    has_validators = bool(state.etag or state.last_modified)
    return has_validators and not (state.ignore_validators or _verifying(state))


async def _fetch(app: App, feed: FeedConfig, state: FeedState, conditional: bool) -> FetchResult:
    """The configured URL (not an adopted one) decides whether redirects may lead to
    internal addresses (fetch.py)."""
    etag, modified = (state.etag, state.last_modified) if conditional else (None, None)
    return await app.fetcher.fetch(state.url, etag, modified, clock=app.clock, origin=feed.url)


async def _parse_if_changed(
    app: App, feed: FeedConfig, state: FeedState, result: FetchResult, body_hash: str | None
) -> ParsedFeed | None:
    """The parsed document, or None when it is the one stored last (304, or the same bytes)."""
    if result.not_modified or body_hash == state.body_hash:
        return None
    return await _parse(app, feed, result)


async def _parse(app: App, feed: FeedConfig, result: FetchResult) -> ParsedFeed:
    assert result.body is not None
    job = functools.partial(
        parse_feed,
        result.body,
        feed_name=feed.name,
        url=result.url,
        headers=dict(result.headers),
        language=feed.language,
        now=app.clock(),
        max_items=app.config.polling.max_items,
    )
    return await app.parse_pool.run(job)


def _hash(body: bytes | None) -> str | None:
    return hashlib.sha256(body).hexdigest() if body is not None else None
