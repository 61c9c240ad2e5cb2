"""HTTP for feeds: one aiohttp session, politeness per host, deadlines, size caps. Owns aiohttp.

A fetch either returns the document (or "not modified") or raises FetchError with a message
that names what went wrong; it never hangs past its deadline and never buffers past the cap.
Politeness: at most `per_host` requests to one host at a time, and `min_gap` seconds between
the starts of two requests to it; the global limit is the session's connection limit.
"""

from __future__ import annotations

import asyncio
import email.utils
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import TracebackType
from urllib.parse import urlsplit

import aiohttp

from monitor import __version__
from monitor.config import PollingConfig
from monitor.errors import FetchError

ACCEPT = (
    "application/rss+xml, application/atom+xml, application/feed+json, application/xml;q=0.9, "
    "text/xml;q=0.8, */*;q=0.5"
)
_MAX_AGE = re.compile(r"(?:^|,)\s*(?:s-)?max-age\s*=\s*\"?(\d+)", re.IGNORECASE)
_NO_CACHE = re.compile(r"(?:^|,)\s*(no-cache|no-store)\b", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class FetchResult:
    """What the server answered. `body` is None when it said 304 Not Modified."""

    url: str  # the URL finally fetched, after redirects
    status: int
    body: bytes | None
    headers: Mapping[str, str] = field(default_factory=dict)
    permanent_redirect: str | None = None  # where a 301/308 at the start of the chain pointed

    @property
    def not_modified(self) -> bool:
        return self.body is None

    def freshness(self, now: datetime) -> float | None:
        """Seconds the server says the document stays fresh (Cache-Control, else Expires)."""
        return freshness_seconds(self.headers, now)


def user_agent(contact: str | None) -> str:
    suffix = f"; +{contact}" if contact else ""
    return f"monitor/{__version__} (media monitoring feed poller{suffix})"


class _HostGate:
    """At most `slots` requests to one host at once, their starts `gap` seconds apart."""

    def __init__(self, slots: int, gap: float) -> None:
        self.slots = asyncio.Semaphore(slots)
        self.gap = gap
        self.turn = asyncio.Lock()
        self.next_start = 0.0  # loop time

    async def enter(self) -> None:
        await self.slots.acquire()
        async with self.turn:  # starts are spaced out one after the other
            loop = asyncio.get_running_loop()
            wait = self.next_start - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            self.next_start = loop.time() + self.gap

    def leave(self) -> None:
        self.slots.release()


class Fetcher:
    """Fetch feeds over one pooled session; use as an async context manager."""

    def __init__(self, settings: PollingConfig) -> None:
        self._settings = settings
        self._session: aiohttp.ClientSession | None = None
        self._hosts: dict[str, _HostGate] = {}

    async def __aenter__(self) -> Fetcher:
        connector = aiohttp.TCPConnector(
            limit=self._settings.concurrency,
            limit_per_host=self._settings.per_host,
            ttl_dns_cache=300,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(
                total=self._settings.timeout, sock_connect=self._settings.connect_timeout
            ),
            headers={"User-Agent": user_agent(self._settings.contact), "Accept": ACCEPT},
            auto_decompress=True,
        )
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        if self._session is not None:
            await self._session.close()

    def _gate(self, host: str) -> _HostGate:
        gate = self._hosts.get(host)
        if gate is None:
            gate = _HostGate(self._settings.per_host, self._settings.min_gap)
            self._hosts[host] = gate
        return gate

    def hold_off(self, host: str, seconds: float) -> None:
        """Start no request to host for `seconds` (another worker asked it just now)."""
        gate = self._gate(host)
        gate.next_start = max(gate.next_start, asyncio.get_running_loop().time() + seconds)

    async def fetch(
        self, url: str, etag: str | None = None, last_modified: str | None = None
    ) -> FetchResult:
        """GET url, conditionally when validators are given, politely towards its host."""
        gate = self._gate((urlsplit(url).hostname or "").lower())
        await gate.enter()
        try:
            return await self._fetch(url, etag, last_modified)
        finally:
            gate.leave()

    async def _fetch(self, url: str, etag: str | None, last_modified: str | None) -> FetchResult:
        assert self._session is not None, "use Fetcher as an async context manager"
        headers = {}
        if etag:
            headers["If-None-Match"] = etag
        if last_modified:
            headers["If-Modified-Since"] = last_modified
        try:
            async with self._session.get(url, headers=headers, max_redirects=10) as response:
                return await self._result(response)
        except FetchError:
            raise
        except aiohttp.TooManyRedirects:
            raise FetchError("too many redirects (a redirect loop?)") from None
        except TimeoutError:
            raise FetchError(
                f"timed out after {self._settings.timeout:g} s (connect or total deadline)"
            ) from None
        except aiohttp.ClientConnectorError as error:
            raise FetchError(f"cannot connect: {error.os_error or error}") from None
        except aiohttp.ClientPayloadError as error:
            raise FetchError(f"broken response body: {error}") from None
        except aiohttp.ServerDisconnectedError:
            raise FetchError("the server closed the connection without an answer") from None
        except aiohttp.ClientError as error:
            raise FetchError(f"{type(error).__name__}: {error}") from None
        except (UnicodeError, ValueError) as error:
            raise FetchError(f"invalid URL or response: {error}") from None

    async def _result(self, response: aiohttp.ClientResponse) -> FetchResult:
        headers = {key.lower(): value for key, value in response.headers.items()}
        if response.status == 304:
            return FetchResult(str(response.url), 304, None, headers, _permanent(response))
        if response.status != 200:
            raise FetchError(
                f"HTTP {response.status} {response.reason or ''}".strip(),
                status=response.status,
                retry_after=retry_after_seconds(headers.get("retry-after")),
            )
        body = await self._read_capped(response)
        return FetchResult(str(response.url), 200, body, headers, _permanent(response))

    async def _read_capped(self, response: aiohttp.ClientResponse) -> bytes:
        limit = self._settings.max_body
        declared = response.content_length
        if declared is not None and declared > limit and "content-encoding" not in response.headers:
            raise FetchError(f"body of {declared} bytes exceeds the {limit}-byte cap")
        chunks: list[bytes] = []
        size = 0
        # Counting decoded bytes bounds memory against gzip bombs as well as huge bodies.
        async for chunk in response.content.iter_chunked(64 * 1024):
            size += len(chunk)
            if size > limit:
                raise FetchError(f"body exceeds the {limit}-byte cap (after decompression)")
            chunks.append(chunk)
        return b"".join(chunks)


def _permanent(response: aiohttp.ClientResponse) -> str | None:
    """The target of the first hop if the chain starts with a permanent redirect."""
    history = response.history
    if history and history[0].status in (301, 308):
        return str(history[1].url) if len(history) > 1 else str(response.url)
    return None


def _http_date(value: str) -> datetime | None:
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when


def retry_after_seconds(value: str | None, now: datetime | None = None) -> float | None:
    """Retry-After as seconds: either delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    when = _http_date(value)
    if when is None:
        return None
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def freshness_seconds(headers: Mapping[str, str], now: datetime) -> float | None:
    """Cache-Control max-age (no-cache: 0), else Expires minus now; None when neither."""
    control = headers.get("cache-control", "")
    if _NO_CACHE.search(control):
        return 0.0
    found = _MAX_AGE.search(control)
    if found:
        return float(found.group(1))
    expires = _http_date(headers.get("expires", "")) if headers.get("expires") else None
    return max(0.0, (expires - now).total_seconds()) if expires else None
