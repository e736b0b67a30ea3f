"""The bytes that go out: FOCUS rows, alerts and dead letters as Kafka records.

A FOCUS row is one JSON object, FOCUS columns in spec order and then the `x_`
columns. Decimals are JSON *strings* of plain decimal text ("0.000123"), so no
subscriber's JSON parser turns a cost into a float; JSON columns (Tags,
SkuPriceDetails) are nested objects. The key is the billing account id, so a
subscriber sees one account's rows in ledger order.

An alert is a structured-mode CloudEvent (see `ledger.alerts`), keyed by
billing account like the rows.

A dead letter keeps the original value and headers untouched, so it can be
re-submitted as it was, and says what happened in `dlq.*` headers: reason
code, detail, source topic, partition, offset and timestamp, event id and
source when known. A value larger than `dead_letter_value_bytes_max` is kept
only as its first bytes; its full size and SHA-256 are in the headers.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import orjson

from ledger.alerts import Alert
from ledger.charges import Charge, focus_row, row_text
from ledger.events import Rejection
from ledger.ordering import Position
from service.store import OutboxRecord

HEADER_CHARGE_ID = "x-charge-id"
HEADER_REASON = "dlq.reason"
HEADER_DETAIL = "dlq.detail"
HEADER_TOPIC = "dlq.topic"
HEADER_PARTITION = "dlq.partition"
HEADER_OFFSET = "dlq.offset"
HEADER_TIMESTAMP = "dlq.timestamp"
HEADER_EVENT_ID = "dlq.event_id"
HEADER_SOURCE = "dlq.source"
HEADER_SIZE = "dlq.value_size"
HEADER_SHA256 = "dlq.value_sha256"
HEADER_TRUNCATED = "dlq.value_truncated"
DLQ_PREFIX = "dlq."


def rendered(charge: Charge) -> dict[str, Any]:
    """The row's text, rendered once per row for the outbox and the journal."""
    return row_text(focus_row(charge))


def charge_record(topic: str, charge: Charge, row: dict[str, Any]) -> OutboxRecord:
    """The Kafka record of one row; `row` is `rendered(charge)`."""
    return OutboxRecord(
        topic=topic,
        key=charge.billing_account_id.encode(),
        value=orjson.dumps(row),
        headers=[
            ("content-type", b"application/json"),
            (HEADER_CHARGE_ID, charge.charge_id.encode()),
        ],
    )


def alert_record(topic: str, source: str, alert: Alert) -> OutboxRecord:
    """An alert as a structured-mode CloudEvent, keyed by billing account."""
    event = {
        "specversion": "1.0",
        "id": alert.alert_id,
        "source": source,
        "type": str(alert.kind),
        "time": alert.occurred_at.isoformat().replace("+00:00", "Z"),
        "subject": alert.account_id,
        "datacontenttype": "application/json",
        "data": alert.data,
    }
    return OutboxRecord(
        topic=topic,
        key=alert.account_id.encode(),
        value=orjson.dumps(event),
        headers=[("content-type", b"application/cloudevents+json")],
    )


def dead_letter_record(
    topic: str,
    rejection: Rejection,
    position: Position,
    value: bytes | None,
    key: bytes | None,
    headers: Sequence[tuple[str, bytes]],
    timestamp_ms: int | None,
    value_bytes_max: int,
) -> OutboxRecord:
    original = value or b""
    kept = original[:value_bytes_max]
    context: list[tuple[str, bytes]] = [
        (HEADER_REASON, str(rejection.reason).encode()),
        (HEADER_DETAIL, rejection.detail[:1000].encode()),
        (HEADER_TOPIC, position.topic.encode()),
        (HEADER_PARTITION, str(position.partition).encode()),
        (HEADER_OFFSET, str(position.offset).encode()),
        (HEADER_SIZE, str(len(original)).encode()),
        (HEADER_SHA256, hashlib.sha256(original).hexdigest().encode()),
    ]
    if timestamp_ms is not None:
        context.append((HEADER_TIMESTAMP, str(timestamp_ms).encode()))
    if rejection.event_id:
        context.append((HEADER_EVENT_ID, rejection.event_id.encode()))
    if rejection.source:
        context.append((HEADER_SOURCE, rejection.source.encode()))
    if len(kept) < len(original):
        context.append((HEADER_TRUNCATED, b"true"))
    kept_headers = [
        (name, raw) for name, raw in headers if not name.startswith(DLQ_PREFIX)
    ]
    return OutboxRecord(
        topic=topic, key=key, value=kept, headers=kept_headers + context
    )
