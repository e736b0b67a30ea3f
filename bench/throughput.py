"""Throughput of focus-ledger against the ceiling of a raw passthrough, one run.

    make bench                                   # starts the stack, full form
    .venv/bin/python bench/throughput.py         # on a running stack
    .venv/bin/python bench/throughput.py --short # a quick look
    .venv/bin/python bench/throughput.py --scale # 1,000,000 events, 100,000
                                                 # accounts: memory growth

Everything runs on this machine's stack (`deploy/stack.sh`), measured in the
same run so that the figures are comparable as ratios on a shared, noisy
machine. Steps:

1. Make N billing accounts with one lot each and M usage events with the
   sample's SKU mix and sizes (`service.samples.synthetic_events`), and
   produce them to fresh input topics: a backlog.
2. The ceiling: a plain aiokafka consumer reads the usage topic, parses each
   JSON value and produces one JSON row per event to a topic of its own.
3. focus-ledger, exactly once: one `focus-ledger serve` process reads the
   backlog into a fresh database. Its sustained rate is M usage events over
   the time from its first committed FOCUS row to its last, read from the
   output topic with `isolation_level=read_committed`. Its resident memory
   is sampled from /proc throughout.
4. Latency: the same process, fed new usage events at half the sustained
   rate; each event's time from being produced to its row being readable
   (read_committed), as percentiles.
5. Scale-out: two and three processes in one consumer group on the same
   input, each set on a fresh database and output topic; their combined rate,
   and whether their rows equal the single process's (same ids, same bytes).

Prints one table. Exits 1 if a run did not complete or rows differ.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from sqlalchemy.engine import make_url

from service.drive import fresh_database, start_service, stop_service, wait_claimed
from service.records import HEADER_CHARGE_ID
from service.samples import synthetic_events
from service.settings import REPO_ROOT, Settings
from service.topics import ensure_topics

PRODUCE_CHUNK_RECORDS = 5_000
RSS_SAMPLE_INTERVAL_S = 0.5
RATE_TARGET_PER_S = 10_000
CEILING_SHARE_TARGET = 0.40
P99_TARGET_MS = 500
RSS_GROWTH_TARGET = 0.10


@dataclass(frozen=True, slots=True)
class Form:
    accounts: int
    events: int
    latency_s: float
    instances: tuple[int, ...]


FULL = Form(accounts=10_000, events=200_000, latency_s=30.0, instances=(1, 2, 3))
SHORT = Form(accounts=1_000, events=20_000, latency_s=10.0, instances=(1, 2))
SCALE = Form(accounts=100_000, events=1_000_000, latency_s=0.0, instances=(1,))


@dataclass(slots=True)
class Memory:
    """Resident set size of one process, sampled."""

    samples_kib: list[tuple[float, int]] = field(default_factory=list)
    peak_kib: int = 0

    def after(self, moment: float) -> int | None:
        """The first sample at or after `moment` (monotonic seconds)."""
        return next((kib for at, kib in self.samples_kib if at >= moment), None)

    @property
    def last_kib(self) -> int:
        return self.samples_kib[-1][1] if self.samples_kib else 0


@dataclass(slots=True)
class LedgerRun:
    instances: int
    events: int
    rows: dict[str, bytes]
    first_row_s: float
    done_s: float
    started_s: float
    claimed_s: float
    complete: bool
    memory: list[Memory]

    @property
    def rate_per_s(self) -> float:
        """Usage events over the time from owning the input partitions to the
        last row out: reading, holding, booking and publishing all count."""
        return self.events / max(self.done_s - self.claimed_s, 1e-9)


@dataclass(slots=True)
class Latency:
    offered_per_s: float
    sent: int
    seen: int
    percentiles_ms: dict[str, float]


def _settings(base: Settings, run: str, name: str, **extra: Any) -> Settings:
    """Settings of one measured process set: its database, group and outputs."""
    url = make_url(base.database_url).set(database=f"bench_{run}_{name}")
    return base.model_copy(
        update={
            "database_url": url.render_as_string(hide_password=False),
            "group_id": f"bench-{run}-{name}",
            "topic_charges": f"bench-{run}-{name}.focus.charges",
            "topic_dead_letter": f"bench-{run}-{name}.ledger.dead-letter",
            "topic_alerts": f"bench-{run}-{name}.ledger.alerts",
            "topic_relay_checkpoints": f"bench-{run}-{name}.ledger.relay-checkpoints",
            "api_port": 0,
            **extra,
        }
    )


def generate(form: Form, seed: int) -> tuple[list[bytes], list[bytes]]:
    """Purchase and usage values, JSON as a meter would send them."""
    purchases: list[bytes] = []
    usage: list[bytes] = []
    start = datetime.now(UTC) - timedelta(days=2)
    for event in synthetic_events(
        form.accounts, form.events, seed=seed, start=start, span=timedelta(days=1)
    ):
        value = orjson.dumps(event)
        (purchases if event["type"] == "credits.purchased" else usage).append(value)
    return purchases, usage


async def produce(
    settings: Settings,
    topic: str,
    values: Iterable[bytes],
    key_of: Callable[[bytes], bytes],
) -> int:
    """Produce as fast as the broker takes them, in order, keyed by account."""
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        enable_idempotence=True,
        acks="all",
        linger_ms=20,
        compression_type="lz4",
        max_batch_size=256 * 1024,
    )
    await producer.start()
    sent = 0
    try:
        pending = []
        for value in values:
            pending.append(await producer.send(topic, value=value, key=key_of(value)))
            sent += 1
            if len(pending) >= PRODUCE_CHUNK_RECORDS:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return sent


def subject(value: bytes) -> bytes:
    start = value.index(b'"subject":"') + len(b'"subject":"')
    return value[start : value.index(b'"', start)]


async def passthrough(settings: Settings, out_topic: str, expected: int) -> float:
    """The ceiling: consume, parse, produce one JSON row each; events per s."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers)
    await admin.start()
    try:
        await admin.create_topics(
            [NewTopic(out_topic, settings.topic_partitions, 1)], timeout_ms=30_000
        )
    finally:
        await admin.close()
    consumer = AIOKafkaConsumer(
        settings.topic_usage,
        bootstrap_servers=settings.kafka_bootstrap_servers,
        group_id=f"{settings.group_id}-passthrough",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
        max_partition_fetch_bytes=settings.consumer_fetch_partition_bytes_max,
    )
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        enable_idempotence=True,
        acks="all",
        linger_ms=settings.relay_linger_ms,
        compression_type=settings.relay_compression or None,
        max_batch_size=512 * 1024,
    )
    await consumer.start()
    await producer.start()
    seen = 0
    first = 0.0
    try:
        while seen < expected:
            batch = await consumer.getmany(
                timeout_ms=1000, max_records=settings.batch_records_max
            )
            records = [record for part in batch.values() for record in part]
            if records and not first:
                first = time.monotonic()
            pending = []
            for record in records:
                event = orjson.loads(record.value)
                row = {
                    "x_SourceEventId": event["id"],
                    "BillingAccountId": event["subject"],
                    "SkuId": event["data"]["sku_id"],
                    "ConsumedQuantity": event["data"]["quantity"],
                    "ChargePeriodStart": event["time"],
                }
                pending.append(
                    await producer.send(
                        out_topic, value=orjson.dumps(row), key=record.key
                    )
                )
            await asyncio.gather(*pending)
            seen += len(records)
        await producer.flush()
    finally:
        await consumer.stop()
        await producer.stop()
    return seen / (time.monotonic() - first)


async def _sample_memory(
    processes: list[subprocess.Popen[bytes]], memory: list[Memory], stop: asyncio.Event
) -> None:
    while not stop.is_set():
        now = time.monotonic()
        for process, record in zip(processes, memory, strict=True):
            status = _status(process.pid)
            if status:
                record.samples_kib.append((now, status.get("VmRSS", 0)))
                record.peak_kib = max(record.peak_kib, status.get("VmHWM", 0))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), RSS_SAMPLE_INTERVAL_S)


def _status(pid: int) -> dict[str, int]:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return {}
    values = {}
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            values[name] = int(rest.split()[0])
    return values


class RowReader:
    """Reads an output topic read_committed: every row's id and bytes, and
    when each arrived."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.rows: dict[str, bytes] = {}
        self.arrived_s: dict[str, float] = {}
        self.first_s = 0.0
        self.last_s = 0.0
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=settings.kafka_bootstrap_servers,
            group_id=None,
            enable_auto_commit=False,
            isolation_level="read_committed",
            auto_offset_reset="earliest",
        )

    async def start(self) -> None:
        await self.consumer.start()
        partitions = [
            TopicPartition(self.settings.topic_charges, p)
            for p in range(self.settings.topic_partitions)
        ]
        self.consumer.assign(partitions)
        await self.consumer.seek_to_beginning(*partitions)

    async def stop(self) -> None:
        await self.consumer.stop()

    async def read_until(
        self,
        expected: int,
        timeout_s: float,
        alive: Callable[[], bool],
        on_row: Callable[[bytes, float], None] | None = None,
    ) -> bool:
        deadline = time.monotonic() + timeout_s
        while len(self.rows) < expected and time.monotonic() < deadline:
            batch = await self.consumer.getmany(timeout_ms=200, max_records=10_000)
            now = time.monotonic()
            for part in batch.values():
                for record in part:
                    charge_id = _header(record.headers, HEADER_CHARGE_ID)
                    self.rows[charge_id] = hashlib.blake2b(
                        record.value, digest_size=16
                    ).digest()
                    if on_row is not None:
                        on_row(record.value, now)
                    self.first_s = self.first_s or now
                    self.last_s = now
            if not alive():
                return False
        return len(self.rows) >= expected


def _header(headers: Iterable[tuple[str, bytes]], name: str) -> str:
    return next(value.decode() for key, value in headers if key == name)


async def ledger(
    settings: Settings,
    instances: int,
    purchases: int,
    usage: int,
    logs: Path,
    latency: Callable[[RowReader, list[subprocess.Popen[bytes]], float], Any]
    | None = None,
) -> tuple[LedgerRun, Any]:
    """Run `instances` processes over the backlog until every row is out."""
    await fresh_database(settings)
    await ensure_topics(settings)
    reader = RowReader(settings)
    await reader.start()
    started = time.monotonic()
    processes = [
        start_service(settings, logs / f"{settings.group_id}-{n}.log")
        for n in range(instances)
    ]
    memory = [Memory() for _ in processes]
    stop = asyncio.Event()
    sampler = asyncio.create_task(_sample_memory(processes, memory, stop))
    measured: Any = None
    try:
        await wait_claimed(settings, processes[0], 120)
        claimed = time.monotonic()
        expected = purchases + usage
        complete = await reader.read_until(
            expected,
            timeout_s=max(600.0, usage / 200),
            alive=lambda: all(p.poll() is None for p in processes),
        )
        done = reader.last_s
        backlog_rows = dict(reader.rows)
        if complete and latency is not None:
            rate = usage / max(done - claimed, 1e-9)
            measured = await latency(reader, processes, rate)
    finally:
        stop.set()
        await sampler
        for process in processes:
            stop_service(process)
        await reader.stop()
    run = LedgerRun(
        instances=instances,
        events=usage,
        rows=backlog_rows,
        first_row_s=reader.first_s,
        done_s=done,
        started_s=started,
        claimed_s=claimed,
        complete=complete,
        memory=memory,
    )
    return run, measured


def latency_probe(
    settings: Settings, rate_per_s: float, seconds: float
) -> Callable[[RowReader, list[subprocess.Popen[bytes]]], Any]:
    """New usage events at a fixed rate; produce-to-readable time of each."""

    async def probe(
        reader: RowReader, processes: list[subprocess.Popen[bytes]]
    ) -> Latency:
        sent_s: dict[str, float] = {}
        seen_s: dict[str, float] = {}
        prefix = b'"x_SourceEventId":"'

        def on_row(value: bytes, now: float) -> None:
            start = value.find(prefix)
            if start < 0:
                return
            start += len(prefix)
            event_id = value[start : value.index(b'"', start)].decode()
            if event_id in sent_s and event_id not in seen_s:
                seen_s[event_id] = now

        producer = AIOKafkaProducer(
            bootstrap_servers=settings.kafka_bootstrap_servers,
            enable_idempotence=True,
            acks="all",
            linger_ms=0,
        )
        await producer.start()
        total = int(rate_per_s * seconds)
        events = list(
            synthetic_events(
                1_000, total, seed=7, start=datetime.now(UTC), span=timedelta(seconds=1)
            )
        )[1_000:]
        reading = asyncio.create_task(
            reader.read_until(
                len(reader.rows) + total,
                seconds + 60,
                lambda: all(p.poll() is None for p in processes),
                on_row,
            )
        )
        began = time.monotonic()
        try:
            for index, event in enumerate(events):
                due = began + index / rate_per_s
                if (delay := due - time.monotonic()) > 0:
                    await asyncio.sleep(delay)
                event["id"] = f"lat-{index}"
                event["subject"] = f"acct-{index % 1000:06d}"
                event["time"] = datetime.now(UTC).isoformat().replace("+00:00", "Z")
                value = orjson.dumps(event)
                sent_s[event["id"]] = time.monotonic()
                await producer.send(
                    settings.topic_usage, value=value, key=subject(value)
                )
            await producer.flush()
        finally:
            await producer.stop()
        await reading
        delays = sorted((seen_s[i] - sent_s[i]) * 1000 for i in seen_s)
        return Latency(
            offered_per_s=rate_per_s,
            sent=len(sent_s),
            seen=len(seen_s),
            percentiles_ms=_percentiles(delays),
        )

    return probe


def _percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return {"p50": cuts[49], "p99": cuts[98], "max": values[-1]}


async def run(form: Form, seed: int, hold_ms: int | None) -> int:
    run_id = datetime.now(UTC).strftime("%Y%m%d%H%M%S")
    base = Settings(prices_path=REPO_ROOT / "examples" / "prices.toml")
    if hold_ms is not None:
        base = base.model_copy(update={"ordering_hold_max_ms": hold_ms})
    inputs = {
        "topic_purchases": f"bench-{run_id}.credits.purchases",
        "topic_usage": f"bench-{run_id}.usage.events",
    }
    logs = REPO_ROOT / ".stack" / f"bench-{run_id}"
    logs.mkdir(parents=True, exist_ok=True)
    first = _settings(base, run_id, "x1", **inputs)
    await ensure_topics(first)
    print(
        f"bench {run_id}: {form.accounts} accounts, {form.events} usage events, "
        f"ordering hold {base.ordering_hold_max_ms} ms"
    )
    print(f"  logs in {logs.relative_to(REPO_ROOT)}", flush=True)

    purchases, usage = generate(form, seed)
    clock = time.monotonic()
    await produce(first, first.topic_purchases, purchases, subject)
    await produce(first, first.topic_usage, usage, subject)
    print(f"  produced in {time.monotonic() - clock:.1f} s", flush=True)
    sizes = [len(value) for value in usage]

    ceiling = 0.0
    if form.latency_s:
        ceiling = await passthrough(first, f"bench-{run_id}.passthrough", len(usage))
        print(f"  passthrough {ceiling:,.0f} events/s", flush=True)

    runs: list[LedgerRun] = []
    latency: Latency | None = None
    # One instance last: its latency probe adds events to the input topics,
    # which the scale-out runs must not read.
    for count in sorted(form.instances, reverse=True):
        settings = _settings(base, run_id, f"x{count}", **inputs)
        probe = None
        if count == 1 and form.latency_s:
            probe = _deferred_probe(settings, form.latency_s)
        result, measured = await ledger(
            settings, count, len(purchases), len(usage), logs, probe
        )
        runs.append(result)
        latency = latency or measured
        print(
            f"  {count} instance(s): {result.rate_per_s:,.0f} events/s; first row "
            f"{result.first_row_s - result.claimed_s:.1f} s after claiming, last "
            f"{result.done_s - result.claimed_s:.1f} s"
            f"{'' if result.complete else ' (INCOMPLETE)'}",
            flush=True,
        )
    runs.sort(key=lambda run: run.instances)
    return report(form, base.ordering_hold_max_ms, ceiling, runs, latency, sizes)


def _deferred_probe(
    settings: Settings, seconds: float
) -> Callable[[RowReader, list[subprocess.Popen[bytes]], float], Any]:
    """The latency probe at half the rate measured just before it starts."""

    async def probe(
        reader: RowReader, processes: list[subprocess.Popen[bytes]], rate: float
    ) -> Any:
        return await latency_probe(settings, rate / 2, seconds)(reader, processes)

    return probe


def report(
    form: Form,
    hold_ms: int,
    ceiling: float,
    runs: list[LedgerRun],
    latency: Latency | None,
    sizes: list[int],
) -> int:
    single = runs[0]
    ok = all(run.complete for run in runs)
    print()
    print(f"focus-ledger throughput, {os.cpu_count()} cores, Kafka and PostgreSQL on")
    print(
        f"the same machine; {form.accounts:,} accounts, {form.events:,} usage "
        f"events of {statistics.mean(sizes):.0f} bytes on average; ordering "
        f"hold {hold_ms} ms"
    )
    print()
    lines = []
    if ceiling:
        lines.append(
            (
                "passthrough ceiling (aiokafka, parse, produce)",
                f"{ceiling:,.0f} events/s",
            )
        )
    lines.append(
        (
            "focus-ledger, 1 instance, exactly once",
            f"{single.rate_per_s:,.0f} events/s"
            + _target(single.rate_per_s >= RATE_TARGET_PER_S, "10,000 events/s"),
        )
    )
    if ceiling:
        share = single.rate_per_s / ceiling
        lines.append(
            (
                "ratio to the ceiling",
                f"{share:.0%}" + _target(share >= CEILING_SHARE_TARGET, "40 %"),
            )
        )
    for other in runs[1:]:
        same = other.rows == single.rows
        ok = ok and same
        lines.append(
            (
                f"focus-ledger, {other.instances} instances, combined",
                f"{other.rate_per_s:,.0f} events/s, rows "
                + ("identical to 1 instance" if same else _difference(single, other)),
            )
        )
    if latency is not None:
        cut = latency.percentiles_ms
        lines.append(
            (
                f"latency at {latency.offered_per_s:,.0f} events/s offered",
                f"p50 {cut.get('p50', 0):,.0f} ms, p99 {cut.get('p99', 0):,.0f} ms, "
                f"max {cut.get('max', 0):,.0f} ms ({latency.seen}/{latency.sent} seen)"
                + _target(cut.get("p99", 1e9) <= P99_TARGET_MS, "p99 500 ms"),
            )
        )
        ok = ok and latency.seen == latency.sent
    memory = single.memory[0]
    early = memory.after(single.claimed_s + 0.2 * (single.done_s - single.claimed_s))
    late = memory.after(single.done_s) or memory.last_kib
    lines.append(("peak RSS, 1 instance", f"{memory.peak_kib / 1024:,.0f} MiB"))
    if early:
        lines.append(
            (
                "RSS growth, 20 % to 100 % of the run",
                f"{early / 1024:,.0f} -> {late / 1024:,.0f} MiB "
                f"({late / early - 1:+.1%})"
                + (
                    _target(late / early - 1 < RSS_GROWTH_TARGET, "under 10 %")
                    if form is SCALE
                    else ""
                ),
            )
        )
    width = max(len(name) for name, _ in lines)
    for name, value in lines:
        print(f"  {name.ljust(width)}  {value}")
    print()
    print("result: " + ("complete" if ok else "INCOMPLETE OR DIFFERENT"))
    return 0 if ok else 1


def _target(met: bool, target: str) -> str:
    return f"  [target {target}: {'met' if met else 'NOT MET'}]"


def _difference(single: LedgerRun, other: LedgerRun) -> str:
    missing = single.rows.keys() - other.rows.keys()
    extra = other.rows.keys() - single.rows.keys()
    changed = [
        key
        for key in single.rows.keys() & other.rows.keys()
        if single.rows[key] != other.rows[key]
    ]
    return (
        f"DIFFERENT: {len(missing)} missing, {len(extra)} extra, "
        f"{len(changed)} changed of {len(single.rows)}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    forms = parser.add_mutually_exclusive_group()
    forms.add_argument("--short", action="store_true", help="a quick look")
    forms.add_argument("--scale", action="store_true", help="1M events, 100k accounts")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--hold-ms",
        type=int,
        default=None,
        help="FOCUS_LEDGER_ORDERING_HOLD_MAX_MS for the measured processes "
        "(default: the service's own); the hold bounds latency from below",
    )
    arguments = parser.parse_args()
    form = SHORT if arguments.short else SCALE if arguments.scale else FULL
    sys.exit(asyncio.run(run(form, arguments.seed, arguments.hold_ms)))


if __name__ == "__main__":
    main()
