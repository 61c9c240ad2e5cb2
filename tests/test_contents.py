"""What one recipient's message holds: the pure planning of monitor/contents.py."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from monitor.contents import plan, ranking
from monitor.models import DigestEntry, EarlierMessage, Hit, Item, MessageKind, StoryGrowth

DIGEST, ALERT = MessageKind.DIGEST, MessageKind.ALERT

NOW = datetime(2026, 12, 7, 9, 0, tzinfo=UTC)
RANK = ranking(["Babuschkin", "xAI", "Grok", "Elon Musk"])


def item(n: int, feed: str = "n-tv", minutes: int = 0) -> Item:
    return Item(
        f"u:{feed}.example/{n}", feed, f"g{n}", f"https://{feed}.example/{n}", f"Titel {n}",
        "Text", NOW + timedelta(minutes=minutes), "de",
    )  # fmt: skip


def entry(delivery: int, watchlist: str, story: int, shown: Item | None = None) -> DigestEntry:
    hit = Hit(watchlist, "title", 0, 5)
    return DigestEntry((delivery,), watchlist, shown or item(story), (hit,), story=story)


def growth(story: int, *notes: int) -> StoryGrowth:
    return StoryGrowth(
        notes, story, item(story), 3, (("SPIEGEL", "https://s.example/1"),), ("xAI",)
    )


def test_a_story_of_several_lists_is_one_entry_under_the_first_in_the_config() -> None:
    due = [entry(1, "Elon Musk", 7), entry(2, "xAI", 7), entry(3, "Grok", 7), entry(4, "Grok", 8)]
    contents = plan(due, [], {}, [], RANK, DIGEST)
    assert [(e.watchlist, e.story) for e in contents.entries] == [("xAI", 7), ("Grok", 8)]
    first = contents.entries[0]
    assert first.watchlists == ("xAI", "Grok", "Elon Musk")
    assert first.delivery_ids == (1, 2, 3)
    assert [h.term for h in first.hits] == ["Elon Musk", "xAI", "Grok"]
    assert sorted(contents.delivery_ids) == [1, 2, 3, 4]


def test_tags_name_the_lists_not_sent_in_this_message_too() -> None:
    contents = plan([entry(1, "Babuschkin", 7)], [entry(2, "xAI", 7)], {}, [], RANK, ALERT)
    (alert,) = contents.entries
    assert alert.watchlists == ("Babuschkin", "xAI") and alert.delivery_ids == (1,)


def test_an_alert_marks_the_words_of_every_list_it_names() -> None:
    """An alert tagged "xAI · Elon Musk · Igor Babuschkin" marked only Babuschkin in its
    text: a reader saw the tag Elon Musk and no Elon Musk marked."""
    shown = item(7)
    elsewhere = DigestEntry(
        (2,), "xAI", item(7, feed="stern"), (Hit("xAI", "title", 9, 12),), story=7
    )
    others = [entry(3, "xAI", 7, shown), elsewhere]
    contents = plan([entry(1, "Babuschkin", 7, shown)], others, {}, [], RANK, ALERT)
    (alert,) = contents.entries
    assert [h.term for h in alert.hits] == ["Babuschkin", "xAI"]  # not the stern copy's
    assert alert.delivery_ids == (1,)  # the digest lists' deliveries are not this message's


def test_a_story_sent_before_is_covered_by_that_message_and_named_once_in_a_digest() -> None:
    earlier = {7: EarlierMessage("<alert@x>", ALERT, NOW)}
    due = [entry(1, "xAI", 7), entry(2, "Grok", 7), entry(3, "xAI", 8)]
    contents = plan(due, [], earlier, [], RANK, DIGEST)
    assert [e.story for e in contents.entries] == [8]
    assert contents.covered == {1: "<alert@x>", 2: "<alert@x>"}
    ((line, sent),) = contents.already
    assert (line.story, line.watchlists, sent.kind) == (7, ("xAI", "Grok"), ALERT)
    assert contents.is_news


def test_an_alert_with_nothing_new_is_no_news() -> None:
    earlier = {7: EarlierMessage("<digest@x>", DIGEST, NOW)}
    contents = plan([entry(1, "Babuschkin", 7)], [], earlier, [], RANK, ALERT)
    assert not contents.is_news and contents.already == () and contents.covered == {1: "<digest@x>"}


def test_an_update_is_news_again() -> None:
    earlier = {7: EarlierMessage("<alert@x>", ALERT, NOW)}
    updated = DigestEntry((1,), "xAI", item(9), story=7, updated=True)
    assert plan([updated], [], earlier, [], RANK, DIGEST).entries[0].updated


def test_growth_of_a_sent_story_is_a_digest_line_and_replaces_its_already_line() -> None:
    earlier = {7: EarlierMessage("<alert@x>", ALERT, NOW)}
    contents = plan([entry(1, "Grok", 7)], [], earlier, [growth(7, 10, 11)], RANK, DIGEST)
    (line,) = contents.growth
    assert line.watchlists == ("xAI", "Grok") and contents.notes == [10, 11]
    assert contents.already == () and contents.covered == {1: "<alert@x>"}
    assert contents.is_news


def test_growth_waits_for_a_digest_and_for_the_story_to_be_sent() -> None:
    earlier = {7: EarlierMessage("<alert@x>", ALERT, NOW)}
    assert plan([], [], earlier, [growth(7, 10)], RANK, ALERT).notes == []
    assert plan([], [], {}, [growth(7, 10)], RANK, DIGEST).notes == []  # still pending


def test_a_message_carrying_the_story_shows_its_growth_as_also_reported_by() -> None:
    contents = plan([entry(1, "xAI", 7)], [], {}, [growth(7, 10)], RANK, ALERT)
    assert contents.absorbed == (10,) and contents.growth == () and contents.notes == [10]
