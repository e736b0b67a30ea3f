"""End to end: CloudEvents into a real broker, FOCUS rows out of it.

One `focus-ledger serve` process runs for the module, on a fresh database and
topics of its own. Each scenario uses its own billing accounts; all events
are produced up front, in an order chosen to be awkward (a top-up written
after the usage it funds, a poison record in the middle of a partition), and
the published rows are then checked scenario by scenario, and all together
against the embedded replay of the same events.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import orjson
import pyarrow.parquet as pq
import pytest
from sqlalchemy.engine import make_url

from service.database import create_engine
from service.drive import (
    produce_lines,
    read_topic,
    start_service,
    stop_service,
    wait_claimed,
)
from service.queries import balances
from service.replay import replay
from service.settings import Settings
from service.topics import ensure_topics
from tests.conftest import admin_sql
from tests.factories import DATA, purchase_doc, refund_doc, spec_prices, usage_doc

pytestmark = pytest.mark.e2e

Q, Z, W = "SKU-762343", "SKU-12345", "SKU-78314"
TERMS = """
[accounts.e2e-overage]
shortfall = "overage"
overage_unit_price = "2.5"
billing_currency = "USD"
"""


def scenario_events() -> list[bytes]:
    docs: list[dict[str, Any] | bytes] = [
        # The FOCUS appendix, example B.
        purchase_doc(
            "b1",
            "2025-04-01T00:00:00Z",
            "12345",
            "100000",
            "100000.00",
            expires_at="2026-04-01T00:00:00Z",
            billing_account_name="AwesomeCorpDemo",
        ),
        usage_doc("b2-q", "2025-04-01T09:00:00Z", "12345", Q, "245"),
        usage_doc("b2-z", "2025-04-01T10:00:00Z", "12345", Z, "5"),
        usage_doc("b2-w", "2025-04-01T11:00:00Z", "12345", W, "120"),
        # A draw across two lots bought at different prices.
        purchase_doc("two-1", "2025-04-01T00:00:00Z", "e2e-two-lots", "100", "100.00"),
        purchase_doc("two-2", "2025-04-02T00:00:00Z", "e2e-two-lots", "300", "150.00"),
        usage_doc("two-u", "2025-04-03T00:00:00Z", "e2e-two-lots", W, "50"),
        # Expiry: what is left expires, and the lot adds up to what was paid.
        purchase_doc(
            "exp-p",
            "2025-04-01T00:00:00Z",
            "e2e-expiry",
            "9",
            "10.00",
            expires_at="2025-04-10T00:00:00Z",
        ),
        usage_doc("exp-u1", "2025-04-05T00:00:00Z", "e2e-expiry", Q, "2"),
        usage_doc("exp-u2", "2025-04-11T00:00:00Z", "e2e-expiry", Q, "1"),
        # Deficit, then a top-up that settles it.
        purchase_doc("def-p1", "2025-04-01T00:00:00Z", "e2e-deficit", "10", "10.00"),
        usage_doc("def-u", "2025-04-02T00:00:00Z", "e2e-deficit", W, "5"),
        purchase_doc("def-p2", "2025-04-03T00:00:00Z", "e2e-deficit", "20", "40.00"),
        # Overage under the account's terms.
        purchase_doc("ovr-p", "2025-04-01T00:00:00Z", "e2e-overage", "10", "10.00"),
        usage_doc("ovr-u", "2025-04-02T00:00:00Z", "e2e-overage", W, "5"),
        # A top-up race: the usage is written before the top-up it needs.
        usage_doc("race-u", "2025-04-05T10:00:01Z", "e2e-race", Q, "5"),
        purchase_doc("race-p", "2025-04-05T10:00:00Z", "e2e-race", "10", "10.00"),
        # A refund at cost.
        purchase_doc("ref-p", "2025-04-01T00:00:00Z", "e2e-refund", "100", "50.00"),
        usage_doc("ref-u", "2025-04-02T00:00:00Z", "e2e-refund", Q, "40"),
        refund_doc("ref-r", "2025-04-03T00:00:00Z", "e2e-refund", "ref-p", "30.00"),
        # A copy, a reused id, and poison before a valid event of the account.
        purchase_doc("dup-p", "2025-04-01T00:00:00Z", "e2e-dup", "100", "100.00"),
        usage_doc("dup-u", "2025-04-02T00:00:00Z", "e2e-dup", Q, "1"),
        usage_doc("dup-u", "2025-04-02T00:00:00Z", "e2e-dup", Q, "1"),
        usage_doc("dup-u", "2025-04-02T00:00:00Z", "e2e-dup", Q, "2"),
        b'{"specversion": "1.0", "id": "poison", "subject": "e2e-dup", ',
        usage_doc("dup-after", "2025-04-03T00:00:00Z", "e2e-dup", Q, "3"),
    ]
    return [d if isinstance(d, bytes) else json.dumps(d).encode() for d in docs]


@dataclass
class Run:
    settings: Settings
    rows: list[dict[str, Any]]
    dead_letters: list[Any]
    expected: list[dict[str, Any]]
    exit_code: int | None

    def of(self, account: str, kind: str | None = None) -> list[dict[str, Any]]:
        return [
            row
            for row in self.rows
            if row["BillingAccountId"] == account
            and (kind is None or row["x_ChargeKind"] == kind)
        ]


@pytest.fixture(scope="module")
async def run(
    kafka_bootstrap: str,
    postgres_url: str,
    postgres_template: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Run]:
    scratch = tmp_path_factory.mktemp("e2e")
    name = f"focus_ledger_e2e_{uuid.uuid4().hex[:10]}"
    admin_sql(postgres_url, f'CREATE DATABASE "{name}" TEMPLATE "{postgres_template}"')
    prices_path = scratch / "prices.toml"
    prices_path.write_text((DATA / "spec_prices.toml").read_text() + TERMS)
    run_id = uuid.uuid4().hex[:8]
    settings = Settings(
        database_url=make_url(postgres_url).set(database=name).render_as_string(False),
        kafka_bootstrap_servers=kafka_bootstrap,
        prices_path=prices_path,
        group_id=f"e2e-{run_id}",
        topic_purchases=f"e2e-{run_id}.credits.purchases",
        topic_usage=f"e2e-{run_id}.usage.events",
        topic_charges=f"e2e-{run_id}.focus.charges",
        topic_dead_letter=f"e2e-{run_id}.ledger.dead-letter",
        topic_relay_checkpoints=f"e2e-{run_id}.ledger.relay-checkpoints",
        ordering_hold_max_ms=300,
        expiry_sweep_interval_ms=500,
    )
    events = scratch / "events.jsonl"
    events.write_bytes(b"\n".join(scenario_events()) + b"\n")
    expected_csv = scratch / "expected.parquet"
    prices = spec_prices(TERMS)
    expected_run = await replay(events, prices, settings, out=expected_csv)
    expected = pq.read_table(expected_csv).to_pylist()

    await ensure_topics(settings)
    service = start_service(settings, scratch / "service.log")
    try:
        await wait_claimed(settings, service, 60)
        await produce_lines(settings, events)
        published = await read_topic(
            settings,
            settings.topic_charges,
            settings.topic_partitions,
            len(expected),
            60,
            service,
        )
        dead = await read_topic(
            settings,
            settings.topic_dead_letter,
            1,
            len(expected_run.rejections),
            15,
            service,
        )
    finally:
        exit_code = stop_service(service)
    rows = [orjson.loads(record.value) for record in published]
    yield Run(settings, rows, dead, expected, exit_code)
    admin_sql(postgres_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _d(value: str | None) -> Decimal:
    assert value is not None
    return Decimal(value)


async def test_b1_b2_reproduces_the_spec_costs(run: Run) -> None:
    purchase = run.of("12345", "purchase")[0]
    usage = {row["SkuId"]: row for row in run.of("12345", "usage")}

    assert _d(purchase["BilledCost"]) == 100000
    assert _d(purchase["EffectiveCost"]) == 0
    assert _d(purchase["ListCost"]) == 200000
    assert _d(purchase["ContractedCost"]) == 100000
    q = usage[Q]
    assert _d(q["BilledCost"]) == 0
    assert _d(q["EffectiveCost"]) == 245
    assert _d(q["ListCost"]) == 490
    assert _d(q["ContractedCost"]) == 245
    assert _d(q["PricingCurrencyEffectiveCost"]) == 245
    assert q["PricingCurrency"] == "TKN" and q["BillingCurrency"] == "USD"
    assert _d(usage[Z]["EffectiveCost"]) == 10 and _d(usage[W]["EffectiveCost"]) == 360
    assert q["InvoiceId"] == purchase["InvoiceId"]
    assert q["x_SourceEventId"] == "b2-q"


async def test_a_draw_across_two_lots_is_one_row_per_lot(run: Run) -> None:
    rows = run.of("e2e-two-lots", "usage")

    assert sorted(_d(row["EffectiveCost"]) for row in rows) == [25, 100]
    assert len({row["x_CreditLotId"] for row in rows}) == 2


async def test_expiry_books_what_is_left_and_the_lot_conserves(run: Run) -> None:
    expiry = run.of("e2e-expiry", "expiry")
    usage = run.of("e2e-expiry", "usage")

    assert len(expiry) == 1
    assert _d(expiry[0]["PricingCurrencyEffectiveCost"]) == 7
    assert expiry[0]["ChargePeriodStart"] == "2025-04-10T00:00:00Z"
    assert sum(_d(r["EffectiveCost"]) for r in usage + expiry) == Decimal("10.00")


async def test_a_deficit_is_settled_by_the_next_purchase(run: Run) -> None:
    settlement = run.of("e2e-deficit", "settlement")

    assert len(settlement) == 1
    assert _d(settlement[0]["EffectiveCost"]) == 10
    assert settlement[0]["x_SourceEventId"] == "def-u"
    assert settlement[0]["x_SettlementEventId"] == "def-p2"
    assert settlement[0]["ChargePeriodStart"] == "2025-04-02T00:00:00Z"


async def test_overage_is_billed_in_arrears(run: Run) -> None:
    overage = run.of("e2e-overage", "overage")

    assert len(overage) == 1
    assert _d(overage[0]["BilledCost"]) == _d(overage[0]["EffectiveCost"]) == 12.5


async def test_a_top_up_written_after_its_usage_still_funds_it(run: Run) -> None:
    usage = run.of("e2e-race", "usage")

    assert len(usage) == 1 and usage[0]["x_CreditLotId"]
    assert run.of("e2e-race", "settlement") == []


async def test_a_copy_is_published_once_and_a_reused_id_is_dead_lettered(
    run: Run,
) -> None:
    usage = run.of("e2e-dup", "usage")
    reasons = sorted(
        dict((k, v.decode()) for k, v in record.headers)["dlq.reason"]
        for record in run.dead_letters
    )

    assert sorted(row["x_SourceEventId"] for row in usage) == ["dup-after", "dup-u"]
    assert reasons == ["id_conflict", "not_json"]
    poison = next(r for r in run.dead_letters if b"poison" in r.value)
    assert poison.value.startswith(b'{"specversion": "1.0", "id": "poison"')


async def test_published_rows_equal_the_replay_and_appear_once(run: Run) -> None:
    ids = [row["x_ChargeId"] for row in run.rows]

    assert len(ids) == len(set(ids)) == len(run.expected)
    assert set(ids) == {row["x_ChargeId"] for row in run.expected}


async def test_the_service_stops_cleanly_on_sigterm(run: Run) -> None:
    assert run.exit_code == 0


async def test_balances_in_postgresql_match_the_rows(run: Run) -> None:
    engine = create_engine(run.settings)
    try:
        async with engine.connect() as conn:
            found = {b.account_id: b for b in await balances(conn, datetime.now(UTC))}
    finally:
        await engine.dispose()

    # 12345's tokens expired on 2026-04-01 and e2e-expiry's lot on 2025-04-10.
    assert "12345" not in found
    assert found["e2e-expiry"].credits == Decimal(-1)
    assert found["e2e-expiry"].owed_credits == Decimal(1)
    assert found["e2e-deficit"].credits == Decimal(15)
    assert found["e2e-deficit"].value == Decimal(30)
    assert "e2e-refund" not in found  # its credits were all revoked
