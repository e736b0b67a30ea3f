"""Decoding CloudEvents: what is accepted, and the reason for each refusal."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from ledger.events import (
    TOPIC_TYPES,
    Event,
    EventType,
    RawRecord,
    Reason,
    Rejection,
    UsageData,
    _canonical,
    _holds_float,
    _parse_json,
    content_digest,
    decode,
)
from tests.factories import purchase_doc, raw, spec_prices, usage_doc

PRICES = spec_prices()
USAGE = usage_doc("u-1", "2025-04-01T10:00:00Z", "acct", "SKU-762343", "245")


def decoded(record: RawRecord, **kwargs: object) -> Event | Rejection:
    return decode(record, PRICES, **kwargs)  # type: ignore[arg-type]


def test_a_structured_event_decodes_with_exact_decimals() -> None:
    result = decoded(raw(USAGE, key="acct"))

    assert isinstance(result, Event)
    assert result.type is EventType.USAGE
    assert result.account_id == "acct"
    assert result.data.quantity == Decimal(245)


def test_json_numbers_never_pass_through_float() -> None:
    document = usage_doc("u-2", "2025-04-01T10:00:00Z", "acct", "SKU-762343", "1")
    text = json.dumps(document).replace('"quantity": "1"', '"quantity": 0.1')

    result = decoded(RawRecord(value=text.encode()))

    assert isinstance(result, Event)
    assert result.data.quantity == Decimal("0.1")


def test_binary_mode_reads_attributes_from_ce_headers() -> None:
    headers = [
        ("ce_specversion", b"1.0"),
        ("ce_id", b"u-3"),
        ("ce_source", b"//meter"),
        ("ce_type", b"usage.recorded"),
        ("ce_time", b"2025-04-01T10:00:00+02:00"),
        ("ce_subject", b"acct"),
        ("content-type", b"application/json"),
    ]
    value = json.dumps({"sku_id": "SKU-762343", "quantity": "3"}).encode()

    result = decoded(RawRecord(value=value, key=b"acct", headers=headers))

    assert isinstance(result, Event)
    assert result.time.isoformat() == "2025-04-01T08:00:00+00:00"


def test_the_digest_ignores_formatting_but_not_content() -> None:
    same = json.loads(json.dumps(USAGE))
    same["data"]["quantity"] = "245.000"
    other = json.loads(json.dumps(USAGE))
    other["data"]["quantity"] = "246"

    first, again, changed = (decoded(raw(d)) for d in (USAGE, same, other))

    assert isinstance(first, Event) and isinstance(again, Event)
    assert isinstance(changed, Event)
    assert first.digest == again.digest != changed.digest


def _mutated(path: str, value: object) -> bytes:
    document = json.loads(json.dumps(USAGE))
    target = document
    *parents, leaf = path.split(".")
    for name in parents:
        target = target[name]
    if value is KeyError:
        del target[leaf]
    else:
        target[leaf] = value
    return json.dumps(document).encode()


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"", Reason.EMPTY),
        (b'{"specversion": "1.0", "id": "x"', Reason.NOT_JSON),
        (b'"just a string"', Reason.NOT_CLOUDEVENT),
        (b"[1, 2]", Reason.NOT_CLOUDEVENT),
        (b"\xff\xfe", Reason.NOT_JSON),
        (_mutated("id", KeyError), Reason.INVALID_ATTRIBUTE),
        (_mutated("specversion", "0.3"), Reason.SPECVERSION),
        (_mutated("type", "usage.deleted"), Reason.UNKNOWN_TYPE),
        (_mutated("time", "2025-04-01T10:00:00"), Reason.INVALID_ATTRIBUTE),
        (_mutated("time", "1999-12-31T23:59:59Z"), Reason.TIME_OUT_OF_RANGE),
        (_mutated("id", "bad\u0000id"), Reason.INVALID_ATTRIBUTE),
        (_mutated("id", "x" * 500), Reason.INVALID_ATTRIBUTE),
        (_mutated("data.quantity", "0"), Reason.INVALID_DATA),
        (_mutated("data.quantity", "-1"), Reason.INVALID_DATA),
        (_mutated("data.quantity", "1" * 60), Reason.INVALID_DATA),
        (_mutated("data.quantity", "0." + "1" * 40), Reason.INVALID_DATA),
        (_mutated("data.quantity", 12), None),
        (_mutated("data.quantity", True), Reason.INVALID_DATA),
        (_mutated("data.sku_id", "nope"), Reason.UNKNOWN_SKU),
        (_mutated("data.unexpected", "x"), Reason.INVALID_DATA),
        (_mutated("data.tags", {"nested": {"a": 1}}), Reason.INVALID_DATA),
        (b'{"specversion": "1.0", "data": {"quantity": NaN}}', Reason.NOT_JSON),
        (json.dumps(USAGE).replace('"245"', "1e309").encode(), Reason.INVALID_DATA),
    ],
)
def test_bad_input_is_rejected_with_its_reason(
    value: bytes, reason: Reason | None
) -> None:
    result = decoded(RawRecord(value=value))

    if reason is None:
        assert isinstance(result, Event)
    else:
        assert isinstance(result, Rejection), result
        assert result.reason is reason, result.detail


def test_the_kafka_key_must_be_the_subject() -> None:
    result = decoded(raw(USAGE, key="another-account"))

    assert isinstance(result, Rejection)
    assert result.reason is Reason.KEY_MISMATCH


def test_a_usage_event_on_the_purchases_topic_is_refused() -> None:
    result = decoded(raw(USAGE), accepts=TOPIC_TYPES["purchases"])

    assert isinstance(result, Rejection)
    assert result.reason is Reason.WRONG_TOPIC


def test_headers_that_disagree_with_a_structured_body_are_refused() -> None:
    record = RawRecord(value=json.dumps(USAGE).encode(), headers=[("ce_id", b"other")])

    result = decoded(record)

    assert isinstance(result, Rejection)
    assert result.reason is Reason.HEADERS_DISAGREE


def test_a_time_far_after_the_record_timestamp_is_refused() -> None:
    record = RawRecord(value=json.dumps(USAGE).encode(), timestamp_ms=1_600_000_000_000)

    result = decoded(record)

    assert isinstance(result, Rejection)
    assert result.reason is Reason.TIME_OUT_OF_RANGE


def test_an_oversized_value_is_refused_before_parsing() -> None:
    result = decoded(RawRecord(value=b"{" + b" " * 300_000 + b"}"))

    assert isinstance(result, Rejection)
    assert result.reason is Reason.TOO_LARGE


def test_an_unknown_virtual_currency_is_refused() -> None:
    document = purchase_doc(
        "p", "2025-04-01T00:00:00Z", "acct", "1", "1", currency="XYZ"
    )

    result = decoded(raw(document))

    assert isinstance(result, Rejection)
    assert result.reason is Reason.UNKNOWN_CURRENCY


def test_a_billing_currency_outside_iso_4217_is_refused() -> None:
    document = purchase_doc(
        "p", "2025-04-01T00:00:00Z", "acct", "1", "1", billing_currency="TKN"
    )

    result = decoded(raw(document))

    assert isinstance(result, Rejection)
    assert result.reason is Reason.INVALID_DATA
    assert "ISO 4217" in result.detail


_JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.decimals(allow_nan=False, allow_infinity=False, places=6)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


def _reference_parse(value: bytes) -> object:
    return json.loads(value.decode("utf-8"), parse_float=Decimal)


@given(_JSON_VALUES)
def test_parsing_gives_what_the_exact_parser_gives_and_no_float(value: object) -> None:
    encoded = json.dumps(value, default=str).encode()

    parsed = _parse_json(encoded)

    assert parsed == _reference_parse(encoded)
    assert "float" not in repr(type(parsed)) and not _holds_float(parsed)


@given(
    st.dictionaries(st.text(min_size=1, max_size=10), st.text(max_size=20), max_size=5),
    st.text(max_size=30),
)
@example({"a": "x\x7fy"}, "")
@example({"é": "\u2028"}, "r\x01")
def test_the_content_digest_is_the_one_stored_by_earlier_versions(
    tags: dict[str, str], resource: str
) -> None:
    """Digests of applied events are stored; a re-sent copy must match them
    whatever JSON writer the digest uses, or it would become a conflict."""
    data = UsageData.model_construct(
        sku_id="SKU-762343",
        quantity=Decimal("1.50"),
        tags=tags,
        resource_id=resource or None,
    )
    moment = datetime(2025, 4, 1, 10, tzinfo=UTC)
    canonical = {
        "type": "usage.recorded",
        "time": moment.isoformat(),
        "subject": "acct",
        "data": {
            name: _canonical(value) for name, value in sorted(data.__dict__.items())
        },
    }
    reference = json.dumps(canonical, sort_keys=True, separators=(",", ":"))

    digest = content_digest(EventType.USAGE, moment, "acct", data)

    assert digest == hashlib.sha256(reference.encode()).hexdigest()
