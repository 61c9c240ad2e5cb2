"""Stories per day and window, and alerts claimed once (monitor/store/spikes.py).

Run on SQLite and on PostgreSQL (the store fixture's database_url is parametrized)."""

from __future__ import annotations

from datetime import timedelta

from monitor.models import Item, MessageKind, OutgoingMessage
from monitor.spikes import DAY
from monitor.store import Store
from tests.store.common import NOW, RECIPIENTS, make_item, match_all

MIDNIGHT = NOW.replace(hour=0)


def copy_of(item: Item, feed: str, n: int) -> Item:
    """The same text under another outlet's URL: one story."""
    url = f"https://{feed}.example/{n}"
    return Item(f"u:{feed}.example/{n}", feed, f"c{n}", url, item.title, item.summary,
                item.published, "de")  # fmt: skip


def test_days_count_distinct_stories_once_and_the_first_match(store: Store) -> None:
    first = MIDNIGHT - 3 * DAY + timedelta(hours=9)
    store.ingest([make_item(1), make_item(2)], match_all, RECIPIENTS, first)
    original = make_item(3)
    copies = [copy_of(original, f"outlet{k}", 100 + k) for k in range(5)]
    store.ingest([original, *copies], match_all, RECIPIENTS, MIDNIGHT - DAY + timedelta(hours=2))
    store.ingest([make_item(4)], match_all, RECIPIENTS, NOW - timedelta(hours=1))  # today
    other, history = store.spike_histories(["xAI", "other"], NOW, DAY, 15)
    assert (other.watchlist, other.days, other.window) == ("other", {}, 0)
    assert history.days == {(MIDNIGHT - 3 * DAY).date(): 2, (MIDNIGHT - DAY).date(): 1}
    assert history.first_match == first
    assert history.window == 1  # today's; the syndicated story is older than 24 h
    assert history.last_match == NOW  # within the window: no need to look it up
    # Counted once: a later call reads the same days without counting them again.
    store.ingest([make_item(5)], match_all, RECIPIENTS, MIDNIGHT - 3 * DAY + timedelta(hours=10))
    (again,) = store.spike_histories(["xAI"], NOW, DAY, 15)
    assert again.days == history.days


def test_a_quiet_watchlist_has_its_last_match(store: Store) -> None:
    last = NOW - 3 * DAY
    store.ingest([make_item(1)], match_all, RECIPIENTS, last)
    (history,) = store.spike_histories(["xAI"], NOW, DAY, 15)
    assert (history.window, history.last_match) == (0, last)
    (never,) = store.spike_histories(["nothing"], NOW, DAY, 15)
    assert (never.window, never.first_match, never.last_match) == (0, None, None)


def test_an_alert_is_claimed_once_per_cooldown_with_its_messages(store: Store) -> None:
    def message(n: int) -> OutgoingMessage:
        return OutgoingMessage(f"<spike{n}@x>", "a@example.org", b"x", MessageKind.ALERT)

    later = NOW + timedelta(hours=8)  # quiet hours: sent from then on
    assert store.claim_alert("xAI", "spike", NOW - timedelta(hours=6), [(message(1), later)], NOW)
    one_hour = NOW + timedelta(hours=1)
    assert not store.claim_alert(
        "xAI", "spike", one_hour - timedelta(hours=6), [(message(2), one_hour)], one_hour
    )
    assert store.claim_alert("xAI", "silence", NOW, [(message(3), one_hour)], one_hour)
    assert [m.message_id for m in store.ready_messages(later)] == ["<spike1@x>", "<spike3@x>"]
    assert [m.message_id for m in store.ready_messages(one_hour)] == ["<spike3@x>"]
    (history,) = store.spike_histories(["xAI"], one_hour, DAY, 15)
    assert (history.spiked_at, history.silenced_at) == (NOW, one_hour)
    seven = NOW + timedelta(hours=7)
    assert store.claim_alert("xAI", "spike", seven - timedelta(hours=6), [], seven)
