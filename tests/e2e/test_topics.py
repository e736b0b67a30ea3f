"""The topics the service creates, as the broker reports them."""

from __future__ import annotations

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from service.topics import ensure_topics
from tests.e2e.conftest import SettingsFactory
from tests.factories import SPEC

pytestmark = pytest.mark.e2e


async def test_inputs_and_dead_letters_are_never_deleted_by_age(
    isolated: SettingsFactory,
) -> None:
    """Producers stamp records with the event's time, so any time-based
    retention would delete a backfill at once and break a rebuild."""
    settings = isolated((SPEC / "prices.toml").read_text())
    await ensure_topics(settings)
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers)
    await admin.start()
    try:
        kept = [
            settings.topic_purchases,
            settings.topic_usage,
            settings.topic_dead_letter,
        ]
        responses = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, name) for name in kept]
        )
    finally:
        await admin.close()

    retention = {
        resource[3]: {entry[0]: entry[1] for entry in resource[4]}["retention.ms"]
        for response in responses
        for resource in response.resources
    }
    assert retention == dict.fromkeys(kept, "-1")
