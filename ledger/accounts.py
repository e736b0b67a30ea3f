"""Billing accounts: their lots, their deficits, and how each event changes them.

`apply` is the whole accounting of one event against one account. It is a
plain function of the account's state, the event, the price list and the
rules; it performs no I/O and returns journal entries (each with its FOCUS
charge, if the movement has a cost) or a `Rejection`.

Semantics, in the order they are applied:

1. Lots due to expire by the event's time expire first (`expire_due`). The
   credits left in a lot at its `expires_at` become an expiry charge carrying
   the lot's remaining cost basis, so expiry takes effect at `expires_at`
   whether or not a sweep has run.
2. A purchase opens a lot. It first settles the account's deficit in that
   currency, oldest deficit first: each settled piece is a usage charge drawn
   from the new lot, with the original usage's charge period.
3. A usage event is priced in credits (the meter's own `credits`, else the
   account's contracted or the list credit price x pricing quantity), then
   drawn from the lots usable at its time in the account's draw order, one
   charge per lot drawn.
4. Credits no lot could cover follow the account's shortfall policy:
   `deficit` (default) records them as owed, to be settled by the next
   purchase; `overage` bills them at once at the contracted overage price.
   Owed credits have no cost basis yet, so they appear in the balance (which
   goes negative) and the journal, and become a FOCUS row when settled.
5. A refund returns money against one purchase and revokes credits from its
   lot (by default all that remain).

An event that is earlier than events already applied to the account (it came
later than the ordering window) is still applied, in arrival position: it
draws from the lots that were usable at its time and still hold credits.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from decimal import Decimal
from enum import StrEnum
from typing import Any

from ledger import money
from ledger.alerts import AlertState, note_purchase
from ledger.charges import Charge, ChargeKind, charge_id, lot_id
from ledger.errors import InvariantError
from ledger.events import Event, PurchaseData, Reason, RefundData, Rejection, UsageData
from ledger.lots import Draw, Lot, LotStatus, close, draw, take
from ledger.metering import Metered, meter
from ledger.periods import (
    ChargeGrain,
    billing_period,
    charge_period,
    floor_second,
    period_label,
)
from ledger.prices import PriceList, ShortfallPolicy


class EntryKind(StrEnum):
    TAX = "tax"
    PURCHASE = "purchase"
    USAGE = "usage"
    DEFICIT = "deficit"
    SETTLEMENT = "settlement"
    OVERAGE = "overage"
    EXPIRY = "expiry"
    REFUND = "refund"


@dataclass(frozen=True, slots=True)
class Entry:
    """One line of an account's journal.

    `credits` is the change of the account's credit balance, `lot_credits`
    the change of the credits held in `lot_id`, and `basis` the change of the
    national value held in it; all are signed. They differ for a settlement,
    which moves credits from a lot to pay what was owed: the lot loses them,
    the balance does not change.
    """

    entry_id: str
    kind: EntryKind
    account_id: str
    currency: str
    lot_id: str | None
    occurred_at: datetime
    credits: Decimal
    basis: Decimal
    event_id: str
    event_source: str
    lot_credits: Decimal = Decimal(0)
    charge: Charge | None = None


@dataclass(slots=True)
class Deficit:
    """Credits a usage consumed that no lot covered, until a purchase pays."""

    owed: Metered
    changed: bool = False

    @property
    def order_key(self) -> tuple[datetime, str, str]:
        return (self.owed.occurred_at, self.owed.usage_source, self.owed.usage_id)


@dataclass(slots=True)
class Account:
    """A billing account's state as far as one batch needs it.

    `lots` holds the open lots and any closed lot a refund in the batch names.
    """

    account_id: str
    partition: int | None = None
    name: str | None = None
    account_type: str | None = None
    billing_currency: str | None = None
    last_event_at: datetime | None = None
    lots: list[Lot] = field(default_factory=list)
    deficits: list[Deficit] = field(default_factory=list)
    alerts: AlertState = field(default_factory=AlertState)
    changed: bool = False

    def balance(self, currency: str, moment: datetime) -> Decimal:
        """Credits usable at `moment` minus credits owed."""
        held = sum(
            (
                lot.remaining_quantity
                for lot in self.lots
                if lot.currency == currency and lot.usable_at(moment)
            ),
            Decimal(0),
        )
        owed = sum(
            (d.owed.credits for d in self.deficits if d.owed.currency == currency),
            Decimal(0),
        )
        return money.sub(held, owed)


@dataclass(frozen=True, slots=True)
class Rules:
    """Accounting choices that are configuration, not price list.

    A billing period closes (its invoice is issued) `period_close_grace`
    after its end. An event recorded later than that (by its Kafka record
    timestamp) is booked into the open period as a correction; one recorded
    more than `lateness_max` after it happened is refused.
    """

    charge_grain: ChargeGrain = ChargeGrain.HOUR
    overage_invoice_pattern: str | None = None
    period_close_grace: timedelta = timedelta(days=5)
    lateness_max: timedelta | None = timedelta(days=90)


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one event did: the entries booked, or why it was rejected.

    A rejected event changes nothing of its own, but lots that were due to
    expire by its time have expired all the same; their entries are kept.
    """

    entries: list[Entry]
    rejection: Rejection | None = None


def apply(account: Account, event: Event, prices: PriceList, rules: Rules) -> Outcome:
    """Account for one event against its billing account.

    Every check comes before the first change, so a rejected event never
    half-applies.
    """
    book = _Book(account, prices, rules, clock=event.recorded_at)
    data = event.data
    late = book.lateness_problem(event)
    if late:
        return Outcome([], late)
    if isinstance(data, PurchaseData):
        problem = book.purchase_problem(event, data)
        if problem:
            return Outcome([], problem)
    entries = book.expire_due(event.time)
    if isinstance(data, PurchaseData):
        entries += book.purchase(event, data)
        note_purchase(account, data.currency, data.quantity)
    elif isinstance(data, RefundData):
        refunded = book.refund(event, data)
        if isinstance(refunded, Rejection):
            return Outcome(entries, refunded)
        entries += refunded
    else:
        entries += book.usage(event, data)
    if account.last_event_at is None or event.time > account.last_event_at:
        account.last_event_at = event.time
    account.changed = True
    return Outcome(entries)


def expire_due(
    account: Account, moment: datetime, prices: PriceList, rules: Rules
) -> list[Entry]:
    """Expire every open lot whose `expires_at` is at or before `moment`.

    A sweep books at `moment`: an expiry whose period closed before it is a
    correction in the open period.
    """
    return _Book(account, prices, rules, clock=moment).expire_due(moment)


class _Book:
    """The accounting of one account against the price list and rules.

    `clock` is when the ledger learned of what it books (the event's record
    timestamp, or a sweep's cutoff); it decides whether a period is closed.
    """

    def __init__(
        self,
        account: Account,
        prices: PriceList,
        rules: Rules,
        clock: datetime | None = None,
    ) -> None:
        self.account = account
        self.prices = prices
        self.rules = rules
        self.clock = clock
        self.terms = prices.terms(account.account_id)
        self._columns: dict[str, Any] | None = None

    def lateness_problem(self, event: Event) -> Rejection | None:
        limit = self.rules.lateness_max
        recorded = event.first_recorded_at or self.clock
        if recorded is None or limit is None or recorded - event.time <= limit:
            return None
        return _reject(
            event,
            Reason.TOO_LATE,
            f"recorded {recorded.isoformat()}, more than {limit.days} days after "
            "it happened",
        )

    def _booking(self, moment: datetime) -> dict[str, Any]:
        """The billing period a row for `moment` goes into, and its class.

        Rows of a closed period never change: what arrives after the close
        is booked into the period open at the clock, as a correction.
        """
        zone = self.terms.timezone
        booked, charge_class = moment, None
        period = billing_period(moment, zone)
        if (
            self.clock is not None
            and self.clock >= period[1] + self.rules.period_close_grace
        ):
            booked, charge_class = self.clock, "Correction"
        return {
            "billing_period": billing_period(booked, zone),
            "billing_period_label": period_label(booked, zone),
            "charge_class": charge_class,
        }

    def expire_due(self, moment: datetime) -> list[Entry]:
        entries: list[Entry] = []
        due = sorted(
            (
                lot
                for lot in self.account.lots
                if lot.status is LotStatus.OPEN
                and lot.expires_at is not None
                and lot.expires_at <= moment
            ),
            key=lambda lot: (lot.expires_at, *lot.fifo_key),
        )
        for lot in due:
            taken = close(lot, LotStatus.EXPIRED)
            self.account.changed = True
            if taken is None:
                continue
            expired_at = lot.expires_at or lot.purchased_at
            charge = self._lot_charge(
                lot,
                ChargeKind.EXPIRY,
                expired_at,
                credits=taken.credits,
                billed=Decimal(0),
                effective=taken.basis,
                invoice_id=lot.invoice_id,
            )
            entries.append(
                self._entry(
                    EntryKind.EXPIRY,
                    charge,
                    lot,
                    expired_at,
                    -taken.credits,
                    -taken.basis,
                    lot.purchase_id,
                    lot.purchase_source,
                )
            )
        return entries

    def purchase_problem(self, event: Event, data: PurchaseData) -> Rejection | None:
        expected = self.account.billing_currency or self.terms.billing_currency
        if expected and expected != data.billing_currency:
            return _reject(
                event,
                Reason.CURRENCY_MISMATCH,
                f"billing currency {data.billing_currency} differs from the "
                f"account's {expected}",
            )
        if (
            data.billing_currency
            not in self.prices.currencies[data.currency].list_prices
        ):
            return _reject(
                event,
                Reason.UNKNOWN_CURRENCY,
                f"the price list has no {data.billing_currency} list price for "
                f"{data.currency}",
            )
        if data.expires_at is not None and data.expires_at <= event.time:
            return _reject(
                event,
                Reason.INVALID_DATA,
                "data.expires_at must be after the event time",
            )
        return None

    def purchase(self, event: Event, data: PurchaseData) -> list[Entry]:
        account = self.account
        account.billing_currency = data.billing_currency
        account.name = data.billing_account_name or account.name
        account.account_type = data.billing_account_type or account.account_type
        self._columns = None  # rows from here on carry the new name and type
        lot = Lot(
            lot_id=lot_id(event.source, event.id),
            account_id=account.account_id,
            currency=data.currency,
            billing_currency=data.billing_currency,
            purchased_at=event.time,
            purchase_id=event.id,
            purchase_source=event.source,
            expires_at=data.expires_at,
            quantity=data.quantity,
            amount=data.amount,
            remaining_quantity=data.quantity,
            remaining_basis=data.amount,
            refunded_amount=Decimal(0),
            invoice_id=data.invoice_id,
            sub_account_id=data.sub_account_id,
            sub_account_name=data.sub_account_name,
            sub_account_type=data.sub_account_type,
            changed=True,
        )
        account.lots.append(lot)
        charge = self._lot_charge(
            lot,
            ChargeKind.PURCHASE,
            event.time,
            credits=lot.quantity,
            billed=lot.amount,
            effective=Decimal(0),
            invoice_id=lot.invoice_id,
            event=event,
        )
        purchase = self._entry(
            EntryKind.PURCHASE,
            charge,
            lot,
            event.time,
            lot.quantity,
            lot.amount,
            event.id,
            event.source,
        )
        taxed = self._tax(
            lot, event, data.tax_amount, lot.invoice_id, data.tax_description
        )
        return [purchase, *taxed, *self._settle_deficits(lot, event)]

    def _tax(
        self,
        lot: Lot,
        event: Event,
        amount: Decimal | None,
        invoice_id: str,
        description: str | None,
    ) -> list[Entry]:
        """A Tax row for tax billed (or, negative, returned) with a lot."""
        if not amount:
            return []
        currency = self.prices.currencies[lot.currency]
        booking = self._booking(event.time)
        charge = Charge(
            charge_id=charge_id(ChargeKind.TAX, event.source, event.id),
            kind=ChargeKind.TAX,
            category="Tax",
            frequency="One-Time",
            description=description or f"Tax on {currency.name}",
            **self._account_columns(),
            sub_account_id=lot.sub_account_id,
            sub_account_name=lot.sub_account_name,
            sub_account_type=lot.sub_account_type,
            billing_currency=lot.billing_currency,
            **booking,
            charge_period=charge_period(
                event.time, self.rules.charge_grain, self.terms.timezone
            ),
            invoice_id=invoice_id,
            billed_cost=amount,
            effective_cost=amount,
            list_unit_price=None,
            contracted_unit_price=None,
            pricing_quantity=None,
            pricing_unit=None,
            pricing_currency=lot.billing_currency,
            pc_list_unit_price=None,
            pc_contracted_unit_price=None,
            pc_effective_cost=Decimal(0),
            pricing_category=None,
            consumed_quantity=None,
            consumed_unit=None,
            service_name=currency.service_name,
            service_category=currency.service_category,
            service_subcategory=currency.service_subcategory,
            sku_id=None,
            sku_price_id=None,
            sku_meter=None,
            sku_price_details=None,
            resource_id=None,
            resource_name=None,
            resource_type=None,
            region_id=None,
            region_name=None,
            source_event_id=event.id,
            source_event_source=event.source,
            lot_id=lot.lot_id,
        )
        return [
            self._entry(
                EntryKind.TAX,
                charge,
                lot,
                event.time,
                Decimal(0),
                Decimal(0),
                event.id,
                event.source,
            )
        ]

    def _settle_deficits(self, lot: Lot, event: Event) -> list[Entry]:
        """Pay owed credits of the lot's currency from the new lot, oldest first."""
        entries: list[Entry] = []
        owed = sorted(
            (
                deficit
                for deficit in self.account.deficits
                if deficit.owed.currency == lot.currency and deficit.owed.credits > 0
            ),
            key=lambda deficit: deficit.order_key,
        )
        for deficit in owed:
            if lot.remaining_quantity <= 0:
                break
            piece, rest = deficit.owed.cut(
                min(deficit.owed.credits, lot.remaining_quantity)
            )
            taken = take(lot, piece.credits)
            deficit.owed = rest or _nothing_owed(piece)
            deficit.changed = True
            charge = self._metered_charge(
                piece,
                ChargeKind.SETTLEMENT,
                lot=lot,
                booked_at=event.time,
                billed=Decimal(0),
                effective=taken.basis,
                settlement=event,
            )
            entries.append(
                self._entry(
                    EntryKind.SETTLEMENT,
                    charge,
                    lot,
                    event.time,
                    Decimal(0),
                    -taken.basis,
                    piece.usage_id,
                    piece.usage_source,
                    lot_credits=-taken.credits,
                )
            )
        return entries

    def refund(self, event: Event, data: RefundData) -> list[Entry] | Rejection:
        matches = [
            lot for lot in self.account.lots if lot.purchase_id == data.purchase_id
        ]
        if len(matches) > 1:
            matches = [lot for lot in matches if lot.purchase_source == event.source]
        if len(matches) != 1:
            return _reject(
                event,
                Reason.UNKNOWN_PURCHASE,
                f"no single purchase {data.purchase_id!r} on this billing account",
            )
        lot = matches[0]
        if lot.purchased_at > event.time:
            return _reject(
                event, Reason.UNKNOWN_PURCHASE, "the refund precedes its purchase"
            )
        refundable = money.sub(lot.amount, lot.refunded_amount)
        if data.amount > refundable:
            return _reject(
                event,
                Reason.REFUND_EXCEEDS,
                f"refund of {data.amount} exceeds the {refundable} left to refund",
            )
        revoked = lot.remaining_quantity if data.quantity is None else data.quantity
        if revoked > lot.remaining_quantity:
            return _reject(
                event,
                Reason.REFUND_EXCEEDS,
                f"revokes {revoked} credits but the lot holds {lot.remaining_quantity}",
            )
        basis = take(lot, revoked).basis if revoked > 0 else Decimal(0)
        lot.refunded_amount = money.add(lot.refunded_amount, data.amount)
        if lot.remaining_quantity == 0:
            lot.status = LotStatus.REFUNDED
        lot.changed = True
        charge = self._lot_charge(
            lot,
            ChargeKind.REFUND,
            event.time,
            credits=-revoked,
            billed=-data.amount,
            effective=money.sub(basis, data.amount),
            invoice_id=data.invoice_id,
            event=event,
        )
        refund = self._entry(
            EntryKind.REFUND,
            charge,
            lot,
            event.time,
            -revoked,
            -basis,
            event.id,
            event.source,
        )
        tax = -data.tax_amount if data.tax_amount else None
        return [refund, *self._tax(lot, event, tax, data.invoice_id, None)]

    def usage(self, event: Event, data: UsageData) -> list[Entry]:
        usage = meter(event, data, self.prices)
        if usage.credits == 0:
            charge = self._metered_charge(
                usage,
                ChargeKind.USAGE,
                lot=None,
                booked_at=event.time,
                billed=Decimal(0),
                effective=Decimal(0),
            )
            return [
                self._entry(
                    EntryKind.USAGE,
                    charge,
                    None,
                    event.time,
                    Decimal(0),
                    Decimal(0),
                    event.id,
                    event.source,
                )
            ]
        lots = [lot for lot in self.account.lots if lot.currency == usage.currency]
        draws, uncovered = draw(lots, usage.credits, event.time, self.terms.draw_order)
        entries: list[Entry] = []
        rest: Metered | None = usage
        for drawn in draws:
            if rest is None:
                raise InvariantError(f"usage {event.id} drew more than it costs")
            piece, rest = rest.cut(drawn.credits)
            entries.append(self._drawn(piece, drawn, event))
        if rest is not None and uncovered > 0:
            entries.append(self._shortfall(rest, event))
        return entries

    def _drawn(self, piece: Metered, drawn: Draw, event: Event) -> Entry:
        charge = self._metered_charge(
            piece,
            ChargeKind.USAGE,
            lot=drawn.lot,
            booked_at=event.time,
            billed=Decimal(0),
            effective=drawn.basis,
        )
        return self._entry(
            EntryKind.USAGE,
            charge,
            drawn.lot,
            event.time,
            -drawn.credits,
            -drawn.basis,
            event.id,
            event.source,
        )

    def _shortfall(self, piece: Metered, event: Event) -> Entry:
        """Credits no lot covered: billed as overage, or owed as a deficit."""
        if self.terms.shortfall is ShortfallPolicy.OVERAGE:
            price = self.terms.overage_unit_price or Decimal(0)
            billed = money.cost(money.mul(piece.credits, price))
            charge = self._metered_charge(
                piece,
                ChargeKind.OVERAGE,
                lot=None,
                booked_at=event.time,
                billed=billed,
                effective=billed,
                paid_per_credit=price,
            )
            return self._entry(
                EntryKind.OVERAGE,
                charge,
                None,
                event.time,
                Decimal(0),
                Decimal(0),
                event.id,
                event.source,
            )
        self.account.deficits.append(Deficit(piece, changed=True))
        return Entry(
            entry_id=charge_id(ChargeKind.USAGE, event.source, event.id, "deficit"),
            kind=EntryKind.DEFICIT,
            account_id=self.account.account_id,
            currency=piece.currency,
            lot_id=None,
            occurred_at=event.time,
            credits=-piece.credits,
            basis=Decimal(0),
            event_id=event.id,
            event_source=event.source,
        )

    def _entry(
        self,
        kind: EntryKind,
        charge: Charge,
        lot: Lot | None,
        moment: datetime,
        credits: Decimal,
        basis: Decimal,
        event_id: str,
        event_source: str,
        lot_credits: Decimal | None = None,
    ) -> Entry:
        if lot_credits is None:
            lot_credits = credits if lot else Decimal(0)
        return Entry(
            entry_id=charge.charge_id,
            kind=kind,
            account_id=self.account.account_id,
            currency=lot.currency if lot else charge.pricing_currency,
            lot_id=lot.lot_id if lot else None,
            occurred_at=moment,
            credits=credits,
            basis=basis,
            event_id=event_id,
            event_source=event_source,
            lot_credits=lot_credits,
            charge=charge,
        )

    def _billing_currency(self, currency: str) -> str:
        """The account's billing currency, else its terms', else the list's."""
        return (
            self.account.billing_currency
            or self.terms.billing_currency
            or next(iter(self.prices.currencies[currency].list_prices))
        )

    def _account_columns(self) -> dict[str, Any]:
        """The account's columns, the same on every row of one event (a
        purchase that renames the account comes before its rows)."""
        if self._columns is None:
            self._columns = self._named()
        return self._columns

    def _named(self) -> dict[str, Any]:
        account = self.account
        return {
            "billing_account_id": account.account_id,
            "billing_account_name": account.name or account.account_id,
            "billing_account_type": account.account_type
            or self.prices.billing_account_type,
            "provider": self.prices.provider,
        }

    def _metered_charge(
        self,
        piece: Metered,
        kind: ChargeKind,
        *,
        lot: Lot | None,
        booked_at: datetime,
        billed: Decimal,
        effective: Decimal,
        paid_per_credit: Decimal | None = None,
        settlement: Event | None = None,
    ) -> Charge:
        """A row about metered usage: drawn from a lot, settled, free or overage.

        Its national contracted price is what the paying lot cost per credit,
        or `paid_per_credit` (the overage price) when no lot pays.
        """
        sku = self.prices.skus[piece.sku_id]
        booking = self._booking(booked_at)
        billing_currency = (
            lot.billing_currency if lot else self._billing_currency(piece.currency)
        )
        list_prices = self.prices.currencies[piece.currency].list_prices
        list_credit = list_prices.get(billing_currency, paid_per_credit or Decimal(0))
        if lot is not None:
            paid = money.div(
                money.mul(piece.pc_contracted_unit_price, lot.amount), lot.quantity
            )
        else:
            paid = money.mul(
                piece.pc_contracted_unit_price, paid_per_credit or Decimal(0)
            )
        ids: tuple[str, ...] = (piece.usage_source, piece.usage_id)
        if kind is not ChargeKind.OVERAGE:
            ids += (lot.lot_id if lot else "",)
        invoice_id = lot.invoice_id if lot else None
        if kind is ChargeKind.OVERAGE:
            invoice_id = self._provisional_invoice(booked_at)
        return Charge(
            charge_id=charge_id(kind, *ids),
            kind=kind,
            category="Usage",
            frequency="Usage-Based",
            description=_DESCRIPTIONS[kind].format(sku=sku.description),
            **self._account_columns(),
            sub_account_id=piece.sub_account_id,
            sub_account_name=piece.sub_account_name,
            sub_account_type=piece.sub_account_type,
            billing_currency=billing_currency,
            **booking,
            charge_period=charge_period(
                piece.occurred_at, self.rules.charge_grain, self.terms.timezone
            ),
            invoice_id=invoice_id,
            billed_cost=billed,
            effective_cost=effective,
            list_unit_price=money.price(
                money.mul(piece.pc_list_unit_price, list_credit)
            ),
            contracted_unit_price=money.price(paid),
            pricing_quantity=piece.pricing_quantity,
            pricing_unit=sku.pricing_unit,
            pricing_currency=piece.currency,
            pc_list_unit_price=piece.pc_list_unit_price,
            pc_contracted_unit_price=piece.pc_contracted_unit_price,
            pc_effective_cost=piece.credits,
            pricing_category=piece.pricing_category,
            consumed_quantity=piece.consumed_quantity,
            consumed_unit=sku.consumed_unit,
            service_name=sku.service_name,
            service_category=sku.service_category,
            service_subcategory=sku.service_subcategory,
            sku_id=sku.sku_id,
            sku_price_id=sku.sku_price_id,
            sku_meter=sku.sku_meter,
            sku_price_details=dict(sku.price_details) or None,
            resource_id=piece.resource_id,
            resource_name=piece.resource_name,
            resource_type=sku.resource_type if piece.resource_id else None,
            region_id=piece.region_id,
            region_name=piece.region_name,
            source_event_id=piece.usage_id,
            source_event_source=piece.usage_source,
            lot_id=lot.lot_id if lot else None,
            settlement_event_id=settlement.id if settlement else None,
            tags=dict(piece.tags),
        )

    def _lot_charge(
        self,
        lot: Lot,
        kind: ChargeKind,
        moment: datetime,
        *,
        credits: Decimal,
        billed: Decimal,
        effective: Decimal,
        invoice_id: str | None,
        event: Event | None = None,
    ) -> Charge:
        """A row about the lot itself: its purchase, refund or expiry.

        Purchases and refunds are priced in the billing currency (what a
        credit lists at and what this lot paid for one); an expiry is priced
        in credits, one credit per credit.
        """
        currency = self.prices.currencies[lot.currency]
        list_credit = currency.list_prices[lot.billing_currency]
        paid_credit = money.price(money.div(lot.amount, lot.quantity))
        grain, zone = self.rules.charge_grain, self.terms.timezone
        booking = self._booking(moment)
        if kind is ChargeKind.PURCHASE and lot.expires_at is not None:
            period = (floor_second(lot.purchased_at), floor_second(lot.expires_at))
        else:
            period = charge_period(moment, grain, zone)
        expiry = kind is ChargeKind.EXPIRY
        return Charge(
            charge_id=charge_id(
                kind,
                *(
                    (event.source, event.id)
                    if kind is ChargeKind.REFUND and event
                    else (lot.lot_id,)
                ),
            ),
            kind=kind,
            category="Usage" if expiry else "Purchase",
            frequency="One-Time",
            description=_DESCRIPTIONS[kind].format(
                quantity=money.text(lot.quantity), unit=currency.unit, sku=""
            ),
            **self._account_columns(),
            sub_account_id=lot.sub_account_id,
            sub_account_name=lot.sub_account_name,
            sub_account_type=lot.sub_account_type,
            billing_currency=lot.billing_currency,
            **booking,
            charge_period=period,
            invoice_id=invoice_id,
            billed_cost=billed,
            effective_cost=effective,
            list_unit_price=list_credit,
            contracted_unit_price=paid_credit,
            pricing_quantity=credits,
            pricing_unit=currency.unit,
            pricing_currency=lot.currency if expiry else lot.billing_currency,
            pc_list_unit_price=Decimal(1) if expiry else list_credit,
            pc_contracted_unit_price=Decimal(1) if expiry else paid_credit,
            pc_effective_cost=credits if expiry else Decimal(0),
            pricing_category="Standard",
            consumed_quantity=credits if expiry else None,
            consumed_unit=currency.unit if expiry else None,
            service_name=currency.service_name,
            service_category=currency.service_category,
            service_subcategory=currency.service_subcategory,
            sku_id=currency.sku_id,
            sku_price_id=currency.sku_price_id,
            sku_meter=currency.sku_meter,
            sku_price_details=None,
            resource_id=lot.lot_id,
            resource_name=f"{currency.name} lot, invoice {lot.invoice_id}",
            resource_type="Credit Lot",
            region_id=None,
            region_name=None,
            source_event_id=event.id if event else lot.purchase_id,
            source_event_source=event.source if event else lot.purchase_source,
            lot_id=lot.lot_id,
        )

    def _provisional_invoice(self, moment: datetime) -> str | None:
        pattern = self.rules.overage_invoice_pattern
        if pattern is None:
            return None
        return pattern.format(
            account=self.account.account_id,
            period=period_label(moment, self.terms.timezone),
        )


_DESCRIPTIONS = {
    ChargeKind.USAGE: "{sku}",
    ChargeKind.SETTLEMENT: "{sku} (deficit settled by a later purchase)",
    ChargeKind.OVERAGE: "{sku} (overage, billed in arrears)",
    ChargeKind.PURCHASE: "Purchase of {quantity} {unit}",
    ChargeKind.REFUND: "Refund against the purchase of {unit}",
    ChargeKind.EXPIRY: "Expiry of unused {unit}",
}


def _nothing_owed(piece: Metered) -> Metered:
    """A settled deficit: kept, at zero, so the store knows to clear it."""
    zero = Decimal(0)
    return replace(piece, credits=zero, pricing_quantity=zero, consumed_quantity=zero)


def _reject(event: Event, reason: Reason, detail: str) -> Rejection:
    return Rejection(reason, detail, event.id, event.source, event.account_id)
