"""Input events: CloudEvents 1.0 carrying credit purchases, refunds and usage.

The contract (`docs/events.md`, JSON Schemas in `docs/schemas/`) is defined by
the models in this module. Decoding is pure: bytes, headers and the price list
in, an `Event` or a `Rejection` out. A rejection is data with a stable reason
code, so one bad record becomes one dead letter and never stalls a partition.

Rules that are easy to get wrong, held here in one place:

- Numbers are parsed from JSON as `Decimal` (never `float`), and refused when
  they are NaN, infinite, too large or too finely divided (see `ledger.money`).
- `id` + `source` identify an event. Its *content digest* covers what the
  ledger uses (type, time, subject, data, with decimals normalized), so a
  re-sent copy is recognised as a duplicate, and a different event reusing the
  same id as a conflict.
- `time` must carry a UTC offset. It may not lie before `TIME_MIN` nor more than
  the allowed skew after the record's own Kafka timestamp: a bound taken from
  the log, not the wall clock, so that replaying the log decides the same way.
- The Kafka key must equal `subject` (the billing account), because the ledger
  relies on one account's events sharing one partition number in both topics.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from enum import IntEnum, StrEnum
from typing import Annotated, Any, Literal

import orjson
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    WithJsonSchema,
)

from ledger.currencies import is_iso_4217
from ledger.money import COST_PLACES, QUANTITY_PLACES, DecimalRangeError, parse_decimal
from ledger.money import text as decimal_text
from ledger.prices import PriceList

EVENT_BYTES_MAX = 256 * 1024
TIME_MIN = datetime(2000, 1, 1, tzinfo=UTC)
TIME_FUTURE_SKEW_MAX = timedelta(hours=24)
TAGS_MAX = 64

# Identifiers are printable ASCII without spaces or quotes: they become keys,
# file names and log values, and must read the same in every one of them.
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:/@+=#~-]{0,127}$"
SOURCE_PATTERN = r"^[A-Za-z0-9/][A-Za-z0-9._~:/?#@!$&()*+,;=%-]{0,255}$"
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


class EventType(StrEnum):
    PURCHASED = "credits.purchased"
    REFUNDED = "credits.refunded"
    USAGE = "usage.recorded"


class Rank(IntEnum):
    """Order of events that happen at the same instant: a purchase first, so a
    usage at the very time of a top-up can draw from it; then refunds."""

    PURCHASE = 0
    REFUND = 1
    USAGE = 2


RANKS = {
    EventType.PURCHASED: Rank.PURCHASE,
    EventType.REFUNDED: Rank.REFUND,
    EventType.USAGE: Rank.USAGE,
}


class Reason(StrEnum):
    """Stable reason codes of a dead letter; the detail text says more."""

    EMPTY = "empty_value"
    TOO_LARGE = "too_large"
    NOT_JSON = "not_json"
    NOT_CLOUDEVENT = "not_cloudevent"
    SPECVERSION = "unsupported_specversion"
    HEADERS_DISAGREE = "headers_disagree"
    INVALID_ATTRIBUTE = "invalid_attribute"
    UNKNOWN_TYPE = "unknown_type"
    WRONG_TOPIC = "wrong_topic"
    KEY_MISMATCH = "key_mismatch"
    INVALID_DATA = "invalid_data"
    TIME_OUT_OF_RANGE = "time_out_of_range"
    UNKNOWN_SKU = "unknown_sku"
    UNKNOWN_CURRENCY = "unknown_currency"
    CURRENCY_MISMATCH = "billing_currency_mismatch"
    UNKNOWN_PURCHASE = "unknown_purchase"
    REFUND_EXCEEDS = "refund_exceeds_lot"
    CONFLICT = "id_conflict"
    TOO_LATE = "later_than_lateness_max"
    PARTITION_MISMATCH = "partition_mismatch"


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why one input record cannot be applied. It is dead-lettered, not raised."""

    reason: Reason
    detail: str
    event_id: str | None = None
    source: str | None = None
    account_id: str | None = None


def _no_control(value: str) -> str:
    if _CONTROL.search(value):
        raise ValueError("must not contain control characters")
    return value


def _decimal(places: int, *, positive: bool) -> Any:
    def check(value: object) -> Decimal:
        try:
            number = parse_decimal(value, places_max=places, what="value")
        except DecimalRangeError as error:
            raise ValueError(str(error).removeprefix("value ")) from None
        if positive and number <= 0:
            raise ValueError("must be greater than zero")
        if not positive and number < 0:
            raise ValueError("must not be negative")
        return number

    return BeforeValidator(check)


_DECIMAL_SCHEMA = WithJsonSchema(
    {
        "type": "string",
        "pattern": r"^-?[0-9]+(\.[0-9]+)?$",
        "description": "A decimal as a string (a JSON number is accepted too).",
    }
)

Identifier = Annotated[str, Field(pattern=ID_PATTERN)]
Text = Annotated[str, Field(min_length=1, max_length=256), AfterValidator(_no_control)]
Quantity = Annotated[Decimal, _decimal(QUANTITY_PLACES, positive=True), _DECIMAL_SCHEMA]
Amount = Annotated[Decimal, _decimal(COST_PLACES, positive=False), _DECIMAL_SCHEMA]
VirtualCode = Annotated[str, Field(pattern=r"^[A-Z]{3}$")]


def _iso_4217(value: str) -> str:
    if not is_iso_4217(value):
        raise ValueError(f"{value[:8]!r} is not an ISO 4217 currency code")
    return value


NationalCode = Annotated[str, Field(pattern=r"^[A-Z]{3}$"), AfterValidator(_iso_4217)]


def _utc_time(value: object) -> datetime:
    if not isinstance(value, str) or len(value) > 40:
        raise ValueError("must be an RFC 3339 timestamp string")
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError("must be an RFC 3339 timestamp") from None
    if moment.tzinfo is None or "T" not in value.upper():
        raise ValueError("must be an RFC 3339 timestamp with a UTC offset")
    return moment.astimezone(UTC)


Timestamp = Annotated[
    datetime,
    BeforeValidator(_utc_time),
    WithJsonSchema({"type": "string", "format": "date-time"}),
]


def _flat_tags(value: dict[str, str]) -> dict[str, str]:
    if len(value) > TAGS_MAX:
        raise ValueError(f"at most {TAGS_MAX} tags")
    for key, item in value.items():
        if not key or len(key) > 128 or len(item) > 256:
            raise ValueError("tag keys are 1-128 and values 0-256 characters")
        _no_control(key)
        _no_control(item)
    return value


class _Data(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=False)


class PurchaseData(_Data):
    """`data` of `credits.purchased`: a lot of credits bought for money.

    `amount` is the price of the credits; `tax_amount`, when the invoice
    carries tax, is billed on the same invoice as a Tax row.
    """

    currency: VirtualCode
    quantity: Quantity
    amount: Amount
    billing_currency: NationalCode
    invoice_id: Identifier
    expires_at: Timestamp | None = None
    billing_account_name: Text | None = None
    billing_account_type: Text | None = None
    sub_account_id: Identifier | None = None
    sub_account_name: Text | None = None
    sub_account_type: Text | None = None
    tax_amount: Amount | None = None
    tax_description: Text | None = None


class RefundData(_Data):
    """`data` of `credits.refunded`: money returned against one purchase.

    `quantity` is the credits revoked; when absent, all that remains of the lot.
    `tax_amount` is the tax returned with it, if any.
    """

    purchase_id: Identifier
    amount: Amount
    quantity: (
        Annotated[Decimal, _decimal(QUANTITY_PLACES, positive=False), _DECIMAL_SCHEMA]
        | None
    ) = None
    invoice_id: Identifier
    tax_amount: Amount | None = None


class UsageData(_Data):
    """`data` of `usage.recorded`: what a meter measured for one SKU.

    `quantity` is in the SKU's consumed unit. `credits`, when present, is the
    meter's own price in the SKU's virtual currency and replaces the price list.
    """

    sku_id: Identifier
    quantity: Quantity
    credits: Amount | None = None
    sub_account_id: Identifier | None = None
    sub_account_name: Text | None = None
    sub_account_type: Text | None = None
    resource_id: Text | None = None
    resource_name: Text | None = None
    region_id: Identifier | None = None
    region_name: Text | None = None
    tags: Annotated[dict[str, str], AfterValidator(_flat_tags)] = Field(
        default_factory=dict
    )


class CloudEvent(BaseModel):
    """The CloudEvents 1.0 envelope, in structured JSON mode."""

    model_config = ConfigDict(extra="allow", frozen=True)

    specversion: Literal["1.0"]
    id: Identifier
    source: Annotated[str, Field(pattern=SOURCE_PATTERN)]
    type: EventType
    time: Timestamp
    subject: Identifier
    datacontenttype: Literal["application/json"] | None = None
    data: dict[str, Any]


DATA_MODELS: dict[EventType, type[_Data]] = {
    EventType.PURCHASED: PurchaseData,
    EventType.REFUNDED: RefundData,
    EventType.USAGE: UsageData,
}

EventData = PurchaseData | RefundData | UsageData


@dataclass(frozen=True, slots=True)
class Event:
    """A decoded, checked input event."""

    id: str
    source: str
    type: EventType
    time: datetime
    account_id: str
    data: EventData
    digest: str
    recorded_at: datetime | None = None
    first_recorded_at: datetime | None = None

    @property
    def order_key(self) -> tuple[datetime, int, str, str]:
        """The total order of application: time, then rank, then identity."""
        return (self.time, RANKS[self.type], self.source, self.id)


FIRST_RECORDED_HEADER = "x-first-recorded-ms"


@dataclass(frozen=True, slots=True)
class RawRecord:
    """One input record as it came off Kafka (or a line of a replay file)."""

    value: bytes | None
    key: bytes | None = None
    headers: Sequence[tuple[str, bytes]] = ()
    timestamp_ms: int | None = None


TOPIC_TYPES = {
    "purchases": frozenset({EventType.PURCHASED, EventType.REFUNDED}),
    "usage": frozenset({EventType.USAGE}),
}


def decode(
    record: RawRecord,
    prices: PriceList,
    *,
    accepts: frozenset[EventType] | None = None,
    event_bytes_max: int = EVENT_BYTES_MAX,
    future_skew_max: timedelta = TIME_FUTURE_SKEW_MAX,
) -> Event | Rejection:
    """Decode one record into an event, or say precisely why not.

    `accepts` limits the event types a topic may carry (a usage event on the
    purchases topic is rejected, not silently applied).
    """
    value = record.value
    if not value:
        return Rejection(Reason.EMPTY, "the record has no value")
    if len(value) > event_bytes_max:
        return Rejection(
            Reason.TOO_LARGE,
            f"the value is {len(value)} bytes, more than {event_bytes_max}",
        )
    headers = {name.lower(): raw for name, raw in record.headers}
    try:
        document = _parse_json(value)
    except ValueError as error:
        return Rejection(Reason.NOT_JSON, f"the value is not valid JSON: {error}")
    envelope = _envelope(document, headers)
    if isinstance(envelope, Rejection):
        return envelope
    return _check(envelope, record, prices, accepts, future_skew_max)


def _parse_json(value: bytes) -> Any:
    """Parse without ever making a float of a number.

    orjson parses the common case (numbers sent as strings, as the contract
    asks) several times faster; a document it rejects or in which it made a
    float (a JSON number with a point or exponent, or an integer too large
    for 64 bits) is parsed again by the standard library, with decimals as
    `Decimal`, which also words the error of a document that is not JSON.
    """
    try:
        document = orjson.loads(value)
    except orjson.JSONDecodeError:
        return _parse_exactly(value)
    return _parse_exactly(value) if _holds_float(document) else document


def _parse_exactly(value: bytes) -> Any:
    def refuse(constant: str) -> Any:
        raise ValueError(f"{constant} is not a number JSON allows")

    return json.loads(value.decode("utf-8"), parse_float=Decimal, parse_constant=refuse)


def _holds_float(value: Any) -> bool:
    if isinstance(value, float):
        return True
    if isinstance(value, dict):
        return any(_holds_float(item) for item in value.values())
    if isinstance(value, list):
        return any(_holds_float(item) for item in value)
    return False


_BINARY_ATTRIBUTES = ("specversion", "id", "source", "type", "time", "subject")


def _envelope(
    document: Any, headers: Mapping[str, bytes]
) -> dict[str, Any] | Rejection:
    """Build the attribute map from structured or binary content mode."""
    binary = {
        name: headers[f"ce_{name}"].decode("utf-8", errors="replace")
        for name in _BINARY_ATTRIBUTES
        if f"ce_{name}" in headers
    }
    structured = isinstance(document, dict) and "specversion" in document
    if binary and not structured:
        if "ce_specversion" not in headers:
            return Rejection(Reason.NOT_CLOUDEVENT, "ce_ headers lack ce_specversion")
        if not isinstance(document, dict):
            return Rejection(
                Reason.INVALID_DATA, "binary-mode data must be a JSON object"
            )
        return {**binary, "data": document}
    if not isinstance(document, dict):
        return Rejection(
            Reason.NOT_CLOUDEVENT,
            f"the value is a JSON {type(document).__name__}, not a CloudEvent object",
        )
    if not structured:
        return Rejection(Reason.NOT_CLOUDEVENT, "the value has no specversion")
    for name, header_value in binary.items():
        if str(document.get(name)) != header_value:
            return Rejection(
                Reason.HEADERS_DISAGREE,
                f"header ce_{name} disagrees with the structured event's {name}",
                event_id=_safe(document.get("id")),
            )
    return document


def _check(
    attributes: dict[str, Any],
    record: RawRecord,
    prices: PriceList,
    accepts: frozenset[EventType] | None,
    future_skew_max: timedelta,
) -> Event | Rejection:
    event_id = _safe(attributes.get("id"))
    source = _safe(attributes.get("source"))
    account_id = _safe(attributes.get("subject"))
    if attributes.get("specversion") != "1.0":
        return Rejection(
            Reason.SPECVERSION,
            f"specversion {_safe(attributes.get('specversion'))!r} is not 1.0",
            event_id,
            source,
        )
    try:
        envelope = CloudEvent.model_validate(attributes)
    except ValidationError as error:
        reason = Reason.INVALID_ATTRIBUTE
        if _first_location(error) == "type":
            reason = Reason.UNKNOWN_TYPE
        return Rejection(reason, _describe(error), event_id, source, account_id)
    if accepts is not None and envelope.type not in accepts:
        return Rejection(
            Reason.WRONG_TOPIC,
            f"type {envelope.type} does not belong on this topic",
            event_id,
            source,
            account_id,
        )
    if record.key is not None and record.key != envelope.subject.encode():
        return Rejection(
            Reason.KEY_MISMATCH,
            "the Kafka key must be the billing account id given as subject",
            event_id,
            source,
            account_id,
        )
    try:
        data = DATA_MODELS[envelope.type].model_validate(envelope.data)
    except ValidationError as error:
        return Rejection(
            Reason.INVALID_DATA, _describe(error, "data"), event_id, source, account_id
        )
    time_problem = _time_problem(envelope.time, record.timestamp_ms, future_skew_max)
    if time_problem:
        return Rejection(
            Reason.TIME_OUT_OF_RANGE, time_problem, event_id, source, account_id
        )
    catalogue_problem = _catalogue_problem(data, prices)
    if catalogue_problem:
        return Rejection(
            catalogue_problem[0], catalogue_problem[1], event_id, source, account_id
        )
    recorded_at = (
        datetime.fromtimestamp(record.timestamp_ms / 1000, UTC)
        if record.timestamp_ms
        else None
    )
    first_recorded_at = _first_recorded(record, recorded_at)
    if isinstance(first_recorded_at, str):
        return Rejection(
            Reason.INVALID_ATTRIBUTE, first_recorded_at, event_id, source, account_id
        )
    return Event(
        id=envelope.id,
        source=envelope.source,
        type=envelope.type,
        time=envelope.time,
        account_id=envelope.subject,
        data=data,  # type: ignore[arg-type]
        digest=content_digest(envelope.type, envelope.time, envelope.subject, data),
        recorded_at=recorded_at,
        first_recorded_at=first_recorded_at,
    )


def _first_recorded(
    record: RawRecord, recorded_at: datetime | None
) -> datetime | str | None:
    """When a re-submitted record was first recorded (its header), or None.

    A dead letter sent back after a fix carries the original record's
    timestamp, so that the lateness limit judges how late the meter was, not
    how long the fix took; its own timestamp (now) still decides the billing
    period it is booked into. A malformed header is a problem (a string).
    """
    raw = next(
        (value for name, value in record.headers if name == FIRST_RECORDED_HEADER),
        None,
    )
    if raw is None:
        return None
    try:
        first = datetime.fromtimestamp(int(raw.decode("ascii")) / 1000, UTC)
    except (ValueError, OverflowError, OSError, UnicodeDecodeError):
        return f"header {FIRST_RECORDED_HEADER} must be epoch milliseconds"
    return min(first, recorded_at) if recorded_at is not None else first


def _time_problem(
    moment: datetime, record_ms: int | None, future_skew_max: timedelta
) -> str | None:
    if moment < TIME_MIN:
        return f"time {moment.isoformat()} is before {TIME_MIN.date()}"
    if record_ms is not None and record_ms > 0:
        written = datetime.fromtimestamp(record_ms / 1000, UTC)
        if moment > written + future_skew_max:
            return (
                f"time {moment.isoformat()} is more than {future_skew_max} after "
                "the record was written"
            )
    if moment.year > 2999:
        return "time is after the year 2999"
    return None


def _catalogue_problem(data: _Data, prices: PriceList) -> tuple[Reason, str] | None:
    if isinstance(data, UsageData):
        if data.sku_id not in prices.skus:
            return Reason.UNKNOWN_SKU, f"SKU {data.sku_id!r} is not in the price list"
    elif isinstance(data, PurchaseData):
        if data.currency not in prices.currencies:
            return (
                Reason.UNKNOWN_CURRENCY,
                f"virtual currency {data.currency!r} is not in the price list",
            )
        if data.expires_at is not None and data.expires_at <= TIME_MIN:
            return Reason.INVALID_DATA, "data.expires_at is before 2000"
    return None


def content_digest(
    event_type: EventType, time: datetime, subject: str, data: _Data
) -> str:
    """A digest of what the ledger uses, equal for equal content.

    Decimals are normalized (1.50 and 1.5 are the same amount) and times are
    rendered in UTC, so a re-sent copy matches whatever its formatting.
    """
    canonical = {
        "type": str(event_type),
        "time": time.isoformat(),
        "subject": subject,
        "data": {
            name: _canonical(value) for name, value in sorted(data.__dict__.items())
        },
    }
    encoded = orjson.dumps(canonical, option=orjson.OPT_SORT_KEYS)
    if not encoded.isascii() or b"\x7f" in encoded:
        # The digest is the one ever stored: the standard library's escaped
        # ASCII. orjson writes the same bytes for printable ASCII only.
        encoded = json.dumps(canonical, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(encoded).hexdigest()


def _canonical(value: object) -> object:
    if isinstance(value, Decimal):
        return decimal_text(value)
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat()
    if isinstance(value, dict):
        return {key: _canonical(item) for key, item in sorted(value.items())}
    return value


def _safe(value: object) -> str | None:
    """An attribute fit to log and to store beside a rejection."""
    if not isinstance(value, str):
        return None
    return _CONTROL.sub("?", value[:128])


def _first_location(error: ValidationError) -> str:
    errors = error.errors()
    return str(errors[0]["loc"][0]) if errors and errors[0]["loc"] else ""


def _describe(error: ValidationError, prefix: str = "") -> str:
    """The first problem, in a line a person can act on (never the payload)."""
    first = error.errors()[0]
    where = ".".join(str(part) for part in first["loc"])
    where = f"{prefix}.{where}" if prefix and where else (where or prefix)
    message = str(first["msg"]).removeprefix("Value error, ")
    more = len(error.errors()) - 1
    suffix = f" (and {more} more)" if more else ""
    return f"{where}: {message}{suffix}" if where else f"{message}{suffix}"
