"""The environment failing under a running daemon or a command: a full disk, a read-only
database, a database server that is not there. One line each, naming what and what to do;
a daemon whose ticks keep failing logs the error once per change, then a summary."""

from __future__ import annotations

import itertools
import os
import pwd
import resource
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from tests import test_daemon
from tests.conftest import free_port
from tests.test_daemon import GRACE, Daemon, wait_for

pytestmark = pytest.mark.slow
notify, start = test_daemon.notify, test_daemon.start  # the daemon tests' fixtures


def growing_feed(httpserver: HTTPServer) -> None:
    """Each request: 50 new items of about 2 KB, so every poll writes to the database."""
    requests = itertools.count()

    def respond(_request: Request) -> Response:
        n = next(requests)
        items = "".join(
            f"<item><title>Story {n}-{i} about xAI</title><guid>g{n}-{i}</guid>"
            f"<link>http://127.0.0.1/{n}/{i}</link>"
            f"<description>{f'word{i} ' * 300}</description></item>"
            for i in range(50)
        )
        body = f'<?xml version="1.0"?><rss version="2.0"><channel><title>t</title>{items}'
        return Response(body + "</channel></rss>", content_type="application/rss+xml")

    httpserver.expect_request("/feed").respond_with_handler(respond)


def file_size_limit(pid: int, limit: int) -> None:
    """What a full disk does to a process: a write past `limit` bytes into any file fails
    (EFBIG; SQLite says "disk I/O error"). Python ignores SIGXFSZ, so only the write fails."""
    resource.prlimit(pid, resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))


def test_a_full_disk_is_logged_once_then_summarised_then_its_end(
    httpserver: HTTPServer,
    tmp_path: Path,
    write_config: Callable[..., Path],
    start: Callable[..., Daemon],
) -> None:
    """It was a 60-120 line traceback at every tick: about 130 MB of log a day."""
    growing_feed(httpserver)
    config = write_config(
        {
            "feeds": [{"name": "a", "url": httpserver.url_for("/feed"), "interval": "1s"}],
            "polling": {"min_interval": "1s"},
            "watchlists": [
                {"name": "w", "terms": ["xAI"], "recipients": ["a@example.org"], "digest": "hourly"}
            ],
        }
    )
    daemon = start(config, MONITOR_TICK_ERROR_SUMMARY="2")
    daemon.wait_logged("polled 1 feeds: 50 new items")
    files = [tmp_path / name for name in ("monitor.db", "monitor.db-wal")]
    file_size_limit(daemon.process.pid, max(f.stat().st_size for f in files if f.exists()))
    failed = daemon.wait_logged("poll tick failed")
    assert "the database: disk I/O error; is its disk full or failing?" in failed[0]
    daemon.wait_logged("poll tick still failing")  # after MONITOR_TICK_ERROR_SUMMARY
    file_size_limit(daemon.process.pid, resource.RLIM_INFINITY)
    daemon.wait_logged("poll tick works again, after")
    polls = len(daemon.logged("new items"))
    wait_for(lambda: len(daemon.logged("new items")) > polls, "a poll that stores items")
    assert "Traceback" not in daemon.log()
    assert len(daemon.logged("poll tick failed")) == 1
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(timeout=GRACE + 15) == 0, daemon.log()


@pytest.fixture
def read_only(tmp_path: Path) -> Iterator[Callable[[Path], None]]:
    """Make a file read-only for this user: chmod, or for root (whom modes do not stop)
    the immutable attribute."""
    made: list[Path] = []

    def make(path: Path) -> None:
        if os.geteuid() != 0:
            path.chmod(0o444)
            return
        done = subprocess.run(["chattr", "+i", str(path)], capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"running as root, and chattr +i is not possible here: {done.stderr}")
        made.append(path)

    yield make
    for path in made:
        subprocess.run(["chattr", "-i", str(path)], check=True)


def run_cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "monitor", "--config", str(config), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize("command", [["run"], ["poll"], ["digest", "--send"]])
def test_a_read_only_database_is_one_line_naming_file_and_user(
    command: list[str],
    tmp_path: Path,
    write_config: Callable[..., Path],
    read_only: Callable[[Path], None],
) -> None:
    config = write_config(
        {
            "feeds": [{"name": "a", "url": "http://127.0.0.1:9/feed"}],
            "watchlists": [{"name": "w", "terms": ["x"], "recipients": ["a@example.org"]}],
        }
    )
    assert run_cli(config, "poll").returncode == 0  # the database exists, written once
    database = tmp_path / "monitor.db"
    read_only(database)
    done = run_cli(config, *command)
    assert done.returncode == 1, done.stderr
    user = pwd.getpwuid(os.geteuid()).pw_name
    assert done.stderr == (
        f"monitor: database {database} is read-only: permission denied for user {user} on "
        f"{database}, which it owns; check its mode\n"
    )


def test_migrate_db_to_a_server_that_is_not_there_is_one_line(
    write_config: Callable[..., Path],
) -> None:
    config = write_config(
        {
            "feeds": [{"name": "a", "url": "http://127.0.0.1:9/feed"}],
            "watchlists": [{"name": "w", "terms": ["x"], "recipients": ["a@example.org"]}],
        }
    )
    assert run_cli(config, "poll").returncode == 0
    target = f"postgresql+psycopg://monitor:secret@127.0.0.1:{free_port()}/monitor"
    done = run_cli(config, "migrate-db", "--to", target)
    assert done.returncode == 1, done.stderr
    [line] = done.stderr.splitlines()
    assert line.startswith(
        f"monitor: the target database {target.replace(':secret', ':***')} cannot be reached: "
    )
    assert "Connection refused" in line and line.endswith("Nothing was copied")
    assert "secret" not in done.stderr


def test_a_full_disk_under_monitor_poll_is_one_line(
    httpserver: HTTPServer, tmp_path: Path, write_config: Callable[..., Path]
) -> None:
    growing_feed(httpserver)
    config = write_config(
        {
            "feeds": [{"name": "a", "url": httpserver.url_for("/feed")}],
            "watchlists": [{"name": "w", "terms": ["xAI"], "recipients": ["a@example.org"]}],
        }
    )
    assert run_cli(config, "poll").returncode == 0
    limit = 64 * 1024  # the database is larger: it is read, but no file can grow past this
    assert (tmp_path / "monitor.db").stat().st_size > limit
    done = subprocess.run(
        [sys.executable, "-m", "monitor", "--config", str(config), "poll", "--all"],
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=lambda: file_size_limit(0, limit),
    )
    assert done.returncode == 1, done.stderr
    assert done.stderr.splitlines()[-1].startswith(
        "monitor: the database: disk I/O error; is its disk full or failing?"
    )
    assert "Traceback" not in done.stderr
