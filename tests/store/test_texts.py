"""Article pages: claimed once, stored (save_pages), matched, and the item their canonical link names
(monitor/store/texts.py). Run on SQLite and on PostgreSQL (database_url is parametrized)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from datetime import datetime, timedelta

import pytest
import sqlalchemy as sa

from monitor.models import Hit, Item, Match
from monitor.store import PageOutcome, PageStatus, Store
from monitor.store.texts import _claim
from tests.store.common import NOW, RECIPIENTS, make_item, match_all

BACKLOG = timedelta(hours=48)
UNTIL = NOW + timedelta(minutes=5)
BODY = "Robert Keele, the general counsel of xAI, has left the company after two years."
KEELE = {"Keele": ("a@example.org",), **RECIPIENTS}


@pytest.fixture
def store(store: Store) -> Store:
    """The store, with heise and golem full-text feeds (their new items' pages queued)."""
    store.page_feeds = frozenset({"heise", "golem"})
    return store


def match_nothing(item: Item) -> list[Match]:
    return []


def match_body(item: Item, body: str) -> list[Match]:
    """Keele where the body names him; xAI always (as match_all)."""
    found = match_all(item)
    if (at := body.find("Robert Keele")) >= 0:
        found.append(Match("Keele", (Hit("Robert Keele", "body", at, at + 12),)))
    return found


def claim(store: Store, at: timedelta = timedelta()) -> list[int]:
    """Claim the waiting pages of heise and golem (`at` later than NOW): their items' ids."""
    tasks = store.claim_pages(
        {"heise", "golem"}, NOW - timedelta(days=1), NOW + at, UNTIL + at, 10, BACKLOG
    )
    return [task.item_id for task in tasks]


def text(body: str = BODY, canonical: str | None = None) -> PageOutcome:
    return PageOutcome(PageStatus.TEXT, len(body.split()), body, canonical=canonical)


def save(
    store: Store,
    item_id: int,
    outcome: PageOutcome,
    match: Callable[[Item, str], list[Match]],
    recipients: Mapping[str, Sequence[str]],
    now: datetime,
) -> list[Match]:
    """One page's outcome stored (save_pages stores the pages done together)."""
    (found,) = store.save_pages([(item_id, outcome)], match, recipients, now)
    return found


def entries(store: Store) -> list[tuple[str, str, int]]:
    """(recipient, watchlist, story) of each pending digest entry."""
    return sorted((r, e.watchlist, e.story) for r, e in store.pending_entries())


def ids(store: Store) -> dict[str, int]:
    """item URL -> id."""
    with store.engine.connect() as connection:
        rows = connection.execute(sa.text("SELECT url, id FROM items"))
        return {url: item_id for url, item_id in rows}


def stories(store: Store) -> dict[int, int]:
    """item id -> story id."""
    with store.engine.connect() as connection:
        rows = connection.execute(sa.text("SELECT item_id, story_id FROM story_members"))
        return {item_id: story for item_id, story in rows}


def test_a_page_is_claimed_once_and_again_only_after_its_claim_expired(store: Store) -> None:
    store.ingest([make_item(1)], match_nothing, RECIPIENTS, NOW)
    (item_id,) = ids(store).values()
    assert claim(store) == [item_id]
    assert claim(store) == []  # claimed, not expired: no other worker takes it
    assert claim(store, at=timedelta(minutes=10)) == [item_id]  # its worker died: again


def test_a_page_another_worker_claimed_first_is_not_taken(store: Store) -> None:
    store.ingest([make_item(1)], match_nothing, RECIPIENTS, NOW)
    (item_id,) = ids(store).values()
    assert len(claim(store)) == 1
    # The other worker read the page as unclaimed before this claim committed.
    with store._tx() as tx:
        assert not _claim(tx, item_id, NOW, UNTIL)


def test_a_backlog_items_page_is_marked_old_never_claimed(store: Store) -> None:
    old = replace(make_item(1), published=NOW - timedelta(days=5))
    store.ingest([old], match_nothing, RECIPIENTS, NOW)
    assert claim(store) == [] and claim(store, at=timedelta(minutes=10)) == []
    with store.engine.connect() as connection:
        status = connection.execute(sa.text("SELECT status FROM item_texts")).scalar()
    assert status == PageStatus.OLD


def test_a_text_adds_the_matches_of_watchlists_that_had_not_matched(store: Store) -> None:
    store.ingest([make_item(1)], match_all, KEELE, NOW)  # xAI on the teaser
    (item_id,) = claim(store)
    found = save(store, item_id, text(), match_body, KEELE, NOW)
    assert [m.watchlist for m in found] == ["Keele"]  # xAI had matched already
    assert store.page_texts([item_id]) == {item_id: BODY}
    assert entries(store) == [
        ("a@example.org", "Keele", item_id),
        ("a@example.org", "xAI", item_id),
        ("b@example.org", "xAI", item_id),
    ]
    keele = next(e for r, e in store.pending_entries() if e.watchlist == "Keele")
    assert keele.excerpt.startswith("*Robert Keele*") or "Robert Keele" in keele.excerpt


def test_a_short_page_keeps_no_text_and_adds_no_match(store: Store) -> None:
    store.ingest([make_item(1)], match_nothing, KEELE, NOW)
    (item_id,) = claim(store)
    wall = PageOutcome(PageStatus.SHORT, 4, None, "only 4 words of text")
    assert save(store, item_id, wall, match_body, KEELE, NOW) == []
    assert store.page_texts([item_id]) == {} and entries(store) == []
    assert store.page_stats()["heise"].last_error == "only 4 words of text"


def at(n: int, path: str, feed: str, title: str) -> Item:
    """Item n at https://example.org/PATH, in `feed`."""
    url = f"https://example.org/{path}"
    return replace(make_item(n, feed, title), key=f"u:example.org/{path}", url=url, guid=url)


def test_a_canonical_link_on_the_same_site_is_a_key_of_the_item(store: Store) -> None:
    store.ingest([at(1, "m/keele-1", "heise", "Musk")], match_nothing, KEELE, NOW)
    (item_id,) = claim(store)
    own = text(canonical="https://example.org/news/keele")
    save(store, item_id, own, match_body, KEELE, NOW)
    later = store.ingest([at(2, "news/keele", "golem", "Musk")], match_nothing, KEELE, NOW)
    elsewhere = store.ingest([at(3, "x", "golem", "Musk")], match_nothing, KEELE, NOW)
    assert later.new_items == () and len(elsewhere.new_items) == 1

    # Another site's canonical (a syndicated copy names its original) is no key of it.
    (copy,) = claim(store)
    save(store, copy, text(canonical="https://elsewhere.org/y"), match_body, KEELE, NOW)
    other = replace(at(4, "y", "golem", "Musk"), key="u:elsewhere.org/y")
    assert len(store.ingest([other], match_nothing, KEELE, NOW).new_items) == 1


def test_an_item_whose_page_names_an_earlier_items_link_joins_its_story(store: Store) -> None:
    desktop = at(1, "news/keele", "heise", "xAI verliert seinen Chefjuristen")
    amp = at(2, "m/keele-amp", "golem", "Top-Anwalt geht bei xAI")
    store.ingest([desktop], match_all, KEELE, NOW)
    store.ingest([amp], match_all, KEELE, NOW)  # other words: a story of its own
    assert len({story for _, _, story in entries(store)}) == 2
    first, second = ids(store)[desktop.url], ids(store)[amp.url]
    claimed = claim(store)
    assert second in claimed

    page = text(canonical=desktop.url)
    found = save(store, second, page, match_body, KEELE, NOW)

    assert [m.watchlist for m in found] == ["Keele"]  # recorded; its story told once
    assert entries(store) == [
        ("a@example.org", "Keele", first),
        ("a@example.org", "xAI", first),
        ("b@example.org", "xAI", first),
    ]
    (shown,) = [e for r, e in store.pending_entries() if r == "b@example.org"]
    assert shown.item.url == desktop.url
    assert shown.also_reported_by == (("golem", amp.url),)

    # A copy of the AMP text from a third outlet joins the one story (the candidate cache
    # still named the AMP item's former story).
    copy = replace(amp, feed="spiegel", key="u:spiegel.de/keele", url="https://spiegel.de/k")
    store.ingest([copy], match_all, KEELE, NOW)
    assert stories(store) == {first: first, second: first, ids(store)[copy.url]: first}
    assert len(entries(store)) == 3


def test_two_unmatched_items_joined_by_a_canonical_link_are_told_once(store: Store) -> None:
    desktop = at(1, "news/keele", "heise", "Chefjurist geht")
    amp = at(2, "m/keele-amp", "golem", "Abschied an der Spitze")
    store.ingest([desktop, amp], match_nothing, KEELE, NOW)
    first, second = ids(store)[desktop.url], ids(store)[amp.url]
    assert sorted(claim(store)) == sorted([first, second])

    save(store, second, text(canonical=desktop.url), match_body, KEELE, NOW)
    save(store, first, text(), match_body, KEELE, NOW)  # the same article via its link

    assert entries(store) == [
        ("a@example.org", "Keele", first),
        ("a@example.org", "xAI", first),
        ("b@example.org", "xAI", first),
    ]


def test_a_revision_is_never_claimed_and_has_its_items_text(store: Store) -> None:
    store.dedupe = replace(store.dedupe, realert_on_update=True)
    store.ingest([make_item(1)], match_nothing, KEELE, NOW)
    (item_id,) = claim(store)
    save(store, item_id, text(), match_body, KEELE, NOW)
    revised = replace(make_item(1), title="Musk und xAI: der Chefjurist geht")
    result = store.ingest([revised], match_nothing, KEELE, NOW, match_body=match_body)
    assert result.updated and {m.watchlist for _, m in result.matches} == {"Keele", "xAI"}
    (revision,) = set(ids(store).values()) - {item_id}
    assert claim(store, at=timedelta(minutes=10)) == []
    assert store.page_texts([revision]) == {revision: BODY}
