"""Plain frozen data passed between the pipeline stages.

No library object (feedparser dict, SQLAlchemy row, aiosmtplib response) leaves the module
that owns its library; stages exchange these instead.
"""

from __future__ import annotations

import enum
import operator
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any


@dataclass(frozen=True, slots=True)
class Item:
    """One feed entry, normalized."""

    key: str  # stable identity: canonical URL if there is one, else feed + GUID
    feed: str  # the configured feed name (the outlet)
    guid: str
    url: str
    title: str
    summary: str  # plain text
    published: datetime  # UTC; the first-seen time when the feed gives none
    language: str

    def __reduce__(self) -> tuple[type[Item], tuple[Any, ...]]:
        # Rebuilt by __init__: items cross from the parse processes, and the default for a
        # slots dataclass (its state set field by field) unpickled 3x slower (0.19 s against
        # 0.06 s per 1,000 bench feeds, in the thread that hands back the parses).
        return (Item, _item_values(self))


_item_values = operator.attrgetter(*(f.name for f in fields(Item)))


@dataclass(frozen=True, slots=True)
class Hit:
    """Where one term of a watchlist was found."""

    term: str  # the term as the user wrote it
    field: str  # "title", "summary" or "body" (a full-text feed's article text)
    start: int  # character offsets into that field
    end: int


@dataclass(frozen=True, slots=True)
class Match:
    """A watchlist matched an item; `hits` explain why."""

    watchlist: str
    hits: tuple[Hit, ...]

    @property
    def terms(self) -> tuple[str, ...]:
        """The distinct matched terms, in the order first found."""
        return tuple(dict.fromkeys(hit.term for hit in self.hits))


class FeedStatus(enum.StrEnum):
    OK = "ok"
    DEGRADED = "degraded"
    STALE = "stale"
    BROKEN = "broken"
    DISABLED = "disabled"
    NEW = "new"


@dataclass(frozen=True, slots=True)
class FeedState:
    """What the store knows about a feed between polls."""

    name: str
    url: str
    status: FeedStatus = FeedStatus.NEW
    etag: str | None = None
    last_modified: str | None = None
    body_hash: str | None = None
    next_poll_at: datetime | None = None
    last_success_at: datetime | None = None
    last_error: str | None = None
    error_since: datetime | None = None
    consecutive_failures: int = 0
    items_total: int = 0
    host: str = ""
    last_polled_at: datetime | None = None
    last_new_item_at: datetime | None = None
    last_error_at: datetime | None = None
    redirect_url: str | None = None  # a permanent redirect seen, not yet adopted
    redirect_count: int = 0  # how many polls in a row saw it
    ignore_validators: bool = False  # the server's ETag/Last-Modified were caught lying
    unchanged_streak: int = 0  # polls in a row answered 304 / same body
    item_gap: float | None = None  # seconds between items, as the feed's dates show
    interval: float | None = None  # the adapted poll interval, seconds
    poll_reason: str | None = None  # why the next poll is when it is, for `monitor feeds`
    ttl: float | None = None  # seconds the feed's last parsed document asked (RSS <ttl>)

    @property
    def items_per_day(self) -> float | None:
        return 86400.0 / self.item_gap if self.item_gap else None


class Keep(enum.Enum):
    """A FeedUpdate field left as the feed's row has it."""

    KEEP = "keep"


KEEP = Keep.KEEP


@dataclass(frozen=True, slots=True)
class FeedUpdate:
    """What one poll changes in a feed's stored state (FeedState): built by the poller
    (outcomes.py), written by the store with the release of the feed's lease. A field set to
    KEEP leaves its column alone; None clears it."""

    status: FeedStatus | Keep = KEEP
    url: str | Keep = KEEP  # a permanent redirect adopted
    host: str | Keep = KEEP
    title: str | Keep = KEEP
    etag: str | Keep | None = KEEP
    last_modified: str | Keep | None = KEEP
    body_hash: str | Keep | None = KEEP
    next_poll_at: datetime | Keep | None = KEEP  # None: never again (410 Gone)
    last_polled_at: datetime | Keep = KEEP
    last_success_at: datetime | Keep = KEEP
    last_new_item_at: datetime | Keep = KEEP
    last_error: str | Keep | None = KEEP
    last_error_at: datetime | Keep = KEEP
    error_since: datetime | Keep | None = KEEP
    consecutive_failures: int | Keep = KEEP
    items_total: int | Keep = KEEP
    redirect_url: str | Keep | None = KEEP
    redirect_count: int | Keep = KEEP
    ignore_validators: bool | Keep = KEEP
    unchanged_streak: int | Keep = KEEP
    item_gap: float | Keep | None = KEEP
    interval: float | Keep = KEEP
    poll_reason: str | Keep = KEEP  # why next_poll_at is when it is, for `monitor feeds`
    ttl: float | Keep | None = KEEP  # the parsed document's <ttl>, for the polls answered 304

    def columns(self) -> dict[str, Any]:
        """The changed columns and their values, as stored."""
        changed = {f.name: getattr(self, f.name) for f in fields(self)}
        return {
            name: value.value if isinstance(value, FeedStatus) else value
            for name, value in changed.items()
            if value is not KEEP
        }


@dataclass(frozen=True, slots=True)
class DigestEntry:
    """One matched item as a digest shows it."""

    delivery_ids: tuple[int, ...]
    watchlist: str
    item: Item
    hits: tuple[Hit, ...] = field(default_factory=tuple)
    also_reported_by: tuple[tuple[str, str], ...] = ()  # (outlet, url) of the same story
    updated: bool = False  # a re-alert: the item's title or summary changed since it was sent
    story: int = 0  # the item's story (its first item's id), or the item's own id if in none
    watchlists: tuple[str, ...] = ()  # every list it matched for the recipient, first ranked
    # A few lines of the article around its first body hit (full-text feeds), never the
    # article: the body hits' offsets are into this excerpt.
    excerpt: str = ""


@dataclass(frozen=True, slots=True)
class EarlierMessage:
    """The message that first carried a story to a recipient."""

    message_id: str
    kind: MessageKind
    at: datetime  # when it was sent (or stored, while it waits to be)


@dataclass(frozen=True, slots=True)
class StoryGrowth:
    """Outlets that joined a story after it reached a recipient: one line in a digest."""

    note_ids: tuple[int, ...]
    story: int
    item: Item  # the story's first item, as it was sent
    outlets: int  # how many outlets carry the story now
    new: tuple[tuple[str, str], ...]  # (outlet, url) of the members not yet shown
    watchlists: tuple[str, ...]


class DeliveryStatus(enum.StrEnum):
    """Where one match's delivery to one recipient stands."""

    PENDING = "pending"  # queued for its recipient's next digest or alert
    CLAIMED = "claimed"  # bound to a stored message not yet accepted by the server
    SENT = "sent"
    DEAD = "dead"  # its message was refused for good (a dead letter)


class MessageStatus(enum.StrEnum):
    """Where one stored message stands."""

    READY = "ready"  # stored, to be sent (now, or after its backoff)
    SENT = "sent"  # accepted by the server
    DEAD = "dead"  # refused for good: a dead letter, until `retry-dead`


class MessageKind(enum.StrEnum):
    DIGEST = "digest"
    ALERT = "alert"  # an immediate watchlist's message


@dataclass(frozen=True, slots=True)
class OutgoingMessage:
    """A rendered message, stored before it is sent so a resend uses the same bytes."""

    message_id: str
    recipient: str
    mime: bytes
    kind: MessageKind = MessageKind.DIGEST
