"""Real partners on 127.0.0.1: a feed HTTP server, an SMTP server, SQLite files, PostgreSQL."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import yaml
from aiosmtpd.controller import Controller

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus" / "feeds"
POSTGRES_URL = os.environ.get("MONITOR_TEST_POSTGRES_URL")

# pytest-httpserver's werkzeug logs each request at INFO from the server's own thread: noise
# here, and a line emitted while a daemon test replaced the root handlers printed a
# "Logging error" traceback into the run.
logging.getLogger("werkzeug").setLevel(logging.WARNING)


@pytest.fixture(autouse=True)
def _collect_garbage_after_each_test() -> Iterator[None]:
    """Leaked sockets or files fail the test that leaked them, not a later, random one.

    What survives a test's collection is alive, not garbage: frozen (gc.freeze), it is not
    looked at again, so each collection walks only what the last test made. Walking the
    whole heap after every test (the imported libraries, the corpora) was 45 % of the
    suite's time."""
    yield
    gc.collect()
    gc.freeze()


@pytest.fixture
def corpus() -> Path:
    if not CORPUS.is_dir():
        pytest.skip(f"feed corpus not found at {CORPUS} (../shared is absent)")
    return CORPUS


# --------------------------------------------------------------------------- databases


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'monitor.db'}"


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh schema in the test PostgreSQL database, dropped afterwards."""
    if not POSTGRES_URL:
        pytest.skip("PostgreSQL URL not set (MONITOR_TEST_POSTGRES_URL)")
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(POSTGRES_URL)
    with admin.begin() as connection:
        connection.execute(sa.text(f"CREATE SCHEMA {schema}"))
    separator = "&" if "?" in POSTGRES_URL else "?"
    yield f"{POSTGRES_URL}{separator}options=-csearch_path%3D{schema}"
    with admin.begin() as connection:
        connection.execute(sa.text(f"DROP SCHEMA {schema} CASCADE"))
    admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest) -> str:
    """Run the test once on SQLite and once on PostgreSQL."""
    fixture = "sqlite_url" if request.param == "sqlite" else "postgres_url"
    return str(request.getfixturevalue(fixture))


# --------------------------------------------------------------------------- hung host


class HungHost:
    """A host that accepts connections, reads the requests and never answers: records when
    each connection came and when the client gave up on it (closed it)."""

    def __init__(self, address: str) -> None:
        self.listener = socket.create_server((address, 0))
        self.address, self.port = address, self.listener.getsockname()[1]
        self.arrived: list[float] = []  # time.monotonic() of each connection
        self.abandoned: list[float] = []  # ... and of each close by the client
        self.connections: list[socket.socket] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def url(self, path: str) -> str:
        return f"http://{self.address}:{self.port}{path}"

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:  # closed
                return
            with self.lock:
                self.arrived.append(time.monotonic())
                self.connections.append(connection)
            threading.Thread(target=self._wait, args=(connection,), daemon=True).start()

    def _wait(self, connection: socket.socket) -> None:
        try:
            while connection.recv(4096):
                pass
        except OSError:
            return
        with self.lock:
            self.abandoned.append(time.monotonic())

    def close(self) -> None:
        self.listener.close()
        with self.lock:
            for connection in self.connections:
                connection.close()


@pytest.fixture
def hung_host() -> Iterator[HungHost]:
    """On 127.0.0.2: a host of its own, apart from the HTTP test server's 127.0.0.1."""
    host = HungHost("127.0.0.2")
    yield host
    host.close()


# --------------------------------------------------------------------------- SMTP


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class SmtpRecorder:
    """aiosmtpd handler that records messages and can refuse on demand."""

    messages: list[tuple[str, list[str], bytes]] = field(default_factory=list)
    refuse: dict[str, str] = field(default_factory=dict)  # recipient -> SMTP reply
    data_reply: list[str] = field(default_factory=list)  # replies to DATA, consumed in order
    drop_data: int = 0  # this many DATA commands get the connection closed instead of a reply
    on_data: Callable[[bytes], None] | None = None  # runs before a message is accepted
    mail_reply: str | None = None  # the reply to every MAIL FROM, instead of 250
    # Seconds between a message's end and the reply: a server that scans before it answers.
    # The message counts as received when it arrives, as a real server keeps it.
    data_delay: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_MAIL(
        self, server: Any, session: Any, envelope: Any, address: str, options: Any
    ) -> str:
        if self.mail_reply is not None:
            return self.mail_reply
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 OK"

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: Any
    ) -> str:
        if address in self.refuse:
            return self.refuse[address]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self.lock:
            if self.drop_data:
                self.drop_data -= 1
                server.transport.close()  # the client never hears whether it was accepted
                return "421 closing"
            if self.data_reply:
                return self.data_reply.pop(0)
            if self.on_data is not None:
                self.on_data(envelope.content)
            self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.content))
        if self.data_delay:
            await asyncio.sleep(self.data_delay)
        return "250 Message accepted"

    def parsed(self) -> list[EmailMessage]:
        return [message_from_bytes(raw, policy=policy.default) for _, _, raw in self.messages]  # type: ignore[misc]


@pytest.fixture
def smtp_server() -> Iterator[tuple[SmtpRecorder, int]]:
    recorder = SmtpRecorder()
    port = free_port()
    controller = Controller(recorder, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield recorder, port
    finally:
        controller.stop()


# --------------------------------------------------------------------------- config files


@pytest.fixture
def write_config(tmp_path: Path) -> Callable[..., Path]:
    """Write a config.yaml in tmp_path from a dict; database and outbox live in tmp_path."""

    def write(data: dict[str, Any], name: str = "config.yaml") -> Path:
        data = {
            "database": str(tmp_path / "monitor.db"),
            "outbox": str(tmp_path / "outbox"),
            **data,
        }
        path = tmp_path / name
        path.write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False), encoding="utf-8")
        return path

    return write
