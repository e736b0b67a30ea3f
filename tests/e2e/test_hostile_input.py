"""The hostile corpus through a real broker: one dead letter each, and the
partition keeps moving."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from service.drive import read_topic, start_service, stop_service, wait_claimed
from service.topics import ensure_topics
from tests import hostile
from tests.e2e.conftest import SettingsFactory
from tests.factories import SPEC

pytestmark = pytest.mark.e2e


async def test_hostile_records_are_dead_lettered_and_the_partition_moves_on(
    isolated: SettingsFactory, tmp_path: Path
) -> None:
    settings = isolated((SPEC / "prices.toml").read_text())
    await ensure_topics(settings)
    service = start_service(settings, tmp_path / "service.log")
    placed: dict[tuple[str, int, int], hostile.Case] = {}
    try:
        await wait_claimed(settings, service, 60)
        producer = AIOKafkaProducer(
            bootstrap_servers=settings.kafka_bootstrap_servers,
            enable_idempotence=True,
            acks="all",
            max_request_size=8 * 1024 * 1024,
        )
        await producer.start()
        try:
            records = hostile.records(settings)
            cases = [None, *hostile.CASES, None]
            for record, case in zip(records, cases, strict=True):
                sent = await producer.send_and_wait(
                    record.position.topic,
                    value=record.raw.value,
                    key=record.raw.key,
                    headers=list(record.raw.headers),
                    timestamp_ms=record.raw.timestamp_ms,
                )
                if case is not None:
                    placed[(sent.topic, sent.partition, sent.offset)] = case
        finally:
            await producer.stop()
        dead = await read_topic(
            settings, settings.topic_dead_letter, 1, len(hostile.CASES), 60, service
        )
        rows = await read_topic(
            settings, settings.topic_charges, settings.topic_partitions, 2, 30, service
        )
    finally:
        exit_code = stop_service(service)

    reasons = {}
    for record in dead:
        headers = {name: value.decode() for name, value in record.headers}
        where = (
            headers["dlq.topic"],
            int(headers["dlq.partition"]),
            int(headers["dlq.offset"]),
        )
        assert where not in reasons, "a record was dead-lettered twice"
        reasons[where] = headers["dlq.reason"]
    assert {where: case.reason for where, case in placed.items()} == reasons
    published = sorted(orjson.loads(r.value)["x_SourceEventId"] for r in rows)
    assert published == ["h-after", "h-lot"]
    assert exit_code == 0
