"""A crash between the server's 250 and the mark: at most one resend, same bytes, same ID."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from monitor.cli import main
from tests.conftest import SmtpRecorder
from tests.feeds import GERMAN_NOW


def test_killed_between_send_and_mark_resends_once_with_the_same_message_id(
    httpserver: HTTPServer,
    smtp_server: tuple[SmtpRecorder, int],
    write_config: Callable[..., Path],
) -> None:
    recorder, port = smtp_server
    httpserver.expect_request("/de.xml").respond_with_data(GERMAN_NOW)
    path = str(
        write_config(
            {
                "feeds": [{"name": "Nachrichten", "url": httpserver.url_for("/de.xml")}],
                "watchlists": [{"name": "xAI", "terms": ["xAI"], "recipients": ["a@example.org"]}],
                "smtp": {
                    "host": "127.0.0.1",
                    "port": port,
                    "from": "m@example.org",
                    "starttls": False,
                },
            }
        )
    )
    assert main(["--config", path, "poll"]) == 0

    command = [sys.executable, "-m", "monitor", "--config", path, "digest", "--send"]
    sender = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # The server accepts the message but the sender dies before it can record that.
    recorder.on_data = lambda content: os.kill(sender.pid, signal.SIGKILL)
    sender.wait(timeout=60)
    assert sender.returncode == -signal.SIGKILL
    assert len(recorder.messages) == 1

    recorder.on_data = None
    again = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert again.returncode == 0, again.stderr
    assert "1 sent" in again.stdout
    assert len(recorder.messages) == 2
    first, second = recorder.parsed()
    assert first["Message-ID"] == second["Message-ID"]
    assert recorder.messages[0][2] == recorder.messages[1][2]  # byte for byte

    third = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert third.returncode == 0 and "0 sent" in third.stdout
    assert len(recorder.messages) == 2


def test_killed_between_a_webhooks_200_and_the_mark_resends_once_with_the_same_key(
    httpserver: HTTPServer,
    write_config: Callable[..., Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MONITOR_TEST_HOOK_SECRET", "s3cret")
    httpserver.expect_request("/de.xml").respond_with_data(GERMAN_NOW)
    received: list[Request] = []
    kill: list[int] = []

    def accept(request: Request) -> Response:
        received.append(request)
        if kill:  # the service has it; the sender dies before it can record that
            os.kill(kill.pop(), signal.SIGKILL)
        return Response("ok", status=200)

    httpserver.expect_request("/hook", method="POST").respond_with_handler(accept)
    hook = {
        "name": "hook",
        "url": httpserver.url_for("/hook"),
        "secret_env": "MONITOR_TEST_HOOK_SECRET",
    }
    path = str(
        write_config(
            {
                "feeds": [{"name": "Nachrichten", "url": httpserver.url_for("/de.xml")}],
                "watchlists": [{"name": "xAI", "terms": ["xAI"], "recipients": [hook]}],
            }
        )
    )
    assert main(["--config", path, "poll"]) == 0

    command = [sys.executable, "-m", "monitor", "--config", path, "digest", "--send"]
    sender = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    kill.append(sender.pid)
    sender.wait(timeout=60)
    assert sender.returncode == -signal.SIGKILL
    assert len(received) == 1

    again = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert again.returncode == 0, again.stderr
    assert "1 sent" in again.stdout
    assert len(received) == 2
    first, second = received
    assert first.headers["Idempotency-Key"] == second.headers["Idempotency-Key"]
    assert first.get_data() == second.get_data()  # byte for byte; only the timestamp differs

    third = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert third.returncode == 0 and "0 sent" in third.stdout
    assert len(received) == 2
