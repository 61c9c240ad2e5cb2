"""SIGHUP on a running `monitor run`: read off the loop with a deadline, bursts merged, a
SIGHUP during start-up kept, a hostile config refused with the running one kept.

The config is often a named pipe here: each time the daemon reads it, the read waits until
the test hands the text over, so a test knows the daemon is reading its config right now
and can hold it there, with no timing involved.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from pytest_httpserver import HTTPServer

from tests import test_daemon
from tests.conftest import free_port
from tests.feeds import GERMAN
from tests.test_config import ALIAS_BOMB
from tests.test_daemon import GRACE, Daemon, NotifySocket, base_config, wait_for

pytestmark = pytest.mark.slow
notify, start = test_daemon.notify, test_daemon.start  # the daemon tests' fixtures
HEALTHZ_WAIT = 20.0  # a loop that is free answers well within this on a loaded machine


class ConfigPipe:
    """A config file that is a named pipe: the test decides when each read gets the text."""

    def __init__(self, path: Path, data: dict[str, Any]) -> None:
        self.path = path
        self.text = yaml.safe_dump(data, sort_keys=False)
        os.mkfifo(path)

    def reader(self) -> int | None:
        """A write end if the daemon has the pipe open for reading (or is opening it)."""
        try:
            return os.open(self.path, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as error:
            if error.errno == errno.ENXIO:  # nobody reads
                return None
            raise

    def hold(self) -> int:
        """Wait until the daemon reads the config, and keep it waiting for the text."""
        return wait_for(self.reader, "the daemon to read its config")  # type: ignore[no-any-return]

    def give(self, end: int) -> None:
        os.write(end, self.text.encode())  # far below the pipe's buffer
        os.close(end)

    def serve(self) -> None:
        self.give(self.hold())

    def is_read_within(self, seconds: float) -> bool:
        """Whether the daemon opens the pipe within `seconds` (then given an empty file)."""
        deadline = time.monotonic() + seconds
        while (end := self.reader()) is None:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)
        os.close(end)
        return True


def healthz(listen: str) -> str:
    with urllib.request.urlopen(f"http://{listen}/healthz", timeout=HEALTHZ_WAIT) as response:
        return str(response.read().decode())


@pytest.fixture
def daemon_config(httpserver: HTTPServer, tmp_path: Path) -> dict[str, Any]:
    httpserver.expect_request("/de.xml").respond_with_data(GERMAN)
    data = base_config(httpserver, 1)
    del data["smtp"]
    return {
        "database": str(tmp_path / "monitor.db"),
        "outbox": str(tmp_path / "outbox"),
        "metrics": {"listen": f"127.0.0.1:{free_port()}"},
        **data,
    }


def test_a_sighup_while_the_config_is_read_at_start_is_kept(
    daemon_config: dict[str, Any], tmp_path: Path, start: Callable[..., Daemon]
) -> None:
    """Before its handler was installed (imports, config: about 1.2 s), a SIGHUP ended
    `monitor run` silently with exit 129."""
    pipe = ConfigPipe(tmp_path / "config.yaml", daemon_config)
    daemon = start(pipe.path)
    end = pipe.hold()  # start-up is reading the config
    daemon.signal(signal.SIGHUP)
    with contextlib.suppress(BrokenPipeError):  # the reader gone: the assert below says why
        pipe.give(end)
    daemon.wait_logged("monitor running")
    assert daemon.process.poll() is None, daemon.log()
    pipe.serve()  # the reload the SIGHUP asked for, once running
    daemon.wait_logged("configuration reloaded")
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(timeout=GRACE + 15) == 0, daemon.log()


def test_a_reload_reads_off_the_loop_and_is_given_up_at_its_deadline(
    daemon_config: dict[str, Any], tmp_path: Path, start: Callable[..., Daemon]
) -> None:
    pipe = ConfigPipe(tmp_path / "config.yaml", daemon_config)
    daemon = start(pipe.path, MONITOR_TICK_RELOAD="2")
    pipe.serve()
    daemon.wait_logged("monitor running")
    listen = daemon_config["metrics"]["listen"]

    daemon.signal(signal.SIGHUP)
    end = pipe.hold()  # the reload reads, and gets nothing for now
    assert healthz(listen) == "ok\n"  # the loop answers meanwhile
    given_up = daemon.wait_logged("reload rejected")[0]
    assert f"{pipe.path}: reading the file took longer than 2 s and was given up" in given_up
    assert healthz(listen) == "ok\n"
    os.close(end)  # the abandoned read ends with an empty file; nobody listens any more
    wait_for(lambda: not pipe.is_read_within(0.0), "the abandoned read to end")

    daemon.signal(signal.SIGHUP)
    pipe.serve()
    assert "nothing changed" in daemon.wait_logged("configuration reloaded")[0]
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(timeout=GRACE + 15) == 0, daemon.log()


def test_a_burst_of_sighups_is_one_reload_and_at_most_one_more(
    daemon_config: dict[str, Any],
    tmp_path: Path,
    notify: NotifySocket,
    start: Callable[..., Daemon],
) -> None:
    """1,000 SIGHUPs in a row were 1,000 reloads on the loop: 40 s without a watchdog ping."""
    pipe = ConfigPipe(tmp_path / "config.yaml", daemon_config)
    daemon = start(pipe.path, WATCHDOG_USEC="3000000")
    pipe.serve()
    daemon.wait_logged("monitor running")
    listen = daemon_config["metrics"]["listen"]

    daemon.signal(signal.SIGHUP)
    end = pipe.hold()  # the first reload is in progress
    for _ in range(1000):
        daemon.signal(signal.SIGHUP)
    assert healthz(listen) == "ok\n"
    pings = len(notify.seen("WATCHDOG", "1"))
    wait_for(lambda: len(notify.seen("WATCHDOG", "1")) > pings, "watchdog pings meanwhile")
    pipe.give(end)
    daemon.wait_logged("configuration reloaded")
    pipe.serve()  # the one that waited
    wait_for(lambda: len(daemon.logged("configuration reloaded")) == 2, "the second reload")
    assert not pipe.is_read_within(3.0)
    assert len(daemon.logged("configuration reloaded")) == 2
    assert len(notify.seen("RELOADING", "1")) == 2
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(timeout=GRACE + 15) == 0, daemon.log()


def test_an_alias_bomb_sent_by_sighup_is_refused_and_the_running_config_kept(
    daemon_config: dict[str, Any], tmp_path: Path, start: Callable[..., Daemon]
) -> None:
    """It froze the loop for over 2 minutes at 1.9 GB: /healthz silent, SIGTERM ignored."""
    path = tmp_path / "config.yaml"
    good = yaml.safe_dump(daemon_config, sort_keys=False)
    path.write_text(good, encoding="utf-8")
    daemon = start(path)
    daemon.wait_logged("monitor running")
    listen = daemon_config["metrics"]["listen"]

    path.write_text(ALIAS_BOMB + good, encoding="utf-8")
    daemon.signal(signal.SIGHUP)
    refused = daemon.wait_logged("reload rejected")[0]
    assert f"{path}:6:8: alias *e makes the config expand to more than" in refused
    assert healthz(listen) == "ok\n"

    path.write_text(good, encoding="utf-8")
    daemon.signal(signal.SIGHUP)
    assert "1 feeds, 1 watchlists; nothing changed" in daemon.wait_logged("reloaded")[0]
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(timeout=GRACE + 15) == 0, daemon.log()
