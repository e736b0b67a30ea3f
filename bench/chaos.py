"""Exactly-once under crashes, restarts and rebalances, shown by fault injection.

    .venv/bin/python bench/chaos.py            # the full form
    .venv/bin/python bench/chaos.py --short    # the CI form: fewer events and kills

Runs on the stack of `deploy/stack.sh` (it must be running) and restarts that
stack's Kafka broker and PostgreSQL while events flow. Steps:

1. Generate a deterministic stream of events for many billing accounts:
   purchases, top-ups, lots that expire during the stream, usage, refunds,
   re-sent duplicates, conflicting re-uses of ids and poison records.
2. Run two `focus-ledger serve` processes in one consumer group on a fresh
   database, with fault points armed (see `service/faults.py`), and produce
   the events at a steady rate.
3. Meanwhile: SIGKILL a process at random moments, restart the broker once
   and PostgreSQL once, and keep one process down long enough for the other
   to take its partitions over. Every process that dies is restarted.
4. When the stream is in, disarm the faults and wait until every input offset
   is committed and the outbox is empty.
5. Replay the same input topics with one clean process into another fresh
   database, and compare: balances, lots, FOCUS rows (ids and values) read
   `read_committed`, and the fate of every input record.

Prints one summary and exits 1 on any difference.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import sqlalchemy as sa
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from sqlalchemy.engine import make_url

from service.database import create_engine
from service.drive import fresh_database, read_topic, start_service, stop_service
from service.queries import balances
from service.samples import cloud_event
from service.settings import REPO_ROOT, Settings
from service.tables import DISPOSITIONS, LOTS, OFFSETS, OUTBOX, PROCESSED
from service.topics import ensure_topics

SKUS = (
    ("llm-large-input", 400, 24_000),
    ("llm-large-output", 80, 4_000),
    ("llm-small-input", 200, 16_000),
    ("embed-v3", 1_000, 60_000),
    ("image-1024", 1, 4),
    ("image-1024-hd", 1, 2),
)
# Every start of a process arms all four fault points: inside a batch, after
# its commit, and on both sides of the relay's Kafka commit (only the relay
# leader meets those two).
FAULT_POINTS = (
    "batch_after_fence",
    "batch_after_commit",
    "relay_before_commit",
    "relay_after_commit",
)
FAULT_CHANCE = 0.02
# Each start also focuses on one point, in turn, with a higher chance, so
# that every point is struck in a run however fast the batches go.
FOCUSED_FAULT_CHANCE = 0.25


@dataclass(frozen=True, slots=True)
class Form:
    accounts: int
    events: int
    kills_min: int
    rate_per_s: int
    restarts: bool
    takeover: bool
    every_point: bool = True


FULL = Form(
    accounts=240,
    events=21_000,
    kills_min=10,
    rate_per_s=250,
    restarts=True,
    takeover=True,
)
SHORT = Form(
    accounts=60,
    events=3_000,
    kills_min=4,
    rate_per_s=50,
    restarts=True,
    takeover=True,
    every_point=False,
)


def generate(
    form: Form, seed: int, start: datetime
) -> list[tuple[str, bytes, bytes | None]]:
    """(kind, value, key) records in production order; kind picks the topic."""
    rng = random.Random(seed)
    records: list[tuple[str, bytes, bytes | None]] = []
    sent: list[dict[str, Any]] = []
    span = timedelta(minutes=60)
    step = span / form.events
    balance = {f"acct-{i:04d}": 0 for i in range(form.accounts)}
    purchases: dict[str, list[str]] = {account: [] for account in balance}

    def emit(document: dict[str, Any]) -> None:
        kind = "purchases" if document["type"].startswith("credits.") else "usage"
        records.append(
            (kind, json.dumps(document).encode(), document["subject"].encode())
        )
        sent.append(document)

    for index, account in enumerate(balance):
        moment = start + timedelta(milliseconds=index)
        expires = start + span * rng.uniform(0.3, 0.8) if index % 5 == 0 else None
        emit(_purchase(f"p-{account}-0", moment, account, 40_000, expires))
        purchases[account].append(f"p-{account}-0")
        balance[account] += 40_000
    for number in range(form.events - form.accounts):
        moment = start + timedelta(seconds=1) + step * number
        account = rng.choice(list(balance))
        roll = rng.random()
        if roll < 0.03:
            event_id = f"p-{account}-{len(purchases[account])}"
            emit(
                _purchase(event_id, moment, account, rng.choice([20_000, 60_000]), None)
            )
            purchases[account].append(event_id)
        elif roll < 0.035 and purchases[account]:
            emit(
                cloud_event(
                    f"r-{account}-{number}",
                    "credits.refunded",
                    moment,
                    account,
                    {
                        "purchase_id": rng.choice(purchases[account]),
                        "amount": "1.00",
                        "quantity": "100",
                        "invoice_id": f"CN-{number}",
                    },
                )
            )
        elif roll < 0.045 and sent:
            duplicate = rng.choice(sent[-2000:])
            records.append(records[sent.index(duplicate)])
        elif roll < 0.05 and sent:
            conflict = json.loads(json.dumps(rng.choice(sent[-2000:])))
            conflict["data"]["quantity"] = str(rng.randint(1, 9))
            kind = "purchases" if conflict["type"].startswith("credits.") else "usage"
            records.append(
                (kind, json.dumps(conflict).encode(), conflict["subject"].encode())
            )
        elif roll < 0.052:
            records.append(
                (
                    "usage",
                    b'{"specversion": "1.0", "id": "poison-'
                    + str(number).encode()
                    + b'"',
                    account.encode(),
                )
            )
        else:
            sku, low, high = rng.choice(SKUS)
            emit(
                cloud_event(
                    f"u-{number}",
                    "usage.recorded",
                    moment,
                    account,
                    {
                        "sku_id": sku,
                        "quantity": str(rng.randint(low, high)),
                        "resource_id": f"key-{account}",
                        "tags": {"team": rng.choice(["search", "chat"])},
                    },
                )
            )
    return records


def _purchase(
    event_id: str,
    moment: datetime,
    account: str,
    credits: int,
    expires: datetime | None,
) -> dict[str, Any]:
    data: dict[str, Any] = {
        "currency": "CRD",
        "quantity": str(credits),
        "amount": f"{credits / 100:.2f}",
        "billing_currency": "USD",
        "invoice_id": f"INV-{event_id}",
    }
    if expires is not None:
        data["expires_at"] = expires.isoformat().replace("+00:00", "Z")
    return cloud_event(event_id, "credits.purchased", moment, account, data)


@dataclass
class Instance:
    name: str
    settings: Settings
    logs: Path
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0
    killed_by_us: bool = False
    armed: bool = False
    offset: int = 0

    def start(self) -> None:
        self.starts += 1
        log = self.logs / f"{self.name}-{self.starts}.log"
        # Each start draws its own fault sequence, so a restart does not die
        # at the very same strike as the process before it.
        seed = (self.settings.fault_seed or 0) * 1000 + self.starts
        update: dict[str, Any] = {"fault_seed": seed}
        if self.armed:
            focus = FAULT_POINTS[(self.starts + self.offset) % len(FAULT_POINTS)]
            update["fault_points"] = ",".join(
                f"{p}:{FOCUSED_FAULT_CHANCE if p == focus else FAULT_CHANCE}"
                for p in FAULT_POINTS
            )
        self.process = start_service(self.settings.model_copy(update=update), log)
        self.killed_by_us = False

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        if self.alive() and self.process is not None:
            self.killed_by_us = True
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=30)

    def last_log(self) -> str:
        return (self.logs / f"{self.name}-{self.starts}.log").read_text(
            errors="replace"
        )


@dataclass
class Tally:
    external_kills: int = 0
    fault_kills: Counter[str] = field(default_factory=Counter)
    fatal_exits: int = 0
    other_exits: list[str] = field(default_factory=list)
    kafka_restarts: int = 0
    postgres_restarts: int = 0
    takeovers: int = 0
    sigterm_exits: list[int | None] = field(default_factory=list)

    @property
    def kills(self) -> int:
        return self.external_kills + sum(self.fault_kills.values())


async def _stack(command: str) -> None:
    """Run a deploy script without stopping the harness's own event loop."""
    script, *arguments = command.split()
    process = await asyncio.create_subprocess_exec(
        str(REPO_ROOT / "deploy" / script),
        *arguments,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    if await process.wait() != 0:
        raise RuntimeError(f"deploy/{command} failed")


class Supervisor:
    """Restarts dead instances and counts why each one died."""

    def __init__(self, instances: list[Instance], tally: Tally) -> None:
        self.instances = instances
        self.tally = tally
        self.paused: set[str] = set()
        self.disarmed = False

    async def watch(self, stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            for instance in self.instances:
                if instance.alive() or instance.name in self.paused:
                    continue
                if instance.process is not None:
                    self._classify(instance)
                if self.disarmed:
                    instance.armed = False
                await asyncio.sleep(0.3)
                instance.start()
            await asyncio.sleep(0.2)

    def _classify(self, instance: Instance) -> None:
        assert instance.process is not None
        code = instance.process.returncode
        log = instance.last_log()
        marker = log.rfind("fault injected: ")
        if instance.killed_by_us:
            self.tally.external_kills += 1
        elif code == -signal.SIGKILL and marker >= 0:
            point = log[marker:].split("\n", 1)[0].removeprefix("fault injected: ")
            self.tally.fault_kills[point.strip()] += 1
        elif code == 70:
            self.tally.fatal_exits += 1
        else:
            self.tally.other_exits.append(f"{instance.name}#{instance.starts}: {code}")
        instance.process = None


async def produce(
    settings: Settings,
    records: list[tuple[str, bytes, bytes | None]],
    rate_per_s: int,
    progress: list[int],
) -> None:
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        enable_idempotence=True,
        acks="all",
        linger_ms=5,
        request_timeout_ms=60_000,
        retry_backoff_ms=500,
    )
    await producer.start()
    topics = {"purchases": settings.topic_purchases, "usage": settings.topic_usage}
    started = time.monotonic()
    try:
        for index, (kind, value, key) in enumerate(records):
            due = started + index / rate_per_s
            if (delay := due - time.monotonic()) > 0:
                await asyncio.sleep(delay)
            await producer.send(topics[kind], value=value, key=key)
            progress[0] = index + 1
        await producer.flush()
    finally:
        await producer.stop()


async def inflict(
    form: Form,
    instances: list[Instance],
    supervisor: Supervisor,
    tally: Tally,
    progress: list[int],
    total: int,
    rng: random.Random,
) -> None:
    """Kill, restart and take over while the stream flows."""
    done = {"kafka": False, "postgres": False, "takeover": False}
    while progress[0] < total:
        await asyncio.sleep(rng.uniform(2.0, 5.0))
        share = progress[0] / total
        if form.restarts and not done["kafka"] and share > 0.25:
            done["kafka"] = True
            await _stack("kafka.sh stop")
            await asyncio.sleep(2)
            await _stack("kafka.sh start")
            tally.kafka_restarts += 1
        elif form.restarts and not done["postgres"] and share > 0.45:
            done["postgres"] = True
            await _stack("postgres.sh stop")
            await asyncio.sleep(1)
            await _stack("postgres.sh start")
            tally.postgres_restarts += 1
        elif form.takeover and not done["takeover"] and share > 0.65:
            done["takeover"] = True
            victim = instances[1]
            supervisor.paused.add(victim.name)
            victim.kill()
            tally.external_kills += 1
            victim.process = None
            await asyncio.sleep(victim.settings.consumer_session_timeout_ms / 1000 + 6)
            tally.takeovers += 1
            supervisor.paused.discard(victim.name)
        else:
            victim = rng.choice(instances)
            victim.kill()


@contextlib.asynccontextmanager
async def _reader(
    settings: Settings,
) -> AsyncIterator[tuple[AIOKafkaConsumer, list[TopicPartition]]]:
    """A read_committed consumer and the input partitions of `settings`."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        isolation_level="read_committed",
        group_id=None,
    )
    await consumer.start()
    try:
        yield (
            consumer,
            [
                TopicPartition(topic, p)
                for topic in settings.input_topics
                for p in range(settings.topic_partitions)
            ],
        )
    finally:
        await consumer.stop()


async def quiescent(settings: Settings, timeout_s: float) -> bool:
    """Every input offset committed, nothing held, the outbox empty, stable."""
    engine = create_engine(settings)
    async with _reader(settings) as (consumer, tps):
        deadline = time.monotonic() + timeout_s
        stable = 0
        while time.monotonic() < deadline:
            ends = await consumer.end_offsets(tps)
            try:
                async with engine.connect() as conn:
                    done = {
                        (r.topic, r.partition): r.next_offset
                        for r in await conn.execute(
                            sa.select(OFFSETS).where(
                                OFFSETS.c.group_id == settings.group_id
                            )
                        )
                    }
                    backlog = (
                        await conn.execute(
                            sa.select(sa.func.count()).select_from(OUTBOX)
                        )
                    ).scalar_one()
            except Exception:
                stable = 0
                await asyncio.sleep(1)
                continue
            caught_up = all(
                done.get((tp.topic, tp.partition), -1) >= end
                for tp, end in ends.items()
            )
            stable = stable + 1 if caught_up and backlog == 0 else 0
            if stable >= 6:
                await engine.dispose()
                return True
            await asyncio.sleep(1)
    await engine.dispose()
    return False


async def snapshot(settings: Settings, moment: datetime) -> dict[str, Any]:
    engine = create_engine(settings)
    try:
        async with engine.connect() as conn:
            lots = [
                tuple(row)
                for row in await conn.execute(sa.select(LOTS).order_by(LOTS.c.lot_id))
            ]
            applied = (
                await conn.execute(sa.select(sa.func.count()).select_from(PROCESSED))
            ).scalar_one()
            outcomes = Counter(
                row.outcome
                for row in await conn.execute(sa.select(DISPOSITIONS.c.outcome))
            )
            current = await balances(conn, moment)
    finally:
        await engine.dispose()
    return {
        "lots": lots,
        "applied": applied,
        "outcomes": outcomes,
        "balances": [
            (b.account_id, b.currency, b.credits, b.value, b.owed_credits)
            for b in current
        ],
    }


async def input_records(settings: Settings) -> int:
    async with _reader(settings) as (consumer, tps):
        ends = await consumer.end_offsets(tps)
        starts = await consumer.beginning_offsets(tps)
        return sum(ends[tp] - starts[tp] for tp in tps)


def _settings_for(
    base: Settings, run: str, name: str, topics: dict[str, str], **extra: Any
) -> Settings:
    url = make_url(base.database_url).set(database=f"chaos_{run}_{name}")
    return base.model_copy(
        update={
            "database_url": url.render_as_string(hide_password=False),
            "group_id": f"chaos-{run}-{name}",
            "topic_charges": f"chaos-{run}-{name}.focus.charges",
            "topic_dead_letter": f"chaos-{run}-{name}.ledger.dead-letter",
            "topic_alerts": f"chaos-{run}-{name}.ledger.alerts",
            "topic_relay_checkpoints": f"chaos-{run}-{name}.ledger.relay-checkpoints",
            "ordering_hold_max_ms": 2000,
            "expiry_sweep_interval_ms": 1000,
            "consumer_session_timeout_ms": 6000,
            "consumer_heartbeat_interval_ms": 1000,
            "batch_retries_max": 8,
            "api_port": 0,
            **topics,
            **extra,
        }
    )


async def run(form: Form, seed: int, debug: bool = False) -> int:
    started = time.monotonic()
    run_id = datetime.now(UTC).strftime("%Y%m%d%H%M%S")
    base = Settings(
        prices_path=REPO_ROOT / "examples" / "prices.toml",
        log_level="DEBUG" if debug else "INFO",
    )
    topics = {
        "topic_purchases": f"chaos-{run_id}.credits.purchases",
        "topic_usage": f"chaos-{run_id}.usage.events",
    }
    faulty = _settings_for(base, run_id, "faulty", topics)
    clean = _settings_for(base, run_id, "clean", topics)
    logs = REPO_ROOT / ".stack" / f"chaos-{run_id}"
    logs.mkdir(parents=True, exist_ok=True)
    records = generate(form, seed, datetime.now(UTC) - timedelta(hours=2))
    print(
        f"chaos {run_id}: {len(records)} records for {form.accounts} accounts, "
        f"seed {seed}, logs in {logs.relative_to(REPO_ROOT)}",
        flush=True,
    )

    await fresh_database(faulty)
    await fresh_database(clean)
    await ensure_topics(faulty)
    await ensure_topics(clean)

    tally = Tally()
    instances = [
        Instance(
            f"a{i}",
            faulty.model_copy(update={"fault_seed": seed + i}),
            logs,
            armed=True,
            offset=2 * i,
        )
        for i in range(2)
    ]
    supervisor = Supervisor(instances, tally)
    stopping = asyncio.Event()
    for instance in instances:
        instance.start()
    watcher = asyncio.create_task(supervisor.watch(stopping))
    progress = [0]
    rng = random.Random(seed)
    producing = asyncio.create_task(produce(faulty, records, form.rate_per_s, progress))
    await asyncio.sleep(3)
    await inflict(form, instances, supervisor, tally, progress, len(records), rng)
    await producing
    while tally.kills < form.kills_min:
        rng.choice(instances).kill()
        await asyncio.sleep(2.5)
    supervisor.disarmed = True
    for instance in instances:
        instance.kill()
        tally.external_kills += 1
    print(
        f"  stream in after {time.monotonic() - started:.0f} s; faults disarmed",
        flush=True,
    )
    settled = await quiescent(faulty, 300)
    stopping.set()
    await watcher
    for instance in instances:
        if instance.process is not None:
            tally.sigterm_exits.append(stop_service(instance.process))

    clean_instance = Instance("clean", clean, logs)
    clean_instance.start()
    clean_settled = await quiescent(clean, 300)
    assert clean_instance.process is not None
    tally.sigterm_exits.append(stop_service(clean_instance.process))

    return await compare(form, faulty, clean, tally, settled and clean_settled, started)


async def compare(
    form: Form,
    faulty: Settings,
    clean: Settings,
    tally: Tally,
    settled: bool,
    started: float,
) -> int:
    moment = datetime.now(UTC)
    total_in = await input_records(faulty)
    a, b = await snapshot(faulty, moment), await snapshot(clean, moment)
    clean_rows = await read_topic(
        clean, clean.topic_charges, clean.topic_partitions, 1, 60
    )
    chaos_rows = await read_topic(
        faulty, faulty.topic_charges, faulty.topic_partitions, len(clean_rows), 60
    )
    chaos_dead = await read_topic(
        faulty, faulty.topic_dead_letter, 1, a["outcomes"]["dead_letter"], 30
    )
    chaos = [orjson.loads(r.value) for r in chaos_rows]
    reference = {
        row["x_ChargeId"]: row for row in (orjson.loads(r.value) for r in clean_rows)
    }
    seen: dict[str, dict[str, Any]] = {}
    duplicated = 0
    for row in chaos:
        if row["x_ChargeId"] in seen:
            duplicated += 1
        seen[row["x_ChargeId"]] = row
    missing = len(set(reference) - set(seen))
    extra = len(set(seen) - set(reference))
    differing = sum(
        1 for cid in set(seen) & set(reference) if seen[cid] != reference[cid]
    )
    dead_keys = Counter(
        tuple(
            dict(r.headers).get(h, b"")
            for h in ("dlq.topic", "dlq.partition", "dlq.offset")
        )
        for r in chaos_dead
    )
    dead_twice = sum(n - 1 for n in dead_keys.values() if n > 1)
    accounted = a["applied"] + sum(a["outcomes"].values())
    checks = {
        "rows missing": missing,
        "rows duplicated": duplicated,
        "rows not in the clean run": extra,
        "rows with other values": differing,
        "lots differing": 0 if a["lots"] == b["lots"] else 1,
        "balances differing": 0 if a["balances"] == b["balances"] else 1,
        "input records unaccounted": abs(total_in - accounted),
        "dead letters published twice": dead_twice,
        "dead letters missing": abs(a["outcomes"]["dead_letter"] - len(dead_keys)),
        "clean run differs in fates": 0
        if (a["applied"], a["outcomes"]) == (b["applied"], b["outcomes"])
        else 1,
        "runs that never settled": 0 if settled else 1,
        "unexpected exits": len(tally.other_exits),
        "unclean SIGTERM exits": sum(1 for code in tally.sigterm_exits if code != 0),
    }
    wall = time.monotonic() - started
    lines = {
        "events in": f"{total_in} input records ({a['applied']} applied, "
        f"{a['outcomes']['duplicate']} duplicates, "
        f"{a['outcomes']['dead_letter']} dead letters)",
        "rows out": f"{len(chaos)} on the charges topic "
        f"({len(reference)} in the clean run)",
        "kills survived": f"{tally.kills}: {tally.external_kills} SIGKILL from "
        f"outside, {dict(tally.fault_kills)} at fault points",
        "restarts survived": f"Kafka {tally.kafka_restarts}, PostgreSQL "
        f"{tally.postgres_restarts}, partition takeovers {tally.takeovers}, "
        f"fatal exits restarted {tally.fatal_exits}",
        **{name: str(value) for name, value in checks.items()},
    }
    if tally.other_exits:
        lines["exits"] = str(tally.other_exits)
    lines["wall time"] = f"{wall:.0f} s"
    width = max(len(name) for name in lines) + 2
    print()
    print("chaos summary")
    for name, value in lines.items():
        print(f"  {name.ljust(width)}{value}")
    missed = [p for p in FAULT_POINTS if not tally.fault_kills.get(p)]
    if missed:
        print(f"  fault points never struck {missed}")
    failed = (
        any(checks.values())
        or tally.kills < form.kills_min
        or (form.every_point and bool(missed))
    )
    print("RESULT: " + ("FAIL" if failed else "PASS"))
    return 1 if failed else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--short", action="store_true", help="the CI form")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--debug", action="store_true", help="DEBUG service logs")
    arguments = parser.parse_args()
    form = SHORT if arguments.short else FULL
    sys.exit(asyncio.run(run(form, arguments.seed, arguments.debug)))


if __name__ == "__main__":
    main()
