"""Chat channels: Slack, Teams, Matrix, Telegram, ntfy, Discord (through Apprise) and a
signed JSON webhook. Owns apprise.

A channel recipient's messages are stored in the outbox like mail, and sent by ChatSender,
a Mailer: each message is leased (`take`), handed to its service once, and its outcome
reported at once, so delivery.py marks it sent right after the service accepted it.

A channel's URL holds its token: it is read from the environment or a file when a message
is sent, and shown only masked (`masked`). Apprise logs request URLs and payloads at debug
level (a Telegram URL holds the bot token), so its loggers and urllib3's do not propagate
to monitor's: their records are only read here, for the service's HTTP status.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import hmac
import logging
import re
import threading
import time
import warnings
from collections.abc import Mapping, Sequence
from email.utils import parsedate_to_datetime
from urllib.parse import unquote, urlsplit

import aiohttp
import apprise

from monitor.chat import chat_text
from monitor.config import RecipientConfig, is_loopback_host
from monitor.errors import DeliveryError, PermanentDeliveryError
from monitor.files import describe
from monitor.mailer import Mailer, Outcome, Take, _anyone
from monitor.models import OutgoingMessage

log = logging.getLogger(__name__)

WEBHOOK_LIMIT = 60_000  # characters of text in a webhook message; its stories are all there
SMALLEST_LIMIT = 1600  # characters: fits the chat services of docs/delivery.md (Discord: 2,000)
WEBHOOK_TIMEOUT = 30.0  # seconds for the whole request
SIGNATURE_HEADER = "X-Monitor-Signature"
TIMESTAMP_HEADER = "X-Monitor-Timestamp"
MESSAGE_ID_HEADER = "X-Monitor-Message-Id"
# Statuses that may pass: the service is down or busy (429), or the request timed out.
_TRANSIENT = {408, 425, 429}
_STATUS = re.compile(r"error=(\d{3})\b")
_QUIET_LOGGERS = ("apprise", "urllib3", "requests_oauthlib", "oauthlib")


def quiet_libraries() -> None:
    """Keep the libraries that see channel URLs out of monitor's logs (see the module doc)."""
    for name in _QUIET_LOGGERS:
        logger = logging.getLogger(name)
        logger.propagate = False
        if not logger.handlers:
            logger.addHandler(logging.NullHandler())
    logging.getLogger("apprise").setLevel(logging.INFO)


def is_webhook(url: str) -> bool:
    return url.lower().startswith(("https://", "http://"))


def masked(url: str) -> str:
    """The URL as logs, errors and `status` may show it: no user, password or token.

    A webhook shows its host only (its path is often the secret); an Apprise URL what
    Apprise's own privacy mode keeps (`slack://T...2/A...D/T...Q/%23press`)."""
    parts = urlsplit(url)
    if is_webhook(url):
        where = parts.netloc.rpartition("@")[2]  # no user or password
        hidden = "/..." if parts.path.strip("/") or parts.query else ""
        return f"{parts.scheme}://{where}{hidden}"
    plugin = _instantiate(url)
    if plugin is None:
        return f"{parts.scheme}://..."
    private = urlsplit(plugin.url(privacy=True))  # type: ignore[no-untyped-call]
    netloc = private.netloc.rpartition("@")[2]
    if "@" in private.netloc:
        netloc = "***@" + netloc
    return f"{private.scheme}://{netloc}{private.path}".rstrip("/")


def limit_of(recipient: RecipientConfig) -> int:
    """limit() of the recipient's URL; when it cannot be read now (a url_file gone), the
    smallest of the services' (Discord's 2,000, less the markup): the message is stored, and
    its send reports the file."""
    try:
        return limit(recipient.channel_url())
    except OSError:
        return SMALLEST_LIMIT


def limit(url: str) -> int:
    """How many characters of text the service takes in one message, with room for the
    markup Apprise adds (a Markdown link becomes an HTML anchor for Telegram)."""
    if is_webhook(url):
        return WEBHOOK_LIMIT
    plugin = _instantiate(url)
    size = int(getattr(plugin, "body_maxlen", 0) or 0) if plugin else 0
    return int(size * 0.8) if size > 0 else SMALLEST_LIMIT


def problems(channels: Mapping[str, RecipientConfig]) -> list[str]:
    """What keeps a channel from sending, found when the config is loaded."""
    found = []
    for name, recipient in channels.items():
        try:
            url = recipient.channel_url()
        except OSError as error:
            found.append(f"recipient {name}: url_file: {error.strerror}")
            continue
        if is_webhook(url):
            found.extend(f"recipient {name}: {problem}" for problem in _webhook_problems(url))
            if not (recipient.secret_env or recipient.secret_file):
                found.append(
                    f"recipient {name}: a webhook is signed: add secret_env (or secret_file) "
                    "naming the shared secret"
                )
        elif _instantiate(url) is None:
            found.append(
                f"recipient {name}: {masked(url)} is not a URL Apprise can send to; see "
                "docs/delivery.md for the forms"
            )
        elif recipient.url and unquote(masked(url)) != unquote(_plain(url)):
            found.append(
                f"recipient {name}: the url holds a token ({masked(url)}); put it in the "
                "environment or a file and name it with url_env or url_file"
            )
    return found


def _webhook_problems(url: str) -> list[str]:
    parts = urlsplit(url)
    if parts.username or parts.password:
        return ["a webhook URL takes no user or password; the signature authenticates"]
    if parts.scheme == "http" and not is_loopback_host(parts.hostname or ""):
        return [f"{masked(url)}: use https (http only to this machine, for tests)"]
    return []


def _plain(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}".rstrip("/")


@functools.cache
def _load_plugins() -> None:
    """Apprise imports its plugins on first use; one imports the standard library's imghdr,
    deprecated since Python 3.11 (a warning about Apprise's code, not monitor's)."""
    quiet_libraries()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        apprise.Apprise.instantiate("json://localhost", suppress_exceptions=True)


def _instantiate(url: str) -> apprise.NotifyBase | None:
    _load_plugins()
    try:
        plugin = apprise.Apprise.instantiate(url, suppress_exceptions=True)
    except Exception:  # a URL Apprise cannot read: said by problems(), never its text
        return None
    return plugin if isinstance(plugin, apprise.NotifyBase) else None


class ChatSender:
    """Sends stored chat messages to their channels, one request each."""

    def __init__(self, channels: Mapping[str, RecipientConfig]) -> None:
        self._channels = dict(channels)

    async def deliver(
        self, batch: Sequence[OutgoingMessage], report: Outcome, take: Take = _anyone
    ) -> None:
        for message in batch:
            if not await take(message):
                continue
            try:
                await self.send(message)
            except DeliveryError as error:
                await report(message, error)
            except OSError as error:  # url_file or secret_file unreadable: fixed, then sent
                await report(message, DeliveryError(f"{message.recipient}: {describe(error)}"))
            except Exception as error:  # a bug: retried; its text may hold the URL, so not shown
                await report(message, DeliveryError(f"{message.recipient}: {type(error).__name__}"))
            else:
                await report(message, None)

    async def send(self, message: OutgoingMessage) -> str:
        """Hand one message to its service; the service's answer, or an error saying it."""
        recipient = self._channels.get(message.recipient)
        if recipient is None:
            raise PermanentDeliveryError(
                f"{message.recipient}: no such channel in the config any more; add it back "
                "and run `monitor retry-dead`"
            )
        url = recipient.channel_url()
        where = f"{message.recipient} ({masked(url)})"
        if is_webhook(url):
            return await _post_webhook(url, recipient.secret() or "", message, where)
        return await asyncio.to_thread(_notify, url, message, where)


def _notify(url: str, message: OutgoingMessage, where: str) -> str:
    """Send through Apprise's plugin, in this thread, reading its log for the HTTP status."""
    plugin = _instantiate(url)
    if plugin is None:
        raise PermanentDeliveryError(f"{where}: not a URL Apprise can send to")
    text = chat_text(message.mime)
    statuses = _StatusCatcher(threading.get_ident())
    logger = logging.getLogger("apprise")
    logger.addHandler(statuses)
    try:
        accepted = plugin.notify(
            body=text.text, title=text.title, body_format=apprise.NotifyFormat.MARKDOWN
        )
    finally:
        logger.removeHandler(statuses)
    if accepted:
        return f"{where}: accepted"
    raise _refusal(where, statuses.status)


class _StatusCatcher(logging.Handler):
    """The last HTTP status Apprise logged for a failed request, in one thread."""

    def __init__(self, thread: int) -> None:
        super().__init__(logging.DEBUG)
        self._thread = thread
        self.status: int | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread == self._thread and (found := _STATUS.search(record.getMessage())):
            self.status = int(found[1])


def _refusal(where: str, status: int | None, retry_after: float | None = None) -> DeliveryError:
    if status is None:
        return DeliveryError(f"{where}: no answer (connection failed or timed out)")
    if status in _TRANSIENT or status >= 500:
        return DeliveryError(f"{where}: HTTP {status}, will retry", retry_after=retry_after)
    return PermanentDeliveryError(
        f"{where}: HTTP {status}: refused (a wrong or revoked token or URL); fix the "
        "channel, then `monitor retry-dead`"
    )


def signature(secret: str, timestamp: str, body: bytes) -> str:
    """`sha256=` and the hex HMAC-SHA256 of "TIMESTAMP." + body under the shared secret."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


async def _post_webhook(url: str, secret: str, message: OutgoingMessage, where: str) -> str:
    if not secret:
        raise DeliveryError(f"{where}: the signing secret is empty or unset")
    timestamp = str(int(time.time()))
    headers = {
        "Content-Type": "application/json; charset=utf-8",
        "User-Agent": "monitor",
        MESSAGE_ID_HEADER: message.message_id,
        "Idempotency-Key": message.message_id,
        TIMESTAMP_HEADER: timestamp,
        SIGNATURE_HEADER: signature(secret, timestamp, message.mime),
    }
    timeout = aiohttp.ClientTimeout(total=WEBHOOK_TIMEOUT)
    try:
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.post(url, data=message.mime, headers=headers, allow_redirects=False) as answer,
        ):
            await answer.read()
            status = answer.status
            retry_after = _retry_after(answer.headers.get("Retry-After"))
    except (TimeoutError, aiohttp.ClientError, OSError):
        raise _refusal(where, None) from None  # the library's text names the URL
    if 200 <= status < 300:
        return f"{where}: accepted (HTTP {status})"
    raise _refusal(where, status, retry_after)


def _retry_after(value: str | None) -> float | None:
    """Retry-After in seconds (a number, or an HTTP date), capped at a day."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError):
            return None
    return max(0.0, min(seconds, 86400.0))


class Dispatcher:
    """Mail to the mailer, channel messages to their channels: a channel's name holds no
    @, an address always does, so a stored message goes where its recipient is."""

    def __init__(self, mail: Mailer, chat: ChatSender) -> None:
        self.mail = mail
        self.chat = chat

    async def deliver(
        self, batch: Sequence[OutgoingMessage], report: Outcome, take: Take = _anyone
    ) -> None:
        chat = [m for m in batch if "@" not in m.recipient]
        mail = [m for m in batch if "@" in m.recipient]
        if chat:
            await self.chat.deliver(chat, report, take)
        if mail:
            await self.mail.deliver(mail, report, take)
