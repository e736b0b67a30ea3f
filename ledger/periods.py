"""Billing and charge periods, as half-open UTC intervals.

A billing period is a calendar month in the billing account's time zone: for
an account in Europe/Berlin, April 2025 is 2025-03-31T22:00:00Z up to
2025-04-30T22:00:00Z. Month boundaries are computed as local midnights and then
converted, so daylight-saving changes inside a month are handled by the zone
database. Every interval is [start, end): the start belongs to it, the end does
not.

A usage charge period is the UTC hour (or, configured, the local day) in which
the usage happened.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from enum import StrEnum
from functools import lru_cache
from zoneinfo import ZoneInfo

FORMATTED_INSTANTS_MAX = 4096


class ChargeGrain(StrEnum):
    HOUR = "hour"
    DAY = "day"


@lru_cache(maxsize=64)
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def billing_period(
    moment: datetime, timezone: str = "UTC"
) -> tuple[datetime, datetime]:
    """The calendar month (in `timezone`) that contains `moment`."""
    local = moment.astimezone(_zone(timezone))
    return _month(local.year, local.month, timezone)


@lru_cache(maxsize=1024)
def _month(year: int, month: int, timezone: str) -> tuple[datetime, datetime]:
    """A local calendar month as UTC instants (every row needs its month)."""
    start = datetime(year, month, 1)
    end = datetime(year + 1, 1, 1) if month == 12 else datetime(year, month + 1, 1)
    return _utc_local(start, timezone), _utc_local(end, timezone)


def charge_period(
    moment: datetime, grain: ChargeGrain = ChargeGrain.HOUR, timezone: str = "UTC"
) -> tuple[datetime, datetime]:
    """The hour (UTC) or the local day that contains `moment`."""
    if grain is ChargeGrain.HOUR:
        start = moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
        return start, start + timedelta(hours=1)
    local = moment.astimezone(_zone(timezone))
    day = local.replace(hour=0, minute=0, second=0, microsecond=0)
    following = (day + timedelta(days=1)).replace(hour=0)
    return _utc_local(day, timezone), _utc_local(following, timezone)


def period_label(moment: datetime, timezone: str = "UTC") -> str:
    """The billing period's name, e.g. "2025-04", in the account's zone."""
    local = moment.astimezone(_zone(timezone))
    return f"{local.year:04d}-{local.month:02d}"


def _utc_local(local: datetime, timezone: str) -> datetime:
    """A local wall-clock time as a UTC instant, re-resolving its offset.

    `replace()` keeps the offset of the original moment, which is wrong across
    a daylight-saving change; rebuilding from the naive wall time is not.
    """
    naive = local.replace(tzinfo=None)
    return naive.replace(tzinfo=_zone(timezone)).astimezone(UTC)


@lru_cache(maxsize=FORMATTED_INSTANTS_MAX)
def format_utc(moment: datetime) -> str:
    """FOCUS date/time text: UTC, whole seconds, `YYYY-MM-DDTHH:MM:SSZ`.

    Cached: every row carries four instants and most are period boundaries
    shared by many rows (the billing month, the hour of the usage).
    """
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def floor_second(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(microsecond=0)
