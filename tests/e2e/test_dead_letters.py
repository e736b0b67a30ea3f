"""A dead letter fixed and re-submitted: refused, price list fixed, applied once."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from service.deadletters import ResubmitError, read_dead_letters, resubmit
from service.drive import (
    produce_lines,
    read_topic,
    service_env,
    start_service,
    stop_service,
    wait_claimed,
)
from service.settings import REPO_ROOT, Settings
from service.topics import ensure_topics
from tests.e2e.conftest import SettingsFactory
from tests.factories import SPEC, purchase_doc, usage_doc

pytestmark = pytest.mark.e2e

NEW_SKU = """
[skus.SKU-NEW]
currency = "TKN"
pricing_unit = "Executions"
list_price = "4"
consumed_unit = "Executions"
service_name = "ACMECORP SERVICE"
service_category = "AI and Machine Learning"
service_subcategory = "AI Platforms"
sku_price_id = "SKU-NEW-1"
sku_meter = "New Widget Executions"
description = "Token Consumption - New Widget SKU"
resource_type = "Widget Instance"
"""


def cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service", *args],
        env={**service_env(settings), "PATH": "/usr/bin:/bin"},
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def _rows(settings: Settings, expected: int, service: Any) -> list[Any]:
    records = await read_topic(
        settings,
        settings.topic_charges,
        settings.topic_partitions,
        expected,
        20,
        service,
    )
    return [orjson.loads(record.value) for record in records]


async def test_a_dead_letter_resubmitted_after_the_fix_is_applied_once(
    isolated: SettingsFactory, tmp_path: Path
) -> None:
    settings = isolated((SPEC / "prices.toml").read_text())
    await ensure_topics(settings)
    events = tmp_path / "events.jsonl"
    documents = [
        purchase_doc("dl-p", "2025-04-01T00:00:00Z", "dl-acct", "100", "100.00"),
        usage_doc("dl-u", "2025-04-02T00:00:00Z", "dl-acct", "SKU-NEW", "5"),
    ]
    events.write_text("".join(json.dumps(d) + "\n" for d in documents))

    service = start_service(settings, tmp_path / "before.log")
    try:
        await wait_claimed(settings, service, 60)
        await produce_lines(settings, events)
        before = await _rows(settings, 1, service)
        (letter,) = await read_dead_letters(settings)
    finally:
        stop_service(service)
    listed = cli(settings, "dead-letters", "--json")

    # The fix: the SKU joins the price list; the service restarts with it.
    settings.prices_path.write_text((SPEC / "prices.toml").read_text() + NEW_SKU)
    service = start_service(settings, tmp_path / "after.log")
    try:
        await wait_claimed(settings, service, 60)
        resent = cli(settings, "dead-letters", "--resubmit", str(letter.offset))
        again = await resubmit(settings, [letter.offset])
        with pytest.raises(ResubmitError):
            await resubmit(settings, [letter.offset + 1])
        after = await _rows(settings, 2, service)
        letters = await read_dead_letters(settings)
    finally:
        exit_code = stop_service(service)

    assert [row["x_ChargeKind"] for row in before] == ["purchase"]
    assert letter.reason == "unknown_sku" and letter.event_id == "dl-u"
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout)["dead_letters"][0]["reason"] == "unknown_sku"
    assert resent.returncode == 0, resent.stderr
    assert "sent to" in resent.stdout and len(again) == 1
    usage = [row for row in after if row["x_ChargeKind"] == "usage"]
    # Sent twice, applied once: the second copy is a counted duplicate.
    assert [row["x_SourceEventId"] for row in usage] == ["dl-u"]
    assert usage[0]["PricingCurrencyEffectiveCost"] == "20"
    assert len(letters) == 1
    assert exit_code == 0
