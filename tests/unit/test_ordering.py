"""The sequencer: event-time order across two topics, bounded waiting."""

from __future__ import annotations

from datetime import timedelta

from ledger.events import Event
from ledger.ordering import Position, Sequencer
from tests.factories import at, event, purchase_doc, usage_doc

TOPICS = ("purchases", "usage")


def sequencer(window_s: float = 1.0, hold_s: float = 2.0) -> Sequencer:
    return Sequencer(TOPICS, timedelta(seconds=window_s), hold_s)


def usage(event_id: str, time: str) -> Event:
    return event(usage_doc(event_id, time, "a", "SKU-762343", "1"))


def top_up(event_id: str, time: str) -> Event:
    return event(purchase_doc(event_id, time, "a", "10", "10"))


def test_a_top_up_read_after_the_usage_it_funds_is_applied_first() -> None:
    subject = sequencer()
    subject.add(usage("u", "2025-04-01T10:00:01Z"), Position("usage", 0, 0), 0.0)
    assert subject.release(0.1) == []

    subject.add(top_up("p", "2025-04-01T10:00:00Z"), Position("purchases", 0, 0), 0.2)
    released = subject.release(2.5)

    assert [held.event.id for held in released] == ["p", "u"]
    assert not any(held.late for held in released)


def test_the_slowest_topic_holds_back_the_faster_one() -> None:
    subject = sequencer(hold_s=60)
    for second in range(5):
        subject.add(
            usage(f"u{second}", f"2025-04-01T10:00:0{second}Z"),
            Position("usage", 0, second),
            0.0,
        )
    assert subject.release(1.0) == []

    subject.add(top_up("p", "2025-04-01T10:00:03Z"), Position("purchases", 0, 0), 1.0)
    released = [held.event.id for held in subject.release(1.0)]

    # Purchases have reached 10:00:03, so events up to 10:00:02 may go.
    assert released == ["u0", "u1", "u2"]


def test_an_event_later_than_what_was_released_is_marked_late() -> None:
    subject = sequencer(hold_s=0)
    subject.add(usage("u", "2025-04-01T10:00:05Z"), Position("usage", 0, 0), 0.0)
    subject.release(0.0)

    subject.add(top_up("p", "2025-04-01T10:00:00Z"), Position("purchases", 0, 0), 1.0)
    released = subject.release(1.0)

    assert [(h.event.id, h.late) for h in released] == [("p", True)]


def test_resume_offsets_stay_at_the_lowest_held_offset() -> None:
    subject = sequencer(hold_s=60)
    subject.add(usage("u0", "2025-04-01T10:00:00Z"), Position("usage", 0, 7), 0.0)
    subject.add(usage("u1", "2025-04-01T10:00:09Z"), Position("usage", 0, 8), 0.0)
    subject.seen(Position("usage", 0, 9))

    assert subject.resume_offsets() == {("usage", 0): 7}
    assert subject.high_offsets() == {("usage", 0): 10}

    subject.release(0.0, flush=True)

    assert subject.resume_offsets() == {("usage", 0): 10}


def test_partitions_are_independent_and_can_be_dropped() -> None:
    subject = sequencer(hold_s=60)
    subject.add(usage("u0", "2025-04-01T10:00:00Z"), Position("usage", 0, 0), 0.0)
    subject.add(usage("u1", "2025-04-01T10:00:00Z"), Position("usage", 1, 0), 0.0)

    subject.drop({1})

    assert len(subject) == 1
    assert set(subject.resume_offsets()) == {("usage", 0)}


def test_the_held_limit_forces_release_in_order() -> None:
    subject = Sequencer(TOPICS, timedelta(seconds=1), 60.0, held_max=2)
    for number in range(4):
        subject.add(
            usage(f"u{number}", f"2025-04-01T10:00:0{3 - number}Z"),
            Position("usage", 0, number),
            0.0,
        )

    released = [held.event.id for held in subject.release(0.0)]

    assert released == ["u3", "u2"]
    assert len(subject) == 2


def test_a_topic_with_a_backlog_is_never_waited_out_by_the_hold() -> None:
    subject = sequencer(hold_s=1)
    subject.add(usage("u", "2025-04-01T10:00:01Z"), Position("usage", 0, 0), 0.0)
    backlog = {("usage", 0)}  # purchases[0] still has records to read

    assert subject.release(3600.0, read_to_end=backlog) == []

    both = {("usage", 0), ("purchases", 0)}
    assert [h.event.id for h in subject.release(3600.0, read_to_end=both)] == ["u"]


def test_only_the_handled_prefix_of_a_partition_counts_as_its_progress() -> None:
    subject = sequencer(hold_s=60)
    subject.add(
        top_up("p-late", "2025-04-01T10:05:00Z"), Position("purchases", 0, 0), 0.0
    )
    subject.add(
        top_up("p-early", "2025-04-01T10:00:00Z"), Position("purchases", 0, 1), 0.0
    )
    subject.add(usage("u", "2025-04-01T10:10:00Z"), Position("usage", 0, 0), 0.0)

    released = [held.event.id for held in subject.release(0.0)]

    # p-early (offset 1) went, p-late (offset 0) still waits: nothing below
    # the resume offset 0 is handled, so no progress may be stored yet.
    assert released == ["p-early"]
    assert subject.time_max("purchases", 0) is not None
    assert subject.prefix_time_max("purchases", 0) is None
    subject.release(0.0, flush=True)
    assert subject.prefix_time_max("purchases", 0) == at("2025-04-01T10:05:00Z")


def test_only_the_topics_running_ahead_may_be_paused() -> None:
    subject = sequencer(hold_s=60)
    subject.add(usage("u", "2025-04-01T10:00:05Z"), Position("usage", 0, 0), 0.0)
    alone = subject.running_ahead()
    subject.add(top_up("p", "2025-04-01T10:00:01Z"), Position("purchases", 0, 0), 0.0)
    behind_purchases = subject.running_ahead()
    subject.add(top_up("q", "2025-04-01T10:00:05Z"), Position("purchases", 0, 1), 0.0)
    level = subject.running_ahead()

    # Usage alone: purchases unseen, so only usage may stop. Purchases behind
    # it: usage still. Both at 10:00:05: neither, or nothing would move.
    assert alone == {("usage", 0)}
    assert behind_purchases == {("usage", 0)}
    assert level == set()
