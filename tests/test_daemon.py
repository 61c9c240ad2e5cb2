"""`monitor run` as a real subprocess: local feed server, local SMTP server, fast ticks.

The daemon's ticks are shortened with MONITOR_TICK_* (docs/operations.md). Waits poll for
a condition with a generous deadline; no assert depends on how fast this machine is, except
the shutdown bound, which is the contract under test.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from email import message_from_bytes, policy
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from monitor.app import running_app
from monitor.config import load_config
from monitor.daemon import Daemon as DaemonUnderTest
from monitor.daemon import Ticks
from monitor.metrics import Metrics
from monitor.notify import Notifier
from monitor.store import open_store
from tests.conftest import SmtpRecorder, free_port
from tests.feeds import ENGLISH_NOW, GERMAN_NOW, RECENT, rss

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
WAIT = 60.0  # seconds a condition may take on a loaded machine before the test fails
GRACE = 5.0  # the shutdown bound given to the daemon in these tests
FAST = {
    "MONITOR_TICK_POLL": "0.2",
    "MONITOR_TICK_DIGEST": "0.3",
    "MONITOR_TICK_HEALTH": "0.3",
    "MONITOR_TICK_GRACE": str(GRACE),
}


def wait_for(condition: Callable[[], Any], what: str, timeout: float = WAIT) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


class NotifySocket:
    """What systemd does: a datagram socket collecting sd_notify messages."""

    def __init__(self) -> None:
        self.directory = tempfile.mkdtemp(prefix="sdn")  # short: sun_path holds ~107 bytes
        self.path = os.path.join(self.directory, "notify")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.2)
        self.messages: list[dict[str, str]] = []
        self.closed = False
        self.thread = threading.Thread(target=self._receive, daemon=True)
        self.thread.start()

    def _receive(self) -> None:
        while not self.closed:
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            self.messages.append(dict(line.split("=", 1) for line in data.decode().splitlines()))

    def seen(self, key: str, value: str | None = None) -> list[dict[str, str]]:
        return [m for m in list(self.messages) if key in m and value in (None, m[key])]

    def close(self) -> None:
        self.closed = True
        self.thread.join()
        self.sock.close()
        os.unlink(self.path)
        os.rmdir(self.directory)


class Daemon:
    """`python -m monitor run` with its stderr collected line by line."""

    def __init__(self, config: Path, env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "monitor", "--config", str(config), "run"],
            cwd=config.parent,
            env={**os.environ, **FAST, **env},
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
            start_new_session=True,  # its own process group, so kill() reaches the workers
        )
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line.rstrip("\n"))

    def logged(self, text: str) -> list[str]:
        return [line for line in list(self.lines) if text in line]

    def wait_logged(self, text: str) -> list[str]:
        return wait_for(lambda: self.logged(text), f"log line {text!r} in:\n" + self.log())  # type: ignore[no-any-return]

    def log(self) -> str:
        return "\n".join(self.lines)

    def signal(self, number: int) -> None:
        self.process.send_signal(number)

    def wait(self, timeout: float) -> int:
        code = self.process.wait(timeout)
        self.reader.join(5)
        return code

    def kill(self) -> None:
        """kill -9 the daemon and its parse workers, as systemd does with the unit's cgroup."""
        with contextlib.suppress(ProcessLookupError):  # already gone, workers and all
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)
        self.reader.join(10)  # EOF once every process holding the pipe is gone
        if not self.reader.is_alive() and self.process.stderr is not None:
            self.process.stderr.close()


@pytest.fixture
def notify() -> Iterator[NotifySocket]:
    listener = NotifySocket()
    yield listener
    listener.close()


@pytest.fixture
def start(notify: NotifySocket) -> Iterator[Callable[..., Daemon]]:
    started: list[Daemon] = []

    def start_daemon(config: Path, **env: str) -> Daemon:
        daemon = Daemon(config, {"NOTIFY_SOCKET": notify.path, **env})
        started.append(daemon)
        return daemon

    yield start_daemon
    for daemon in started:
        daemon.kill()
        print(f"--- daemon {daemon.process.pid} log:\n{daemon.log()}")  # shown when a test fails


def base_config(httpserver: HTTPServer, port: int) -> dict[str, Any]:
    return {
        "feeds": [{"name": "Nachrichten", "url": httpserver.url_for("/de.xml"), "interval": "1s"}],
        "watchlists": [
            {
                "name": "xAI",
                "terms": ["xAI", "Grok"],
                "recipients": ["a@example.org", "b@example.org"],
                "digest": "hourly",
            }
        ],
        "smtp": {
            "host": "127.0.0.1",
            "port": port,
            "from": "monitor@example.org",
            "starttls": False,
        },
    }


def message_ids(recorder: SmtpRecorder) -> list[str]:
    return [str(m["Message-ID"]) for m in recorder.parsed()]


def outbox_of(config: Path) -> Any:
    store = open_store(load_config(config).database)
    try:
        return store.outbox()
    finally:
        store.close()


def fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=WAIT) as response:
        return str(response.read().decode())


def run_cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "monitor", "--config", str(config), *args],
        capture_output=True,
        text=True,
        timeout=WAIT,
        cwd=config.parent,
    )


# --------------------------------------------------------------------------- tests


def test_starts_notifies_polls_sends_and_stops_cleanly(
    httpserver: HTTPServer,
    smtp_server: tuple[SmtpRecorder, int],
    write_config: Callable[..., Path],
    notify: NotifySocket,
    start: Callable[..., Daemon],
) -> None:
    recorder, port = smtp_server
    httpserver.expect_request("/de.xml").respond_with_data(
        GERMAN_NOW, content_type="application/rss+xml"
    )
    metrics = f"127.0.0.1:{free_port()}"
    config = write_config({**base_config(httpserver, port), "metrics": {"listen": metrics}})
    daemon = start(config, WATCHDOG_USEC="3000000")

    wait_for(lambda: notify.seen("READY", "1"), "READY=1")
    wait_for(lambda: len(recorder.messages) == 2, "one digest per recipient")
    assert sorted(str(m["To"]) for m in recorder.parsed()) == ["a@example.org", "b@example.org"]
    assert "Babuschkin verlässt xAI" in recorder.parsed()[0].get_body(("plain",)).get_content()  # type: ignore[union-attr]
    wait_for(lambda: notify.seen("WATCHDOG", "1"), "a watchdog ping")
    wanted = "1 feeds ok, 0 failing; outbox 0 pending, 0 dead"
    wait_for(lambda: notify.seen("STATUS", wanted), f"STATUS={wanted}")

    # The counter follows the digest tick's end; the STATUS above may come from a health
    # tick between the last mark and that end (seen once on a loaded machine).
    def counted() -> str | None:
        text = fetch(f"http://{metrics}/metrics")
        return text if 'monitor_deliveries_total{result="sent"} 2.0' in text else None

    scraped = wait_for(counted, "the deliveries counted")
    assert 'monitor_polls_total{result="changed"} 1.0' in scraped
    assert "monitor_fetch_seconds_count 1.0" in scraped  # the fetch was timed
    assert 'monitor_feeds{state="ok"} 1.0' in scraped
    assert fetch(f"http://{metrics}/healthz") == "ok\n"

    shown = run_cli(config, "status")
    assert shown.returncode == 0, shown.stderr
    assert f"running (pid {daemon.process.pid}" in shown.stdout
    assert "ok" in shown.stdout and "xAI" in shown.stdout

    overlapping = run_cli(config, "poll")  # the daemon holds the SQLite lock
    assert overlapping.returncode == 1
    assert "another monitor process (monitor run" in overlapping.stderr

    daemon.signal(signal.SIGTERM)
    assert daemon.wait(timeout=GRACE + 15) == 0, daemon.log()
    assert notify.seen("STOPPING", "1")
    assert daemon.logged("monitor stopped")
    assert len(recorder.messages) == 2  # nothing sent twice
    assert "not running" in run_cli(config, "status").stdout


def test_sighup_with_a_broken_file_keeps_the_running_config(
    httpserver: HTTPServer,
    smtp_server: tuple[SmtpRecorder, int],
    write_config: Callable[..., Path],
    notify: NotifySocket,
    start: Callable[..., Daemon],
) -> None:
    recorder, port = smtp_server
    httpserver.expect_request("/de.xml").respond_with_data(
        GERMAN_NOW, content_type="application/rss+xml"
    )
    config = write_config(base_config(httpserver, port))
    daemon = start(config)
    wait_for(lambda: len(recorder.messages) == 2, "the first digests")

    good = config.read_text(encoding="utf-8")
    config.write_text(good.replace("digest: hourly", "digest: sometimes"), encoding="utf-8")
    daemon.signal(signal.SIGHUP)
    rejected = daemon.wait_logged("reload rejected")
    line = next(n for n, text in enumerate(good.splitlines(), 1) if "digest: hourly" in text)
    assert f"{config}:{line}:" in rejected[0] and "'sometimes' is not a schedule" in rejected[0]
    assert notify.seen("RELOADING", "1")
    wait_for(lambda: notify.seen("READY", "1")[1:], "READY=1 after the reload")
    assert daemon.process.poll() is None  # still running, on the old config

    # A control character (pasted from a word processor) stops YAML before parsing begins.
    config.write_text(good.replace("digest: hourly", "digest: hourly\x0b"), encoding="utf-8")
    daemon.signal(signal.SIGHUP)
    wait_for(lambda: len(daemon.logged("reload rejected")) > 1, "the second rejection")
    second = daemon.logged("reload rejected")[1]
    assert f"{config}:{line}:" in second and "U+000B is not allowed in YAML" in second
    wait_for(lambda: notify.seen("READY", "1")[2:], "READY=1 after the second reload")
    assert daemon.process.poll() is None

    daemon.signal(signal.SIGTERM)
    assert daemon.wait(timeout=GRACE + 15) == 0, daemon.log()


def test_a_sighup_while_starting_is_kept_for_when_it_runs(
    httpserver: HTTPServer, write_config: Callable[..., Path], start: Callable[..., Daemon]
) -> None:
    """SIGHUP's default action ended the process, silently, until the daemon installed its
    handler: a `systemctl reload` during a long migration stopped the service."""
    httpserver.expect_request("/de.xml").respond_with_data(GERMAN_NOW)
    data = base_config(httpserver, 1)
    del data["smtp"]
    config = write_config(data)
    daemon = start(config)
    owner = config.parent / "monitor.db.owner"  # written once the database lock is held
    wait_for(owner.exists, "the daemon to take the database lock")
    while not daemon.logged("monitor running") and daemon.process.poll() is None:
        daemon.signal(signal.SIGHUP)
        time.sleep(0.02)
    assert daemon.process.poll() is None, daemon.log()
    daemon.wait_logged("configuration reloaded")
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(timeout=GRACE + 15) == 0, daemon.log()


def test_sighup_applies_an_added_feed_and_a_new_watchlist(
    httpserver: HTTPServer,
    smtp_server: tuple[SmtpRecorder, int],
    write_config: Callable[..., Path],
    start: Callable[..., Daemon],
) -> None:
    recorder, port = smtp_server
    httpserver.expect_request("/de.xml").respond_with_data(
        GERMAN_NOW, content_type="application/rss+xml"
    )
    httpserver.expect_request("/en.xml").respond_with_data(
        ENGLISH_NOW, content_type="application/rss+xml"
    )
    data = base_config(httpserver, port)
    config = write_config(data)
    daemon = start(config)
    wait_for(lambda: len(recorder.messages) == 2, "the first digests")

    data["feeds"].append(
        {"name": "Tech News", "url": httpserver.url_for("/en.xml"), "interval": "1s"}
    )
    data["watchlists"].append(
        {
            "name": "Storms",
            "terms": ["storm"],
            "recipients": ["c@example.org"],
            "digest": "immediate",
        }
    )
    data["digests"] = {"hold": "1s"}  # immediate alerts: do not wait to batch a burst
    data["polling"] = {**data.get("polling", {}), "per_host": 1}  # bound at start
    config = write_config(data)
    daemon.signal(signal.SIGHUP)
    reloaded = daemon.wait_logged("configuration reloaded")
    assert "feeds added: Tech News" in reloaded[0] and "watchlists added: Storms" in reloaded[0]
    assert daemon.logged("the polling.per_host setting changed; it takes effect on restart")

    wait_for(lambda: len(recorder.messages) == 3, "the new watchlist's alert")
    alert = recorder.parsed()[2]
    assert alert["To"] == "c@example.org"
    assert "Storm warning" in alert.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(timeout=GRACE + 15) == 0, daemon.log()


def hold_fetches(
    httpserver: HTTPServer, only_first: bool = False
) -> tuple[threading.Event, threading.Event]:
    """(fetching, release): /de.xml answers a request (only the first, with only_first) once
    `release` is set; `fetching` is set when such a request arrives."""
    fetching, release = threading.Event(), threading.Event()
    requests: list[Request] = []

    def held(request: Request) -> Response:
        requests.append(request)
        if not only_first or len(requests) == 1:
            fetching.set()
            release.wait(60)
        return Response(GERMAN_NOW, content_type="application/rss+xml")

    httpserver.expect_request("/de.xml").respond_with_handler(held)
    return fetching, release


def test_sigterm_during_a_slow_fetch_finishes_it_within_the_bound(
    httpserver: HTTPServer,
    write_config: Callable[..., Path],
    start: Callable[..., Daemon],
) -> None:
    fetching, release = hold_fetches(httpserver)
    data = base_config(httpserver, 1)
    del data["smtp"]
    config = write_config(data)
    daemon = start(config)
    wait_for(fetching.is_set, "the daemon to start fetching")

    daemon.signal(signal.SIGTERM)
    daemon.wait_logged("stopping")
    release.set()  # the in-flight fetch completes and is stored before the daemon exits
    assert daemon.wait(timeout=GRACE + 15) == 0, daemon.log()
    store = open_store(load_config(config).database)
    try:
        assert store.item_count() == 3
    finally:
        store.close()


def test_second_signal_exits_at_once(
    httpserver: HTTPServer, write_config: Callable[..., Path], start: Callable[..., Daemon]
) -> None:
    fetching, release = hold_fetches(httpserver)
    data = base_config(httpserver, 1)
    del data["smtp"]
    daemon = start(write_config(data), MONITOR_TICK_GRACE="60")
    wait_for(fetching.is_set, "the daemon to start fetching")
    children = _descendants(daemon.process.pid)
    assert children  # the parse process, the forkserver, ...
    daemon.signal(signal.SIGINT)
    daemon.wait_logged("stopping")
    daemon.signal(signal.SIGINT)
    try:
        assert daemon.wait(timeout=15) == 1
    finally:
        release.set()
    assert daemon.logged("exiting at once")
    # None outlives it: the parse processes used to, and kept the forkserver and the
    # resource tracker alive, about 90 MB each.
    wait_for(lambda: not any(_alive(pid) for pid in children), "the daemon's children to end")


def test_ctrl_c_in_a_terminal_stops_without_a_traceback(
    httpserver: HTTPServer, write_config: Callable[..., Path], start: Callable[..., Daemon]
) -> None:
    """Ctrl-C reaches every process of the terminal's foreground group, the parse
    processes too: `make run`, Ctrl-C used to end in two KeyboardInterrupt tracebacks from
    them, as if monitor had crashed."""
    httpserver.expect_request("/de.xml").respond_with_data(
        GERMAN_NOW, content_type="application/rss+xml"
    )
    data = base_config(httpserver, 1)
    del data["smtp"]
    daemon = start(write_config(data))
    daemon.wait_logged("polled 1 feeds")
    assert len(_descendants(daemon.process.pid)) >= 2  # the parse processes wait for work
    os.killpg(daemon.process.pid, signal.SIGINT)  # what the terminal does on Ctrl-C
    assert daemon.wait(timeout=GRACE + 15) == 0, daemon.log()
    assert daemon.logged("monitor stopped")
    assert not daemon.logged("Traceback"), daemon.log()
    assert not daemon.logged("KeyboardInterrupt"), daemon.log()


def test_the_parse_processes_end_when_the_daemon_is_killed_outright(
    httpserver: HTTPServer, write_config: Callable[..., Path], start: Callable[..., Daemon]
) -> None:
    """kill -9 of the main process alone (the OOM killer; a supervisor other than systemd,
    which kills the whole unit): its parse processes, and with them the forkserver and the
    resource tracker, used to stay for ever."""
    fetching, release = hold_fetches(httpserver)
    data = base_config(httpserver, 1)
    del data["smtp"]
    daemon = start(write_config(data))
    wait_for(fetching.is_set, "the daemon to start fetching")
    children = _descendants(daemon.process.pid)
    assert len(children) >= 2  # the parse process and the forkserver, at least
    os.kill(daemon.process.pid, signal.SIGKILL)
    try:
        daemon.process.wait(10)
    finally:
        release.set()
    wait_for(lambda: not any(_alive(pid) for pid in children), "the daemon's children to end")


def _descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        parent = todo.pop()
        for task in Path(f"/proc/{parent}/task").iterdir():
            children = (task / "children").read_text().split()
            found += map(int, children)
            todo += map(int, children)
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has ended; its new parent reaps it


def test_kill_9_mid_poll_then_restart_loses_nothing(
    httpserver: HTTPServer,
    smtp_server: tuple[SmtpRecorder, int],
    write_config: Callable[..., Path],
    start: Callable[..., Daemon],
) -> None:
    recorder, port = smtp_server
    fetching, release = hold_fetches(httpserver, only_first=True)
    config = write_config(base_config(httpserver, port))
    daemon = start(config)
    wait_for(fetching.is_set, "the daemon to start fetching")
    daemon.kill()
    release.set()

    start(config)
    wait_for(lambda: len(recorder.messages) == 2, "the digests after the restart")
    assert sorted(str(m["To"]) for m in recorder.parsed()) == ["a@example.org", "b@example.org"]
    text = recorder.parsed()[0].get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert "Babuschkin verlässt xAI" in text and "Grok-Chatbot" in text
    wait_for(lambda: outbox_of(config).pending == 0, "every delivery marked sent")


def test_kill_9_mid_send_resends_at_most_once_with_the_same_message_id(
    httpserver: HTTPServer,
    write_config: Callable[..., Path],
    smtp_server: tuple[SmtpRecorder, int],
    start: Callable[..., Daemon],
) -> None:
    """The documented window: the server has the message, the daemon has not marked it."""
    recorder, port = smtp_server
    httpserver.expect_request("/de.xml").respond_with_data(
        GERMAN_NOW, content_type="application/rss+xml"
    )
    config = write_config(base_config(httpserver, port))
    hold = HeldSmtp(recorder)
    daemon = start(config)
    hold.wait_held()
    daemon.kill()
    hold.release()

    start(config)
    wait_for(lambda: len(recorder.messages) == 3, "the remaining digest and one resend")
    wait_for(lambda: outbox_of(config).pending == 0, "every delivery marked sent")
    ids = message_ids(recorder)
    assert ids[0] == hold.held_id  # the first copy, accepted just before the kill
    assert sorted(ids).count(hold.held_id) == 2  # resent once, the same bytes and Message-ID
    assert len(set(ids)) == 2  # the other recipient's digest was sent exactly once
    copies = Counter(str(m["To"]) for m in recorder.parsed())
    assert sorted(copies.values()) == [1, 2]


class HeldSmtp:
    """Makes the recorder keep the first message, then stall before answering 250."""

    def __init__(self, recorder: SmtpRecorder) -> None:
        self.recorder = recorder
        self.held = threading.Event()
        self.go = threading.Event()
        self.held_id = ""
        original = recorder.handle_DATA

        async def handle_data(server: Any, session: Any, envelope: Any) -> str:
            reply = await original(server, session, envelope)
            if not self.held.is_set():
                parsed = message_from_bytes(envelope.content, policy=policy.default)
                self.held_id = str(parsed["Message-ID"])
                self.held.set()
                while not self.go.is_set():  # the SMTP server's own loop keeps running
                    await asyncio.sleep(0.05)
            return reply

        recorder.handle_DATA = handle_data  # type: ignore[method-assign]

    def wait_held(self) -> None:
        wait_for(self.held.is_set, "the first message to reach the SMTP server")

    def release(self) -> None:
        self.go.set()


def test_new_feed_data_is_polled_again_after_restart(
    httpserver: HTTPServer,
    write_config: Callable[..., Path],
    start: Callable[..., Daemon],
    tmp_path: Path,
) -> None:
    """A restarted daemon continues from the database: known items are not mailed again."""
    httpserver.expect_request("/de.xml").respond_with_data(
        GERMAN_NOW, content_type="application/rss+xml"
    )
    data = base_config(httpserver, 1)
    del data["smtp"]
    config = write_config(data)
    daemon = start(config)
    outbox = tmp_path / "outbox" / "new"
    wait_for(lambda: len(list(outbox.glob("*.eml"))) == 2, "two digests in the outbox")
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(timeout=GRACE + 15) == 0

    httpserver.clear()
    more = rss("Nachrichten", [("xai-new", "xAI stellt Grok 6 vor", "Neu.")], start=RECENT)
    httpserver.expect_request("/de.xml").respond_with_data(more, content_type="application/rss+xml")
    data["watchlists"][0]["digest"] = "immediate"
    data["digests"] = {"hold": "1s"}
    config = write_config(data)
    start(config)
    wait_for(lambda: len(list(outbox.glob("*.eml"))) == 4, "one alert per recipient")
    newest = sorted(outbox.glob("*.eml"), key=lambda p: p.stat().st_mtime)[-1].read_text()
    assert "Grok 6" in newest and "Babuschkin" not in newest


def test_an_alerted_article_is_not_repeated_in_the_digest(
    httpserver: HTTPServer,
    smtp_server: tuple[SmtpRecorder, int],
    write_config: Callable[..., Path],
    start: Callable[..., Daemon],
) -> None:
    """Issue 23's overlap case: one immediate and three digest watchlists match one article
    for one recipient: one alert, and the digest lists it in one line, not again in full."""
    recorder, port = smtp_server
    recent = datetime.now(UTC) - timedelta(hours=1)  # news, not backlog
    documents = [rss("n-tv", [("wetter", "Wetter: Schnee", "Es wird kälter.")], start=recent)]
    httpserver.expect_request("/de.xml").respond_with_handler(
        lambda _: Response(documents[-1], content_type="application/rss+xml")
    )
    data = base_config(httpserver, port)
    daily = {"recipients": ["a@example.org"], "digest": "daily 07:00"}
    data["watchlists"] = [
        {"name": "Babuschkin", "terms": ["Babuschkin"], "recipients": ["a@example.org"]},
        {"name": "xAI", "terms": ["xAI"], **daily},
        {"name": "Elon Musk", "terms": ["Elon Musk"], **daily},
        {"name": "Risikokapital", "terms": ["Risikokapitalfonds"], **daily},
    ]
    data["watchlists"][0]["priority"] = "immediate"
    data["digests"] = {"hold": "1s"}
    config = write_config(data)
    daemon = start(config)
    daemon.wait_logged("polled")  # the first poll: the digests' first periods, empty

    babuschkin = (
        "babuschkin",
        "Igor Babuschkin verlässt xAI",
        "Der Mitgründer von xAI verlässt die Firma von Elon Musk und plant einen "
        "Risikokapitalfonds.",
    )
    grok = ("grok", "xAI zeigt Grok 5", "Schneller und größer.")
    documents.append(rss("n-tv", [babuschkin, grok], start=recent))
    wait_for(lambda: recorder.messages, "the alert")
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(timeout=GRACE + 15) == 0, daemon.log()
    result = run_cli(config, "digest", "--send")
    assert result.returncode == 0, result.stderr

    alert, digest = recorder.parsed()
    alert_text = alert.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert alert["Subject"] == "monitor alert: 1 new for Babuschkin"
    assert alert_text.count("Igor Babuschkin verlässt xAI") == 1
    assert "Babuschkin · xAI · Elon Musk · Risikokapital" in alert_text  # every list it matched
    text = digest.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert digest["Subject"] == "monitor digest: 1 new for xAI"
    assert "xAI zeigt Grok 5" in text
    assert text.count("Igor Babuschkin verlässt xAI") == 1, text  # one line, not the entry
    assert "plant einen" not in text and "/babuschkin" not in text
    line = next(line for line in text.splitlines() if "Igor Babuschkin verlässt xAI" in line)
    assert text.index("Already alerted") < text.index(line)
    assert "alerted" in line and "(Nachrichten)" in line
    store = open_store(load_config(config).database)
    try:
        outbox = store.outbox()
        assert (outbox.pending, outbox.ready, outbox.dead) == (0, 0, 0)  # all accounted for
    finally:
        store.close()


@pytest.mark.parametrize("name", ["monitor.service", "monitor@.service"])
def test_unit_file_passes_systemd_analyze_verify(tmp_path: Path, name: str) -> None:
    """The unit as shipped, with ExecStart pointed at this checkout's monitor (it must exist)."""
    analyze = "/usr/bin/systemd-analyze"
    if not os.path.exists(analyze):
        pytest.skip("systemd-analyze is not installed here")
    executable = Path(sys.executable).with_name("monitor")
    if not executable.exists():
        pytest.skip(f"the monitor entry point is not installed next to {sys.executable}")
    unit = (ROOT / "systemd" / name).read_text(encoding="utf-8")
    assert "ExecStart=/opt/monitor/bin/monitor " in unit
    local = tmp_path / name.replace("@", "@1")  # a template is verified as an instance
    local.write_text(unit.replace("/opt/monitor/bin/monitor", str(executable)), encoding="utf-8")
    result = subprocess.run(
        [analyze, "verify", str(local)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert local.name not in result.stderr, result.stderr  # no warnings about the unit


@pytest.mark.parametrize("name", ["monitor.service", "monitor@.service"])
def test_every_unit_directive_is_commented(name: str) -> None:
    """Each directive sits in a block of directives that starts under a comment."""
    lines = (ROOT / "systemd" / name).read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines):
        if not re.match(r"^[A-Za-z]+=", line):
            continue
        above = number - 1
        while above >= 0 and re.match(r"^[A-Za-z]+=", lines[above]):
            above -= 1
        assert above >= 0 and lines[above].startswith("#"), f"line {number + 1}: {line}"


async def test_watchdog_is_withheld_while_the_database_does_not_answer(
    write_config: Callable[..., Path], tmp_path: Path, notify: NotifySocket
) -> None:
    """In process: another connection holds SQLite's write lock longer than the stall bound."""
    path = write_config(
        {
            "feeds": [{"name": "a", "url": "http://127.0.0.1:9/feed"}],
            "watchlists": [{"name": "w", "terms": ["x"], "recipients": ["a@example.org"]}],
        }
    )
    metrics = Metrics()
    async with running_app(load_config(path)) as app:
        notifier = Notifier({"NOTIFY_SOCKET": notify.path})
        daemon = DaemonUnderTest(app, path, Ticks(stall=0.5), notifier, metrics)
        daemon._schedule()
        daemon.scheduler.start(paused=True)  # alive, but no tick runs on its own here
        try:
            await daemon.health_tick()
            wait_for(lambda: notify.seen("WATCHDOG", "1"), "a ping while healthy")
            blocker = sqlite3.connect(tmp_path / "monitor.db", isolation_level=None)
            blocker.execute("BEGIN EXCLUSIVE")
            pings = len(notify.seen("WATCHDOG"))
            await daemon.health_tick()
            unhealthy = "unhealthy: database did not answer within 0.5s"
            wait_for(lambda: notify.seen("STATUS", unhealthy), unhealthy)
            assert len(notify.seen("WATCHDOG")) == pings
            assert samples_of(metrics)["monitor_healthy"] == 0
            blocker.execute("ROLLBACK")
            blocker.close()
            await daemon.health_tick()
            wait_for(lambda: len(notify.seen("WATCHDOG")) > pings, "pings again once healthy")
            assert samples_of(metrics)["monitor_healthy"] == 1
        finally:
            daemon.scheduler.shutdown(wait=False)


def samples_of(metrics: Metrics) -> dict[str, float]:
    text = metrics.exposition().decode()
    return {
        s.name: s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if not s.labels
    }


def test_a_new_config_on_a_used_database_gets_its_first_digests_after_its_first_poll(
    httpserver: HTTPServer,
    smtp_server: tuple[SmtpRecorder, int],
    write_config: Callable[..., Path],
    start: Callable[..., Daemon],
) -> None:
    """Issue 23: a config with other watchlists and recipients, started on a database that
    has seen polls and digests before, got today's period of each new (watchlist, recipient)
    marked handled, empty, at start, before its first poll: its matches waited a day."""
    recorder, port = smtp_server
    recent = datetime.now(UTC) - timedelta(hours=1)
    httpserver.expect_request("/de.xml").respond_with_data(
        rss("Nachrichten", [("xai-1", "xAI baut Rechenzentrum", "Grok wächst.")], start=recent)
    )
    data = base_config(httpserver, port)
    config = write_config(data)
    daemon = start(config)
    wait_for(lambda: len(recorder.messages) == 2, "the first config's digests")
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(timeout=GRACE + 15) == 0, daemon.log()

    httpserver.clear()
    news = [("xai-2", "xAI stellt Grok 6 vor", "Neu."), ("sturm", "Sturm über Berlin", "Orkan.")]
    httpserver.expect_request("/de.xml").respond_with_data(rss("Nachrichten", news, start=recent))
    storms = [("storm", "Storm warning for the coast", "Heavy rain.")]
    httpserver.expect_request("/en.xml").respond_with_data(
        rss("Tech News", storms, base="https://tech.example.com", start=recent)
    )
    data["feeds"].append({"name": "Tech News", "url": httpserver.url_for("/en.xml")})
    data["watchlists"] = [
        {"name": "xAI", "terms": ["xAI"], "recipients": ["c@example.org"], "digest": "daily 07:00"},
        {
            "name": "Storms",
            "terms": ["storm", "Sturm"],
            "recipients": ["c@example.org", "d@example.org"],
            "digest": "daily 07:00",
        },
    ]
    config = write_config(data)
    daemon = start(config)
    wait_for(lambda: len(recorder.messages) == 4, "a first digest for c and for d")
    digests = {str(m["To"]): m.get_body(("plain",)).get_content() for m in recorder.parsed()[2:]}  # type: ignore[union-attr]
    assert sorted(digests) == ["c@example.org", "d@example.org"]
    assert "Grok 6" in digests["c@example.org"] and "Storm warning" in digests["c@example.org"]
    assert "Sturm über Berlin" in digests["d@example.org"]
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(timeout=GRACE + 15) == 0, daemon.log()
