"""A corpus of hostile input, and the reason each record must be refused for.

Every case is one Kafka record as an attacker, a broken meter or a confused
billing system might send it. Each must become exactly one dead letter with
the stated reason, change nothing else, and leave its partition moving. Some
cases need an account with history; `SETUP` gives them one.

`python -m tests.hostile` runs the corpus through the bookkeeper on an
embedded store and prints the table of `docs/hostile-input.md` (`--write`
rewrites it there); a test keeps that page equal to what the code does.
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from ledger.events import RawRecord
from ledger.ordering import Position
from service.bookkeeper import Bookkeeper, InputRecord
from service.database import create_embedded_schema, create_engine
from service.docs import regenerate
from service.settings import Settings
from tests.factories import purchase_doc, refund_doc, spec_prices, usage_doc

ACCOUNT = "acct-hostile"
SQL = "x'; DROP TABLE lots; --"
# Records are written when their events happen, as a prompt meter writes them.
WRITTEN = datetime(2025, 4, 2, tzinfo=UTC)


@dataclass(frozen=True)
class Case:
    name: str
    topic: str  # "purchases" or "usage"
    value: bytes | None
    reason: str
    key: bytes | None = ACCOUNT.encode()
    headers: tuple[tuple[str, bytes], ...] = ()
    written: datetime = WRITTEN


def _json(document: dict[str, Any]) -> bytes:
    return json.dumps(document).encode()


def _usage(**changes: Any) -> dict[str, Any]:
    document = usage_doc("h-usage", "2025-04-02T00:00:00Z", ACCOUNT, "SKU-762343", "1")
    for path, value in changes.items():
        target = document
        *parents, leaf = path.split("__")
        for name in parents:
            target = target[name]
        if value is KeyError:
            target.pop(leaf, None)
        else:
            target[leaf] = value
    return document


def _raw_usage(quantity_json: str) -> bytes:
    return _json(_usage()).replace(
        b'"quantity": "1"', f'"quantity": {quantity_json}'.encode()
    )


SETUP = [
    (
        "purchases",
        purchase_doc("h-lot", "2025-04-01T00:00:00Z", ACCOUNT, "100", "100.00"),
    ),
]
FOLLOWER = (
    "usage",
    usage_doc("h-after", "2025-04-03T00:00:00Z", ACCOUNT, "SKU-762343", "2"),
)

CASES = [
    Case("truncated JSON", "usage", _json(_usage())[:40], "not_json"),
    Case("a bare JSON string", "usage", b'"usage.recorded"', "not_cloudevent"),
    Case("a JSON array", "usage", b"[1, 2, 3]", "not_cloudevent"),
    Case("bytes that are not UTF-8", "usage", b"\xff\xfe\x00\x01", "not_json"),
    Case(
        "a CloudEvent without id",
        "usage",
        _json(_usage(id=KeyError)),
        "invalid_attribute",
    ),
    Case(
        "specversion 0.3",
        "usage",
        _json(_usage(specversion="0.3")),
        "unsupported_specversion",
    ),
    Case("no data", "usage", _json(_usage(data=KeyError)), "invalid_attribute"),
    Case(
        "an unknown event type",
        "usage",
        _json(_usage(type="usage.deleted")),
        "unknown_type",
    ),
    Case(
        "a usage event on the purchases topic",
        "purchases",
        _json(_usage()),
        "wrong_topic",
    ),
    Case(
        "a Kafka key that is not the subject",
        "usage",
        _json(_usage()),
        "key_mismatch",
        key=b"someone-else",
    ),
    Case("NaN as quantity", "usage", _raw_usage("NaN"), "not_json"),
    Case("Infinity as quantity", "usage", _raw_usage("Infinity"), "not_json"),
    Case("1e309 as quantity", "usage", _raw_usage("1e309"), "invalid_data"),
    Case(
        "a 60-digit quantity",
        "usage",
        _json(_usage(data__quantity="9" * 60)),
        "invalid_data",
    ),
    Case(
        "a negative quantity",
        "usage",
        _json(_usage(data__quantity="-5")),
        "invalid_data",
    ),
    Case("a zero quantity", "usage", _json(_usage(data__quantity="0")), "invalid_data"),
    Case(
        "a quantity with 40 decimals",
        "usage",
        _json(_usage(data__quantity="0." + "3" * 40)),
        "invalid_data",
    ),
    Case(
        "a boolean quantity",
        "usage",
        _json(_usage(data__quantity=True)),
        "invalid_data",
    ),
    Case(
        "a quantity that is an object",
        "usage",
        _json(_usage(data__quantity={"value": 1})),
        "invalid_data",
    ),
    Case(
        "tags that are not flat",
        "usage",
        _json(_usage(data__tags={"team": {"name": "x"}})),
        "invalid_data",
    ),
    Case(
        "an unknown field in data",
        "usage",
        _json(_usage(data__expiresAt="soon")),
        "invalid_data",
    ),
    Case(
        "a subject that is a number",
        "usage",
        _json(_usage(subject=42)),
        "invalid_attribute",
        key=b"42",
    ),
    Case(
        "a 5 MB value",
        "usage",
        b'{"pad": "' + b"x" * (5 * 1024 * 1024) + b'"}',
        "too_large",
    ),
    Case(
        "control characters in the id",
        "usage",
        _json(_usage(id="h\x00\x1b[2Jid")),
        "invalid_attribute",
    ),
    Case(
        "a long unicode id",
        "usage",
        _json(_usage(id="\U0001f4b8" * 300)),
        "invalid_attribute",
    ),
    Case(
        "SQL in every text field",
        "usage",
        _json(
            _usage(
                id=SQL,
                source=SQL,
                subject=SQL,
                data__sku_id=SQL,
                data__resource_id=SQL,
                data__resource_name=SQL,
            )
        ),
        "invalid_attribute",
        key=SQL.encode(),
    ),
    Case(
        "a time in 1970",
        "usage",
        _json(_usage(time="1970-01-01T00:00:00Z")),
        "time_out_of_range",
    ),
    Case(
        "a time ten years ahead",
        "usage",
        _json(_usage(time=(WRITTEN + timedelta(days=3650)).isoformat())),
        "time_out_of_range",
    ),
    Case(
        "an event recorded five months after it happened",
        "usage",
        _json(_usage(id="h-late")),
        "later_than_lateness_max",
        written=datetime(2025, 9, 2, tzinfo=UTC),
    ),
    Case(
        "a time without a zone",
        "usage",
        _json(_usage(time="2025-04-02T00:00:00")),
        "invalid_attribute",
    ),
    Case(
        "an unknown SKU",
        "usage",
        _json(_usage(data__sku_id="gpu-h100-hour")),
        "unknown_sku",
    ),
    Case(
        "an unknown virtual currency",
        "purchases",
        _json(
            purchase_doc(
                "h-p1", "2025-04-02T00:00:00Z", ACCOUNT, "1", "1", currency="ZZZ"
            )
        ),
        "unknown_currency",
    ),
    Case(
        "a billing currency that is not ISO 4217",
        "purchases",
        _json(
            purchase_doc(
                "h-p2",
                "2025-04-02T00:00:00Z",
                ACCOUNT,
                "1",
                "1",
                billing_currency="BTC",
            )
        ),
        "invalid_data",
    ),
    Case(
        "a billing currency other than the account's",
        "purchases",
        _json(
            purchase_doc(
                "h-p3",
                "2025-04-02T00:00:00Z",
                ACCOUNT,
                "1",
                "1",
                billing_currency="EUR",
            )
        ),
        "billing_currency_mismatch",
    ),
    Case(
        "credits that expire before they are bought",
        "purchases",
        _json(
            purchase_doc(
                "h-p4",
                "2025-04-02T00:00:00Z",
                ACCOUNT,
                "1",
                "1",
                expires_at="2025-04-01T00:00:00Z",
            )
        ),
        "invalid_data",
    ),
    Case(
        "a refund larger than what remains",
        "purchases",
        _json(
            refund_doc(
                "h-r1", "2025-04-02T00:00:00Z", ACCOUNT, "h-lot", "1.00", quantity="101"
            )
        ),
        "refund_exceeds_lot",
    ),
    Case(
        "a refund of more money than was paid",
        "purchases",
        _json(refund_doc("h-r2", "2025-04-02T00:00:00Z", ACCOUNT, "h-lot", "100.01")),
        "refund_exceeds_lot",
    ),
    Case(
        "a refund of an unknown purchase",
        "purchases",
        _json(refund_doc("h-r3", "2025-04-02T00:00:00Z", ACCOUNT, "h-nope", "1.00")),
        "unknown_purchase",
    ),
    Case(
        "binary-mode headers that disagree with the body",
        "usage",
        _json(_usage()),
        "headers_disagree",
        headers=(("ce_id", b"another-id"),),
    ),
    Case(
        "binary mode without ce_specversion",
        "usage",
        b'{"sku_id": "SKU-762343", "quantity": "1"}',
        "not_cloudevent",
        headers=(("ce_id", b"h-bin"), ("ce_type", b"usage.recorded")),
    ),
    Case("an empty Kafka value", "usage", b"", "empty_value"),
    Case("a tombstone (null value)", "usage", None, "empty_value"),
]


def topics(settings: Settings) -> dict[str, str]:
    return {"purchases": settings.topic_purchases, "usage": settings.topic_usage}


def records(settings: Settings) -> list[InputRecord]:
    """Setup, every case, then a valid event: in partition order, as produced."""
    names = topics(settings)
    offsets = {"purchases": 0, "usage": 0}
    out: list[InputRecord] = []

    def add(
        kind: str,
        value: bytes | None,
        key: bytes | None,
        headers: tuple[tuple[str, bytes], ...] = (),
        written: datetime = WRITTEN,
    ) -> None:
        position = Position(names[kind], 0, offsets[kind])
        offsets[kind] += 1
        # Like Kafka, every record carries the time it was written.
        written_ms = int(written.timestamp() * 1000)
        out.append(InputRecord(position, RawRecord(value, key, headers, written_ms)))

    for kind, document in SETUP:
        add(kind, _json(document), ACCOUNT.encode())
    for case in CASES:
        add(case.topic, case.value, case.key, case.headers, case.written)
    add(FOLLOWER[0], _json(FOLLOWER[1]), ACCOUNT.encode())
    return out


async def outcomes(settings: Settings) -> list[str]:
    """Run the corpus on an embedded store; the reason per case, in order."""
    with tempfile.TemporaryDirectory() as scratch:
        engine = create_engine(settings, f"sqlite+aiosqlite:///{scratch}/h.db")
        await create_embedded_schema(engine)
        bookkeeper = Bookkeeper(engine, spec_prices(), settings)
        await bookkeeper.assign([(t, 0) for t in topics(settings).values()])
        found: list[str] = []
        for record in records(settings):
            report = await bookkeeper.book([record], flush=True)
            found.append(
                next(iter(report.reasons), "applied" if report.applied else "-")
            )
        await engine.dispose()
    return found[len(SETUP) : -1]


def table(results: list[str]) -> str:
    lines = ["| # | input | dead-letter reason |", "|---|-------|--------------------|"]
    for number, (case, result) in enumerate(zip(CASES, results, strict=True), 1):
        lines.append(f"| {number} | {case.name} | `{result}` |")
    return "\n".join(lines) + "\n"


def current_table() -> str:
    """The table of what the code does now, for docs/hostile-input.md."""
    return table(asyncio.run(outcomes(Settings(ordering_hold_max_ms=0))))


if __name__ == "__main__":
    if sys.argv[1:] == ["--write"]:
        regenerate({"hostile": current_table})
    else:
        sys.stdout.write(current_table())
