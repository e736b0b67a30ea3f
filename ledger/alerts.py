"""Alerts: a balance that ran low, a lot about to expire.

Operators want to hear when an account needs a top-up, not after every meter
event that keeps it low. An alert is therefore raised once per *crossing*:

- `credits.balance_low`: the account's balance in a currency (credits usable
  at the moment, minus credits owed) falls below its threshold. The alert is
  raised when the balance goes from at or above the threshold to below it,
  and re-armed only when the balance is back at or above it (a top-up).
  The threshold is the higher of the configured absolute credits and the
  configured share of the account's last purchase in that currency, so an
  account that buys 1,000,000 credits at a time is warned earlier than one
  that buys 1,000.
- `credits.expiring`: a lot that still holds credits will expire within the
  horizon. Raised once per lot; a lot that is emptied or refunded first is
  never mentioned again.

Time is the ledger's own: the time of the event being applied, or a sweep's
cutoff, never the wall clock, so a replay of the same events raises the same
alerts with the same ids.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from ledger import money
from ledger.charges import name_uuid
from ledger.lots import LotStatus

if TYPE_CHECKING:
    from ledger.accounts import Account

_ALERT_IDS = uuid.UUID("a3e4f0d2-51c7-5b0e-8d65-0c7b9e2f4a61")


class AlertKind(StrEnum):
    BALANCE_LOW = "credits.balance_low"
    EXPIRING = "credits.expiring"


@dataclass(frozen=True, slots=True)
class AlertRules:
    """When to alert; a rule that is None is off."""

    balance_low_credits: Decimal | None = None
    balance_low_share: Decimal | None = None
    expiring_within: timedelta | None = None

    @property
    def active(self) -> bool:
        return (
            self.balance_low_credits is not None
            or self.balance_low_share is not None
            or self.expiring_within is not None
        )

    def threshold(self, last_purchase: Decimal | None) -> Decimal | None:
        """The balance below which an account is low, or None (no rule)."""
        candidates = []
        if self.balance_low_credits is not None:
            candidates.append(self.balance_low_credits)
        if self.balance_low_share is not None and last_purchase is not None:
            candidates.append(
                money.quantity(money.mul(self.balance_low_share, last_purchase))
            )
        return max(candidates) if candidates else None


@dataclass(slots=True)
class AlertState:
    """What an account remembers between events so that alerts do not repeat.

    `low` holds the currencies whose balance is below the threshold (the
    alert was raised); `crossings` counts the alerts raised per currency,
    which numbers each one: the n-th time an account runs low has the same
    alert id in every run over the same events, whether an event or an
    expiry sweep noticed it. `last_purchase` holds the credits of the latest
    purchase per currency, for a threshold that is a share of it.
    """

    low: set[str] = field(default_factory=set)
    crossings: dict[str, int] = field(default_factory=dict)
    last_purchase: dict[str, Decimal] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "low": sorted(self.low),
            "crossings": dict(sorted(self.crossings.items())),
            "last_purchase": {
                currency: format(credits, "f")
                for currency, credits in sorted(self.last_purchase.items())
            },
        }

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> AlertState:
        data = data or {}
        return cls(
            low=set(data.get("low", ())),
            crossings={k: int(v) for k, v in data.get("crossings", {}).items()},
            last_purchase={
                currency: Decimal(credits)
                for currency, credits in data.get("last_purchase", {}).items()
            },
        )


@dataclass(frozen=True, slots=True)
class Alert:
    """One alert, ready to become a CloudEvent (`data` holds its facts)."""

    alert_id: str
    kind: AlertKind
    account_id: str
    occurred_at: datetime
    data: dict[str, str | None]


def watch(account: Account, moment: datetime, rules: AlertRules) -> list[Alert]:
    """The alerts raised by the account's state at `moment`, in a fixed order:
    expiring lots first (FIFO), then balances by currency."""
    if not rules.active:
        return []
    alerts = _expiring(account, moment, rules)
    for currency in sorted(_currencies(account)):
        alert = _balance(account, currency, moment, rules)
        if alert is not None:
            alerts.append(alert)
    if alerts:
        account.changed = True
    return alerts


def note_purchase(account: Account, currency: str, credits: Decimal) -> None:
    """Remember a purchase's size, for a threshold that is a share of it."""
    if account.alerts.last_purchase.get(currency) != credits:
        account.alerts.last_purchase[currency] = credits
        account.changed = True


def _balance(
    account: Account,
    currency: str,
    moment: datetime,
    rules: AlertRules,
) -> Alert | None:
    state = account.alerts
    threshold = rules.threshold(state.last_purchase.get(currency))
    if threshold is None:
        return None
    balance = account.balance(currency, moment)
    if balance >= threshold:
        if currency in state.low:
            state.low.discard(currency)
            account.changed = True
        return None
    if currency in state.low:
        return None
    state.low.add(currency)
    crossing = state.crossings.get(currency, 0) + 1
    state.crossings[currency] = crossing
    return Alert(
        alert_id=_id(
            AlertKind.BALANCE_LOW, account.account_id, currency, str(crossing)
        ),
        kind=AlertKind.BALANCE_LOW,
        account_id=account.account_id,
        occurred_at=moment,
        data={
            "currency": currency,
            "balance": money.text(balance),
            "threshold": money.text(threshold),
            "billing_currency": account.billing_currency,
        },
    )


def _expiring(account: Account, moment: datetime, rules: AlertRules) -> list[Alert]:
    horizon = rules.expiring_within
    if horizon is None:
        return []
    alerts = []
    for lot in sorted(account.lots, key=lambda lot: lot.fifo_key):
        if (
            lot.status is not LotStatus.OPEN
            or lot.expiry_alerted
            or lot.expires_at is None
            or lot.remaining_quantity <= 0
            or not lot.expires_at - horizon <= moment < lot.expires_at
        ):
            continue
        lot.expiry_alerted = True
        lot.changed = True
        alerts.append(
            Alert(
                alert_id=_id(AlertKind.EXPIRING, lot.lot_id),
                kind=AlertKind.EXPIRING,
                account_id=account.account_id,
                occurred_at=moment,
                data={
                    "currency": lot.currency,
                    "lot_id": lot.lot_id,
                    "expires_at": lot.expires_at.isoformat().replace("+00:00", "Z"),
                    "credits": money.text(lot.remaining_quantity),
                    "value": money.text(lot.remaining_basis),
                    "billing_currency": lot.billing_currency,
                    "invoice_id": lot.invoice_id,
                },
            )
        )
    return alerts


def _currencies(account: Account) -> set[str]:
    held = {lot.currency for lot in account.lots}
    owed = {deficit.owed.currency for deficit in account.deficits}
    return held | owed | set(account.alerts.last_purchase)


def _id(kind: AlertKind, *parts: str) -> str:
    return name_uuid(_ALERT_IDS, "|".join((str(kind), *parts)))
