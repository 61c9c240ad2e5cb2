"""The fetcher against a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from monitor.config import PollingConfig
from monitor.errors import FetchError
from monitor.fetch import Fetcher, HostBlocked, retry_after_seconds
from tests.conftest import HungHost

HOUR = timedelta(hours=1)
FEED = b"<rss version='2.0'><channel><title>t</title></channel></rss>"


def settings(**overrides: object) -> PollingConfig:
    return PollingConfig.model_validate({"timeout": 5, "connect_timeout": 2, **overrides})


async def test_conditional_get_with_etag(httpserver: HTTPServer) -> None:
    def handler(request: Request) -> Response:
        if request.headers.get("If-None-Match") == '"v1"':
            return Response(status=304)
        return Response(
            FEED, headers={"ETag": '"v1"', "Last-Modified": "Sat, 28 Nov 2026 10:00:00 GMT"}
        )

    httpserver.expect_request("/feed").respond_with_handler(handler)
    async with Fetcher(settings(contact="https://example.org/c")) as fetcher:
        first = await fetcher.fetch(httpserver.url_for("/feed"))
        assert first.body == FEED and first.headers["etag"] == '"v1"'
        second = await fetcher.fetch(httpserver.url_for("/feed"), etag='"v1"')
        assert second.not_modified
    user_agent = httpserver.log[0][0].headers["User-Agent"]
    assert user_agent.startswith("monitor/") and "https://example.org/c" in user_agent


async def test_http_errors_carry_status_and_retry_after(httpserver: HTTPServer) -> None:
    httpserver.expect_request("/busy").respond_with_data(
        "slow down", status=429, headers={"Retry-After": "120"}
    )
    httpserver.expect_request("/gone").respond_with_data("", status=410)
    async with Fetcher(settings()) as fetcher:
        with pytest.raises(FetchError, match="HTTP 410"):
            await fetcher.fetch(httpserver.url_for("/gone"))
        with pytest.raises(FetchError, match="HTTP 429") as busy:  # the host is blocked now
            await fetcher.fetch(httpserver.url_for("/busy"))
        assert busy.value.status == 429 and busy.value.retry_after == 120


async def test_a_429_blocks_its_host_for_the_requests_waiting_there_too(
    httpserver: HTTPServer,
) -> None:
    httpserver.expect_request("/limited").respond_with_data(
        "", status=429, headers={"Retry-After": "3600"}
    )
    now = [datetime(2026, 11, 29, 12, 0, tzinfo=UTC)]
    url = httpserver.url_for("/limited")
    async with Fetcher(settings(per_host=1)) as fetcher:
        # One at a time: the second and third wait for their turn while the first is asked.
        waiting = [fetcher.fetch(f"{url}?n={n}", clock=lambda: now[0]) for n in range(3)]
        first, *others = await asyncio.gather(*waiting, return_exceptions=True)
        assert isinstance(first, FetchError) and first.status == 429
        assert all(isinstance(o, HostBlocked) for o in others)
        assert {o.until for o in others if isinstance(o, HostBlocked)} == {now[0] + HOUR}
        assert len(httpserver.log) == 1
        now[0] += HOUR  # the block has ended: the host is asked again
        with pytest.raises(FetchError, match="HTTP 429") as again:
            await fetcher.fetch(url, clock=lambda: now[0])
        assert not isinstance(again.value, HostBlocked)
    assert len(httpserver.log) == 2


async def test_a_timeout_blocks_its_host_for_one_deadline_for_the_requests_waiting_there(
    hung_host: HungHost,
) -> None:
    """A hung host's feeds are not each made to wait out the deadline in turn."""
    now = [datetime(2026, 11, 29, 12, 0, tzinfo=UTC)]
    async with Fetcher(settings(per_host=1, timeout=1)) as fetcher:
        waiting = [fetcher.fetch(hung_host.url(f"/f{n}"), clock=lambda: now[0]) for n in range(3)]
        first, *others = await asyncio.gather(*waiting, return_exceptions=True)
        assert isinstance(first, FetchError) and "timed out" in str(first)
        assert all(isinstance(o, HostBlocked) for o in others)
        until = now[0] + timedelta(seconds=1)
        assert {o.until for o in others if isinstance(o, HostBlocked)} == {until}
        assert "timed out" in str(others[0])
        assert len(hung_host.arrived) == 1
        now[0] = until  # the block has ended: the host is asked again
        with pytest.raises(FetchError, match="timed out") as again:
            await fetcher.fetch(hung_host.url("/f0"), clock=lambda: now[0])
        assert not isinstance(again.value, HostBlocked)
    assert len(hung_host.arrived) == 2


async def test_a_slow_body_times_out_without_blocking_its_host(httpserver: HTTPServer) -> None:
    """The host answered (headers came), only the document was slow: its other feeds are
    asked as usual."""

    def trickle(_request: Request) -> Response:
        def body() -> Iterator[bytes]:
            for _ in range(30):
                time.sleep(0.1)
                yield b" "

        return Response(body(), headers={"Content-Type": "application/xml"})

    httpserver.expect_request("/slow").respond_with_handler(trickle)
    httpserver.expect_request("/fast").respond_with_data(FEED)
    async with Fetcher(settings(timeout=1)) as fetcher:
        with pytest.raises(FetchError, match="timed out") as slow:
            await fetcher.fetch(httpserver.url_for("/slow"))
        assert not isinstance(slow.value, HostBlocked)
        assert (await fetcher.fetch(httpserver.url_for("/fast"))).body == FEED


async def test_a_deadline_spent_waiting_for_a_connection_does_not_block_the_host(
    hung_host: HungHost, httpserver: HTTPServer
) -> None:
    """aiohttp's deadline runs while a request waits for one of the `concurrency`
    connections: a host never asked was held off as if it had not answered."""
    import aiohttp

    httpserver.expect_request("/fast").respond_with_data(FEED)
    async with Fetcher(settings(concurrency=1, timeout=1)) as fetcher:
        # The only connection, held past any deadline (feeds' requests give theirs back at
        # their deadline, first come first served, so this takes a request without one).
        session = fetcher._session  # type: ignore[attr-defined]
        hold = session.get(hung_host.url("/feed"), timeout=aiohttp.ClientTimeout(total=None))
        holding = asyncio.ensure_future(hold.__aenter__())
        await asyncio.sleep(0.2)
        with pytest.raises(FetchError, match="waiting for one of the 1 connections") as waited:
            await fetcher.fetch(httpserver.url_for("/fast"))
        assert not isinstance(waited.value, HostBlocked)
        holding.cancel()
        await asyncio.gather(holding, return_exceptions=True)
        assert (await fetcher.fetch(httpserver.url_for("/fast"))).body == FEED  # not held off


async def test_requests_waiting_at_a_host_busy_without_an_answer_are_counted(
    hung_host: HungHost, httpserver: HTTPServer
) -> None:
    def slow(_request: Request) -> Response:
        time.sleep(0.3)
        return Response(FEED)

    httpserver.expect_request("/slow").respond_with_handler(slow)
    async with Fetcher(settings(per_host=1, timeout=5)) as fetcher:
        hung = [asyncio.ensure_future(fetcher.fetch(hung_host.url(f"/f{n}"))) for n in range(3)]
        answering = [
            asyncio.ensure_future(fetcher.fetch(httpserver.url_for(f"/slow?n={n}")))
            for n in range(4)
        ]
        await asyncio.sleep(0.1)
        assert fetcher.waiting_at_unanswering_hosts(0.5) == 0  # not silent for long yet
        await asyncio.sleep(0.6)
        # The hung host's two waiting requests; the other host answers every 0.3 s.
        assert fetcher.waiting_at_unanswering_hosts(0.5) == 2
        await asyncio.gather(*answering)
        for request in hung:
            request.cancel()
        await asyncio.gather(*hung, return_exceptions=True)
        assert fetcher.waiting_at_unanswering_hosts(0.5) == 0


async def test_permanent_redirect_is_reported(httpserver: HTTPServer) -> None:
    httpserver.expect_request("/old").respond_with_data(
        "", status=301, headers={"Location": "/new"}
    )
    httpserver.expect_request("/new").respond_with_data(FEED)
    async with Fetcher(settings()) as fetcher:
        result = await fetcher.fetch(httpserver.url_for("/old"))
    assert result.body == FEED
    assert result.permanent_redirect == httpserver.url_for("/new")


PUBLIC = "http://93.184.215.14/feed.xml"  # a feed's configured URL on the internet


@pytest.mark.parametrize("target", ["127.0.0.1", "localhost"])
async def test_a_redirect_from_a_public_feed_into_an_internal_address_is_refused(
    httpserver: HTTPServer, target: str
) -> None:
    internal = f"http://{target}:{httpserver.port}/internal"
    httpserver.expect_request("/moved").respond_with_data("", 301, {"Location": internal})
    httpserver.expect_request("/internal").respond_with_data(FEED)
    async with Fetcher(settings()) as fetcher:
        with pytest.raises(FetchError, match=r"refused to follow a redirect to .* internal"):
            await fetcher.fetch(httpserver.url_for("/moved"), origin=PUBLIC)
        assert not [r for r, _ in httpserver.log if r.path == "/internal"]
        # A feed configured on an internal address (an intranet's) may redirect there.
        result = await fetcher.fetch(httpserver.url_for("/moved"))
    assert result.body == FEED and result.permanent_redirect == internal


async def test_redirect_loop_fails_cleanly(httpserver: HTTPServer) -> None:
    httpserver.expect_request("/a").respond_with_data("", status=302, headers={"Location": "/b"})
    httpserver.expect_request("/b").respond_with_data("", status=302, headers={"Location": "/a"})
    async with Fetcher(settings()) as fetcher:
        with pytest.raises(FetchError, match="redirect"):
            await fetcher.fetch(httpserver.url_for("/a"))


async def test_body_cap_applies_after_decompression(httpserver: HTTPServer) -> None:
    bomb = gzip.compress(b"\0" * (8 * 1024 * 1024))  # 8 MiB of zeros, a few KiB on the wire
    httpserver.expect_request("/bomb").respond_with_data(bomb, headers={"Content-Encoding": "gzip"})
    async with Fetcher(settings(max_body="1 MiB")) as fetcher:
        with pytest.raises(FetchError, match="cap"):
            await fetcher.fetch(httpserver.url_for("/bomb"))


async def test_slow_server_is_cut_off_at_the_deadline(httpserver: HTTPServer) -> None:
    def trickle(request: Request) -> Response:
        def body():  # type: ignore[no-untyped-def]
            for _ in range(30):
                yield b"<"
                time.sleep(0.2)

        return Response(body(), headers={"Content-Type": "application/xml"})

    httpserver.expect_request("/slow").respond_with_handler(trickle)
    started = time.monotonic()
    async with Fetcher(settings(timeout=1)) as fetcher:
        with pytest.raises(FetchError, match="timed out"):
            await fetcher.fetch(httpserver.url_for("/slow"))
    assert time.monotonic() - started < 4


async def test_connection_refused() -> None:
    async with Fetcher(settings()) as fetcher:
        with pytest.raises(FetchError, match="cannot connect"):
            await fetcher.fetch("http://127.0.0.1:9/feed")


def test_retry_after_forms() -> None:
    assert retry_after_seconds("30") == 30
    assert retry_after_seconds("garbage") is None
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT") == 0


async def test_idle_connections_to_many_hosts_are_closed_within_seconds() -> None:
    """aiohttp kept an idle connection per host for 15 s, uncounted by the concurrency
    limit: a cycle over thousands of hosts ran out of file descriptors."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Feed(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive

        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", str(len(FEED)))
            self.end_headers()
            self.wfile.write(FEED)

        def log_message(self, *args: object) -> None:
            pass

    servers = [ThreadingHTTPServer((f"127.0.0.{n}", 0), Feed) for n in range(2, 22)]
    for server in servers:
        threading.Thread(target=server.serve_forever, daemon=True).start()

    def client_sockets() -> int:
        ours = {server.server_address[1] for server in servers}
        return sum(1 for port in _remote_ports() if port in ours)

    try:
        async with Fetcher(settings()) as fetcher:
            for server in servers:
                host, port = server.server_address[:2]
                assert (await fetcher.fetch(f"http://{host}:{port}/feed")).body == FEED
            assert client_sockets() == len(servers)  # kept for reuse a while
            for _ in range(100):
                if client_sockets() == 0:
                    break
                await asyncio.sleep(0.1)
            assert client_sockets() == 0
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()


def _remote_ports() -> list[int]:
    """The remote ports of this process's established IPv4 TCP connections."""
    inodes = set()
    for fd in Path("/proc/self/fd").iterdir():
        with contextlib.suppress(OSError):  # closed meanwhile
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    ports = []
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[9] in inodes and fields[3] == "01":  # ESTABLISHED
            ports.append(int(fields[2].split(":")[1], 16))
    return ports
