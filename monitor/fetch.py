"""HTTP for feeds: one aiohttp session, politeness per host, deadlines, size caps. Owns aiohttp.

A fetch either returns the document (or "not modified") or raises FetchError with a message
that names what went wrong; it never hangs past its deadline and never buffers past the cap.
Politeness: at most `per_host` requests to one host at a time, and `min_gap` seconds between
the starts of two requests to it; the global limit is the session's connection limit. After
a host answers 429 with a Retry-After, no request goes to it until that time has passed:
the fetches waiting for their turn there, and any started meanwhile, raise HostBlocked. A
request that runs into its deadline blocks its host the same way, for one more deadline: a
hung or unreachable host's feeds are not each made to wait out the deadline in turn. The
fetcher also tells how many fetches wait at hosts that have been busy for a while without an
answer (`waiting_at_unanswering_hosts`): they are not work in progress, and the poller does
not let them fill its window.

Redirects are followed (and reported, so the poller can adopt a permanent one), but never
from a feed on the public internet into a loopback, private, link-local or otherwise
internal address: a hostile or hijacked feed server must not make monitor fetch, and mail
around, what only the monitor host can reach (cloud metadata, admin pages). A feed whose
configured URL is itself on such an address (an intranet feed, the tests' 127.0.0.1) may.
The check runs on each redirect (aiohttp's on_request_redirect trace) and resolves a target
host name itself; aiohttp resolves it again to connect, so a DNS server answering
differently the second time is not caught.
"""

from __future__ import annotations

import asyncio
import email.utils
import ipaddress
import re
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace, TracebackType
from urllib.parse import urlsplit

import aiohttp
from yarl import URL

from monitor import __version__
from monitor import feeds as rules
from monitor.config import PollingConfig
from monitor.errors import FetchError

ACCEPT = (
    "application/rss+xml, application/atom+xml, application/feed+json, application/xml;q=0.9, "
    "text/xml;q=0.8, */*;q=0.5"
)
PAGE_ACCEPT = "text/html, application/xhtml+xml;q=0.9, */*;q=0.1"
# What an article page may be; none given is sniffed by the extractor. PDFs and images are not.
_HTML_TYPES = frozenset({"text/html", "application/xhtml+xml"})
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


_KEEPALIVE_SECONDS = 2.0


class HostBlocked(FetchError):
    """No request was sent: the host asked this client to wait (429 with a Retry-After), or
    let a request run into its deadline, until `until`. Not the feed's failure: it is simply
    asked again after that."""

    def __init__(self, host: str, until: datetime, why: str) -> None:
        self.until = until
        super().__init__(f"{host} is left alone until {until:%Y-%m-%d %H:%M:%S %Z}: {why}")


class FetchTimeout(FetchError):
    """The host did not answer (or connect) within the deadline."""


def _utc_now() -> datetime:
    return datetime.now(UTC)


def user_agent(contact: str | None) -> str:
    suffix = f"; +{contact}" if contact else ""
    return f"monitor/{__version__} (media monitoring feed poller{suffix})"


class _HostGate:
    """At most `slots` requests to one host at once, their starts `gap` seconds apart, none
    before `blocked_until` (a 429's Retry-After, or one deadline after a timeout, in the
    caller's clock).

    It counts the requests waiting for a slot, and knows since when the host has been busy
    without answering: since its last answer (any HTTP status), or since it went from idle
    to busy. A timeout or a refused connection is no answer."""

    def __init__(self, slots: int, gap: float, queued: set[_HostGate]) -> None:
        self.slots = asyncio.Semaphore(slots)
        self.queued = queued  # the fetcher's gates with requests waiting: this one, while so
        self.gap = gap
        self.turn = asyncio.Lock()
        self.next_start = 0.0  # loop time
        self.blocked_until: datetime | None = None
        self.blocked_why = ""
        self.busy = 0  # requests holding a slot
        self.waiting = 0  # requests waiting for one
        self.silent_since = time.monotonic()  # busy without an answer since then

    async def enter(self, host: str, clock: Callable[[], datetime]) -> None:
        """Wait for a slot and for this request's start; HostBlocked, holding no slot, if the
        host is blocked now or becomes blocked while this waits."""
        self.refuse_if_blocked(host, clock)
        self.waiting += 1
        self.queued.add(self)
        try:
            await self.slots.acquire()
        finally:
            self.waiting -= 1
            if not self.waiting:
                self.queued.discard(self)
        if not self.busy:
            self.silent_since = time.monotonic()
        self.busy += 1
        try:
            async with self.turn:  # starts are spaced out one after the other
                loop = asyncio.get_running_loop()
                wait = self.next_start - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                self.refuse_if_blocked(host, clock)  # a 429 came back meanwhile
                self.next_start = loop.time() + self.gap
        except BaseException:  # refused or cancelled: the slot goes to the next in line
            self.leave()
            raise

    def leave(self) -> None:
        self.busy -= 1
        self.slots.release()

    def answered(self) -> None:
        self.silent_since = time.monotonic()

    def unanswering(self, seconds: float) -> bool:
        """Requests wait here, and the host has been busy for `seconds` without an answer."""
        return bool(self.waiting) and time.monotonic() - self.silent_since >= seconds

    def refuse_if_blocked(self, host: str, clock: Callable[[], datetime]) -> None:
        if self.blocked_until is not None and clock() < self.blocked_until:
            raise HostBlocked(host, self.blocked_until, self.blocked_why)

    def block(self, until: datetime, why: str) -> None:
        """A block only ever moves later: it ends by itself."""
        if self.blocked_until is None or until > self.blocked_until:
            self.blocked_until, self.blocked_why = until, why


class Fetcher:
    """Fetch feeds over one pooled session; use as an async context manager."""

    def __init__(self, settings: PollingConfig) -> None:
        self._settings = settings
        self._session: aiohttp.ClientSession | None = None
        self._hosts: dict[str, _HostGate] = {}
        self._queued: set[_HostGate] = set()  # gates with requests waiting for a slot

    async def __aenter__(self) -> Fetcher:
        connector = aiohttp.TCPConnector(
            limit=self._settings.concurrency,
            limit_per_host=self._settings.per_host,
            ttl_dns_cache=300,
            # An idle connection stays open per host: the limit counts only those in use.
            # With aiohttp's 15 s, a cycle over 3,000 hosts held 2,920 of them and ran out of
            # file descriptors; a host's feeds, polled one after the other, reuse them within
            # a second or two.
            keepalive_timeout=_KEEPALIVE_SECONDS,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(
                total=self._settings.timeout, sock_connect=self._settings.connect_timeout
            ),
            headers={"User-Agent": user_agent(self._settings.contact), "Accept": ACCEPT},
            auto_decompress=True,
            trace_configs=[_tracing()],
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
            gate = _HostGate(self._settings.per_host, self._settings.min_gap, self._queued)
            self._hosts[host] = gate
        return gate

    def hold_off(self, host: str, seconds: float) -> None:
        """Start no request to host for `seconds` (another worker asked it just now)."""
        gate = self._gate(host)
        gate.next_start = max(gate.next_start, asyncio.get_running_loop().time() + seconds)

    def waiting_at_unanswering_hosts(self, seconds: float) -> int:
        """How many fetches wait for a slot at hosts busy for `seconds` without an answer
        (hung, or timing out): they will not start soon."""
        return sum(g.waiting for g in self._queued if g.unanswering(seconds))

    async def fetch(
        self,
        url: str,
        etag: str | None = None,
        last_modified: str | None = None,
        *,
        clock: Callable[[], datetime] = _utc_now,
        origin: str | None = None,
    ) -> FetchResult:
        """GET url, conditionally when validators are given, politely towards its host.

        `clock` is the caller's time (the app's, injected in tests): a 429's Retry-After
        blocks the host until a moment of that clock, the same moment the poller records.
        `origin` is the feed's configured URL (default: url): only if it is on an internal
        address may a redirect lead to one."""
        host = (urlsplit(url).hostname or "").lower()
        gate = self._gate(host)
        await gate.enter(host, clock)
        try:
            return await self._fetch(url, etag, last_modified, origin or url, gate.answered)
        except FetchError as error:
            # Blocked before the slot is given to the next request waiting for this host;
            # the error says until when, for the poller to tell the other workers.
            if rules.is_host_wide(error.status) and error.retry_after is not None:
                wait, why = rules.retry_after(error.retry_after), "it asked to wait (HTTP 429)"
            elif isinstance(error, FetchTimeout):
                # A hung or unreachable host: the requests waiting for it would each wait
                # out the deadline in turn (40 feeds, 2 at a time: 10 minutes), holding the
                # cycle. They are asked again after one more deadline instead.
                wait, why = self._settings.timeout, "a request to it timed out"
            else:
                raise
            error.host_blocked_until = clock() + timedelta(seconds=wait)
            gate.block(error.host_blocked_until, why)
            raise
        finally:
            gate.leave()

    async def fetch_page(
        self,
        url: str,
        *,
        max_size: int,
        timeout: float,
        clock: Callable[[], datetime] = _utc_now,
        origin: str | None = None,
        html_only: bool = True,
    ) -> FetchResult:
        """GET an article page (fulltext.py): within the same per-host slots as the host's
        feeds, but a 429 or a timeout here blocks only the host's pages (the caller's
        business), never its feeds. FetchError unless the answer is a whole HTML page of at
        most `max_size` bytes within `timeout` seconds (`html_only=False`: any type, robots.txt)."""
        host = (urlsplit(url).hostname or "").lower()
        gate = self._gate(host)
        await gate.enter(host, clock)
        try:
            return await self._get_page(
                url, max_size, timeout, origin or url, gate.answered, html_only
            )
        finally:
            gate.leave()

    async def _get_page(
        self,
        url: str,
        max_size: int,
        timeout: float,
        origin: str,
        answered: Callable[[], None],
        html_only: bool,
    ) -> FetchResult:
        assert self._session is not None, "use Fetcher as an async context manager"
        request = self._session.get(
            url,
            headers={"Accept": PAGE_ACCEPT},
            max_redirects=10,
            timeout=aiohttp.ClientTimeout(
                total=timeout, sock_connect=self._settings.connect_timeout
            ),
            trace_request_ctx=SimpleNamespace(origin=origin, queued=False),
        )
        try:
            async with request as response:
                answered()
                headers = {key.lower(): value for key, value in response.headers.items()}
                _raise_unless_ok(response, headers)
                kind = headers.get("content-type", "").split(";")[0].strip().lower()
                if html_only and kind and kind not in _HTML_TYPES:
                    raise FetchError(f"not an HTML page ({rules.error_text(kind)[:60]})")
                body = await _read_capped(response, max_size, "page")
                return FetchResult(str(response.url), 200, body, headers)
        except FetchError:
            raise
        except TimeoutError:
            raise FetchError(f"the page took longer than {timeout:g} s") from None
        except (aiohttp.ClientError, UnicodeError, ValueError) as error:
            raise _client_failure(error) from None

    async def _fetch(
        self,
        url: str,
        etag: str | None,
        last_modified: str | None,
        origin: str,
        answered: Callable[[], None],
    ) -> FetchResult:
        """GET url; `answered` is called once a response's headers arrive: a deadline met
        after them (a slow body) is the document's, not a host that does not answer."""
        assert self._session is not None, "use Fetcher as an async context manager"
        headers = {}
        if etag:
            headers["If-None-Match"] = etag
        if last_modified:
            headers["If-Modified-Since"] = last_modified
        # For _refuse_internal_redirect, and for _queued: whether it waits for a connection.
        context = SimpleNamespace(origin=origin, queued=False)
        request = self._session.get(
            url,
            headers=headers,
            max_redirects=10,
            trace_request_ctx=context,
        )
        heard = False
        try:
            async with request as response:
                heard = True
                answered()
                return await self._result(response)
        except FetchError:
            raise
        except TimeoutError:
            if context.queued:  # never asked: no word on the host, which is not held off
                raise FetchError(
                    f"timed out after {self._settings.timeout:g} s waiting for one of the "
                    f"{self._settings.concurrency} connections (polling.concurrency) in use"
                ) from None
            timed_out = FetchError if heard else FetchTimeout
            raise timed_out(
                f"timed out after {self._settings.timeout:g} s (connect or total deadline)"
            ) from None
        except (aiohttp.ClientError, UnicodeError, ValueError) as error:
            raise _client_failure(error) from None

    async def _result(self, response: aiohttp.ClientResponse) -> FetchResult:
        headers = {key.lower(): value for key, value in response.headers.items()}
        if response.status == 304:
            return FetchResult(str(response.url), 304, None, headers, _permanent(response))
        _raise_unless_ok(response, headers)
        body = await _read_capped(response, self._settings.max_body, "body")
        return FetchResult(str(response.url), 200, body, headers, _permanent(response))


def _raise_unless_ok(response: aiohttp.ClientResponse, headers: dict[str, str]) -> None:
    """FetchError for any answer but 200, with its status and Retry-After."""
    if response.status != 200:
        raise _failure(
            f"HTTP {response.status} {response.reason or ''}".strip(),
            status=response.status,
            retry_after=retry_after_seconds(headers.get("retry-after")),
        )


def _client_failure(error: aiohttp.ClientError | UnicodeError | ValueError) -> FetchError:
    """What a feed's or a page's failed request says. The messages quote the server's bytes
    (a bad status line: all of them, up to 64 KB): cut to one short line where built."""
    if isinstance(error, aiohttp.TooManyRedirects):
        return FetchError("too many redirects (a redirect loop?)")
    if isinstance(error, aiohttp.ClientConnectorError):
        return _failure(f"cannot connect: {error.os_error or error}")
    if isinstance(error, aiohttp.ClientPayloadError):
        return _failure(f"broken response body: {error}")
    if isinstance(error, aiohttp.ServerDisconnectedError):
        return FetchError("the server closed the connection without an answer")
    if isinstance(error, aiohttp.ClientError):
        return _failure(f"{type(error).__name__}: {error}")
    return _failure(f"invalid URL or response: {error}")


async def _read_capped(response: aiohttp.ClientResponse, limit: int, what: str) -> bytes:
    """The body, or FetchError as soon as it passes `limit` bytes; `what` names it (a feed's
    body, a page) in the error. Counting decoded bytes bounds memory against gzip bombs as
    well as huge bodies."""
    declared = response.content_length
    if declared is not None and declared > limit and "content-encoding" not in response.headers:
        raise FetchError(f"{what} of {declared} bytes exceeds the {limit}-byte cap")
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > limit:
            raise FetchError(f"{what} exceeds the {limit}-byte cap (after decompression)")
        chunks.append(chunk)
    return b"".join(chunks)


def _tracing() -> aiohttp.TraceConfig:
    """Hooks into aiohttp's request: the redirect check, and whether it waits for a
    connection."""
    trace = aiohttp.TraceConfig()
    trace.on_request_redirect.append(_refuse_internal_redirect)
    trace.on_connection_queued_start.append(_queued)
    trace.on_connection_queued_end.append(_dequeued)
    return trace


async def _queued(_session: aiohttp.ClientSession, context: SimpleNamespace, _: object) -> None:
    """The request waits for one of the session's `concurrency` connections: its deadline
    runs meanwhile, and a timeout then says nothing of its host."""
    context.trace_request_ctx.queued = True


async def _dequeued(_session: aiohttp.ClientSession, context: SimpleNamespace, _: object) -> None:
    context.trace_request_ctx.queued = False


async def _refuse_internal_redirect(
    _session: aiohttp.ClientSession,
    context: SimpleNamespace,
    params: aiohttp.TraceRequestRedirectParams,
) -> None:
    """Before aiohttp follows a redirect: FetchError if it leads to an internal address
    and the feed's configured URL is not on one itself."""
    location = params.response.headers.get("Location")
    try:
        target = URL(location) if location else None
    except ValueError:
        return  # aiohttp refuses it itself, as it does non-HTTP schemes
    if target is None or target.scheme not in ("", "http", "https"):
        return
    target = params.url.join(target) if not target.is_absolute() else target
    origin = getattr(context.trace_request_ctx, "origin", None)
    if not target.host or origin is None:
        return
    internal = await internal_target(str(target), origin)
    if internal is None:
        return
    params.response.close()  # not followed, not read: the connection is not reused
    raise FetchError(
        rules.error_text(
            f"refused to follow a redirect to {target.human_repr()}: {internal} is an "
            "internal address (loopback, private or link-local), and the feed is not on one"
        )
    )


async def internal_target(url: str, origin: str) -> str | None:
    """The internal address url's host is on, if it is and origin's is not: a public
    feed's item must not make monitor fetch what only the monitor host can reach."""
    internal = await _internal_address(urlsplit(url).hostname or "")
    if internal is None or await _internal_address(urlsplit(origin).hostname or ""):
        return None
    return internal


async def _internal_address(host: str, port: int | None = None) -> str | None:
    """An internal address `host` is or resolves to (the first), None when it has none or
    cannot be resolved (then the connection fails by itself)."""
    try:
        addresses = [str(ipaddress.ip_address(host.strip("[]")))]
    except ValueError:
        loop = asyncio.get_running_loop()
        try:
            found = await loop.getaddrinfo(host, port or 80, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError):
            return None
        addresses = [str(info[4][0]) for info in found]
    return next((address for address in addresses if _is_internal(address)), None)


def _is_internal(address: str) -> bool:
    """Not reachable from the public internet: loopback, private, link-local, shared
    (CGNAT), reserved, unspecified, multicast."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])  # a link-local IPv6's zone
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return not ip.is_global or ip.is_multicast


def _failure(
    message: str, *, status: int | None = None, retry_after: float | None = None
) -> FetchError:
    """A FetchError whose message is safe to store and show (rules.error_text)."""
    return FetchError(rules.error_text(message), status=status, retry_after=retry_after)


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
