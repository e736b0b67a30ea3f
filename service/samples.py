"""Sample input: a curated month of events for the demo, and synthetic load.

`demo_events` is the story `examples/events.jsonl` tells, a November for
five customers of the sample price list (`examples/prices.toml`):

- acct-acme buys twice and uses LLM, embedding and image SKUs; one usage is
  large enough to draw across both of its lots.
- acct-northwind (EUR, contracted prices, expiring lots first) lets part of
  a lot expire on 20 November.
- acct-initech runs out (a deficit) and tops up; the top-up settles the
  deficit. Its usage one second after the top-up is written *before* the
  top-up, on the other topic, and is still funded by it.
- acct-globex runs out under an overage agreement and is billed in arrears.
- acct-umbrella gets part of a purchase refunded.

It also holds the three kinds of bad input the ledger must survive: a
re-sent duplicate, a different event reusing an id, and lines that are not
valid events. `synthetic_events` makes realistic load of any size.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

BILLING_SOURCE = "//billing.lumina.ai/invoices"
METER_SOURCE = "//meter.lumina.ai/eu-west-1"

LLM_SKUS = (
    ("llm-large-input", 400, 24_000),
    ("llm-large-output", 80, 4_000),
    ("llm-small-input", 200, 16_000),
    ("llm-small-output", 50, 2_000),
    ("embed-v3", 1_000, 60_000),
)
IMAGE_SKUS = (("image-1024", 1, 4), ("image-1024-hd", 1, 2))


def cloud_event(
    event_id: str,
    event_type: str,
    time: datetime,
    account_id: str,
    data: dict[str, Any],
    source: str | None = None,
) -> dict[str, Any]:
    return {
        "specversion": "1.0",
        "id": event_id,
        "source": source
        or (METER_SOURCE if event_type == "usage.recorded" else BILLING_SOURCE),
        "type": event_type,
        "time": time.astimezone(UTC).isoformat().replace("+00:00", "Z"),
        "subject": account_id,
        "datacontenttype": "application/json",
        "data": data,
    }


def purchase(
    event_id: str,
    time: datetime,
    account: str,
    credits: str,
    amount: str,
    currency: str,
    invoice: str,
    expires_at: datetime | None = None,
    **extra: str,
) -> dict[str, Any]:
    data: dict[str, Any] = {
        "currency": "CRD",
        "quantity": credits,
        "amount": amount,
        "billing_currency": currency,
        "invoice_id": invoice,
        **extra,
    }
    if expires_at is not None:
        data["expires_at"] = expires_at.isoformat().replace("+00:00", "Z")
    return cloud_event(event_id, "credits.purchased", time, account, data)


def usage(
    event_id: str,
    time: datetime,
    account: str,
    sku: str,
    quantity: int | str,
    **extra: Any,
) -> dict[str, Any]:
    data = {"sku_id": sku, "quantity": str(quantity), **extra}
    return cloud_event(event_id, "usage.recorded", time, account, data)


def _meter_day(
    rng: random.Random,
    account: str,
    day: datetime,
    count: int,
    prefix: str,
    workspace: tuple[str, str],
) -> Iterator[dict[str, Any]]:
    for index in range(count):
        moment = day + timedelta(seconds=rng.randrange(8 * 3600, 20 * 3600))
        sku, low, high = rng.choice(LLM_SKUS + IMAGE_SKUS)
        yield usage(
            f"{prefix}-{day:%m%d}-{index:03d}",
            moment,
            account,
            sku,
            rng.randint(low, high),
            sub_account_id=workspace[0],
            sub_account_name=workspace[1],
            sub_account_type="Workspace",
            resource_id=f"key-{workspace[0]}",
            resource_name=f"{workspace[1]} API key",
            region_id="eu-west-1",
            tags={"team": workspace[1].lower(), "env": rng.choice(["prod", "dev"])},
        )


def demo_events() -> list[dict[str, Any]]:
    """The curated November of `examples/events.jsonl`, in file order."""
    rng = random.Random(20261101)
    nov = datetime(2026, 11, 1, tzinfo=UTC)
    events: list[dict[str, Any]] = []
    named = {
        "billing_account_name": "Acme Robotics",
        "billing_account_type": "Enterprise",
    }
    events.append(
        purchase(
            "p-acme-1",
            nov + timedelta(hours=9),
            "acct-acme",
            "500000",
            "4500.00",
            "USD",
            "INV-2026-11-0001",
            nov + timedelta(days=365),
            **named,
            sub_account_id="ws-research",
            sub_account_name="Research",
            sub_account_type="Workspace",
        )
    )
    events.append(
        purchase(
            "p-northwind-1",
            nov + timedelta(hours=8),
            "acct-northwind",
            "300000",
            "2600.00",
            "EUR",
            "INV-2026-11-0002",
            nov + timedelta(days=19),
            billing_account_name="Northwind Traders GmbH",
            tax_amount="494.00",
            tax_description="VAT 19 % (DE)",
            billing_account_type="Enterprise",
        )
    )
    events.append(
        purchase(
            "p-northwind-2",
            nov + timedelta(hours=8, minutes=5),
            "acct-northwind",
            "1000000",
            "9000.00",
            "EUR",
            "INV-2026-11-0003",
            nov + timedelta(days=240),
        )
    )
    events.append(
        purchase(
            "p-initech-1",
            nov + timedelta(hours=10),
            "acct-initech",
            "50000",
            "500.00",
            "USD",
            "INV-2026-11-0004",
            billing_account_name="Initech",
            billing_account_type="Startup",
        )
    )
    events.append(
        purchase(
            "p-globex-1",
            nov + timedelta(hours=11),
            "acct-globex",
            "20000",
            "200.00",
            "USD",
            "INV-2026-11-0005",
            billing_account_name="Globex Corporation",
            billing_account_type="Enterprise",
        )
    )
    events.append(
        purchase(
            "p-umbrella-1",
            nov + timedelta(hours=12),
            "acct-umbrella",
            "100000",
            "1000.00",
            "USD",
            "INV-2026-11-0006",
            billing_account_name="Umbrella Labs",
            billing_account_type="Startup",
        )
    )
    for day_index in range(0, 28, 3):
        day = nov + timedelta(days=day_index)
        events += _meter_day(
            rng, "acct-acme", day, 6, "u-acme", ("ws-research", "Research")
        )
        events += _meter_day(
            rng, "acct-northwind", day, 4, "u-northwind", ("ws-support", "Support")
        )
        events += _meter_day(rng, "acct-globex", day, 3, "u-globex", ("ws-app", "App"))
        events += _meter_day(
            rng, "acct-umbrella", day, 2, "u-umbrella", ("ws-lab", "Lab")
        )
    # Acme tops up, then one large batch job draws across both of its lots.
    events.append(
        purchase(
            "p-acme-2",
            nov + timedelta(days=15, hours=9),
            "acct-acme",
            "200000",
            "2000.00",
            "USD",
            "INV-2026-11-0007",
            nov + timedelta(days=365),
        )
    )
    events.append(
        usage(
            "u-acme-batch",
            nov + timedelta(days=16, hours=2),
            "acct-acme",
            "llm-large-output",
            340_000_000,
            resource_id="batch-2026-11-16",
            resource_name="Nightly batch",
            region_id="us-east-1",
            tags={"team": "research", "env": "prod"},
        )
    )
    # Initech burns through its credits: a deficit, then a top-up settles it.
    for index in range(4):
        events.append(
            usage(
                f"u-initech-{index}",
                nov + timedelta(days=5 + index, hours=14),
                "acct-initech",
                "image-1024-hd",
                2_000,
                resource_id="key-initech",
                resource_name="Initech API key",
            )
        )
    topup = nov + timedelta(days=20, hours=10)
    events.append(
        usage(
            "u-initech-after-topup",
            topup + timedelta(seconds=1),
            "acct-initech",
            "llm-small-output",
            120_000,
            resource_id="key-initech",
            resource_name="Initech API key",
        )
    )
    events.append(
        purchase(
            "p-initech-2",
            topup,
            "acct-initech",
            "100000",
            "1000.00",
            "USD",
            "INV-2026-11-0008",
        )
    )
    # Globex exceeds its credits under its overage agreement.
    events.append(
        usage(
            "u-globex-burst",
            nov + timedelta(days=25, hours=16),
            "acct-globex",
            "image-1024-hd",
            3_000,
            resource_id="key-app",
            resource_name="App API key",
        )
    )
    # Umbrella returns part of its purchase.
    events.append(
        cloud_event(
            "r-umbrella-1",
            "credits.refunded",
            nov + timedelta(days=26, hours=9),
            "acct-umbrella",
            {
                "purchase_id": "p-umbrella-1",
                "amount": "400.00",
                "quantity": "40000",
                "invoice_id": "CN-2026-11-0001",
            },
        )
    )
    # Acme had bought credits in October already.
    events.append(
        purchase(
            "p-acme-0",
            datetime(2026, 10, 1, 9, tzinfo=UTC),
            "acct-acme",
            "50000",
            "500.00",
            "USD",
            "INV-2026-10-0001",
            datetime(2027, 10, 1, tzinfo=UTC),
            **named,
        )
    )
    # A meter that reported late: October usage recorded on 10 November, after
    # October's invoice was issued. `recordedat` stands for the record's Kafka
    # timestamp (see service.replay); the row is a correction in November.
    late = usage(
        "u-acme-late-october",
        datetime(2026, 10, 30, 18, tzinfo=UTC),
        "acct-acme",
        "llm-large-input",
        12_000,
        resource_id="key-ws-research",
        resource_name="Research API key",
    )
    late["recordedat"] = "2026-11-10T08:00:00Z"
    events.append(late)
    events.sort(key=lambda event: event.get("recordedat", event["time"]))
    # The top-up race: the usage is written before the purchase it needs.
    race = next(i for i, e in enumerate(events) if e["id"] == "p-initech-2")
    events.insert(race + 2, events.pop(race))
    duplicate = next(e for e in events if e["id"] == "u-acme-1104-001")
    events.append(json.loads(json.dumps(duplicate)))
    conflict = json.loads(json.dumps(duplicate))
    conflict["data"]["quantity"] = "1"
    events.append(conflict)
    return events


BAD_LINES = (
    b'{"specversion": "1.0", "id": "u-truncated", "source": "//meter',
    json.dumps(
        cloud_event(
            "u-unknown-sku",
            "usage.recorded",
            datetime(2026, 11, 21, 12, tzinfo=UTC),
            "acct-acme",
            {"sku_id": "gpu-h100-hour", "quantity": "2"},
        )
    ).encode(),
)


def write_demo_events(path: str) -> int:
    lines = [
        json.dumps(event, separators=(",", ":")).encode() for event in demo_events()
    ]
    lines += list(BAD_LINES)
    with open(path, "wb") as handle:
        for line in lines:
            handle.write(line + b"\n")
    return len(lines)


def synthetic_events(
    accounts: int,
    usage_events: int,
    *,
    seed: int = 1,
    start: datetime | None = None,
    span: timedelta = timedelta(days=1),
    credits_per_account: int = 10_000_000,
) -> Iterator[dict[str, Any]]:
    """One purchase per account, then usage spread over `span`, in time order."""
    rng = random.Random(seed)
    begin = start or datetime(2026, 11, 1, tzinfo=UTC)
    for index in range(accounts):
        yield purchase(
            f"p-{seed}-{index}",
            begin,
            f"acct-{index:06d}",
            str(credits_per_account),
            str(credits_per_account // 100),
            "USD",
            f"INV-{seed}-{index:06d}",
            begin + timedelta(days=365),
        )
    step = span / max(usage_events, 1)
    for number in range(usage_events):
        sku, low, high = rng.choice(LLM_SKUS + LLM_SKUS + IMAGE_SKUS)
        account = rng.randrange(accounts)
        yield usage(
            f"u-{seed}-{number}",
            begin + timedelta(seconds=1) + step * number,
            f"acct-{account:06d}",
            sku,
            rng.randint(low, high),
            resource_id=f"key-{account}",
            region_id="eu-west-1",
            tags={"env": "prod"},
        )
