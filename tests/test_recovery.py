"""Recovery an operator expects (issue 23.6), end to end through the CLI against local
servers: a manual send is a flush, state made by root stays the service's, libpq's
`postgres://`, what `status` says about polls and dead letters, List-Unsubscribe."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

import pytest
import yaml
from aiosmtpd.controller import Controller
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

import monitor
from monitor.cli import main
from tests.conftest import SmtpRecorder, free_port

NOBODY = 65534


class LiveFeed:
    """A feed whose entries carry the time they were added: new news, whatever rule decides
    what counts as backlog. It starts empty, so the first poll has nothing to hold back."""

    def __init__(self, httpserver: HTTPServer, path: str = "/news.xml") -> None:
        self.entries: list[tuple[str, str, datetime]] = []
        self.url = httpserver.url_for(path)
        httpserver.expect_request(path).respond_with_handler(self._serve)

    def add(self, slug: str, title: str) -> None:
        self.entries.append((slug, title, datetime.now(UTC) - timedelta(minutes=1)))

    def _serve(self, _: Request) -> Response:
        items = "".join(
            f"<item><title>{escape(title)}</title><link>https://news.example.org/{slug}</link>"
            f"<guid>https://news.example.org/{slug}</guid>"
            f"<pubDate>{format_datetime(at)}</pubDate></item>"
            for slug, title, at in self.entries
        )
        body = (
            '<?xml version="1.0" encoding="utf-8"?><rss version="2.0"><channel>'
            f"<title>News</title><link>https://news.example.org</link>{items}</channel></rss>"
        )
        return Response(body, headers={"Content-Type": "application/rss+xml"})


def settings(feed: LiveFeed, port: int | None, **extra: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "feeds": [{"name": "News", "url": feed.url}],
        "watchlists": [
            {"name": "xAI", "terms": ["xAI"], "recipients": ["a@example.org", "b@example.org"]}
        ],
        **extra,
    }
    if port is not None:
        data["smtp"] = {
            "host": "127.0.0.1",
            "port": port,
            "from": "monitor@example.org",
            "starttls": False,
        }
    return data


def poll_news(path: Path, feed: LiveFeed, *titles: str) -> None:
    """An empty first poll, then `titles` arrive: they are news, to be sent."""
    assert main(["--config", str(path), "poll", "--all"]) == 0
    for n, title in enumerate(titles):
        feed.add(f"story-{len(feed.entries)}-{n}", title)
    assert main(["--config", str(path), "poll", "--all"]) == 0


@pytest.fixture
def feed(httpserver: HTTPServer) -> LiveFeed:
    return LiveFeed(httpserver)


# --------------------------------------------------------------------------- flush


def test_digest_send_flushes_what_waits_for_a_retry_once_smtp_is_back(
    feed: LiveFeed, write_config: Callable[..., Path], capsys: Any
) -> None:
    port = free_port()  # nothing listens there yet: SMTP is down
    path = write_config(settings(feed, port))
    poll_news(path, feed, "xAI hires a new chief scientist")
    capsys.readouterr()
    assert main(["--config", str(path), "digest", "--send"]) == 1
    out = capsys.readouterr().out
    assert "2 deferred" in out
    # status said "2 ready to send" while nothing was sent, nor would be before the backoff.
    assert main(["--config", str(path), "status"]) == 1  # no daemon runs
    shown = capsys.readouterr().out
    assert "2 ready to send (2 deferred after a failure, the next try at " in shown
    assert "; `monitor digest --send` tries them now)" in shown

    recorder = SmtpRecorder()
    controller = Controller(recorder, hostname="127.0.0.1", port=port)
    controller.start()  # SMTP is back; the messages' backoff (a minute or more) has not passed
    try:
        assert main(["--config", str(path), "digest", "--send"]) == 0
    finally:
        controller.stop()
    out = capsys.readouterr().out
    assert sorted(m["To"] for m in recorder.parsed()) == ["a@example.org", "b@example.org"]
    assert "2 sent" in out and "0 deferred" in out


def test_digest_send_names_what_is_still_deferred_and_until_when(
    feed: LiveFeed,
    smtp_server: tuple[SmtpRecorder, int],
    write_config: Callable[..., Path],
    capsys: Any,
) -> None:
    recorder, port = smtp_server
    recorder.refuse["b@example.org"] = "452 4.2.2 mailbox full, try later"
    path = write_config(settings(feed, port, timezone="UTC"))
    poll_news(path, feed, "xAI opens an office in Berlin")
    capsys.readouterr()
    before = datetime.now(UTC)
    assert main(["--config", str(path), "digest", "--send"]) == 1
    out = capsys.readouterr().out
    assert "1 sent" in out and "1 deferred" in out
    deferred = [line for line in out.splitlines() if "b@example.org" in line]
    assert len(deferred) == 1, out
    line = deferred[0]
    assert "452" in line and "mailbox full" in line and "until" in line
    until = datetime.strptime(line.split("until ")[1][:19], "%Y-%m-%d %H:%M:%S")
    assert before < until.replace(tzinfo=UTC) <= before + timedelta(hours=1, minutes=1)

    # Tried again at once, by the operator, though its backoff has not passed.
    del recorder.refuse["b@example.org"]
    assert main(["--config", str(path), "digest", "--send"]) == 0
    assert "1 sent" in capsys.readouterr().out
    assert sorted(m["To"] for m in recorder.parsed()) == ["a@example.org", "b@example.org"]


# --------------------------------------------------------------------------- ownership


@pytest.fixture
def service_dir() -> Iterator[Path]:
    """A state directory owned by another user (nobody), as systemd's StateDirectory= is by
    the service's User=, and readable on the way to it."""
    if os.geteuid() != 0:
        pytest.skip("needs root: creates files for another user, as `sudo monitor` does")
    top = Path(tempfile.mkdtemp(prefix="monitor-23c-"))
    top.chmod(0o755)
    state = top / "state"
    state.mkdir()
    os.chown(state, NOBODY, NOBODY)
    try:
        yield state
    finally:
        shutil.rmtree(top)


def _run_as_nobody(command: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    # This interpreter's packages and this checkout, for another interpreter of the same
    # version when this one lives where nobody may not go (a pyenv under /root).
    paths = [sysconfig.get_paths()["purelib"], str(Path(monitor.__file__).parents[1])]
    return subprocess.run(
        command,
        user=NOBODY,
        group=NOBODY,
        extra_groups=[],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        env={
            **os.environ,
            "PYTHONPATH": os.pathsep.join(paths),
            "PYTHONDONTWRITEBYTECODE": "1",
            "HOME": str(cwd),
        },
    )


@functools.cache
def _interpreter_for_nobody() -> str | None:
    candidates = [sys.executable, shutil.which("python3", path="/usr/bin:/usr/local/bin")]
    for python in filter(None, candidates):
        probe = [
            python,
            "-c",
            f"import sys, monitor; assert sys.version_info[:2] == {sys.version_info[:2]}",
        ]
        try:
            if _run_as_nobody(probe, Path("/")).returncode == 0:
                return python
        except PermissionError:
            continue
    return None


def as_nobody(path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run monitor as the service user would: another process, uid and gid nobody."""
    python = _interpreter_for_nobody()
    if python is None:
        pytest.skip("no Python interpreter of this version that the user nobody may run")
    return _run_as_nobody([python, "-m", "monitor", "--config", str(path), *args], path.parent)


def write_at(directory: Path, data: dict[str, Any]) -> Path:
    data = {"database": str(directory / "monitor.db"), "outbox": str(directory / "outbox"), **data}
    path = directory / "config.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    path.chmod(0o644)
    return path


def test_a_command_run_as_root_leaves_the_state_to_its_owner(
    feed: LiveFeed, service_dir: Path
) -> None:
    path = write_at(service_dir, settings(feed, None))
    (service_dir / "outbox" / "cur").mkdir(parents=True)  # root's, left by an older monitor
    poll_news(path, feed, "xAI hires a new chief scientist")  # as root, as `sudo monitor poll`
    assert main(["--config", str(path), "digest", "--send"]) == 0  # `sudo monitor digest --send`
    created = [p for p in service_dir.rglob("*") if p.name != "config.yaml"]
    names = {p.relative_to(service_dir).as_posix() for p in created}
    assert {"monitor.db", "outbox/new", "outbox/tmp", "outbox/cur"} <= names
    assert len(list((service_dir / "outbox" / "new").iterdir())) == 2
    assert {p.as_posix(): (p.lstat().st_uid, p.lstat().st_gid) for p in created} == {
        p.as_posix(): (NOBODY, NOBODY) for p in created
    }

    # The service, as its own user, goes on: polls, composes, writes into the outbox.
    feed.add("later", "xAI ships a new model")
    polled = as_nobody(path, "poll", "--all")
    assert polled.returncode == 0, polled.stderr
    sent = as_nobody(path, "digest", "--send")
    assert sent.returncode == 0, sent.stdout + sent.stderr
    assert len(list((service_dir / "outbox" / "new").iterdir())) == 4


def test_a_permission_error_names_the_path_and_the_user(feed: LiveFeed, service_dir: Path) -> None:
    path = write_at(service_dir, settings(feed, None))
    outbox = service_dir / "outbox"
    for sub in ("tmp", "new", "cur"):
        (outbox / sub).mkdir(parents=True)  # made by hand as root, by an old version, ...
    os.chown(outbox, NOBODY, NOBODY)
    (service_dir / "monitor.db.lock").touch()  # root's, left by an older monitor: unused now
    database = service_dir / "monitor.db"
    database.touch()  # root's too
    refused = as_nobody(path, "poll", "--all")
    assert refused.returncode == 1
    assert f"permission denied for user nobody on {database}, owned by root" in refused.stderr
    assert "Traceback" not in refused.stderr
    os.chown(database, NOBODY, NOBODY)

    assert as_nobody(path, "poll", "--all").returncode == 0
    feed.add("news", "xAI opens an office in Berlin")
    assert as_nobody(path, "poll", "--all").returncode == 0
    sent = as_nobody(path, "digest", "--send")
    assert sent.returncode == 1
    said = sent.stdout + sent.stderr
    assert f"permission denied for user nobody on {outbox / 'tmp'}, owned by root" in said, said
    assert f"sudo chown -R nobody {outbox / 'tmp'}" in said
    assert "Traceback" not in said


# --------------------------------------------------------------------------- postgres://


def test_libpq_postgres_url_works_for_every_command(
    feed: LiveFeed,
    smtp_server: tuple[SmtpRecorder, int],
    postgres_url: str,
    write_config: Callable[..., Path],
    tmp_path: Path,
    capsys: Any,
) -> None:
    recorder, port = smtp_server
    libpq = "postgres://" + postgres_url.split("://", 1)[1]  # libpq's spelling, no driver
    path = write_config(settings(feed, port, database=libpq))
    assert main(["--config", str(path), "check"]) == 0
    poll_news(path, feed, "xAI hires a new chief scientist")
    assert main(["--config", str(path), "digest", "--send"]) == 0
    assert len(recorder.messages) == 2
    capsys.readouterr()
    main(["--config", str(path), "status"])
    assert "2 pending" not in capsys.readouterr().out
    copy = tmp_path / "copy.db"
    assert main(["--config", str(path), "migrate-db", "--to", f"sqlite:///{copy}"]) == 0
    assert "copied" in capsys.readouterr().out


def test_migrate_db_accepts_a_libpq_target(
    feed: LiveFeed,
    postgres_url: str,
    write_config: Callable[..., Path],
    capsys: Any,
) -> None:
    path = write_config(settings(feed, None))
    poll_news(path, feed, "xAI hires a new chief scientist")
    libpq = "postgres://" + postgres_url.split("://", 1)[1]
    capsys.readouterr()
    assert main(["--config", str(path), "migrate-db", "--to", libpq]) == 0
    assert "items: 1 rows" in capsys.readouterr().out


# --------------------------------------------------------------------------- status


def test_status_shows_a_poll_by_monitor_poll_and_lists_dead_letters_in_one_unit(
    httpserver: HTTPServer,
    smtp_server: tuple[SmtpRecorder, int],
    write_config: Callable[..., Path],
    capsys: Any,
) -> None:
    recorder, port = smtp_server
    recorder.refuse["a@example.org"] = "550 5.1.1 no such mailbox"
    feed = LiveFeed(httpserver)
    data = settings(feed, port, timezone="UTC")
    data["watchlists"].append({"name": "Grok", "terms": ["Grok"], "recipients": ["a@example.org"]})
    path = write_config(data)
    poll_news(path, feed, "xAI releases Grok 5", "Grok answers in German", "xAI in Memphis")
    capsys.readouterr()
    assert main(["--config", str(path), "digest", "--send"]) == 0
    sent_out = capsys.readouterr().out
    assert "1 dead letter" in sent_out  # one message to a@, holding five deliveries

    main(["--config", str(path), "status"])
    status = capsys.readouterr().out
    last_poll = next(line for line in status.splitlines() if line.startswith("last poll:"))
    assert datetime.now(UTC).strftime("%Y-%m-%d") in last_poll, status
    assert "1 dead letter" in status and "monitor dead-letters" in status

    assert main(["--config", str(path), "dead-letters"]) == 0
    listed = capsys.readouterr().out.splitlines()
    rows = [line for line in listed if "a@example.org" in line]
    assert len(rows) == 1, listed
    assert "550" in rows[0] and "no such mailbox" in rows[0]
    assert datetime.now(UTC).strftime("%Y-%m-%d") in rows[0]  # since when
    assert "1 dead letter" in listed[-1]


# --------------------------------------------------------------------------- List-Unsubscribe


@pytest.mark.parametrize(
    ("unsubscribe_url", "expected"),
    [(None, None), ("https://example.org/unsubscribe", "<https://example.org/unsubscribe>")],
)
def test_list_unsubscribe_only_points_where_something_handles_it(
    feed: LiveFeed,
    smtp_server: tuple[SmtpRecorder, int],
    write_config: Callable[..., Path],
    unsubscribe_url: str | None,
    expected: str | None,
) -> None:
    recorder, port = smtp_server
    digests = {"unsubscribe_url": unsubscribe_url} if unsubscribe_url else {}
    path = write_config(settings(feed, port, digests=digests))
    poll_news(path, feed, "xAI hires a new chief scientist")
    assert main(["--config", str(path), "digest", "--send"]) == 0
    for message in recorder.parsed():
        assert message["List-Unsubscribe"] == expected
        assert "mailto:" not in str(message["List-Unsubscribe"])
        assert (message["List-Unsubscribe-Post"] is not None) == (expected is not None)
