"""Feed documents (RSS, Atom, RDF, JSON Feed) to normalized Items. Owns feedparser.

Parsing is a pure function of the fetched bytes, so it can run in a worker process with a
deadline: a hostile document can neither block the event loop nor exhaust the daemon's memory.
"""

from __future__ import annotations

import calendar
import copy
import hashlib
import io
import json
import re
import sys
import types
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple
from urllib.parse import urljoin

import feedparser
from feedparser import FeedParserDict

from monitor.errors import ParseError
from monitor.models import Item
from monitor.text import clean_text, html_to_text
from monitor.urls import canonical_identity, canonical_url

MAX_SUMMARY_CHARS = 4000
# An internal DTD subset can define entities that expand exponentially ("billion laughs");
# feeds never need one, so it is removed before any parser sees the document.
_DOCTYPE = re.compile(rb"<!DOCTYPE[^\[>]*(\[.*?\]\s*)?>", re.IGNORECASE | re.DOTALL)
_HTML_START = re.compile(
    rb"^\s*(<!--.*?-->\s*)*<(!doctype\s+html|html|head|body)\b", re.IGNORECASE | re.DOTALL
)
_SY_PERIODS = {
    "hourly": 3600,
    "daily": 86400,
    "weekly": 7 * 86400,
    "monthly": 30 * 86400,
    "yearly": 365 * 86400,
}


# feedparser, made cheaper where that changes nothing it returns: two of its hot paths
# run generic Python machinery for what is, on its data, a plain dict operation. Both are
# installed at import (in the daemon and in each parse process); `feedparser_as_shipped`
# undoes them for comparisons. tests/test_parse.py parses the corpus both ways.

_IMMUTABLE = frozenset({str, int, float, bool, type(None)})
_SHIPPED_GET = FeedParserDict.get
_SHIPPED_CONTAINS = FeedParserDict.__contains__
# The keys feedparser 6.0's FeedParserDict.__getitem__ resolves specially (feedparser/util.py):
# its legacy aliases and five computed keys. For any other key it is a plain dict lookup.
_ALIASED = frozenset(FeedParserDict.keymap) | {
    "category",
    "enclosures",
    "license",
    "updated",
    "updated_parsed",
}


def _deepcopy(value: Any) -> Any:
    """copy.deepcopy as feedparser's parser uses it. For the title, summary and content of
    every item it deep-copies the element's content parameters, a dict of a few strings
    (type, language, base), by copy's generic reduce-and-rebuild: about a tenth of our parse
    time on bench_poll's feeds. A dict whose values are all immutable (and that carries no
    attributes) is deep-copied exactly by setting its items on a new one, as copy.deepcopy
    rebuilds it (through __setitem__, which maps a few legacy keys); anything else still
    goes to copy.deepcopy."""
    if (
        type(value) is FeedParserDict
        and not vars(value)
        and all(type(v) in _IMMUTABLE for v in value.values())
    ):
        copied = FeedParserDict()
        for key, item in value.items():
            copied[key] = item
        return copied
    return copy.deepcopy(value)


def _get(self: FeedParserDict, key: Any, default: Any = None) -> Any:
    """FeedParserDict.get. The parser calls it about 1,400 times per bench feed (mostly on
    an element's content parameters), and the shipped one goes through __getitem__'s alias
    checks and a KeyError for each: about a tenth of our parse time (paired runs, 0.89x).
    For a key that is no alias, that is exactly dict.get."""
    if key in _ALIASED:
        return _SHIPPED_GET(self, key, default)
    return dict.get(self, key, default)


def _contains(self: FeedParserDict, key: Any) -> bool:
    """FeedParserDict.__contains__, by the same reasoning as _get."""
    if key in _ALIASED:
        return bool(_SHIPPED_CONTAINS(self, key))
    return dict.__contains__(self, key)


class _SpeedUp(NamedTuple):
    target: Any  # the module or class
    attribute: str
    shipped: Any  # feedparser's value
    ours: Any


def _speed_ups() -> list[_SpeedUp]:
    """The speed-ups this feedparser takes: its parser module's `copy` module, with
    `_deepcopy` (the rest unchanged), where that parser module exists and uses the copy
    module as we know it; FeedParserDict's lookups above, in the feedparser version whose
    aliases _ALIASED lists. A feedparser built otherwise parses as shipped."""
    found: list[_SpeedUp] = []
    parser = sys.modules.get("feedparser.mixin")
    if parser is not None and getattr(parser, "copy", None) is copy:
        cheaper = types.ModuleType("copy")
        cheaper.__dict__.update(vars(copy))
        cheaper.deepcopy = _deepcopy  # type: ignore[attr-defined]
        found.append(_SpeedUp(parser, "copy", copy, cheaper))
    if str(getattr(feedparser, "__version__", "")).startswith("6.0."):
        found.append(_SpeedUp(FeedParserDict, "get", _SHIPPED_GET, _get))
        found.append(_SpeedUp(FeedParserDict, "__contains__", _SHIPPED_CONTAINS, _contains))
    return found


_SPEED_UPS = _speed_ups()


def _install(ours: bool) -> None:
    for speed_up in _SPEED_UPS:
        value = speed_up.ours if ours else speed_up.shipped
        setattr(speed_up.target, speed_up.attribute, value)


@contextmanager
def feedparser_as_shipped() -> Iterator[None]:
    """feedparser without monitor's speed-ups, for comparing against it (tests, bench)."""
    _install(ours=False)
    try:
        yield
    finally:
        _install(ours=True)


_install(ours=True)


@dataclass(frozen=True, slots=True)
class ParsedFeed:
    """What a feed document said: its items and its hints about how often to poll it."""

    title: str
    items: tuple[Item, ...]
    ttl: float | None = None  # seconds, from RSS <ttl> or sy:updatePeriod/Frequency
    item_gap: float | None = None  # mean seconds between the items' dates: the feed's rhythm
    warning: str | None = None  # a recoverable problem worth showing (feedparser's bozo)
    left_out: int = 0  # items past max_items, the oldest by their dates, not read


def parse_feed(
    body: bytes,
    *,
    feed_name: str,
    url: str,
    headers: Mapping[str, str] | None = None,
    language: str | None = None,
    now: datetime,
    max_items: int = 500,
) -> ParsedFeed:
    """Parse one fetched document; raise ParseError with a reason a user can act on."""
    stripped = body.lstrip(b"\xef\xbb\xbf \t\r\n")
    if not stripped:
        raise ParseError("the server sent an empty document")
    if stripped[:1] in (b"{", b"["):
        return _parse_json_feed(stripped, feed_name, language, now, max_items)
    if _HTML_START.match(stripped[:4096]):
        raise ParseError("the server sent an HTML page, not a feed (is the URL the feed's?)")
    body = _DOCTYPE.sub(b"", body, count=1)
    body, cut = _without_middle_entries(body, max_items)
    # Without a declared type, trust the document's own XML declaration for its encoding.
    response_headers = {"content-type": "application/xml"}
    response_headers.update({k.lower(): v for k, v in (headers or {}).items()})
    # The document's URL is left out (content-location): feedparser would resolve every
    # element against it, a third of its time; only the item link needs it (see _item).
    response_headers.pop("content-location", None)
    # A BytesIO, never bytes: feedparser opens a bytes value as a *file path* if one exists.
    # No sanitizing or link rewriting inside HTML: every text becomes plain text (html_to_text
    # drops scripts and styles) and is escaped on output, so that work (30 %) would be wasted.
    result = feedparser.parse(
        io.BytesIO(body),
        response_headers=response_headers,
        sanitize_html=False,
        resolve_relative_uris=False,
    )
    entries = result.get("entries") or []
    channel = result.get("feed") or {}
    if not entries and result.get("bozo") and not channel.get("title"):
        reason = result.get("bozo_exception")
        raise ParseError(f"not a feed: {reason or 'no items and no feed metadata'}")
    feed_language = _language(channel.get("language")) or language or ""
    # Entries as plain dicts: FeedParserDict.get looks each key up through its alias map in
    # Python (a tenth of the work after parsing); the keys read here are none of its aliases.
    kept = _newest([_published(entry, now, n) for n, entry in enumerate(entries)], max_items, now)
    items = [
        _item(dict(entries[position]), feed_name, url, feed_language, now, position)
        for position in kept
    ]
    warning = None
    if result.get("bozo"):
        warning = f"feed is not well-formed, parsed leniently: {result.get('bozo_exception')}"
    return ParsedFeed(
        title=clean_text(str(channel.get("title", ""))),
        items=tuple(items),
        ttl=_ttl(channel),
        item_gap=item_gap(_dated((i.published for i in items), now)),
        warning=warning,
        left_out=len(entries) - len(kept) + cut,
    )


# Where an item (RSS) or entry (Atom) element starts, with or without a namespace prefix.
_ENTRY_START = re.compile(rb"<(?:[A-Za-z_][\w.-]*:)?(?:item|entry)[\s/>]")


def _without_middle_entries(body: bytes, max_items: int) -> tuple[bytes, int]:
    """The document without its middle entries if it has more than twice max_items, and how
    many were cut. feedparser's time grows with every entry (100,000 of them, 20 MB, ran
    past the parse deadline at every poll, so none was ever stored), while only max_items
    are kept: the newest, which are at one end, the start in most feeds and the end in
    archives that add at the bottom (_newest picks them by date from both ends). The entries
    are siblings, so the cut leaves a well-formed document."""
    starts = [found.start() for found in _ENTRY_START.finditer(body)]
    if len(starts) <= 2 * max_items:
        return body, 0
    head_end, tail_start = starts[max_items], starts[-max_items]
    return body[:head_end] + body[tail_start:], len(starts) - 2 * max_items


def _newest(dates: list[datetime], limit: int, now: datetime) -> list[int]:
    """The positions of at most `limit` entries: the newest by their own dates, in the
    document's order. A feed that lists oldest first (podcasts, archives) adds new items at
    its end: cutting the document at the limit dropped every new one, silently, for good."""
    if len(dates) <= limit:
        return list(range(len(dates)))
    if len(_dated(dates, now)) < 2:  # no dates to go by: the document's order, newest first
        return list(range(limit))
    return sorted(sorted(range(len(dates)), key=dates.__getitem__, reverse=True)[:limit])


def _dated(stamps: Iterable[datetime], now: datetime) -> list[datetime]:
    """The items' own dates; first-seen stand-ins (within a second of now) say nothing."""
    return [stamp for stamp in stamps if abs(stamp - now) > timedelta(seconds=1)]


def item_gap(stamps: Iterable[datetime]) -> float | None:
    """Mean seconds between consecutive dates, or None with fewer than two distinct dates."""
    ordered = sorted(set(stamps))
    if len(ordered) < 2:
        return None
    return (ordered[-1] - ordered[0]).total_seconds() / (len(ordered) - 1)


# Characters no database should be handed: C0 controls but tab and line ends (PostgreSQL
# refuses NUL in text), and lone surrogates (valid in JSON, not encodable as UTF-8). A feed
# may carry them (`&#0;`, `"\ud83d"`); one such item used to fail its whole feed's batch.
# Also the bidi embeddings, overrides and isolates (U+202A-202E, U+2066-2069): an unclosed
# one in a title reversed how the outlet name after it read in a digest.
_UNSTORABLE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\u202a-\u202e\u2066-\u2069]")


def _storable(text: str) -> str:
    return _UNSTORABLE.sub("", text)


def _item(
    entry: Mapping[str, Any], feed_name: str, base: str, language: str, now: datetime, position: int
) -> Item:
    link = canonical_url(_storable(_absolute(str(entry.get("link") or "").strip(), base)))
    title = _storable(html_to_text(str(entry.get("title") or "")))
    summary = _storable(_summary(entry))
    guid = _storable(_guid(entry, base)) or link or _digest(title + summary)
    published = _published(entry, now, position)
    return Item(
        key=make_key(feed_name, guid, link),
        feed=feed_name,
        guid=guid,
        url=link,
        title=title,
        summary=summary,
        published=published,
        language=_language(entry.get("language")) or language,
    )


_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:")


def _absolute(reference: str, base: str) -> str:
    """A relative reference joined to the feed's URL (xml:base is feedparser's job); one
    with a scheme stays as it is."""
    if not reference or _SCHEME.match(reference):
        return reference
    try:
        return urljoin(base, reference)
    except ValueError:
        return reference


def _guid(entry: Mapping[str, Any], base: str) -> str:
    """The item's id. A relative permalink id of an item without a link is joined to the
    feed URL, as feedparser did when it was given the URL: an earlier version's key for
    such an item stays the same. (An item with a link is known by its link anyway.)"""
    guid = str(entry.get("id") or "")
    return _absolute(guid, base) if entry.get("guidislink") else guid


def make_key(feed_name: str, guid: str, link: str) -> str:
    """Same article, same key: the link's identity across feeds, else the GUID within a feed.

    `link` is what canonical_url returned."""
    if link.startswith(("http://", "https://")):
        return "u:" + canonical_identity(link)
    return f"g:{feed_name}:{guid}"


def _summary(entry: Mapping[str, Any]) -> str:
    text = entry.get("summary") or ""
    if not text:
        contents = entry.get("content") or []
        text = contents[0].get("value", "") if contents else ""
    return html_to_text(str(text))[:MAX_SUMMARY_CHARS]


# Dates before this are placeholders (Go's zero time 0001-01-01, the Unix epoch), not news:
# the item counts as undated. Such a date broke every digest (a local time before year 1)
# and made the feed's rhythm look like centuries, so it was never found stale.
_EARLIEST = datetime(1990, 1, 1, tzinfo=UTC)


def _published(entry: Mapping[str, Any], now: datetime, position: int) -> datetime:
    for key in ("published_parsed", "updated_parsed", "created_parsed"):
        parsed = entry.get(key)
        if parsed:
            try:
                stamp = datetime.fromtimestamp(calendar.timegm(parsed), tz=UTC)
            except (OverflowError, ValueError, OSError):
                continue
            if stamp < _EARLIEST:
                continue
            # A date far in the future is a feed bug; it would pin the item to the top forever.
            return min(stamp, now + timedelta(days=1))
    return _first_seen(now, position)


def _first_seen(now: datetime, position: int) -> datetime:
    """An undated item's date: first-seen time, keeping the feed's order (newest first) by
    a microsecond each."""
    return now - timedelta(microseconds=position)


def _language(value: Any) -> str:
    if not value:
        return ""
    return str(value).strip().lower().replace("_", "-").split("-")[0][:8]


def _ttl(channel: Mapping[str, Any]) -> float | None:
    ttl = channel.get("ttl")
    if ttl and str(ttl).strip().isdigit():
        return int(str(ttl).strip()) * 60.0
    period = str(channel.get("sy_updateperiod", "")).strip().lower()
    if period in _SY_PERIODS:
        frequency = str(channel.get("sy_updatefrequency", "1")).strip()
        count = int(frequency) if frequency.isdigit() and int(frequency) > 0 else 1
        return _SY_PERIODS[period] / count
    return None


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


# ------------------------------------------------------------------------- JSON Feed


def _parse_json_feed(
    body: bytes, feed_name: str, language: str | None, now: datetime, max_items: int
) -> ParsedFeed:
    try:
        document = json.loads(body.decode("utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ParseError(f"not a feed: invalid JSON ({error})") from None
    if not isinstance(document, dict) or "jsonfeed.org" not in str(document.get("version", "")):
        raise ParseError("not a feed: JSON without a JSON Feed 'version' (jsonfeed.org)")
    raw_items = document.get("items")
    if not isinstance(raw_items, list):
        raise ParseError("not a feed: JSON Feed without an 'items' list")
    feed_language = _language(document.get("language")) or language or ""
    entries = list(_dicts(raw_items))
    kept = _newest([_json_published(e, now, n) for n, e in enumerate(entries)], max_items, now)
    items = [
        _json_item(entries[position], feed_name, feed_language, now, position) for position in kept
    ]
    return ParsedFeed(
        title=clean_text(str(document.get("title", ""))),
        items=tuple(items),
        item_gap=item_gap(_dated((i.published for i in items), now)),
        left_out=len(entries) - len(kept),
    )


def _dicts(values: Iterable[Any]) -> Iterable[dict[str, Any]]:
    return (value for value in values if isinstance(value, dict))


def _json_item(
    entry: dict[str, Any], feed_name: str, language: str, now: datetime, position: int
) -> Item:
    link = canonical_url(_storable(str(entry.get("url") or entry.get("external_url") or "")))
    title = _storable(html_to_text(str(entry.get("title") or "")))
    body = entry.get("summary") or entry.get("content_text") or entry.get("content_html") or ""
    summary = _storable(html_to_text(str(body))[:MAX_SUMMARY_CHARS])
    guid = _storable(str(entry.get("id") or "")) or link or _digest(title + summary)
    published = _json_published(entry, now, position)
    return Item(
        key=make_key(feed_name, guid, link),
        feed=feed_name,
        guid=guid,
        url=link,
        title=title,
        summary=summary,
        published=published,
        language=_language(entry.get("language")) or language,
    )


def _json_published(entry: dict[str, Any], now: datetime, position: int) -> datetime:
    for key in ("date_published", "date_modified"):
        stamp = _iso_date(entry.get(key))
        if stamp and stamp >= _EARLIEST:
            return min(stamp, now + timedelta(days=1))
    return _first_seen(now, position)


def _iso_date(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        stamp = datetime.fromisoformat(value.replace("Z", "+00:00"))
        if stamp.tzinfo is None:
            stamp = stamp.replace(tzinfo=UTC)
        return stamp.astimezone(UTC)
    except (ValueError, OverflowError):  # 0001-01-01T00:00:00+01:00 is before year 1 in UTC
        return None
