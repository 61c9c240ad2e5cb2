"""Article pages, fetched politely: robots.txt, a gap per host, backing off. Owns protego.

Pages go over the feeds' HTTP client (fetch.py) and take the same per-host slots as that
host's feeds; on top of that, page requests to one host start at least `fulltext.min_gap`
seconds apart, robots.txt is honoured (cached per host for `fulltext.robots_ttl`;
unreachable or 5xx = allowed, 401/403 = all disallowed, as Google does), and a 403, 429 or
503 on a page stops page requests to that host until its Retry-After (else a default)
has passed. None of this touches the host's feeds.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from urllib.parse import urlsplit, urlunsplit

from protego import Protego

from monitor import feeds as rules
from monitor.config import FulltextConfig
from monitor.errors import FetchError
from monitor.fetch import Fetcher, FetchResult, HostBlocked

ROBOTS_AGENT = "monitor"  # the product token of the fetcher's User-Agent
BACK_OFF_STATUSES = frozenset({403, 429, 503})
_DEFAULT_BACK_OFF = 3600.0  # seconds, when a back-off status comes without a Retry-After
_ROBOTS_MAX = 512 * 1024  # Google reads the first 500 KiB


class PageRefused(FetchError):
    """No request for the page was sent, for a reason that ends (`until`) or not (robots)."""

    def __init__(self, message: str, until: datetime | None = None) -> None:
        super().__init__(message)
        self.until = until


@dataclass
class _Host:
    """Page politeness state of one host."""

    turn: asyncio.Lock = field(default_factory=asyncio.Lock)
    next_start: float = 0.0  # loop time
    blocked_until: datetime | None = None
    blocked_why: str = ""
    robots: Protego | bool | None = None  # True: all allowed, False: none, None: not read
    robots_at: datetime | None = None


class Pages:
    """Fetch article pages as a polite crawler; one per process, kept across cycles."""

    def __init__(
        self, fetcher: Fetcher, settings: FulltextConfig, clock: Callable[[], datetime]
    ) -> None:
        self.fetcher = fetcher
        self.settings = settings
        self.clock = clock
        self._hosts: dict[str, _Host] = {}

    async def fetch(self, url: str, origin: str) -> FetchResult:
        """The page at url (origin: the feed's URL, for the redirect check). PageRefused if
        robots.txt or a back-off forbids it now; FetchError if it failed."""
        key = _site(url)
        host = self._hosts.setdefault(key, _Host())
        self._refuse_if_blocked(key, host)
        async with host.turn:  # one page request at a time per host, min_gap apart
            if not await self._allowed(key, host, url, origin):
                raise PageRefused(f"robots.txt of {key} disallows this page")
            self._refuse_if_blocked(key, host)
            await self._wait_turn(host)
            try:
                return await self._get(url, origin, self.settings.max_size)
            except HostBlocked as blocked:  # the host's feeds were asked to wait: pages too
                raise PageRefused(str(blocked), blocked.until) from None
            except FetchError as error:
                if error.status not in BACK_OFF_STATUSES:
                    raise
                self._block(host, error)
                self._refuse_if_blocked(key, host)  # this page waits with the others
                raise

    def _refuse_if_blocked(self, key: str, host: _Host) -> None:
        if host.blocked_until is not None and self.clock() < host.blocked_until:
            raise PageRefused(
                f"pages of {key} are left alone until {host.blocked_until:%Y-%m-%d %H:%M:%S} "
                f"UTC: {host.blocked_why}",
                host.blocked_until,
            )

    def _block(self, host: _Host, error: FetchError) -> None:
        wait = rules.retry_after(error.retry_after or _DEFAULT_BACK_OFF)
        until = self.clock() + timedelta(seconds=wait)
        if host.blocked_until is None or until > host.blocked_until:
            host.blocked_until, host.blocked_why = until, f"it answered HTTP {error.status}"

    async def _wait_turn(self, host: _Host) -> None:
        loop = asyncio.get_running_loop()
        wait = host.next_start - loop.time()
        if wait > 0:
            await asyncio.sleep(wait)
        host.next_start = loop.time() + self.settings.min_gap

    async def _get(self, url: str, origin: str, limit: int, html: bool = True) -> FetchResult:
        return await self.fetcher.fetch_page(
            url,
            max_size=limit,
            timeout=self.settings.timeout,
            clock=self.clock,
            origin=origin,
            html_only=html,
        )

    async def _allowed(self, key: str, host: _Host, url: str, origin: str) -> bool:
        now = self.clock()
        ttl = timedelta(seconds=self.settings.robots_ttl)
        if host.robots is None or host.robots_at is None or now - host.robots_at >= ttl:
            await self._wait_turn(host)
            host.robots, host.robots_at = await self._read_robots(key, origin), now
        if isinstance(host.robots, bool):
            return host.robots
        return bool(host.robots.can_fetch(url, ROBOTS_AGENT))

    async def _read_robots(self, key: str, origin: str) -> Protego | bool:
        """The site's rules: True (all allowed) when it has none or cannot say, False when
        it refuses to show them (401/403)."""
        try:
            answer = await self._get(f"{key}/robots.txt", origin, _ROBOTS_MAX, html=False)
        except FetchError as error:
            return error.status not in (401, 403)
        text = (answer.body or b"").decode("utf-8", errors="replace")
        try:
            return Protego.parse(text)
        except Exception:  # a robots.txt protego cannot read: as if there were none
            return True


def _site(url: str) -> str:
    """scheme://host[:port] of url: robots.txt, gaps and back-offs are per site."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc.lower(), "", "", ""))
