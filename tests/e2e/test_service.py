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
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import orjson
import pyarrow.parquet as pq
import pytest

from ledger.charges import COLUMNS
from ledger.conformance import check_output
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
from service.reports import basis_left, invoice_totals
from service.settings import Settings
from service.topics import ensure_topics
from tests.e2e.conftest import READ_TOKEN, SettingsFactory
from tests.factories import SPEC, purchase_doc, refund_doc, spec_prices, usage_doc

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
    health: dict[str, Any]
    rebuilt: list[dict[str, Any]]
    rebuilt_exit_code: int | None
    alerts: list[dict[str, Any]]
    rebuilt_alerts: list[dict[str, Any]]

    def of(self, account: str, kind: str | None = None) -> list[dict[str, Any]]:
        return [
            row
            for row in self.rows
            if row["BillingAccountId"] == account
            and (kind is None or row["x_ChargeKind"] == kind)
        ]


async def _serve(
    settings: Settings, logs: Path, produce: Path | None, rows: int, dead: int
) -> tuple[list[Any], list[Any], list[Any], dict[str, Any], int | None]:
    """Run one service process: produce `produce` (if given), read its output:
    rows, dead letters and alerts, and what its HTTP API said before it
    stopped (readiness and metrics)."""
    await ensure_topics(settings)
    service = start_service(settings, logs)
    try:
        await wait_claimed(settings, service, 60)
        if produce is not None:
            await produce_lines(settings, produce)
        published = await read_topic(
            settings,
            settings.topic_charges,
            settings.topic_partitions,
            rows,
            60,
            service,
        )
        dead_letters = await read_topic(
            settings, settings.topic_dead_letter, 1, dead, 15, service
        )
        alerts = await read_topic(
            settings, settings.topic_alerts, settings.topic_partitions, 1, 15, service
        )
        health = await _health(settings)
    finally:
        exit_code = stop_service(service)
    return published, dead_letters, alerts, health, exit_code


async def _health(settings: Settings) -> dict[str, Any]:
    base = f"http://127.0.0.1:{settings.api_port}"
    secret = READ_TOKEN.split(":", 2)[2]
    async with httpx.AsyncClient(base_url=base, timeout=10) as http:
        ready = await http.get("/readyz")
        metrics = await http.get(
            "/metrics", headers={"Authorization": f"Bearer {secret}"}
        )
        refused = await http.get("/metrics")
    return {
        "ready": (ready.status_code, ready.json()),
        "metrics": metrics.text,
        "refused": refused.status_code,
    }


@pytest.fixture(scope="module")
async def run(
    isolated: SettingsFactory, tmp_path_factory: pytest.TempPathFactory
) -> Run:
    prices_text = (SPEC / "prices.toml").read_text() + TERMS
    settings = isolated(prices_text)
    scratch = tmp_path_factory.mktemp("e2e-service")
    events = scratch / "events.jsonl"
    events.write_bytes(b"\n".join(scenario_events()) + b"\n")
    expected_path = scratch / "expected.parquet"
    expected_run = await replay(events, spec_prices(TERMS), settings, out=expected_path)
    expected = pq.read_table(expected_path).to_pylist()
    dead_count = len(expected_run.rejections)

    published, dead, alerts, health, exit_code = await _serve(
        settings, scratch / "service.log", events, len(expected), dead_count
    )
    # A rebuild: a fresh database and group read the same input from offset 0.
    rebuild = isolated(prices_text, inputs=settings)
    rebuilt, _, rebuilt_alerts, _, rebuilt_exit = await _serve(
        rebuild, scratch / "rebuild.log", None, len(expected), dead_count
    )
    return Run(
        settings=settings,
        rows=[orjson.loads(record.value) for record in published],
        dead_letters=dead,
        expected=expected,
        exit_code=exit_code,
        health=health,
        rebuilt=[orjson.loads(record.value) for record in rebuilt],
        rebuilt_exit_code=rebuilt_exit,
        alerts=[orjson.loads(record.value) for record in alerts],
        rebuilt_alerts=[orjson.loads(record.value) for record in rebuilt_alerts],
    )


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


async def test_the_running_service_is_ready_and_counts_what_it_did(run: Run) -> None:
    status, ready = run.health["ready"]
    metrics = run.health["metrics"]
    usage = run.settings.topic_usage

    assert status == 200 and ready["ready"] is True, ready
    assert ready["database"] == "ok" and ready["group_joined"] is True
    assert len(ready["partitions"]) == 2 * run.settings.topic_partitions
    assert run.health["refused"] == 401
    assert (
        f'focus_ledger_events_total{{outcome="dead_letter",topic="{usage}"}} 2.0'
        in metrics
    )
    assert f'focus_ledger_events_total{{outcome="duplicate",topic="{usage}"}} 1.0' in (
        metrics
    )
    assert "focus_ledger_consumer_lag_records" in metrics
    assert 'focus_ledger_alerts_total{type="credits.balance_low"}' in metrics


async def test_the_service_stops_cleanly_on_sigterm(run: Run) -> None:
    assert run.exit_code == 0
    assert run.rebuilt_exit_code == 0


async def test_a_rebuild_from_offset_zero_publishes_identical_rows(run: Run) -> None:
    original = {row["x_ChargeId"]: row for row in run.rows}
    rebuilt = {row["x_ChargeId"]: row for row in run.rebuilt}

    assert len(rebuilt) == len(run.rebuilt) == len(original)
    assert rebuilt == original


async def test_alerts_are_published_once_per_crossing(run: Run) -> None:
    raised = sorted((a["subject"], a["type"]) for a in run.alerts)
    ids = [alert["id"] for alert in run.alerts]
    expiring = next(
        a
        for a in run.alerts
        if a["subject"] == "e2e-expiry" and "expiring" in a["type"]
    )

    # e2e-expiry: its lot nears expiry at the first usage, the second usage
    # runs it into a deficit. e2e-deficit: the usage runs it into a deficit;
    # the top-up that settles it re-arms the alert without raising one.
    assert ("e2e-expiry", "credits.expiring") in raised
    assert raised.count(("e2e-expiry", "credits.balance_low")) == 1
    assert raised.count(("e2e-deficit", "credits.balance_low")) == 1
    assert len(ids) == len(set(ids))
    assert expiring["data"]["credits"] == "7"
    assert expiring["data"]["expires_at"] == "2025-04-10T00:00:00Z"
    assert {a["id"] for a in run.rebuilt_alerts} == set(ids)


async def test_the_published_rows_pass_the_own_focus_checks(run: Run) -> None:
    engine = create_engine(run.settings)
    try:
        async with engine.connect() as conn:
            lots, invoices = await basis_left(conn), await invoice_totals(conn)
    finally:
        await engine.dispose()

    assert check_output(list(COLUMNS), run.rows, lots, invoices) == []


async def test_balances_in_postgresql_match_the_rows(run: Run) -> None:
    engine = create_engine(run.settings)
    try:
        async with engine.connect() as conn:
            found = {b.account_id: b for b in await balances(conn, datetime.now(UTC))}
    finally:
        await engine.dispose()

    # 12345's tokens expired on 2026-04-01 and e2e-expiry's lot on 2025-04-10.
    assert found["12345"].credits == 0 and found["12345"].open_lots == 0
    assert found["e2e-expiry"].credits == Decimal(-1)
    assert found["e2e-expiry"].owed_credits == Decimal(1)
    assert found["e2e-deficit"].credits == Decimal(15)
    assert found["e2e-deficit"].value == Decimal(30)
    assert found["e2e-refund"].credits == 0  # its credits were all revoked
