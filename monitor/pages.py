"""Article pages, fetched politely: robots.txt, a gap per site, backing off. Owns protego.

Pages go over the feeds' HTTP client (fetch.py) and take the same per-host slots as that
host's feeds; on top of that, per site (scheme://host[:port]) and across every worker (the
store's page_sites is the truth between processes, store/sites.py):

- page requests start at least `fulltext.min_gap` seconds apart: a worker takes a turn
  (a compare-and-set in the store) before each request, and a loser waits until the turn
  it was told;
- robots.txt is honoured, read by one worker and kept in the store for
  `fulltext.robots_ttl` (unreachable or 5xx = allowed; 401/403 = all disallowed: a site
  that hides its rules is taken to refuse);
- a 403, 429 or 503 on a page stops page requests to the site until its Retry-After (as
  given), else for an hour, doubling with each such answer in a row up to a day; a page
  answered 2xx ends the row.

None of this touches the host's feeds. Within a process an asyncio.Lock per site keeps its
requests in line, so the store sees one worker's requests one at a time. On SQLite, where
one process has the database (lock.py), the turns are kept in that process: a transaction
per page would only cost it CPU (bench_fulltext: 0.4-0.6 s of the main process's per 466
pages); back-offs and robots.txt are still kept in the store, for the next start. (`monitor
test --url`, which takes no lock, keeps its own gap there: one request made by hand.)
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, tzinfo
from urllib.parse import urlsplit, urlunsplit

from protego import Protego

from monitor import feeds as rules
from monitor.config import FulltextConfig
from monitor.errors import FetchError
from monitor.fetch import Fetcher, FetchResult, HostBlocked
from monitor.store import PageSite, SiteStore

log = logging.getLogger(__name__)

ROBOTS_AGENT = "monitor"  # the product token of the fetcher's User-Agent
BACK_OFF_STATUSES = frozenset({403, 429, 503})
FIRST_BACK_OFF = timedelta(hours=1)  # without a Retry-After; doubled per answer in a row
LAST_BACK_OFF = timedelta(hours=24)
_ROBOTS_MAX = 512 * 1024  # Google reads the first 500 KiB
ALLOW_ALL = ""  # the robots.txt kept for a site that has none or cannot say
DISALLOW_ALL = "User-agent: *\nDisallow: /\n"  # ... for one that refuses to show it (401/403)


class PageRefused(FetchError):
    """No request for the page was sent, for a reason that ends (`until`) or not (robots)."""

    def __init__(self, message: str, until: datetime | None = None) -> None:
        super().__init__(message)
        self.until = until


@dataclass
class _Site:
    """What this process keeps of a site: its turn in line, and the rules last parsed."""

    turn: asyncio.Lock = field(default_factory=asyncio.Lock)
    seen: PageSite | None = None  # as the store last said
    next_at: datetime | None = None  # when the next turn starts, if turns are this process's
    rules_at: datetime | None = None  # robots_at of the rules parsed
    rules: Protego | bool = True  # True: all allowed (nothing to parse)


class Pages:
    """Fetch article pages as a polite crawler; one per process, kept across cycles."""

    def __init__(
        self,
        fetcher: Fetcher,
        settings: FulltextConfig,
        clock: Callable[[], datetime],
        sites: SiteStore,
        shared: bool | None = None,
    ) -> None:
        """`shared`: other processes fetch pages with this store, so turns are taken in it
        (default: unless it is SQLite, which one process has)."""
        self.fetcher = fetcher
        self.settings = settings
        self.clock = clock
        self.sites = sites
        self.shared = not sites.is_sqlite if shared is None else shared
        self._sites: dict[str, _Site] = {}

    async def fetch(
        self,
        url: str,
        origin: str,
        before_request: Callable[[], Awaitable[None]] | None = None,
    ) -> FetchResult:
        """The page at url (origin: the feed's URL, for the redirect check). PageRefused if
        robots.txt or a back-off forbids it now; FetchError if it failed. `before_request`
        is awaited once the page's turn has come, just before its request (fulltext.py
        takes a fetch slot there: a page waiting for its site's turn holds none)."""
        key = _site(url)
        here = self._sites.setdefault(key, _Site())
        async with here.turn:  # one page request at a time per site from this process
            state = here.seen
            if state is None or self._robots_stale(state):  # else a turn says what is new
                state = here.seen = await asyncio.to_thread(self.sites.page_site, key)
            self._refuse_if_blocked(state)
            has_turn = False
            if self._robots_stale(state):
                state, has_turn = await self._take_turn(here, key), True
                if self._robots_stale(state):  # no other worker read them meanwhile
                    state, has_turn = await self._read_robots(key, origin), False
                    here.seen = state
            if not self._allows(here, state, url):
                raise PageRefused(f"robots.txt of {key} disallows this page")
            if not has_turn:
                state = await self._take_turn(here, key)
            if before_request is not None:
                await before_request()
            return await self._fetch_page(here, key, state, url, origin)

    async def _fetch_page(
        self, here: _Site, key: str, state: PageSite, url: str, origin: str
    ) -> FetchResult:
        try:
            answer = await self._get(url, origin, self.settings.max_size)
        except HostBlocked as blocked:  # the host's feeds were asked to wait: pages too
            raise PageRefused(str(blocked), blocked.until) from None
        except FetchError as error:
            if error.status not in BACK_OFF_STATUSES:
                raise
            here.seen = await self._block(key, error)
            self._refuse_if_blocked(here.seen)  # this page waits with the others
            raise
        if state.strikes:
            await asyncio.to_thread(self.sites.clear_strikes, key)
            here.seen = None
        return answer

    def _refuse_if_blocked(self, state: PageSite) -> None:
        if state.is_blocked(self.clock()):
            raise PageRefused(left_alone(state), state.blocked_until)

    async def _block(self, key: str, error: FetchError) -> PageSite:
        """One more back-off answer from the site: the Retry-After as given, else an hour
        doubled per such answer in a row, up to a day."""

        def wait(strikes: int) -> timedelta:
            if error.retry_after is not None:
                return timedelta(seconds=rules.retry_after(error.retry_after))
            return min(FIRST_BACK_OFF * (1 << min(strikes - 1, 16)), LAST_BACK_OFF)

        why = f"it answered HTTP {error.status}"
        state = await asyncio.to_thread(self.sites.block_site, key, why, wait, self.clock())
        log.info("%s", left_alone(state))  # once; the pages tick waiting on it logs at debug
        return state

    async def _take_turn(self, here: _Site, key: str) -> PageSite:
        """Wait for this worker's turn to start a request to the site (PageRefused if the
        site is blocked meanwhile); the site's state once the turn is taken."""
        gap = timedelta(seconds=self.settings.min_gap)
        if not self.shared:
            return await self._own_turn(here, key, gap)
        while True:
            now = self.clock()
            next_at = here.seen.next_at if here.seen is not None else None
            if next_at is not None and next_at > now:
                await asyncio.sleep((next_at - now).total_seconds())
                # Waited until then: that is now, even for a clock that did not move (tests).
                now = max(self.clock(), next_at)
            turn = await asyncio.to_thread(self.sites.take_turn, key, now, gap)
            here.seen = turn.site
            self._refuse_if_blocked(turn.site)
            if turn.taken:
                return turn.site

    async def _own_turn(self, here: _Site, key: str, gap: timedelta) -> PageSite:
        """_take_turn where this process is the only one fetching pages."""
        state = here.seen
        if state is None:
            state = await asyncio.to_thread(self.sites.page_site, key)
        now = self.clock()
        if here.next_at is not None and here.next_at > now:
            await asyncio.sleep((here.next_at - now).total_seconds())
            now = max(self.clock(), here.next_at)  # as in _take_turn
        self._refuse_if_blocked(state)
        here.seen, here.next_at = state, now + gap
        return state

    async def _get(self, url: str, origin: str, limit: int, html: bool = True) -> FetchResult:
        return await self.fetcher.fetch_page(
            url,
            max_size=limit,
            timeout=self.settings.timeout,
            clock=self.clock,
            origin=origin,
            html_only=html,
        )

    def _robots_stale(self, state: PageSite) -> bool:
        ttl = timedelta(seconds=self.settings.robots_ttl)
        return (
            state.robots is None or state.robots_at is None or state.robots_at + ttl <= self.clock()
        )

    def _allows(self, here: _Site, state: PageSite, url: str) -> bool:
        if here.rules_at != state.robots_at:  # parse once per reading, by whichever worker
            here.rules, here.rules_at = _parse_robots(state.robots or ALLOW_ALL), state.robots_at
        if isinstance(here.rules, bool):
            return here.rules
        return bool(here.rules.can_fetch(url, ROBOTS_AGENT))

    async def _read_robots(self, key: str, origin: str) -> PageSite:
        """Read the site's robots.txt (in a turn taken) and keep it for every worker: as
        read, ALLOW_ALL when it has none or cannot say, DISALLOW_ALL when it refuses to
        show it (401/403)."""
        try:
            answer = await self._get(f"{key}/robots.txt", origin, _ROBOTS_MAX, html=False)
            text = (answer.body or b"").decode("utf-8", errors="replace")
        except HostBlocked as blocked:  # the host's feeds were asked to wait: this too
            raise PageRefused(str(blocked), blocked.until) from None
        except FetchError as error:
            text = DISALLOW_ALL if error.status in (401, 403) else ALLOW_ALL
        return await asyncio.to_thread(self.sites.save_robots, key, text, self.clock())


def left_alone(state: PageSite, zone: tzinfo = UTC) -> str:
    """Why and until when a blocked site's pages are left alone (logs in UTC; `monitor
    feeds` in the config's time zone, as its other times)."""
    row = f", {state.strikes} times in a row" if state.strikes > 1 else ""
    until = state.blocked_until
    when = f"{until.astimezone(zone):%Y-%m-%d %H:%M:%S %Z}" if until else "?"
    return f"pages of {state.site} are left alone until {when}: {state.blocked_why}{row}"


def _parse_robots(text: str) -> Protego | bool:
    if not text.strip():
        return True
    try:
        return Protego.parse(text)
    except Exception:  # a robots.txt protego cannot read: as if there were none
        return True


def _site(url: str) -> str:
    """scheme://host[:port] of url: robots.txt, gaps and back-offs are per site."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc.lower(), "", "", ""))
