"""Mailers against a real aiosmtpd server on 127.0.0.1."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from monitor.config import SmtpConfig
from monitor.errors import DeliveryError, PermanentDeliveryError
from monitor.mailer import MaildirMailer, SmtpMailer
from monitor.models import OutgoingMessage
from tests.conftest import SmtpRecorder, free_port


def message(n: int, recipient: str) -> OutgoingMessage:
    body = f"Date: Sun, 29 Nov 2026 07:00:00 +0100\r\nMessage-ID: <m{n}@x>\r\nSubject: s\r\n\r\nbody {n}\r\n"
    return OutgoingMessage(f"<m{n}@x>", recipient, body.encode())


def smtp(port: int) -> SmtpMailer:
    return SmtpMailer(
        SmtpConfig.model_validate(
            {"host": "127.0.0.1", "port": port, "from": "monitor@example.org", "starttls": False}
        )
    )


async def deliver(
    mailer: SmtpMailer | MaildirMailer, batch: list[OutgoingMessage]
) -> dict[str, DeliveryError | None]:
    outcomes: dict[str, DeliveryError | None] = {}

    async def report(sent: OutgoingMessage, error: DeliveryError | None) -> None:
        outcomes[sent.recipient] = error

    await mailer.deliver(batch, report)
    return outcomes


async def test_one_refused_recipient_does_not_affect_others(
    smtp_server: tuple[SmtpRecorder, int],
) -> None:
    recorder, port = smtp_server
    recorder.refuse["gone@example.org"] = "550 5.1.1 No such user"
    outcomes = await deliver(
        smtp(port),
        [message(1, "a@example.org"), message(2, "gone@example.org"), message(3, "b@example.org")],
    )
    assert outcomes["a@example.org"] is None and outcomes["b@example.org"] is None
    assert isinstance(outcomes["gone@example.org"], PermanentDeliveryError)
    assert "550" in str(outcomes["gone@example.org"]) and "gone@example.org" in str(
        outcomes["gone@example.org"]
    )
    assert [rcpt for _, rcpt, _ in recorder.messages] == [["a@example.org"], ["b@example.org"]]


async def test_a_send_cancelled_at_shutdown_does_not_wait_for_a_stalled_server() -> None:
    """A stop while the server has not answered DATA: QUIT waited for that answer, and the
    daemon's stop took twice its grace."""
    import asyncio
    import threading

    from aiosmtpd.controller import Controller

    started, stop = threading.Event(), threading.Event()

    class Stalling:
        async def handle_DATA(self, server: object, session: object, envelope: object) -> str:
            started.set()
            while not stop.is_set():
                await asyncio.sleep(0.05)
            return "250 OK"

    controller = Controller(Stalling(), hostname="127.0.0.1", port=free_port())
    controller.start()
    try:
        sending = asyncio.ensure_future(deliver(smtp(controller.port), [message(1, "a@x.org")]))
        while not started.is_set():
            await asyncio.sleep(0.05)
        sending.cancel()
        done, _ = await asyncio.wait({sending}, timeout=10)
        assert done == {sending} and sending.cancelled()
    finally:
        stop.set()
        controller.stop()


async def test_temporary_refusal_is_transient(smtp_server: tuple[SmtpRecorder, int]) -> None:
    recorder, port = smtp_server
    recorder.data_reply.append("451 4.3.0 Try again later")
    outcomes = await deliver(smtp(port), [message(1, "a@example.org")])
    error = outcomes["a@example.org"]
    assert isinstance(error, DeliveryError) and not isinstance(error, PermanentDeliveryError)
    assert recorder.messages == []


async def test_a_refused_sender_is_transient_for_every_message(
    smtp_server: tuple[SmtpRecorder, int],
) -> None:
    """A 5xx to MAIL FROM (sender not allowed, authentication required) concerns every
    recipient: nothing is dead-lettered, everything waits for a retry."""
    recorder, port = smtp_server
    recorder.mail_reply = "530 5.7.0 Authentication required"
    outcomes = await deliver(smtp(port), [message(1, "a@example.org"), message(2, "b@example.org")])
    assert len(outcomes) == 2
    for error in outcomes.values():
        assert type(error) is DeliveryError
        assert "530" in str(error) and "monitor@example.org" in str(error)
    recorder.mail_reply = None
    assert await deliver(smtp(port), [message(1, "a@example.org")]) == {"a@example.org": None}


async def test_an_error_outside_smtp_fails_one_message_not_the_batch(
    smtp_server: tuple[SmtpRecorder, int],
) -> None:
    """aiosmtplib raises UnicodeEncodeError for an address it cannot write: reported for
    that message (and retried), the others still go, nothing escapes the mailer."""
    recorder, port = smtp_server
    batch = [
        message(1, "a@example.org"),
        message(2, "jürgen@example.org"),
        message(3, "b@example.org"),
    ]
    outcomes = await deliver(smtp(port), batch)
    assert outcomes["a@example.org"] is None and outcomes["b@example.org"] is None
    error = outcomes["jürgen@example.org"]
    assert type(error) is DeliveryError and "jürgen@example.org" in str(error)
    assert [rcpt for _, rcpt, _ in recorder.messages] == [["a@example.org"], ["b@example.org"]]


async def test_a_message_not_taken_is_neither_sent_nor_reported(
    smtp_server: tuple[SmtpRecorder, int], tmp_path: Path
) -> None:
    recorder, port = smtp_server
    batch = [message(1, "a@example.org"), message(2, "b@example.org")]

    async def take(candidate: OutgoingMessage) -> bool:
        return candidate.recipient != "b@example.org"  # another worker holds b's

    reported: list[tuple[str, DeliveryError | None]] = []

    async def report(sent: OutgoingMessage, error: DeliveryError | None) -> None:
        reported.append((sent.recipient, error))

    await smtp(port).deliver(batch, report, take)
    await MaildirMailer(tmp_path / "outbox").deliver(batch, report, take)
    assert reported == [("a@example.org", None), ("a@example.org", None)]
    assert [rcpt for _, rcpt, _ in recorder.messages] == [["a@example.org"]]
    assert len(list((tmp_path / "outbox" / "new").iterdir())) == 1


async def test_server_down_is_transient_for_every_message() -> None:
    outcomes = await deliver(
        smtp(free_port()), [message(1, "a@example.org"), message(2, "b@example.org")]
    )
    assert all(type(e) is DeliveryError for e in outcomes.values()) and len(outcomes) == 2


async def test_maildir_write_is_idempotent(tmp_path: Path) -> None:
    mailer = MaildirMailer(tmp_path / "outbox")
    outcomes = await deliver(mailer, [message(1, "a@example.org")])
    await deliver(mailer, [message(1, "a@example.org")])  # a resend after a crash
    files = list((tmp_path / "outbox" / "new").iterdir())
    assert outcomes == {"a@example.org": None} and len(files) == 1
    assert files[0].read_bytes() == message(1, "a@example.org").mime
    assert list((tmp_path / "outbox" / "tmp").iterdir()) == []


async def test_maildir_unwritable_is_reported(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    outcomes = await deliver(MaildirMailer(blocker / "outbox"), [message(1, "a@example.org")])
    assert isinstance(outcomes["a@example.org"], DeliveryError)


def test_a_maildir_write_that_fails_part_way_leaves_no_partial_file(tmp_path: Path) -> None:
    """A full disk (here: a file size limit) mid-write: the failure is reported for retry,
    and tmp/ keeps no partial copy to pile up."""
    script = f"""
import asyncio, resource, signal
from monitor.mailer import MaildirMailer
from monitor.models import OutgoingMessage
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
mailer = MaildirMailer({str(tmp_path / "outbox")!r})
mailer._ensure()
resource.setrlimit(resource.RLIMIT_FSIZE, (1000, 1000))
mime = b"Date: Sun, 29 Nov 2026 07:00:00 +0100\\r\\n\\r\\n" + b"x" * 5000
async def report(message, error):
    print(type(error).__name__, error)
asyncio.run(mailer.deliver([OutgoingMessage("<d.1@example.org>", "a@example.org", mime)], report))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("DeliveryError outbox ") and "File too large" in done.stdout
    assert list((tmp_path / "outbox" / "tmp").iterdir()) == []
    assert list((tmp_path / "outbox" / "new").iterdir()) == []


@pytest.mark.parametrize("port", [None])
def test_default_ports(port: int | None) -> None:
    base = {"host": "h", "from": "m@example.org"}
    assert SmtpConfig.model_validate(base).effective_port == 587
    assert SmtpConfig.model_validate({**base, "tls": True, "starttls": False}).effective_port == 465
