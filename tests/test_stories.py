"""Same item, same story, updated item: the pure functions, then the store on both backends."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa
import yaml
from datasketch import MinHash

from monitor.models import Hit, Item, Match, OutgoingMessage
from monitor.store import Store, open_store
from monitor.store.stories import STORY_LOCK
from monitor.stories import (
    Candidate,
    DedupeSettings,
    _band_hashes,
    _closest_vectorized,
    assign_stories,
    dedupe_keys,
    fingerprints,
    jaccard,
    shingles,
)

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
PAIRS = yaml.safe_load((Path(__file__).parent / "data" / "story_pairs.yaml").read_text())["pairs"]
SETTINGS = DedupeSettings()


def _pair_id(pair: dict[str, Any]) -> str:
    return f"{pair['kind']}:{pair['a']['title'][:40]}"


def is_same_story(pair: dict[str, Any]) -> bool:
    return pair["kind"] != "topic" and not pair.get("known_miss", False)


@pytest.mark.parametrize("pair", PAIRS, ids=_pair_id)
def test_labeled_pairs_are_classified_as_labeled(pair: dict[str, Any]) -> None:
    similarity = jaccard(shingles(**pair["a"]), shingles(**pair["b"]))
    assert (similarity >= SETTINGS.similarity) == is_same_story(pair), similarity


@pytest.mark.parametrize("pair", [p for p in PAIRS if is_same_story(p)], ids=_pair_id)
def test_lsh_bands_find_same_story_pairs_as_candidates(pair: dict[str, Any]) -> None:
    first, second = fingerprints([tuple(pair["a"].values()), tuple(pair["b"].values())], SETTINGS)
    assert len(first.bands) == SETTINGS.bands
    # 32 bands of 3 rows: at Jaccard 0.39 a shared band is 86 % likely, at 0.5 98.6 %.
    if jaccard(first.shingles, second.shingles) >= 0.5:
        assert set(first.bands) & set(second.bands)


def test_fingerprints_are_stable_across_processes() -> None:
    # Band hashes are stored; they must not depend on Python's salted hash().
    (fingerprint,) = fingerprints([("Igor Babuschkin verlässt xAI", "")], SETTINGS)
    assert fingerprint.shingles == frozenset({"igor", "babusc", "verlae", "xai"})
    assert (
        fingerprint.bands[0]
        == fingerprints([("xAI verlässt Igor Babuschkin", "")], SETTINGS)[0].bands[0]
    )


def test_text_without_words_forms_no_bands() -> None:
    (fingerprint,) = fingerprints([("…", "—")], SETTINGS)
    assert fingerprint.bands == () and fingerprint.shingles == frozenset()


def test_assign_stories_joins_the_closest_and_chains_within_a_batch() -> None:
    a, b, c = fingerprints(
        [
            ("Igor Babuschkin verlässt xAI", "Mitgründer geht, gründet Fonds"),
            ("Mitgründer Igor Babuschkin verlässt xAI", "er gründet einen Fonds"),
            ("Robert Keele verlässt xAI", "Chefjurist geht nach einem Jahr"),
        ],
        SETTINGS,
    )
    known = {band: [Candidate(7, 7, a.hashes, "n-tv")] for band in a.bands}
    new = [(10, "stern", b), (11, "zeit", c), (12, "zeit", b), (13, "n-tv", b)]
    assigned = assign_stories(new, known, SETTINGS.similarity)
    # 13 is n-tv's, and n-tv is in story 7 already (item 7): its own items never merge, not
    # through stern's copy either (that chained a daily column into its first day's story).
    assert [x.story_id for x in assigned] == [7, 11, 7, 13]
    assert assigned[1].is_new_story(11) and not assigned[0].is_new_story(10)


def test_an_outlets_own_items_never_merge() -> None:
    # A recurring column ("Die Lage am Morgen") repeats its teaser under a new link each day.
    (a,) = fingerprints([("Die Lage am Morgen", "Was heute wichtig ist")], SETTINGS)
    known = {band: [Candidate(7, 7, a.hashes, "spiegel")] for band in a.bands}
    (assigned,) = assign_stories([(8, "spiegel", a)], known, SETTINGS.similarity)
    assert assigned.is_new_story(8)


def test_dedupe_keys_name_url_and_feed_guid() -> None:
    item = make_item("a", feed="heise")
    assert len(dedupe_keys(item)) == 2
    assert dedupe_keys(replace(item, feed="spiegel"))[0] == dedupe_keys(item)[0]  # same URL
    no_link = replace(item, key="g:heise:x", url="")
    assert dedupe_keys(no_link) == dedupe_keys(item)[1:]
    for grouped in (True, False):
        assert dedupe_keys(no_link, grouped) == dedupe_keys(item, grouped)[1:]
        assert all(0 <= key < 2**63 for key in dedupe_keys(item, grouped))  # a BIGINT


def test_grouped_dedupe_keys_of_one_host_or_feed_lie_side_by_side() -> None:
    """One feed's new keys land in one region of the key index (few pages rewritten per
    commit); the earlier, ungrouped keys scatter."""
    items = [make_item(f"a{n}", feed="heise") for n in range(50)]
    other = make_item("a0", feed="spiegel")
    top = {key >> 51 for item in items for key in dedupe_keys(item)}
    assert len(top) <= 2  # the link's host, the feed
    assert {key >> 51 for key in dedupe_keys(other)}.isdisjoint(top)
    assert len({key >> 51 for item in items for key in dedupe_keys(item, False)}) > 50
    assert len({k for item in items for k in dedupe_keys(item)}) == 100  # still all distinct


# --------------------------------------------------------------------------- the store


def make_item(slug: str, feed: str = "heise", title: str = "", summary: str = "") -> Item:
    return Item(
        key=f"u:{feed}.example/{slug}",
        feed=feed,
        guid=f"{feed}-{slug}",
        url=f"https://{feed}.example/{slug}",
        title=title or f"Meldung {slug}",
        summary=summary or f"Text {slug}",
        published=NOW - timedelta(hours=1),
        language="de",
    )


BABUSCHKIN = PAIRS[0]  # a German wire copy and its lightly edited reprint
KEELE = next(p for p in PAIRS if p["kind"] == "topic")  # different news, same company


def watch_xai(item: Item) -> list[Match]:
    return [Match("xAI", (Hit("xAI", "title", 0, 3),))] if "xAI" in item.title else []


RECIPIENTS = {"xAI": ("a@example.org", "b@example.org")}


@pytest.fixture
def store(database_url: str) -> Iterator[Store]:
    store = open_store(database_url)
    yield store
    store.close()


def ingest(store: Store, items: Sequence[Item], now: datetime = NOW) -> Any:
    return store.ingest(items, watch_xai, RECIPIENTS, now)


def send_everything(store: Store) -> None:
    ids = [i for _, entry in store.pending_entries() for i in entry.delivery_ids]
    message = OutgoingMessage(f"<{len(ids)}.{ids[0]}@test>", "a@example.org", b"x")
    assert store.claim_digest(message, ids, NOW)
    store.mark_sent(message.message_id, NOW)


def test_same_url_in_another_feed_records_the_outlet_without_alerting(store: Store) -> None:
    first = make_item("babuschkin", title="Babuschkin verlässt xAI")
    ingest(store, [first])
    copy = replace(first, feed="zeit", guid="zeit-1", url=first.url + "?utm_source=rss")
    result = ingest(store, [copy])
    assert result.new_items == () and result.matches == ()
    pending = store.pending_entries()
    assert len(pending) == 2  # one per recipient, not per outlet
    assert pending[0][1].also_reported_by == (("zeit", copy.url),)


def test_same_guid_in_one_feed_with_a_new_link_is_the_same_item(store: Store) -> None:
    first = make_item("a", title="xAI news")
    ingest(store, [first])
    moved = replace(first, key="u:heise.example/a-moved", url="https://heise.example/a-moved")
    assert ingest(store, [moved]).new_items == ()
    # the new link is now a key too: another feed linking to it is the same item
    elsewhere = replace(moved, feed="zeit", guid="z1")
    assert ingest(store, [elsewhere]).new_items == ()


def test_syndicated_copy_joins_the_story_and_is_not_queued_again(store: Store) -> None:
    a = make_item("1", feed="n-tv", **BABUSCHKIN["a"])
    b = make_item("2", feed="stern", **BABUSCHKIN["b"])
    ingest(store, [a])
    result = ingest(store, [b])
    assert result.new_items == (b,)  # a new item (its own URL) ...
    assert len(result.matches) == 1  # ... whose match is recorded ...
    pending = store.pending_entries()
    assert [r for r, _ in pending] == ["a@example.org", "b@example.org"]  # ... but not re-queued
    entry = pending[0][1]
    assert entry.item.feed == "n-tv"
    assert entry.also_reported_by == (("stern", b.url),)


def test_copies_in_one_batch_form_one_story(store: Store) -> None:
    a = make_item("1", feed="dpa", **BABUSCHKIN["a"])
    b = make_item("2", feed="stern", **BABUSCHKIN["b"])
    ingest(store, [a, b])
    assert len(store.pending_entries()) == 2


def test_the_same_text_from_one_outlet_under_new_links_is_not_merged(store: Store) -> None:
    ingest(store, [make_item("1", feed="spiegel", **BABUSCHKIN["a"])])
    ingest(store, [make_item("2", feed="spiegel", **BABUSCHKIN["a"])])
    assert len(store.pending_entries()) == 4


def test_different_news_about_the_same_company_stays_apart(store: Store) -> None:
    ingest(store, [make_item("1", feed="n-tv", **KEELE["a"])])
    ingest(store, [make_item("2", feed="stern", **KEELE["b"])])
    entries = [e for r, e in store.pending_entries() if r == "a@example.org"]
    assert sorted(e.item.title for e in entries) == [
        "Igor Babuschkin verlässt xAI",
        "Robert Keele verlässt xAI",
    ]
    assert all(e.also_reported_by == () for e in entries)


def test_a_story_already_sent_is_not_repeated_when_it_gains_outlets(store: Store) -> None:
    ingest(store, [make_item("1", feed="n-tv", **BABUSCHKIN["a"])])
    send_everything(store)
    ingest(store, [make_item("2", feed="stern", **BABUSCHKIN["b"])], NOW + timedelta(hours=2))
    assert store.pending_entries() == []


def test_a_sent_story_gaining_an_outlet_is_noted_once_per_recipient(
    store: Store, database_url: str
) -> None:
    ingest(store, [make_item("1", feed="n-tv", **BABUSCHKIN["a"])])
    send_everything(store)
    copy = make_item("2", feed="stern", **BABUSCHKIN["b"])
    ingest(store, [copy], NOW + timedelta(hours=2))
    ingest(store, [replace(copy, feed="zeit", guid="z")], NOW + timedelta(hours=3))  # same item
    restarted = open_store(database_url)  # the notes are state, not memory
    try:
        growth = restarted.pending_growth(["a@example.org", "b@example.org"])
        assert sorted(growth) == ["a@example.org", "b@example.org"]
        (line,) = growth["a@example.org"]
        assert line.item.feed == "n-tv" and line.outlets == 3  # n-tv, stern, zeit
        assert line.new == (("stern", copy.url),) and line.watchlists == ("xAI",)
        # Two workers composing at once: exactly one message shows it.
        first = OutgoingMessage("<growth.1@test>", "a@example.org", b"x")
        second = OutgoingMessage("<growth.2@test>", "a@example.org", b"y")
        assert restarted.claim_digest(first, [], NOW, notes=line.note_ids)
        assert not restarted.claim_digest(second, [], NOW, notes=line.note_ids)
        assert "a@example.org" not in restarted.pending_growth(["a@example.org"])
        assert [m.message_id for m in restarted.ready_messages(NOW)] == [first.message_id]
    finally:
        restarted.close()


def test_a_pending_story_gaining_an_outlet_is_noted_for_its_entry_to_show(store: Store) -> None:
    ingest(store, [make_item("1", feed="n-tv", **BABUSCHKIN["a"])])
    ingest(store, [make_item("2", feed="stern", **BABUSCHKIN["b"])])
    assert len(store.pending_growth(["a@example.org"])["a@example.org"]) == 1
    entry = next(e for r, e in store.pending_entries() if r == "a@example.org")
    assert entry.also_reported_by == (("stern", "https://stern.example/2"),)


def test_another_watchlist_is_still_queued_for_a_joined_story(store: Store) -> None:
    def by_feed(item: Item) -> list[Match]:
        return [Match(f"from-{item.feed}", (Hit("xAI", "title", 0, 3),))]

    recipients = {"from-n-tv": ("a@example.org",), "from-stern": ("a@example.org",)}
    store.ingest([make_item("1", feed="n-tv", **BABUSCHKIN["a"])], by_feed, recipients, NOW)
    store.ingest([make_item("2", feed="stern", **BABUSCHKIN["b"])], by_feed, recipients, NOW)
    assert sorted(e.watchlist for _, e in store.pending_entries()) == ["from-n-tv", "from-stern"]


def test_a_copy_outside_the_window_is_a_new_story(store: Store) -> None:
    ingest(store, [make_item("1", feed="n-tv", **BABUSCHKIN["a"])])
    later = NOW + SETTINGS.window + timedelta(minutes=1)
    ingest(store, [make_item("2", feed="stern", **BABUSCHKIN["b"])], later)
    assert len(store.pending_entries()) == 4


def test_repolling_a_feed_that_redates_its_items_creates_nothing(store: Store) -> None:
    batch = [
        make_item(str(n), title=f"xAI {n}news", summary=f"{n}alpha {n}beta {n}gamma")
        for n in range(5)
    ]
    ingest(store, batch)
    redated = [replace(item, published=NOW + timedelta(days=2)) for item in batch]
    result = ingest(store, redated, NOW + timedelta(days=2))
    assert (result.new_items, result.matches, result.updated) == ((), (), ())
    assert store.item_count() == 5
    assert len(store.pending_entries()) == 10


def test_an_updated_item_does_not_realert_by_default(store: Store) -> None:
    item = make_item("1", feed="n-tv", **BABUSCHKIN["a"])
    ingest(store, [item])
    send_everything(store)
    changed = replace(item, title=item.title + " (aktualisiert)")
    result = ingest(store, [changed])
    assert result.updated == (changed,) and result.matches == ()
    assert store.pending_entries() == []


def test_an_updated_item_realerts_marked_when_configured(database_url: str) -> None:
    store = open_store(database_url, DedupeSettings(realert_on_update=True))
    try:
        item = make_item("1", feed="n-tv", **BABUSCHKIN["a"])
        ingest(store, [item])
        send_everything(store)
        changed = replace(item, summary="Babuschkin bestätigt den Abschied von xAI.")
        assert len(ingest(store, [changed]).matches) == 1
        pending = store.pending_entries()
        assert len(pending) == 2 and all(e.updated for _, e in pending)
        assert pending[0][1].item.summary == changed.summary
        assert ingest(store, [changed]).matches == ()  # the same change, seen again
    finally:
        store.close()


def test_batch_minhash_equals_datasketch() -> None:
    # fingerprints vectorizes datasketch's MinHash over a batch; the bands must stay what
    # MinHash.bulk gives, or new items would stop meeting the bands stored before.
    texts = [("Igor Babuschkin verlässt xAI", "Mitgründer geht"), ("Wetter", ""), ("…", "")]
    texts += [(f"Nachricht {n}", " ".join(f"wort{k}" for k in range(n))) for n in range(300)]
    wordy = [[w.encode() for w in shingles(*text)] for text in texts if shingles(*text)]
    expected = MinHash.bulk(wordy, num_perm=SETTINGS.num_perm)
    signatures = np.stack([minhash.hashvalues for minhash in expected])
    bands = [tuple(row) for row in _band_hashes(signatures, SETTINGS).tolist()]
    assert [f.bands for f in fingerprints(texts, SETTINGS) if f.bands] == bands
    assert len(bands) == len(texts) - 1


def test_vectorized_closest_equals_the_loop() -> None:
    words = [f"w{n:05d}" for n in range(400)]
    texts = [(" ".join(words[n : n + 30]), " ".join(words[n * 3 : n * 3 + 20])) for n in range(60)]
    prints = fingerprints(texts, SETTINGS)
    candidates = [Candidate(n, n % 7, p.hashes, "a") for n, p in enumerate(prints[1:], 1)]
    for threshold in (0.2, 0.39, 0.6, 0.99):
        for fingerprint in prints[:20]:
            expected = None
            for candidate in candidates:
                similarity = jaccard(fingerprint.hashes, candidate.hashes)
                if similarity >= threshold and (expected is None or similarity > expected[1]):
                    expected = (candidate.story_id, similarity)
            found = _closest_vectorized(fingerprint, candidates, threshold)
            assert (found and (found.story_id, found.similarity)) == expected


def test_the_daemon_does_not_load_datasketch() -> None:
    # datasketch (and the scipy it imports) would add 55 MB to every monitor process.
    code = "import sys, monitor.app, monitor.cli; print('datasketch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


def test_an_update_of_an_unqueued_match_still_queues_the_original(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = open_store(database_url, DedupeSettings(realert_on_update=True))
    try:
        item = make_item("1", feed="n-tv", **BABUSCHKIN["a"])
        cluster = store._cluster
        monkeypatch.setattr(store, "_cluster", lambda *args: 1 / 0)
        ingest(store, [item])  # stored and matched; queueing failed
        monkeypatch.setattr(store, "_cluster", cluster)
        changed = replace(item, summary="Babuschkin bestätigt den Abschied von xAI.")
        ingest(store, [changed])
        pending = store.pending_entries()
        originals = [e for _, e in pending if not e.updated]
        updates = [e for _, e in pending if e.updated]
        assert len(originals) == 2 and len(updates) == 2
    finally:
        store.close()


@pytest.mark.parametrize("crowd", [0, 10])  # below and above _VECTORIZE_FROM candidates
def test_short_texts_merge_only_as_near_copies(crowd: int) -> None:
    """Title-only items (Google News) share many of their few words by chance: two different
    stories must stay two (merging hides the second one's alert); copies still merge."""
    rise, fall, copy, *others = fingerprints(
        [
            ("Tesla shares rise after delivery beat - Reuters", ""),
            ("Tesla shares fall after delivery miss - Reuters", ""),
            ("Tesla shares rise after delivery beat", ""),
            *[(f"Unrelated headline number {n} about shares", "") for n in range(crowd)],
        ],
        SETTINGS,
    )
    assert jaccard(rise.shingles, fall.shingles) >= SETTINGS.similarity  # the trap
    candidates = [Candidate(7, 7, rise.hashes, "gnews")]
    candidates += [Candidate(20 + n, 20 + n, f.hashes, f"o{n}") for n, f in enumerate(others)]
    known = {band: candidates for band in rise.bands}
    first, second = assign_stories([(8, "reuters", fall), (9, "yahoo", copy)], known, 0.39)
    assert first.is_new_story(8) and second.story_id == 7


@pytest.mark.parametrize("feeds", [2, 5])  # 5: each edition in a feed of its own
def test_a_column_in_two_feeds_does_not_chain_into_one_story(store: Store, feeds: int) -> None:
    """A column carried by two feeds, an edition every other day, each close to the one
    before: the editions chained into the first one's story (none alerted again). A story
    takes members for the dedupe window after it began (alone at work with 5 feeds), and
    never a second item of a feed it holds."""
    import sqlalchemy as sa

    from monitor.store.schema import story_members

    words = [f"wort{n}" for n in range(40)]
    stories = []
    for edition in range(5):
        text = " ".join(words[4 * edition : 4 * edition + 20])  # 16 of 20 words as before
        feed = f"spiegel-{edition % feeds}"
        item = make_item(f"lage-{edition}", feed=feed, title=f"xAI Die Lage {text}")
        ingest(store, [item], NOW + timedelta(days=2 * edition))
        with store.engine.connect() as tx:
            stories.append(
                tx.execute(
                    sa.select(story_members.c.story_id).order_by(story_members.c.item_id.desc())
                ).scalar()
            )
    # day 2 joins day 0 (within 72 h, another feed); day 4 may not (96 h, and its feed is
    # in that story); day 6 joins day 4; day 8 starts anew.
    assert stories[0] == stories[1] != stories[2] == stories[3] != stories[4]


@pytest.mark.parametrize("matched_before", [True, False])
def test_a_known_item_in_another_feed_matches_watchlists_of_that_feed(
    store: Store, matched_before: bool
) -> None:
    """A link first carried by an aggregator, later by heise: a watchlist limited to heise
    matched neither copy (the second only recorded its outlet). It matches when heise
    carries it, once; a watchlist that matched before is not queued again."""
    hit = (Hit("xAI", "title", 0, 3),)

    def match(item: Item) -> list[Match]:
        found = [Match("all", hit)] if matched_before else []
        return found + ([Match("heise-only", hit)] if item.feed == "heise" else [])

    recipients = {"all": ("a@example.org",), "heise-only": ("h@example.org",)}
    first = make_item("x", feed="gnews", title="xAI startet Grok 5")
    store.ingest([first], match, recipients, NOW)
    copy = replace(first, feed="heise", guid="heise-1")  # the same link: the same item
    result = store.ingest([copy], match, recipients, NOW + timedelta(hours=1))
    assert result.new_items == () and [m.watchlist for _, m in result.matches] == ["heise-only"]
    store.ingest([copy], match, recipients, NOW + timedelta(hours=2))  # again: nothing more
    pending = [(r, e.watchlist, e.item.key) for r, e in store.pending_entries()]
    expected = [("h@example.org", "heise-only", first.key)]
    if matched_before:
        expected.insert(0, ("a@example.org", "all", first.key))
    assert pending == expected


def test_a_known_item_matched_in_another_feed_is_queued_under_the_story_lock(
    postgres_url: str,
) -> None:
    """Two workers meeting one story in two feeds at once for the same watchlist would each
    find no recipient told yet and queue one alert each: the queueing waits for the lock
    that clustering holds, and then sees what the other queued."""
    store = open_store(postgres_url)
    hit = (Hit("xAI", "title", 0, 3),)

    def match(item: Item) -> list[Match]:
        return [Match("all", hit)] + ([Match("heise-only", hit)] if item.feed == "heise" else [])

    recipients = {"all": ("a@example.org",), "heise-only": ("h@example.org",)}
    first = make_item("x", feed="gnews", title="xAI startet Grok 5")
    store.ingest([first], match, recipients, NOW)  # in a story now
    copy = replace(first, feed="heise", guid="heise-1")
    other = sa.create_engine(postgres_url)
    try:
        with other.begin() as holder:  # another worker clustering
            holder.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": STORY_LOCK})
            worker = threading.Thread(
                target=store.ingest, args=([copy], match, recipients, NOW + timedelta(hours=1))
            )
            worker.start()
            worker.join(1.0)
            assert worker.is_alive()  # waiting for the lock
        worker.join(30)
        assert not worker.is_alive()
    finally:
        other.dispose()
        store.close()
    store = open_store(postgres_url)
    try:
        pending = sorted((r, e.watchlist) for r, e in store.pending_entries())
    finally:
        store.close()
    assert pending == [("a@example.org", "all"), ("h@example.org", "heise-only")]
