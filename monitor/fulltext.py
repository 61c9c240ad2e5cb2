"""Full text: each new item of a full-text feed gets its article page fetched once, its main
text extracted and matched as the field `body`.

`fetch_pages` is the recipe: claim the pages waiting (store.claim_pages: one worker each,
never twice), fetch each politely (pages.py), extract its text in the parse processes
(extract.py), store it and queue the matches it adds (store.save_pages, the pages done
meanwhile in one transaction). It runs beside feed polling, never in its way: the daemon
runs it as a job of its own every poll tick, with a budget of `fulltext.per_cycle` pages,
and a poll cycle never waits for it. A page that fails leaves
its item matched on its teaser, as any item of a feed without full text.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
from dataclasses import dataclass
from datetime import timedelta

from monitor.app import App
from monitor.errors import FetchError, ParseError
from monitor.extract import Extracted, extract_page
from monitor.fetch import internal_target
from monitor.models import Match
from monitor.pages import PageRefused, Pages
from monitor.parse_pool import ParsePool
from monitor.store import PageOutcome, PageStatus, PageTask

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class PagesReport:
    fetched: int = 0  # pages with an outcome
    extracted: int = 0  # of which with enough text
    matches: int = 0  # matches their texts added
    deferred: int = 0  # pages given back: their site asked to wait (429, 503) or refused (403)

    def __add__(self, other: PagesReport) -> PagesReport:
        pairs = zip(dataclasses.astuple(self), dataclasses.astuple(other), strict=True)
        return PagesReport(*(a + b for a, b in pairs))


async def fetch_pages(app: App, *, drain: bool = False) -> PagesReport:
    """Fetch, extract, store and match up to `fulltext.per_cycle` waiting pages (`drain`:
    every waiting page, a `per_cycle` at a time; `monitor poll`)."""
    feeds = app.config.fulltext_feeds()
    pages = app.pages
    report = PagesReport()
    while feeds and pages is not None:
        tasks = await asyncio.to_thread(_claim, app, feeds)
        if not tasks:
            break
        limit = asyncio.Semaphore(app.config.polling.concurrency)
        saver = _Saver(app)
        origins = app.config.feed_urls()  # for the internal-address check
        jobs = (
            _fetch_safely(app, pages, saver, task, origins.get(task.item.feed, ""), limit)
            for task in tasks
        )
        done = await asyncio.gather(*jobs)
        round_ = sum(done, PagesReport())
        # A page given back is claimed again by the next round: count it once, as waiting.
        report = dataclasses.replace(report + round_, deferred=round_.deferred)
        if not drain or not round_.fetched:  # only pages whose sites asked to wait are left
            break
    return report


def _claim(app: App, feeds: set[str]) -> list[PageTask]:
    settings, now = app.config.fulltext, app.clock()
    # A claim outlives the page's deadline and its extraction, so it only ever expires
    # when its worker died (then another worker fetches the page again).
    hold = settings.timeout + app.config.polling.parse_timeout + 60
    return app.store.claim_pages(
        feeds,
        since=now - timedelta(seconds=settings.max_age),
        now=now,
        until=now + timedelta(seconds=hold),
        limit=settings.per_cycle,
        backlog=timedelta(seconds=app.config.backlog),
    )


async def _fetch_safely(
    app: App, pages: Pages, saver: _Saver, task: PageTask, origin: str, limit: asyncio.Semaphore
) -> PagesReport:
    try:
        return await fetch_page(app, pages, saver, task, origin, limit)
    except Exception:  # a bug must not stop the other pages; the claim expires
        log.exception("unexpected error with a page", extra={"url": task.item.url})
        return PagesReport()


async def fetch_page(
    app: App, pages: Pages, saver: _Saver, task: PageTask, origin: str, limit: asyncio.Semaphore
) -> PagesReport:
    """One claimed page of a feed at `origin`: fetched and extracted (`limit`: so many at
    once, see read_page), then stored and matched in the saver's next round, which later
    fetches need not wait for."""
    try:
        outcome = await read_page(pages, app.parse_pool, task.item.url, origin, limit)
    except PageRefused as refused:
        if refused.until is None:
            outcome = PageOutcome(PageStatus.REFUSED, error=str(refused))
        else:  # its host asked to wait: the page waits too, in the queue
            await asyncio.to_thread(app.store.release_page, task.item_id)
            return PagesReport(deferred=1)
    found = await saver.save(task.item_id, outcome)
    if outcome.error:
        log.info("page without text: %s", outcome.error, extra={"url": task.item.url})
    return PagesReport(1, int(outcome.status is PageStatus.TEXT), len(found))


async def read_page(
    pages: Pages,
    pool: ParsePool,
    url: str,
    origin: str,
    limit: asyncio.Semaphore | None = None,
) -> PageOutcome:
    """Fetch and extract one page as the daemon does (also `monitor test --url`); the text
    of a SHORT page too. Raises PageRefused when it may not be fetched now; every other
    failure is in the outcome.

    `limit` (polling.concurrency) bounds the pages between their request and their
    extraction, and so the bodies held. A slot is taken only once the page's turn at its
    site has come: a cycle's pages come a feed at a time, mostly from one site, and 20
    slots held while waiting `fulltext.min_gap` apart kept every other site waiting
    (bench_fulltext: 6.8-7.1 s for 466 pages, against 5.6-6.1 s with 60 slots)."""
    if internal := await internal_target(url, origin):
        return PageOutcome(PageStatus.FAILED, error=f"refused: {internal} is an internal address")
    slot = _Slot(limit)
    try:
        answer = await pages.fetch(url, origin, slot.take)
        assert answer.body is not None
        job = functools.partial(
            extract_page, answer.body, answer.headers.get("content-type", ""), answer.url
        )
        extracted: Extracted = await pool.run(job)
    except PageRefused:
        raise
    except (FetchError, ParseError) as error:
        return PageOutcome(PageStatus.FAILED, error=str(error))
    finally:
        slot.release()
    own = extracted.canonical
    if extracted.words < pages.settings.min_words:
        why = f"only {extracted.words} words of text (a consent or bot wall, or a paywall?)"
        return PageOutcome(PageStatus.SHORT, extracted.words, extracted.text, why, own)
    return PageOutcome(PageStatus.TEXT, extracted.words, extracted.text, canonical=own)


class _Slot:
    """A slot of `limit`, once taken (None: no limit)."""

    def __init__(self, limit: asyncio.Semaphore | None) -> None:
        self.limit = limit
        self.held = False

    async def take(self) -> None:
        if self.limit is not None:
            await self.limit.acquire()
            self.held = True

    def release(self) -> None:
        if self.held and self.limit is not None:
            self.limit.release()
            self.held = False


# How long a round of pages waits for more before it is stored. Pages finish one at a time
# (bench_fulltext: 461 rounds for 466 pages without it), and each round pays for its
# transaction, its statements and a thread hop; a page's matches are queued this much later.
_GATHER = 0.1


class _Saver:
    """Stores pages' outcomes in one thread, in one transaction per round: every outcome
    that came while the round before it ran, or within _GATHER (a group commit, as the
    poller's writer does for feeds). A transaction per page, each in a thread of its own,
    took 3.4 ms of the event loop process's CPU per page, a quarter of bench_fulltext's
    main process."""

    def __init__(self, app: App) -> None:
        self.app = app
        self.waiting: list[tuple[int, PageOutcome, asyncio.Future[list[Match]]]] = []
        self.task: asyncio.Task[None] | None = None

    async def save(self, item_id: int, outcome: PageOutcome) -> list[Match]:
        """Store the outcome; the matches its text added."""
        future: asyncio.Future[list[Match]] = asyncio.get_running_loop().create_future()
        self.waiting.append((item_id, outcome, future))
        if self.task is None or self.task.done():
            self.task = asyncio.create_task(self._run())
        return await future

    async def _run(self) -> None:
        while self.waiting:
            await asyncio.sleep(_GATHER)  # for the pages finishing meanwhile
            round_, self.waiting = self.waiting, []
            try:
                found = await asyncio.to_thread(self._store, [(i, o) for i, o, _ in round_])
            except Exception as error:
                if len(round_) == 1:
                    _settle(round_[0][2], error=error)
                    continue
                for one in round_:  # one page's failure must not lose the others
                    await self._alone(*one)
                continue
            for (_, _, future), matches in zip(round_, found, strict=True):
                _settle(future, matches)

    async def _alone(
        self, item_id: int, outcome: PageOutcome, future: asyncio.Future[list[Match]]
    ) -> None:
        try:
            _settle(future, (await asyncio.to_thread(self._store, [(item_id, outcome)]))[0])
        except Exception as error:
            _settle(future, error=error)

    def _store(self, outcomes: list[tuple[int, PageOutcome]]) -> list[list[Match]]:
        app = self.app
        match = app.matcher.match_with_body
        return app.store.save_pages(outcomes, match, app.recipients, app.clock())


def _settle(
    future: asyncio.Future[list[Match]],
    matches: list[Match] | None = None,
    error: Exception | None = None,
) -> None:
    """Hand a stored page's matches (or the error) to its fetch, unless it was cancelled."""
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(matches or [])
