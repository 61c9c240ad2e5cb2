"""The errors monitor raises on purpose.

    MonitorError                  base; the CLI turns it into a message and an exit code
    ├── ConfigError               the YAML is unreadable or invalid (exit 2); lists every problem
    ├── QueryError                a watchlist query does not parse (part of ConfigError reports)
    ├── FetchError                one feed could not be fetched (HTTP status, network, limits)
    ├── ParseError                one feed's body is not a feed (HTML page, empty, broken)
    ├── DeliveryError             one message could not be handed to SMTP / the outbox
    │   ├── PermanentDeliveryError  the server refused a recipient for good (5xx)
    │   └── UnconfirmedDeliveryError  no reply to the end of DATA: maybe delivered
    ├── LockedError               another monitor process holds the database lock
    └── UnavailableError          the database, or the metrics address, cannot be opened

Everything else is a bug: per-job boundaries log it with the feed or recipient and carry on.
"""

from __future__ import annotations

from datetime import datetime


class MonitorError(Exception):
    """Base class for errors monitor reports to the user."""


class ConfigError(MonitorError):
    """The configuration cannot be used; `problems` holds one line per problem."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


class QueryError(MonitorError):
    """A watchlist query is not valid; `position` is the 0-based offset of the problem.

    `rewrite`, when the message suggests one, is the whole query (or list term) as the user
    meant it: it parses, and the message ends with it.
    """

    def __init__(self, message: str, query: str, position: int, rewrite: str | None = None) -> None:
        self.message = message
        self.query = query
        self.position = position
        self.rewrite = rewrite
        super().__init__(f"{message} at position {position + 1}")

    def pointer(self) -> str:
        """The query and a caret under the offending position, for humans."""
        return f"    {self.query}\n    {' ' * self.position}^"


class FetchError(MonitorError):
    """A feed could not be fetched; `status` is the HTTP status when there was one."""

    def __init__(
        self, message: str, *, status: int | None = None, retry_after: float | None = None
    ) -> None:
        self.status = status
        self.retry_after = retry_after  # seconds the server asked us to wait, if it did
        self.host_blocked_until: datetime | None = None  # set by the fetcher if it held off
        super().__init__(message)


class ParseError(MonitorError):
    """A fetched document is not a usable feed."""


class DeliveryError(MonitorError):
    """A message could not be delivered right now; it stays pending and is retried."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        self.retry_after = retry_after  # seconds the service asked us to wait (429, 503)
        super().__init__(message)


class PermanentDeliveryError(DeliveryError):
    """The server refused the recipient for good; the delivery is dead-lettered."""


class UnconfirmedDeliveryError(DeliveryError):
    """The whole message was handed over, but the server's reply to its end never came: it
    may have been delivered (RFC 1047). Sent at most once more, then dead-lettered."""


class LockedError(MonitorError):
    """Another monitor process holds the lock on this database."""


class UnavailableError(MonitorError):
    """A resource the config names cannot be opened: the database (down, a wrong URL, a
    directory that cannot be written) or the metrics address (in use)."""
