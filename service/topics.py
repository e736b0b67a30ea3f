"""The topics focus-ledger reads and writes, created and checked at start.

Both input topics must have the same number of partitions: one account's
purchases and usage then share a partition number, and one instance owns
both (the consumer uses the range assignor, which hands out equal partition
numbers of co-partitioned topics together). A mismatch is refused at start,
because it would let two instances change one account.

The input topics and the dead-letter topic keep their records forever
(`retention.ms=-1`). The inputs are the ledger's source of truth: a rebuild
reads them from offset 0. Time-based retention would also judge a record by
its timestamp, which producers set to the event's own time, so a month-old
backfill would be deleted within minutes of being written. Dead letters keep
the original record's timestamp for the same reason and must outlive the
fix that lets them be re-submitted.
"""

from __future__ import annotations

import contextlib
import logging

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from ledger.errors import LedgerError
from service.settings import Settings

log = logging.getLogger(__name__)


class TopicLayoutError(LedgerError):
    """The input topics are not co-partitioned; the service will not start."""


def topic_specs(settings: Settings) -> list[NewTopic]:
    partitions = settings.topic_partitions
    replicas = settings.topic_replication_factor
    kept = {"max.message.bytes": str(8 * 1024 * 1024), "retention.ms": "-1"}
    return [
        NewTopic(settings.topic_purchases, partitions, replicas, topic_configs=kept),
        NewTopic(settings.topic_usage, partitions, replicas, topic_configs=kept),
        NewTopic(settings.topic_charges, partitions, replicas),
        NewTopic(settings.topic_dead_letter, 1, replicas, topic_configs=kept),
        NewTopic(settings.topic_alerts, partitions, replicas),
        NewTopic(
            settings.topic_relay_checkpoints,
            1,
            replicas,
            topic_configs={"cleanup.policy": "compact"},
        ),
    ]


async def ensure_topics(settings: Settings) -> dict[str, int]:
    """Create missing topics, then return every topic's partition count.

    Raises:
        TopicLayoutError: the two input topics differ in partition count.
    """
    admin = AIOKafkaAdminClient(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        client_id=f"{settings.client_id}-admin",
        request_timeout_ms=30_000,
    )
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [spec for spec in topic_specs(settings) if spec.name not in existing]
        if missing:
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics(missing, timeout_ms=30_000)
            log.info("topics created", extra={"topics": [t.name for t in missing]})
        names = [spec.name for spec in topic_specs(settings)]
        described = await admin.describe_topics(names)
    finally:
        await admin.close()
    counts = {item["topic"]: len(item["partitions"]) for item in described}
    purchases = counts.get(settings.topic_purchases)
    usage = counts.get(settings.topic_usage)
    if not purchases or purchases != usage:
        raise TopicLayoutError(
            f"{settings.topic_purchases} has {purchases} partitions and "
            f"{settings.topic_usage} has {usage}; they must be equal"
        )
    return counts
