from __future__ import annotations

import copy
import io
import json
import pickle
import time
import warnings
from dataclasses import fields
from datetime import UTC, datetime, timedelta
from pathlib import Path

import feedparser
import feedparser.mixin
import pytest
from feedparser.util import FeedParserDict

from monitor.errors import ParseError
from monitor.models import Item
from monitor.parse import _contains, _deepcopy, _get, feedparser_as_shipped, parse_feed
from tests.feeds import GERMAN

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)


def parse(body: bytes, **kwargs: object) -> object:
    return parse_feed(body, feed_name="test", url="https://example.org/feed", now=NOW, **kwargs)  # type: ignore[arg-type]


def corpus_files(corpus: Path) -> list[Path]:
    return sorted(p for p in [*corpus.glob("*.xml"), *(corpus / "tricky").iterdir()] if p.is_file())


def test_every_corpus_feed_parses_or_is_rejected_with_a_reason(corpus: Path) -> None:
    ingested = rejected = 0
    for path in corpus_files(corpus):
        body = path.read_bytes()
        expected = len(feedparser.parse(body).entries)
        try:
            parsed = parse_feed(body, feed_name=path.stem, url="https://example.org/", now=NOW)
        except ParseError as error:
            assert str(error), path.name
            assert expected == 0, f"{path.name}: rejected ({error}) but feedparser finds {expected}"
            rejected += 1
            continue
        assert len(parsed.items) >= expected, path.name
        for item in parsed.items:
            assert item.published.tzinfo is not None
            assert "<" not in item.title or ">" not in item.title or "&lt;" in item.title
        ingested += 1
    assert ingested >= 80 and rejected <= 8


def test_feedparser_parses_every_corpus_feed_the_same_with_monitors_speed_ups(
    corpus: Path,
) -> None:
    # monitor.parse gives feedparser a cheaper deepcopy and cheaper FeedParserDict lookups:
    # each document must parse to exactly what feedparser as shipped makes of it, and our
    # own parse must give the same items.
    assert feedparser.mixin.copy.deepcopy is _deepcopy
    assert FeedParserDict.get is _get and FeedParserDict.__contains__ is _contains
    for path in corpus_files(corpus):
        body = path.read_bytes()
        ours = feedparser.parse(io.BytesIO(body))
        with feedparser_as_shipped():
            assert feedparser.mixin.copy is copy and FeedParserDict.get is not _get
            shipped = feedparser.parse(io.BytesIO(body))
        assert (ours.feed, ours.entries) == (shipped.feed, shipped.entries), path.name
    assert feedparser.mixin.copy.deepcopy is _deepcopy and FeedParserDict.get is _get


def test_the_cheaper_lookups_answer_as_feedparsers_own() -> None:
    entry = FeedParserDict(summary="Text", published="2026-11-29", links=[], tags=[])
    entry["href"] = "https://example.org/"
    keys = ["summary", "description", "url", "href", "updated", "category", "missing", "id"]
    for key in keys:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # feedparser's 'updated' alias
            fast = (entry.get(key, "default"), key in entry)
            with feedparser_as_shipped():
                shipped = (entry.get(key, "default"), key in entry)
        assert fast == shipped, key
    assert entry.get("description") == "Text" and "description" in entry


def test_the_cheaper_deepcopy_copies_whole() -> None:
    params = FeedParserDict(type="text/html", language="de", base="", base64=False)
    copied = _deepcopy(params)
    assert copied == params and copied is not params and type(copied) is FeedParserDict
    copied["value"] = "Text"
    assert "value" not in params
    legacy = FeedParserDict()
    dict.__setitem__(legacy, "url", "https://example.org/")  # a key __setitem__ maps
    assert _deepcopy(legacy) == copy.deepcopy(legacy)
    nested = FeedParserDict(links=[FeedParserDict(href="https://example.org/a")])
    deep = _deepcopy(nested)  # a mutable value inside: copied deep, by copy.deepcopy
    deep["links"][0]["href"] = "https://example.org/b"
    assert nested["links"][0]["href"] == "https://example.org/a"


def test_german_feed_keeps_umlauts_and_language(corpus: Path) -> None:
    parsed = parse_feed(
        (corpus / "ntv-de-20251112.xml").read_bytes(),
        feed_name="n-tv",
        url="https://n-tv.de/",
        now=NOW,
    )
    assert len(parsed.items) == 10
    assert any("ü" in item.title or "ö" in item.title or "ä" in item.title for item in parsed.items)
    assert {item.language for item in parsed.items} == {"de"}
    assert parsed.ttl == 300


def test_json_feeds_are_supported(corpus: Path) -> None:
    parsed = parse_feed(
        (corpus / "tricky" / "influxdata-en-jsonfeed-1.1.json").read_bytes(),
        feed_name="influx",
        url="https://example.org/",
        now=NOW,
    )
    assert len(parsed.items) == 3
    assert all(item.url.startswith("https://") for item in parsed.items)


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"", "empty document"),
        (b"  \n ", "empty document"),
        (b"<!DOCTYPE html><html><body>Moved</body></html>", "HTML page"),
        (b"<head><title>Moved</title></head><body>x</body>", "HTML page"),
        (b'{"hello": "world"}', "JSON Feed"),
        (b"{not json", "invalid JSON"),
    ],
)
def test_non_feeds_are_rejected_with_a_reason(body: bytes, reason: str) -> None:
    with pytest.raises(ParseError, match=reason):
        parse(body)


def test_a_body_naming_a_local_file_is_not_opened() -> None:
    # feedparser.parse(bytes) would open a bytes value as a path; we never let it.
    with pytest.raises(ParseError):
        parse(b"/etc/hostname")


def test_entity_expansion_bomb_is_defused() -> None:
    entity = "A" * 10_000
    refs = "&big;" * 20_000
    body = (
        f'<?xml version="1.0"?><!DOCTYPE rss [<!ENTITY big "{entity}">]>'
        f"<rss version='2.0'><channel><title>t</title><item><title>x</title>"
        f"<description>{refs}</description></item></channel></rss>"
    ).encode()
    started = time.process_time()
    parsed = parse(body)
    assert time.process_time() - started < 5  # unbounded expansion takes 30 s and 2 GiB
    assert len(parsed.items) == 1  # type: ignore[attr-defined]
    assert len(parsed.items[0].summary) < 200_000  # type: ignore[attr-defined]


def test_items_are_normalized() -> None:
    body = b"""<?xml version="1.0" encoding="utf-8"?>
<rss version="2.0"><channel><title>T</title><language>en-us</language>
<item><title>Musk &amp; xAI: &lt;b&gt;news&lt;/b&gt;</title>
<link>https://www.example.org/a?utm_source=rss&amp;id=7&amp;fbclid=zz#top</link>
<description>&lt;p&gt;First&lt;/p&gt;&lt;script&gt;alert(1)&lt;/script&gt;&lt;p&gt;second   para&lt;/p&gt;</description>
<pubDate>Sat, 28 Nov 2026 10:00:00 +0100</pubDate></item>
<item><title>No date</title><guid isPermaLink="false">abc</guid></item>
</channel></rss>"""
    items = parse(body).items  # type: ignore[attr-defined]
    first, second = items
    assert first.url == "https://www.example.org/a?id=7"
    assert first.summary == "First second para"
    assert first.published == datetime(2026, 11, 28, 9, 0, tzinfo=UTC)
    assert first.language == "en"
    assert first.key == "u:example.org/a?id=7"
    assert second.published <= NOW and second.key == "g:test:abc"


def test_max_items_caps_a_huge_feed() -> None:
    entries = "".join(f"<item><title>n{i}</title><guid>{i}</guid></item>" for i in range(50))
    body = f"<rss version='2.0'><channel><title>t</title>{entries}</channel></rss>".encode()
    parsed = parse(body, max_items=10)
    assert [i.title for i in parsed.items] == [f"n{i}" for i in range(10)]  # type: ignore[attr-defined]
    assert parsed.left_out == 40  # type: ignore[attr-defined]


def test_a_feed_far_longer_than_max_items_is_cut_before_parsing_at_both_ends() -> None:
    """An archive adding at the bottom: the newest 10 of 3,000 are read, from its end."""
    entries = "".join(
        f"<atom:entry><atom:title>n{i}</atom:title><atom:id>urn:{i}</atom:id>"
        f"<atom:updated>2026-11-01T{i // 3600:02d}:{i // 60 % 60:02d}:{i % 60:02d}Z"
        "</atom:updated></atom:entry>\n"
        for i in range(3000)
    )
    body = (
        '<atom:feed xmlns:atom="http://www.w3.org/2005/Atom"><atom:title>t</atom:title>\n'
        f"{entries}</atom:feed>"
    ).encode()
    parsed = parse(body, max_items=10)
    assert [i.title for i in parsed.items] == [f"n{i}" for i in range(2990, 3000)]  # type: ignore[attr-defined]
    assert parsed.left_out == 2990  # type: ignore[attr-defined]
    assert parsed.warning is None  # type: ignore[attr-defined]  # the cut left it well-formed


def test_max_items_keeps_the_newest_of_a_feed_listing_oldest_first() -> None:
    """A podcast or archive feed adds its new items at the end: they must be the ones read."""
    entries = "".join(
        f"<item><title>n{i}</title><guid>{i}</guid>"
        f"<pubDate>{i + 1:02d} Nov 2026 08:00:00 GMT</pubDate></item>"
        for i in range(20)
    )
    body = f"<rss version='2.0'><channel><title>t</title>{entries}</channel></rss>".encode()
    parsed = parse(body, max_items=5)
    assert [i.title for i in parsed.items] == ["n15", "n16", "n17", "n18", "n19"]  # type: ignore[attr-defined]
    assert parsed.left_out == 15  # type: ignore[attr-defined]
    document = {
        "version": "https://jsonfeed.org/version/1.1",
        "items": [
            {"id": str(i), "title": f"n{i}", "date_published": f"2026-11-{i + 1:02d}T08:00:00Z"}
            for i in range(20)
        ],
    }
    parsed = parse(json.dumps(document).encode(), max_items=5)
    assert [i.title for i in parsed.items] == ["n15", "n16", "n17", "n18", "n19"]  # type: ignore[attr-defined]


def test_placeholder_dates_count_as_no_date() -> None:
    """Go's zero time (0001-01-01) and the like: the item is dated when first seen. A year-1
    date broke every digest west of UTC and hid the feed's rhythm (never found stale)."""
    atom = (
        "<feed xmlns='http://www.w3.org/2005/Atom'><title>t</title>"
        "<entry><id>a</id><title>zero</title><updated>0001-01-01T00:00:00Z</updated></entry>"
        "<entry><id>b</id><title>epoch</title><updated>1970-01-01T00:00:00Z</updated></entry>"
        "<entry><id>c</id><title>real</title><updated>2026-11-28T08:00:00Z</updated></entry>"
        "</feed>"
    )
    parsed = parse(atom.encode())
    dates = {i.title: i.published for i in parsed.items}  # type: ignore[attr-defined]
    assert NOW - dates["zero"] < timedelta(seconds=1) and NOW - dates["epoch"] < timedelta(
        seconds=1
    )
    assert dates["real"] == datetime(2026, 11, 28, 8, tzinfo=UTC)
    assert parsed.item_gap is None  # type: ignore[attr-defined]  # one real date: no rhythm
    document = {
        "version": "https://jsonfeed.org/version/1.1",
        "items": [{"id": "a", "title": "zero", "date_published": "0001-01-01T00:00:00+01:00"}],
    }
    (item,) = parse(json.dumps(document).encode()).items  # type: ignore[attr-defined]
    assert NOW - item.published < timedelta(seconds=1)


def test_characters_no_database_takes_are_dropped() -> None:
    """NUL (PostgreSQL refuses it in text) and lone surrogates (not UTF-8): one such item
    used to fail its whole feed's batch, on every poll."""
    rss = (
        "<rss version='2.0'><channel><title>t</title><item><title>a&#0;b</title>"
        "<guid>g&#0;1</guid><link>https://example.org/x&#1;y</link></item></channel></rss>"
    )
    document = {
        "version": "https://jsonfeed.org/version/1.1",
        "items": [{"id": "g\u00002", "title": "smile \ud83d", "summary": "x\u0000y"}],
    }
    for body in (rss.encode(), json.dumps(document).encode()):
        for item in parse(body).items:  # type: ignore[attr-defined]
            for value in (item.key, item.guid, item.url, item.title, item.summary):
                value.encode("utf-8")  # no surrogate left
                assert not any(ord(c) < 32 and c not in "\t\n\r" for c in value), value


def test_bidi_overrides_are_dropped_from_an_items_text() -> None:
    """An unclosed right-to-left override in a title reversed how the outlet name after it
    read in a digest: "xAI news \u202e)sretueR(" showed "(Reuters)" and reversed "(heise)"."""
    rss = (
        "<rss version='2.0'><channel><title>t</title><item><title>xAI news &#x202e;"
        ")sretueR(</title><description>a &#x2067;b&#x2069; c &#x202a;d</description>"
        "<link>https://example.org/1</link></item></channel></rss>"
    )
    (item,) = parse(rss.encode()).items  # type: ignore[attr-defined]
    assert item.title == "xAI news )sretueR("
    assert item.summary == "a b c d"


def test_relative_item_links_resolve_against_xml_base_or_the_feed_url() -> None:
    body = b"""<?xml version="1.0" encoding="utf-8"?>
<feed xmlns="http://www.w3.org/2005/Atom"><title>T</title>
<entry><id>1</id><title>Relative</title><link href="/news/1?utm_medium=x"/></entry>
<entry xml:base="https://other.example.net/base/"><id>2</id><title>Based</title>
<link href="story-2"/></entry>
<entry><id>3</id><title type="html">&lt;a href="/x" onclick="steal()"&gt;Link&lt;/a&gt;
&lt;style&gt;p{}&lt;/style&gt;text</title><link href="https://example.org/3"/></entry>
</feed>"""
    first, second, third = parse(body).items  # type: ignore[attr-defined]
    assert first.url == "https://example.org/news/1"
    assert first.key == "u:example.org/news/1"
    assert second.url == "https://other.example.net/base/story-2"
    assert third.title == "Link text"  # markup and styles gone without feedparser's sanitizer


@pytest.mark.parametrize(
    "guid",
    [
        f"<guid{permalink}>{value}</guid>"
        for permalink in ("", " isPermaLink='true'", " isPermaLink='false'")
        for value in ("12345", "/item/7", "item?id=3", "tag:example.org,2026:1", "x y")
    ],
)
def test_ids_of_items_without_a_link_stay_what_earlier_versions_stored(guid: str) -> None:
    # Earlier versions gave feedparser the feed URL, which joined relative permalink ids to
    # it; an item without a link is known by its id, so its key must not change.
    body = (
        f"<rss version='2.0'><channel><title>T</title><item><title>A</title>{guid}</item>"
        "</channel></rss>"
    ).encode()
    headers = {"content-location": "https://example.org/feed", "content-type": "application/xml"}
    earlier = feedparser.parse(io.BytesIO(body), response_headers=headers).entries[0]
    item = parse(body).items[0]  # type: ignore[attr-defined]
    assert item.guid == earlier.id
    assert item.url == (earlier.get("link") or "")


def test_parsed_items_cross_to_the_daemon_whole() -> None:
    """Items come back from the parse processes pickled (Item.__reduce__): every field, with
    its type, arrives; a field added to Item comes along without touching __reduce__."""
    items = parse_feed(GERMAN, feed_name="n-tv", url="https://n-tv.example/rss", now=NOW).items
    assert items
    for item in items:
        copy = pickle.loads(pickle.dumps(item, protocol=pickle.HIGHEST_PROTOCOL))
        assert copy == item and type(copy) is Item
        assert [getattr(copy, f.name) for f in fields(Item)] == [
            getattr(item, f.name) for f in fields(Item)
        ]
        assert copy.published.tzinfo is not None
