"""Event-time ordering of two input topics, within a bounded window.

Purchases and usage arrive on different topics, so a top-up and the usage a
second later may be read in either order. Applying them in arrival order would
bill that usage as a shortfall. The sequencer holds each event briefly and
releases events in their total order (time, rank, source, id, see
`ledger.events.Event.order_key`).

Events are grouped by partition number: with both topics keyed by billing
account and partitioned alike, one partition number holds all events of its
accounts. An event is released when every input topic of its partition
either

- has moved `window` past it in event time (a later event was read), or
- is read to its end and the event has waited `hold_max_s` seconds of
  processing time, so a quiet topic does not stop the partition;

and always together with every held event that sorts before it. A topic
with records still to read is never waited out by the clock: when a backlog
is read (after downtime, or a rebuild from offset 0) usage waits for the
purchases before it however long the reading takes, and the order is the
one the log implies, not one that depends on fetch timing. While events
are held, their input offsets are not committed: after a crash they are read
again (see `resume_offsets`), so holding loses nothing.

An event that arrives after a later event of its partition was released is
*late*. It is released at once and applied after the events already applied;
the ledger counts it. Size the window and the hold for the skew between the
producers of the two topics.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from ledger.events import Event


@dataclass(frozen=True, slots=True, order=True)
class Position:
    """Where a record was read: topic, partition and offset."""

    topic: str
    partition: int
    offset: int


@dataclass(slots=True)
class Held:
    """An event waiting for its turn, with where it came from."""

    event: Event
    position: Position
    arrived_s: float
    origin: object = None
    late: bool = False
    released: bool = False

    def __lt__(self, other: Held) -> bool:
        return (self.event.order_key, self.position) < (
            other.event.order_key,
            other.position,
        )


@dataclass(slots=True)
class _Stream:
    heap: list[Held] = field(default_factory=list)
    arrivals: deque[Held] = field(default_factory=deque)
    time_max: dict[str, datetime] = field(default_factory=dict)
    last_released: tuple[datetime, int, str, str] | None = None


class Sequencer:
    """Holds events per partition number and releases them in order."""

    def __init__(
        self,
        topics: tuple[str, ...],
        window: timedelta,
        hold_max_s: float,
        held_max: int = 200_000,
    ) -> None:
        self.topics = topics
        self.window = window
        self.hold_max_s = hold_max_s
        self.held_max = held_max
        self._streams: dict[int, _Stream] = {}
        self._held_offsets: dict[tuple[str, int], list[int]] = {}
        self._released_offsets: dict[tuple[str, int], dict[int, datetime]] = {}
        self._prefix_time: dict[tuple[str, int], datetime] = {}
        self._next_offsets: dict[tuple[str, int], int] = {}
        self._held_count = 0

    def __len__(self) -> int:
        return self._held_count

    def add(
        self, event: Event, position: Position, now_s: float, origin: object = None
    ) -> None:
        """Hold an event; `origin` (the raw record) travels with it untouched."""
        stream = self._streams.setdefault(position.partition, _Stream())
        held = Held(event, position, now_s, origin)
        if stream.last_released is not None and event.order_key < stream.last_released:
            held.late = True
        heapq.heappush(stream.heap, held)
        stream.arrivals.append(held)
        topic_max = stream.time_max.get(position.topic)
        if topic_max is None or event.time > topic_max:
            stream.time_max[position.topic] = event.time
        tp = (position.topic, position.partition)
        heapq.heappush(self._held_offsets.setdefault(tp, []), position.offset)
        self.seen(position)
        self._held_count += 1

    def seen(self, position: Position) -> None:
        """Note a record that needs no holding (a rejection): it is handled."""
        tp = (position.topic, position.partition)
        self._next_offsets[tp] = max(self._next_offsets.get(tp, 0), position.offset + 1)

    def release(
        self,
        now_s: float,
        *,
        read_to_end: Collection[tuple[str, int]] | None = None,
        flush: bool = False,
    ) -> list[Held]:
        """Remove and return every event whose turn has come, in order.

        `read_to_end` names the input partitions with nothing left to read;
        only those may be waited out by the hold. None means all of them (a
        caller without that knowledge). With `flush`, every held event's
        turn has come (the end of a replay).
        """
        released: list[Held] = []
        for partition, stream in self._streams.items():
            while stream.heap and (
                flush or self._due(partition, stream, now_s, read_to_end)
            ):
                held = heapq.heappop(stream.heap)
                self._held_count -= 1
                held.released = True
                stream.last_released = held.event.order_key
                released.append(held)
                self._forget_offset(held.position, held.event.time)
        return released

    def _due(
        self,
        partition: int,
        stream: _Stream,
        now_s: float,
        read_to_end: Collection[tuple[str, int]] | None,
    ) -> bool:
        top = stream.heap[0]
        if top.late or self._held_count > self.held_max:
            return True
        waited: bool | None = None
        for topic in self.topics:
            topic_max = stream.time_max.get(topic)
            if topic_max is not None and top.event.time <= topic_max - self.window:
                continue
            if read_to_end is not None and (topic, partition) not in read_to_end:
                return False
            if waited is None:
                waited = self._waited(stream, top, now_s)
            if not waited:
                return False
        return True

    def _waited(self, stream: _Stream, top: Held, now_s: float) -> bool:
        """Has the earliest-arrived held event waited out the hold? The top
        goes with it when it sorts before it."""
        while stream.arrivals and stream.arrivals[0].released:
            stream.arrivals.popleft()
        if not stream.arrivals:
            return False
        oldest = stream.arrivals[0]
        return now_s - oldest.arrived_s >= self.hold_max_s and not oldest < top

    def _forget_offset(self, position: Position, time: datetime) -> None:
        """Offsets leave in event order, not offset order: pop them lazily.

        An offset popped here is below every offset still held, so the
        latest event time among popped offsets is the partition's progress
        that survives a restart (see `prefix_time_max`).
        """
        tp = (position.topic, position.partition)
        offsets = self._held_offsets[tp]
        released = self._released_offsets.setdefault(tp, {})
        released[position.offset] = time
        while offsets and offsets[0] in released:
            popped = released.pop(heapq.heappop(offsets))
            known = self._prefix_time.get(tp)
            if known is None or popped > known:
                self._prefix_time[tp] = popped

    def seed(self, topic: str, partition: int, time_max: datetime) -> None:
        """Resume a partition's event-time progress as it was before a restart."""
        stream = self._streams.setdefault(partition, _Stream())
        known = stream.time_max.get(topic)
        if known is None or time_max > known:
            stream.time_max[topic] = time_max

    def time_max(self, topic: str, partition: int) -> datetime | None:
        """The latest event time seen on one input partition."""
        stream = self._streams.get(partition)
        return stream.time_max.get(topic) if stream else None

    def prefix_time_max(self, topic: str, partition: int) -> datetime | None:
        """The latest event time below the partition's resume offset.

        This, not `time_max`, is what may be stored and `seed`ed after a
        restart: events above the resume offset are read again, and a
        watermark that already counted them would let other events pass
        them before they are re-read.
        """
        return self._prefix_time.get((topic, partition))

    def progress(self, partition: int) -> datetime | None:
        """How far the partition's data has come: its latest event time on any
        topic. Expiry may not run ahead of it (see `Bookkeeper`)."""
        stream = self._streams.get(partition)
        return max(stream.time_max.values()) if stream and stream.time_max else None

    def settled(self, partition: int, moment: datetime) -> bool:
        """True when no held event of the partition happened before `moment`."""
        stream = self._streams.get(partition)
        return stream is None or not stream.heap or stream.heap[0].event.time >= moment

    def running_ahead(self) -> set[tuple[str, int]]:
        """Input partitions whose events are later than another input topic's
        of the same partition, where events are held.

        Reading these further only adds to what is held; reading the others
        is what releases it. A caller that must bound memory may stop
        reading these, never the others: the topic furthest behind keeps
        moving until it passes the held events or reaches its end.
        """
        ahead: set[tuple[str, int]] = set()
        for partition, stream in self._streams.items():
            if not stream.heap:
                continue
            known = {t: stream.time_max[t] for t in self.topics if t in stream.time_max}
            if not known:
                continue
            behind = min(known.values()) if len(known) == len(self.topics) else None
            ahead.update(
                (topic, partition)
                for topic, time in known.items()
                if behind is None or time > behind
            )
        return ahead

    def resume_offsets(self) -> dict[tuple[str, int], int]:
        """Per input partition, the offset to resume from after a restart.

        It is the lowest offset still held, else the next unread one; records
        between it and the highest handled offset are read again after a
        restart, and the ledger recognises them as already handled.
        """
        resume: dict[tuple[str, int], int] = {}
        for tp, next_offset in self._next_offsets.items():
            offsets = self._held_offsets.get(tp)
            resume[tp] = offsets[0] if offsets else next_offset
        return resume

    def high_offsets(self) -> dict[tuple[str, int], int]:
        """Per input partition, one past the highest offset read so far."""
        return dict(self._next_offsets)

    def drop(self, partitions: set[int]) -> None:
        """Forget everything of partitions this instance no longer owns."""
        for partition in partitions:
            stream = self._streams.pop(partition, None)
            if stream is not None:
                self._held_count -= len(stream.heap)
        for tp in [tp for tp in self._next_offsets if tp[1] in partitions]:
            self._next_offsets.pop(tp, None)
            self._held_offsets.pop(tp, None)
            self._released_offsets.pop(tp, None)
            self._prefix_time.pop(tp, None)
