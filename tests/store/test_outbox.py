"""The outbox: digest claims, messages, sending leases, retries and dead letters (monitor/store/outbox.py).

Run on SQLite and on PostgreSQL (the store fixture's database_url is parametrized)."""

from __future__ import annotations

from datetime import timedelta

from monitor.models import MessageKind, OutgoingMessage
from monitor.store import DeadLetter, DigestRun, Store
from tests.store.common import NOW, RECIPIENTS, make_item, match_all


def test_claim_is_exclusive_and_mark_sent_finishes(store: Store) -> None:
    store.ingest([make_item(1)], match_all, RECIPIENTS, NOW)
    ids = [e.delivery_ids[0] for r, e in store.pending_entries() if r == "a@example.org"]
    first = OutgoingMessage("<m1@x>", "a@example.org", b"Subject: one\r\n\r\nbody")
    second = OutgoingMessage("<m2@x>", "a@example.org", b"Subject: two\r\n\r\nbody")
    assert store.claim_digest(first, ids, NOW)
    assert not store.claim_digest(second, ids, NOW)  # already claimed: nothing stored
    assert [m.message_id for m in store.ready_messages(NOW)] == ["<m1@x>"]
    assert store.ready_messages(NOW)[0].mime == first.mime
    store.mark_sent("<m1@x>", NOW)
    assert store.ready_messages(NOW) == []
    outbox = store.outbox()
    assert (outbox.pending, outbox.ready, outbox.dead) == (1, 0, 0)  # b@ still pending


def test_marking_a_message_finds_its_deliveries_by_index(store: Store) -> None:
    # mark_sent / mark_dead update the deliveries a message carries. Without an index on
    # deliveries.message_id each send read every delivery ever made.
    update = "UPDATE deliveries SET status = 'sent' WHERE message_id = '<m@x>'"
    with store.engine.begin() as connection:
        if store.is_sqlite:
            plan = " ".join(
                str(row[-1]) for row in connection.exec_driver_sql(f"EXPLAIN QUERY PLAN {update}")
            )
        else:  # the table is tiny: forbid the scan, so only an index can avoid it
            connection.exec_driver_sql("SET LOCAL enable_seqscan = off")
            plan = " ".join(str(row[0]) for row in connection.exec_driver_sql(f"EXPLAIN {update}"))
    assert "ix_deliveries_message_id" in plan, plan


def test_retry_then_dead_letter(store: Store) -> None:
    store.ingest([make_item(1), make_item(2)], match_all, {"xAI": ("a@example.org",)}, NOW)
    ids = [e.delivery_ids[0] for _, e in store.pending_entries()]
    assert len(ids) == 2
    store.claim_digest(OutgoingMessage("<m@x>", "a@example.org", b"x"), ids, NOW)
    store.mark_retry("<m@x>", "451 try later", NOW, lambda attempts: timedelta(minutes=attempts))
    assert store.ready_messages(NOW) == []
    assert len(store.ready_messages(NOW, flush=True)) == 1  # an operator's flush
    assert len(store.ready_messages(NOW + timedelta(minutes=1))) == 1
    (deferred,) = store.deferred_messages()
    assert (deferred.recipient, deferred.attempts, deferred.error) == (
        "a@example.org",
        1,
        "451 try later",
    )
    assert deferred.next_attempt_at == NOW + timedelta(minutes=1)
    store.mark_dead("<m@x>", "550 no such user", NOW)
    assert store.outbox().dead == 1  # dead letters are messages, not the deliveries in them
    assert store.deferred_messages() == []
    assert store.dead_letters() == [
        DeadLetter("<m@x>", "a@example.org", MessageKind.DIGEST, NOW, "550 no such user")
    ]


def test_digest_runs_make_one_claimant_per_period(store: Store) -> None:
    store.ingest([make_item(1)], match_all, {"xAI": ("a@example.org",)}, NOW)
    ids = [e.delivery_ids[0] for _, e in store.pending_entries()]
    run = DigestRun("xAI", "a@example.org", NOW)
    first = OutgoingMessage("<d1@x>", "a@example.org", b"one")
    second = OutgoingMessage("<d2@x>", "a@example.org", b"two")
    assert store.claim_digest(first, ids, NOW, [run])
    assert not store.claim_digest(second, [], NOW, [run])  # same period: another worker lost
    assert [m.message_id for m in store.ready_messages(NOW)] == ["<d1@x>"]
    assert store.last_runs() == {("xAI", "a@example.org"): NOW}
    assert store.claim_digest(
        None, [], NOW, [DigestRun("xAI", "a@example.org", NOW + timedelta(days=1))]
    )
    assert store.last_runs()[("xAI", "a@example.org")] == NOW + timedelta(days=1)


def test_send_lease_excludes_other_workers(store: Store) -> None:
    store.claim_digest(OutgoingMessage("<m@x>", "a@example.org", b"x"), [], NOW)
    later = NOW + timedelta(minutes=10)
    assert store.lease_message("<m@x>", "worker-1", NOW, later)
    assert not store.lease_message("<m@x>", "worker-2", NOW, later)
    assert store.ready_messages(NOW) == []  # leased: nobody else picks it up
    assert store.lease_message("<m@x>", "worker-2", later, later + timedelta(minutes=10))
    store.mark_sent("<m@x>", later)
    assert not store.lease_message("<m@x>", "worker-3", later, later)


def test_pending_since_and_meta(store: Store) -> None:
    store.ingest([make_item(1)], match_all, {"xAI": ("a@example.org",)}, NOW)
    assert store.pending_since() == {("xAI", "a@example.org"): NOW}
    store.set_meta("k", "v")
    store.set_meta("k", "w")
    assert store.get_meta("k") == "w"


def test_a_message_id_stored_already_is_told_on_both_engines(store: Store) -> None:
    """store_message says whether it stored the message: on PostgreSQL the driver's row
    count of such an INSERT is -1 whether or not a row went in, so it said True twice."""
    from monitor.store.outbox import store_message

    message = OutgoingMessage("<same@x>", "a@example.org", b"Subject: one\r\n\r\nbody")
    with store.engine.begin() as tx:
        assert store_message(tx, message, NOW)
        assert not store_message(tx, message, NOW)  # another worker composed it first
