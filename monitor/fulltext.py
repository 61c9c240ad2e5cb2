"""Full text: each new item of a full-text feed gets its article page fetched once, its main
text extracted and matched as the field `body`.

`fetch_pages` is the recipe: claim the pages waiting (store.claim_pages: one worker each,
never twice), fetch each politely (pages.py), extract its text in the parse processes
(extract.py), store it and queue the matches it adds (store.save_page). It runs beside
feed polling, never in its way: the daemon starts it after each poll cycle, with a budget
of `fulltext.per_cycle` pages, and a cycle never waits for it. A page that fails leaves
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
from monitor.pages import PageRefused, Pages
from monitor.parse_pool import ParsePool
from monitor.store import PageOutcome, PageStatus, PageTask

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class PagesReport:
    fetched: int = 0  # pages with an outcome
    extracted: int = 0  # of which with enough text
    matches: int = 0  # matches their texts added
    deferred: int = 0  # pages given back: their host asked to wait

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
        done = await asyncio.gather(*(_bounded(limit, app, pages, task) for task in tasks))
        round_ = sum(done, PagesReport())
        report += round_
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


async def _bounded(limit: asyncio.Semaphore, app: App, pages: Pages, task: PageTask) -> PagesReport:
    async with limit:
        try:
            return await fetch_page(app, pages, task)
        except Exception:  # a bug must not stop the other pages; the claim expires
            log.exception("unexpected error with a page", extra={"url": task.item.url})
            return PagesReport()


async def fetch_page(app: App, pages: Pages, task: PageTask) -> PagesReport:
    """One claimed page: fetched, extracted, stored, matched."""
    origin = _feed_url(app, task.item.feed)
    try:
        outcome = await read_page(pages, app.parse_pool, task.item.url, origin)
    except PageRefused as refused:
        if refused.until is None:
            outcome = PageOutcome(PageStatus.REFUSED, error=str(refused))
        else:  # its host asked to wait: the page waits too, in the queue
            await asyncio.to_thread(app.store.release_page, task.item_id)
            return PagesReport(deferred=1)
    if outcome.status is not PageStatus.TEXT:  # a wall's words are not the article's
        outcome = dataclasses.replace(outcome, body=None)
    save = functools.partial(
        app.store.save_page,
        task.item_id,
        outcome,
        app.matcher.match_with_body,
        app.recipients,
        app.clock(),
    )
    found = await asyncio.to_thread(save)
    if outcome.error:
        log.info("page without text: %s", outcome.error, extra={"url": task.item.url})
    return PagesReport(1, int(outcome.status is PageStatus.TEXT), len(found))


async def read_page(pages: Pages, pool: ParsePool, url: str, origin: str) -> PageOutcome:
    """Fetch and extract one page as the daemon does (also `monitor test --url`); the text
    of a SHORT page too. Raises PageRefused when it may not be fetched now; every other
    failure is in the outcome."""
    if internal := await internal_target(url, origin):
        return PageOutcome(PageStatus.FAILED, error=f"refused: {internal} is an internal address")
    try:
        answer = await pages.fetch(url, origin)
        assert answer.body is not None
        job = functools.partial(
            extract_page, answer.body, answer.headers.get("content-type", ""), answer.url
        )
        extracted: Extracted = await pool.run(job)
    except PageRefused:
        raise
    except (FetchError, ParseError) as error:
        return PageOutcome(PageStatus.FAILED, error=str(error))
    own = extracted.canonical
    if extracted.words < pages.settings.min_words:
        why = f"only {extracted.words} words of text (a consent or bot wall, or a paywall?)"
        return PageOutcome(PageStatus.SHORT, extracted.words, extracted.text, why, own)
    return PageOutcome(PageStatus.TEXT, extracted.words, extracted.text, canonical=own)


def _feed_url(app: App, name: str) -> str:
    """The configured URL of the feed (for the internal-address check)."""
    return next((f.url for f in app.config.feeds if f.name == name), "")
