"""The SQLite file lock: one-shot commands cannot overlap a running daemon on one database."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from monitor.cli import main
from monitor.errors import LockedError
from monitor.lock import database_lock, owner_path

HOLDER = """
import sys
from monitor.lock import database_lock
with database_lock(sys.argv[1], "monitor run"):
    print("held", flush=True)
    sys.stdin.read()  # until the test closes stdin (or kills this process)
"""


@pytest.fixture
def held(sqlite_url: str) -> Iterator[subprocess.Popen[str]]:
    """Another process holding the lock, as a running daemon does."""
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, sqlite_url],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None and holder.stdout.readline() == "held\n"
    yield holder
    if holder.poll() is None:
        holder.kill()
    holder.wait(10)
    for stream in (holder.stdin, holder.stdout):
        assert stream is not None
        stream.close()


def test_a_second_holder_is_refused_with_the_owner_named(
    sqlite_url: str, held: subprocess.Popen[str]
) -> None:
    with pytest.raises(LockedError) as caught, database_lock(sqlite_url, "monitor poll"):
        pass
    assert f"(monitor run, pid {held.pid})" in str(caught.value)
    assert "stop it first" in str(caught.value)


def test_the_lock_is_free_again_after_the_holder_is_killed(
    sqlite_url: str, held: subprocess.Popen[str]
) -> None:
    held.kill()  # kill -9: the kernel drops the lock with the process
    held.wait(10)
    with database_lock(sqlite_url, "monitor poll"):
        path = owner_path(sqlite_url)
        assert path is not None
        assert path.read_text().startswith("monitor poll, pid ")


def test_cli_digest_send_does_not_overlap_a_daemon(
    held: subprocess.Popen[str],
    write_config: Callable[..., Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = write_config(  # its database is the sqlite_url file the holder has locked
        {
            "feeds": [{"name": "a", "url": "http://127.0.0.1:9/feed"}],
            "watchlists": [{"name": "w", "terms": ["x"], "recipients": ["a@example.org"]}],
        }
    )
    assert main(["--config", str(path), "digest", "--send"]) == 1
    assert "another monitor process (monitor run" in capsys.readouterr().err


def test_postgresql_needs_no_file_lock() -> None:
    assert owner_path("postgresql+psycopg://monitor@127.0.0.1/monitor") is None
    assert owner_path("sqlite:///:memory:") is None
    assert owner_path("sqlite:////var/lib/monitor/monitor.db") == Path(
        "/var/lib/monitor/monitor.db.owner"
    )


def test_a_symlink_to_the_database_reaches_the_same_lock(
    tmp_path: Path, sqlite_url: str, held: subprocess.Popen[str]
) -> None:
    """The lock was named after the path: a second daemon came in through a symlink, cleared
    the first one's send leases, and a recipient got a message twice."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "link.db").symlink_to(tmp_path / "monitor.db")
    with (
        pytest.raises(LockedError) as caught,
        database_lock(f"sqlite:///{elsewhere / 'link.db'}", "monitor run"),
    ):
        pass
    assert f"(monitor run, pid {held.pid}) is using {tmp_path / 'monitor.db'}" in str(caught.value)


def test_a_hard_link_to_the_database_reaches_the_same_lock(
    tmp_path: Path, sqlite_url: str, held: subprocess.Popen[str]
) -> None:
    """Through a hard link, each daemon also had its own -wal file: a corruption risk."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "other.db").hardlink_to(tmp_path / "monitor.db")
    with (
        pytest.raises(LockedError) as caught,
        database_lock(f"sqlite:///{elsewhere / 'other.db'}", "monitor run"),
    ):
        pass
    assert f"is using {elsewhere / 'other.db'} under another of its 2 names" in str(caught.value)


def test_a_second_daemon_through_a_symlink_is_refused(
    tmp_path: Path, held: subprocess.Popen[str], write_config: Callable[..., Path]
) -> None:
    (tmp_path / "link.db").symlink_to(tmp_path / "monitor.db")
    path = write_config(
        {
            "database": str(tmp_path / "link.db"),
            "feeds": [{"name": "a", "url": "http://127.0.0.1:9/feed"}],
            "watchlists": [{"name": "w", "terms": ["x"], "recipients": ["a@example.org"]}],
        }
    )
    done = subprocess.run(
        [sys.executable, "-m", "monitor", "--config", str(path), "run"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1, done.stderr
    assert done.stderr.startswith(f"monitor: another monitor process (monitor run, pid {held.pid})")
    assert "Traceback" not in done.stderr
