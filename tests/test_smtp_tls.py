"""SMTP with TLS and authentication against aiosmtpd, with a test CA made by trustme."""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from monitor.config import SmtpConfig
from monitor.errors import DeliveryError
from monitor.mailer import SmtpMailer
from monitor.models import OutgoingMessage
from tests.conftest import SmtpRecorder, free_port

PASSWORD = "correct horse battery staple"


def authenticate(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
    ok = isinstance(data, LoginPassword) and data.password == PASSWORD.encode()
    return AuthResult(success=ok, handled=False)


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def ca_file(ca: trustme.CA, tmp_path: Path) -> str:
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


def server_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    return context


@pytest.fixture
def starttls_server(ca: trustme.CA) -> Iterator[tuple[SmtpRecorder, int]]:
    recorder, port = SmtpRecorder(), free_port()
    controller = Controller(
        recorder,
        hostname="127.0.0.1",
        port=port,
        tls_context=server_context(ca),
        require_starttls=True,
        authenticator=authenticate,
        auth_required=True,
    )
    controller.start()
    yield recorder, port
    controller.stop()


@pytest.fixture
def implicit_tls_server(ca: trustme.CA) -> Iterator[tuple[SmtpRecorder, int]]:
    recorder, port = SmtpRecorder(), free_port()
    controller = Controller(
        recorder, hostname="127.0.0.1", port=port, ssl_context=server_context(ca)
    )
    controller.start()
    yield recorder, port
    controller.stop()


def message() -> OutgoingMessage:
    return OutgoingMessage(
        "<t@x>", "a@example.org", b"Subject: s\r\nMessage-ID: <t@x>\r\n\r\nbody\r\n"
    )


async def deliver(settings: dict[str, Any]) -> DeliveryError | None:
    mailer = SmtpMailer(
        SmtpConfig.model_validate({"host": "127.0.0.1", "from": "m@example.org", **settings})
    )
    outcome: list[DeliveryError | None] = []

    async def report(_: OutgoingMessage, error: DeliveryError | None) -> None:
        outcome.append(error)

    await mailer.deliver([message()], report)
    # After QUIT the TLS close handshake finishes asynchronously; a daemon's loop runs on,
    # but this test's loop ends right here, which would leave the socket to the GC.
    await asyncio.sleep(0.2)
    return outcome[0]


async def test_starttls_with_verified_certificate_and_login(
    starttls_server: tuple[SmtpRecorder, int],
    ca_file: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    recorder, port = starttls_server
    monkeypatch.setenv("SMTP_TEST_PASSWORD", PASSWORD)
    caplog.set_level(logging.DEBUG)
    error = await deliver(
        {
            "port": port,
            "ca_file": ca_file,
            "username": "monitor",
            "password_env": "SMTP_TEST_PASSWORD",
        }
    )
    assert error is None
    assert len(recorder.messages) == 1
    assert PASSWORD not in caplog.text


async def test_wrong_password_is_reported_without_the_password(
    starttls_server: tuple[SmtpRecorder, int], ca_file: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, port = starttls_server
    monkeypatch.setenv("SMTP_TEST_PASSWORD", "wrong-secret-value")
    error = await deliver(
        {
            "port": port,
            "ca_file": ca_file,
            "username": "monitor",
            "password_env": "SMTP_TEST_PASSWORD",
        }
    )
    assert error is not None and "535" in str(error)
    assert "wrong-secret-value" not in str(error)


async def test_untrusted_certificate_is_refused_by_default(
    starttls_server: tuple[SmtpRecorder, int],
) -> None:
    recorder, port = starttls_server
    error = await deliver({"port": port})
    assert error is not None and "certificate" in str(error).lower()
    assert recorder.messages == []


async def test_implicit_tls(implicit_tls_server: tuple[SmtpRecorder, int], ca_file: str) -> None:
    recorder, port = implicit_tls_server
    assert await deliver({"port": port, "tls": True, "ca_file": ca_file}) is None
    assert len(recorder.messages) == 1


class QuotingServer(SmtpRecorder):
    """Refuses every login and quotes, as some servers do, the data the client sent."""

    async def auth_PLAIN(self, server: Any, args: list[str]) -> AuthResult:
        quoted = " ".join(args)
        return AuthResult(success=False, handled=False, message=f"535 5.7.8 rejected: {quoted}")

    async def auth_LOGIN(self, server: Any, args: list[str]) -> AuthResult:
        import base64

        user = args[1]  # AUTH LOGIN dXNlcg==: the user name comes with the command
        password = base64.b64encode(await server.challenge_auth("Password:")).decode()
        message = f"535 5.7.8 rejected {user} {password} (try again)"
        return AuthResult(success=False, handled=False, message=message)


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
async def test_a_refusal_quoting_the_auth_data_is_logged_without_it(
    mechanism: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import base64

    other = {"PLAIN": "LOGIN", "LOGIN": "PLAIN"}[mechanism]
    controller = Controller(
        QuotingServer(),
        hostname="127.0.0.1",
        port=free_port(),
        auth_require_tls=False,
        auth_exclude_mechanism=[other],
    )
    controller.start()
    monkeypatch.setenv("SMTP_TEST_PASSWORD", "s3cret-Pass")
    try:
        error = await deliver(
            {
                "port": controller.port,
                "starttls": False,  # a server on this machine: allowed, see docs/delivery.md
                "username": "monitor",
                "password_env": "SMTP_TEST_PASSWORD",
            }
        )
    finally:
        controller.stop()
    assert error is not None and "535 5.7.8 rejected" in str(error)
    sent = [b"\0monitor\0s3cret-Pass", b"monitor", b"s3cret-Pass"]
    for secret in [base64.b64encode(x).decode() for x in sent] + ["s3cret-Pass"]:
        assert secret not in str(error)
    assert "[redacted]" in str(error)
