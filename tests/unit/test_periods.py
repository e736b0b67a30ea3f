"""Billing periods are local calendar months, written as UTC instants."""

from __future__ import annotations

from ledger.periods import ChargeGrain, billing_period, charge_period, format_utc
from tests.factories import at


def test_a_utc_month_is_half_open() -> None:
    start, end = billing_period(at("2025-04-30T23:59:59Z"))

    assert (format_utc(start), format_utc(end)) == (
        "2025-04-01T00:00:00Z",
        "2025-05-01T00:00:00Z",
    )
    assert billing_period(at("2025-05-01T00:00:00Z"))[0] == end


def test_a_berlin_month_spans_the_daylight_saving_change() -> None:
    # Summer time starts on 30 March 2025: the month is 743 hours long.
    start, end = billing_period(at("2025-03-15T12:00:00Z"), "Europe/Berlin")

    assert format_utc(start) == "2025-02-28T23:00:00Z"
    assert format_utc(end) == "2025-03-31T22:00:00Z"
    assert (end - start).total_seconds() == 743 * 3600


def test_the_last_local_hours_of_a_month_belong_to_it() -> None:
    # 23:30 UTC on 31 March is already 1 April in Berlin.
    start, _ = billing_period(at("2025-03-31T22:30:00Z"), "Europe/Berlin")

    assert format_utc(start) == "2025-03-31T22:00:00Z"


def test_charge_period_is_the_hour_or_the_local_day() -> None:
    hour = charge_period(at("2025-04-01T10:42:07Z"))
    day = charge_period(at("2025-10-26T12:00:00Z"), ChargeGrain.DAY, "Europe/Berlin")

    assert [format_utc(t) for t in hour] == [
        "2025-04-01T10:00:00Z",
        "2025-04-01T11:00:00Z",
    ]
    # 26 October 2025 is 25 hours long in Berlin.
    assert [format_utc(t) for t in day] == [
        "2025-10-25T22:00:00Z",
        "2025-10-26T23:00:00Z",
    ]
