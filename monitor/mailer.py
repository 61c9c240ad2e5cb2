"""Handing rendered messages to SMTP, or to a Maildir outbox when no SMTP is configured.
Owns aiosmtplib.

Both mailers report each message's outcome through a callback the moment it is known,
so the caller can mark it sent right after the server's 250 (not at the end of a batch).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import email.utils
import logging
import os
import re
import socket
import ssl
from collections.abc import Awaitable, Callable, Sequence
from email.parser import BytesHeaderParser
from pathlib import Path
from typing import Protocol

import aiosmtplib

from monitor.config import SmtpConfig
from monitor.errors import DeliveryError, PermanentDeliveryError, UnconfirmedDeliveryError
from monitor.files import adopt, describe, make_dirs
from monitor.models import OutgoingMessage

log = logging.getLogger(__name__)

Outcome = Callable[[OutgoingMessage, DeliveryError | None], Awaitable[None]]
# Asked right before a message is handed over (or its failure reported): whether this
# process may send it now. False: another worker has it; it is skipped, nothing reported.
Take = Callable[[OutgoingMessage], Awaitable[bool]]


async def _anyone(_: OutgoingMessage) -> bool:
    return True


class Mailer(Protocol):
    async def deliver(
        self, batch: Sequence[OutgoingMessage], report: Outcome, take: Take = _anyone
    ) -> None:
        """Try each message once that `take` grants; report its outcome (None: accepted)."""


class SmtpMailer:
    """One SMTP connection per batch. A 5xx for a recipient or for a message's content is
    permanent for that message; a refused sender, anything else, transient for the rest."""

    def __init__(self, settings: SmtpConfig) -> None:
        self._settings = settings

    async def deliver(
        self, batch: Sequence[OutgoingMessage], report: Outcome, take: Take = _anyone
    ) -> None:
        if not batch:
            return
        client = aiosmtplib.SMTP(
            hostname=self._settings.host,
            port=self._settings.effective_port,
            use_tls=self._settings.tls,
            start_tls=self._settings.use_starttls,
            validate_certs=self._settings.verify_certificates,
            cert_bundle=self._settings.ca_file,
            timeout=self._settings.timeout,
        )
        cancelled = False
        try:
            failure = await self._open(client)
            if failure is not None:  # nothing was sent: every message waits for a retry
                await _fail(batch, failure, report, take)
                return
            await self._send_all(client, batch, report, take)
        except asyncio.CancelledError:
            cancelled = True
            raise
        finally:
            if cancelled:
                # Shutdown: no QUIT, which would wait for the server's answer to the DATA in
                # flight (a stalled server held the stop for 40 s instead of the 20 s grace).
                client.close()
            else:
                await _close(client)

    async def _open(self, client: aiosmtplib.SMTP) -> DeliveryError | None:
        """Connect, secure and log in; a failure here is transient for the whole batch."""
        where = f"SMTP {self._settings.host}:{self._settings.effective_port}"
        username, password = self._settings.username, ""
        try:
            await client.connect()
            if username:
                password = self._settings.password() or ""
                await client.login(username, password)
        except ssl.SSLError as error:  # e.g. certificate verification: a setup problem
            return DeliveryError(f"{where}: TLS failed: {error}")
        except aiosmtplib.SMTPException as error:
            text = str(_classify(error, where))
            return DeliveryError(_redact(text, username, password) if username else text)
        except Exception as error:  # e.g. the password file gone: reported, retried
            return DeliveryError(f"{where}: {type(error).__name__}: {error}")
        return None

    async def _send_all(
        self,
        client: aiosmtplib.SMTP,
        batch: Sequence[OutgoingMessage],
        report: Outcome,
        take: Take,
    ) -> None:
        for position, message in enumerate(batch):
            if not await take(message):
                continue
            try:
                await self._transaction(client, message)
            except UnconfirmedDeliveryError as error:  # the connection is closed
                await report(message, error)
                failure = DeliveryError("not tried: the server left the message before unanswered")
                await _fail(batch[position + 1 :], failure, report, take)
                return
            except aiosmtplib.SMTPServerDisconnected as error:
                failure = DeliveryError(f"server disconnected: {error}")
                await report(message, failure)
                await _fail(batch[position + 1 :], failure, report, take)
                return
            except aiosmtplib.SMTPSenderRefused as error:
                # MAIL FROM refused (sender not allowed, authentication required): no
                # message of this batch can go, whoever its recipient. Retried, never
                # dead-lettered, so nothing is lost while the setup is fixed.
                where = f"SMTP {self._settings.host}: sender {self._settings.sender}"
                failure = DeliveryError(str(_classify(error, where)))
                await report(message, failure)
                await _fail(batch[position + 1 :], failure, report, take)
                return
            except aiosmtplib.SMTPException as error:
                await report(message, _classify(error, message.recipient))
            except Exception as error:  # not SMTP's own: reported for this message alone
                await report(
                    message, DeliveryError(f"{message.recipient}: {type(error).__name__}: {error}")
                )
                try:  # the server may be mid-transaction (MAIL FROM given): start afresh
                    await client.rset()
                except aiosmtplib.SMTPException as reset:
                    failure = DeliveryError(f"server lost after an error: {reset}")
                    await _fail(batch[position + 1 :], failure, report, take)
                    return
            else:
                await report(message, None)

    async def _transaction(self, client: aiosmtplib.SMTP, message: OutgoingMessage) -> None:
        """MAIL, RCPT, DATA for one message. A refusal resets the envelope for the next."""
        text = _crlf(message.mime)
        size = [f"SIZE={len(text)}"] if client.supports_extension("size") else []  # RFC 1870
        try:
            await client.mail(self._settings.sender, options=size)
            await client.rcpt(message.recipient)
            wire = _LEADING_DOT.sub(b"..", text) + b".\r\n"
            await _data(client, wire, self._settings.data_timeout, message.recipient)
        except aiosmtplib.SMTPResponseException:
            # A connection lost here: the next message finds it gone and says so.
            with contextlib.suppress(aiosmtplib.SMTPException):
                await client.rset()
            raise


_LINE_ENDS = re.compile(rb"\r\n|\r|\n")
_LEADING_DOT = re.compile(rb"(?m)^\.")


def _crlf(mime: bytes) -> bytes:
    """The message with the line ends SMTP carries, ending in one."""
    text = _LINE_ENDS.sub(b"\r\n", mime)
    return text if text.endswith(b"\r\n") else text + b"\r\n"


async def _data(client: aiosmtplib.SMTP, wire: bytes, timeout: float, recipient: str) -> None:
    """DATA, then the message and the wait for the server's verdict on it.

    Not aiosmtplib's data(): its one timeout covers both the 354 and the final reply, and
    only a timeout on the final reply means "maybe delivered". That wait is RFC 5321's
    10 minutes (4.5.3.2.6): the server may be scanning the message, and a client that
    gives up sooner sends it again though the server kept it (RFC 1047).
    """
    start = await client.execute_command(b"DATA")  # the command timeout
    if start.code != 354:
        raise aiosmtplib.SMTPDataError(start.code, start.message)
    protocol = client.protocol
    if protocol is None:
        raise aiosmtplib.SMTPServerDisconnected("connection lost before the message")
    protocol.write(wire)
    try:
        reply = await protocol.read_response(timeout=timeout)
    except aiosmtplib.SMTPTimeoutError:
        client.close()  # a reply that comes later must not answer the next command
        raise UnconfirmedDeliveryError(
            f"{recipient}: no reply to the end of the message within {timeout:g} s; "
            "the server may have accepted it"
        ) from None
    except aiosmtplib.SMTPServerDisconnected:
        client.close()
        raise
    if reply.code != 250:
        raise aiosmtplib.SMTPDataError(reply.code, reply.message)


_BASE64_TOKEN = re.compile(r"[A-Za-z0-9+/]{8,}={0,2}")
_LONG_TOKEN = 16  # no word of a refusal is this long without a space or a hyphen


def _redact(text: str, username: str, password: str) -> str:
    """A server's refusal of a login without what the client sent: some quote the AUTH
    data, whose base64 is the password in all but name. Long base64-like tokens go, and
    shorter ones that decode to the password or user name, and the password itself."""
    # Shorter secrets would be found by chance in what any token decodes to.
    secrets = [s.encode() for s in (password, username) if len(s) >= 3]

    def hide(found: re.Match[str]) -> str:
        token = found.group()
        if len(token) >= _LONG_TOKEN or _decodes_to(token, secrets):
            return "[redacted]"
        return token

    text = _BASE64_TOKEN.sub(hide, text)
    sent = [f"\0{username}\0{password}", username, password]  # PLAIN, LOGIN: as encoded
    for secret in [base64.b64encode(s.encode()).decode() for s in sent] + [password]:
        if secret:
            text = text.replace(secret, "[redacted]")
    return text


def _decodes_to(token: str, secrets: list[bytes]) -> bool:
    """Whether the base64 token, or what is left of it when quoted cut short, holds one."""
    token = token.rstrip("=")
    for end in range(len(token), max(len(token) - 4, 0), -1):
        try:
            decoded = base64.b64decode(token[:end] + "=" * (-end % 4))
        except ValueError:  # a length no base64 has
            continue
        if any(secret in decoded for secret in secrets):
            return True
    return False


async def _fail(
    batch: Sequence[OutgoingMessage], failure: DeliveryError, report: Outcome, take: Take
) -> None:
    """Report a failure that kept these messages from being tried: each waits for a retry."""
    for message in batch:
        if await take(message):
            await report(message, failure)


async def _close(client: aiosmtplib.SMTP) -> None:
    if client.is_connected:
        try:
            await client.quit()
        except aiosmtplib.SMTPException:
            client.close()
    else:
        client.close()  # a half-open connection (failed TLS) still holds a socket


def _classify(error: aiosmtplib.SMTPException, who: str) -> DeliveryError:
    code = getattr(error, "code", None)
    if isinstance(error, aiosmtplib.SMTPRecipientsRefused) and error.recipients:
        code = error.recipients[0].code
        text = error.recipients[0].message
    else:
        text = getattr(error, "message", "") or str(error)
    description = f"{who}: {code or ''} {text}".replace("  ", " ").strip()
    if isinstance(code, int) and 500 <= code < 600:
        return PermanentDeliveryError(description)
    return DeliveryError(description)


class MaildirMailer:
    """Writes each message as an .eml file into a Maildir (tmp/ then rename into new/).

    The file name derives from the Message-ID, so writing the same message again after a
    crash replaces the file instead of adding a second copy.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def _ensure(self) -> None:
        for directory in (self.path, self.path / "tmp", self.path / "new", self.path / "cur"):
            make_dirs(directory)  # the state directory's owner's, even under sudo

    async def deliver(
        self, batch: Sequence[OutgoingMessage], report: Outcome, take: Take = _anyone
    ) -> None:
        for message in batch:
            if not await take(message):
                continue
            try:
                target = self.write(message)
            except OSError as error:
                await report(message, DeliveryError(f"outbox {self.path}: {describe(error)}"))
            else:
                log.info("message written to outbox", extra={"path": str(target)})
                await report(message, None)

    def write(self, message: OutgoingMessage) -> Path:
        self._ensure()
        name = _file_name(message)
        temporary = self.path / "tmp" / f"{name}.{os.getpid()}.{socket.gethostname()}"
        # No symbolic link followed: under sudo, tmp/ is another user's directory.
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW
        try:
            with open(os.open(temporary, flags, 0o666), "wb") as handle:
                handle.write(message.mime)
                handle.flush()
                os.fsync(handle.fileno())
            adopt(temporary)
        except OSError:  # a full disk, a file too large: no partial file left in tmp/
            temporary.unlink(missing_ok=True)
            raise
        target = self.path / "new" / name
        os.replace(temporary, target)
        # The rename is durable once new/ is: the message is marked sent right after this.
        directory = os.open(self.path / "new", os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
        return target


def _file_name(message: OutgoingMessage) -> str:
    headers = BytesHeaderParser().parsebytes(message.mime)
    try:
        stamp = int(email.utils.parsedate_to_datetime(headers["Date"]).timestamp())
    except (TypeError, ValueError):
        stamp = 0
    local = message.message_id.strip("<>").split("@")[0]
    return f"{stamp}.{local}.eml"
