"""FOCUS 1.2 charge rows: the ledger's output.

Every movement that has a cost basis becomes one `Charge`, and every charge
becomes one FOCUS row with the 57 FOCUS 1.2 columns in the order the
specification lists them, followed by the `x_` columns of focus-ledger.

How the virtual currency is shown (FOCUS 1.2, "virtual currency"):

- BillingCurrency is national. BilledCost, EffectiveCost, ListCost,
  ContractedCost, ListUnitPrice and ContractedUnitPrice are in it.
- PricingCurrency is the national currency on a purchase of credits and the
  credit (e.g. `TKN`) on everything priced in credits. The PricingCurrency*
  prices are per PricingUnit in PricingCurrency; PricingCurrencyEffectiveCost
  is the credits burned (0 on a purchase).
- National unit prices are derived, never configured: ListUnitPrice = credit
  list unit price x national list price of a credit; ContractedUnitPrice =
  credit contracted unit price x what this lot paid per credit.
- ListCost = ListUnitPrice x PricingQuantity and ContractedCost =
  ContractedUnitPrice x PricingQuantity, rounded to the cost scale. The
  EffectiveCost of a draw is the exact cost basis it took from its lot.

Row kinds (`x_ChargeKind`), their category and what makes them:

| kind       | ChargeCategory | made by                                        |
|------------|----------------|------------------------------------------------|
| purchase   | Purchase       | credits bought: BilledCost = amount paid       |
| usage      | Usage          | one per lot a consumption drew from            |
| settlement | Usage          | a later purchase paying for earlier deficit    |
| overage    | Usage          | uncovered usage billed in arrears              |
| expiry     | Usage          | credits left in a lot when it expired          |
| refund     | Purchase       | money returned, credits revoked (negative)     |
| tax        | Tax            | tax billed with a purchase (or returned)       |

The refund row's EffectiveCost is the basis revoked minus the amount
returned: zero when money comes back at cost, the forfeited value otherwise.
So for every lot, the EffectiveCost of its usage, settlement, expiry and
refund rows adds up to the BilledCost of its purchase and refund rows.

A row booked into a later billing period than its ChargePeriod because that
period was already closed (its invoice issued) when the event was recorded
has ChargeClass `Correction`; every other row has a null ChargeClass.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from functools import lru_cache
from typing import Any

from ledger import money
from ledger.periods import format_utc

FOCUS_COLUMNS: tuple[str, ...] = (
    "AvailabilityZone",
    "BilledCost",
    "BillingAccountId",
    "BillingAccountName",
    "BillingAccountType",
    "BillingCurrency",
    "BillingPeriodEnd",
    "BillingPeriodStart",
    "CapacityReservationId",
    "CapacityReservationStatus",
    "ChargeCategory",
    "ChargeClass",
    "ChargeDescription",
    "ChargeFrequency",
    "ChargePeriodEnd",
    "ChargePeriodStart",
    "CommitmentDiscountCategory",
    "CommitmentDiscountId",
    "CommitmentDiscountName",
    "CommitmentDiscountQuantity",
    "CommitmentDiscountStatus",
    "CommitmentDiscountType",
    "CommitmentDiscountUnit",
    "ConsumedQuantity",
    "ConsumedUnit",
    "ContractedCost",
    "ContractedUnitPrice",
    "EffectiveCost",
    "InvoiceId",
    "InvoiceIssuerName",
    "ListCost",
    "ListUnitPrice",
    "PricingCategory",
    "PricingCurrency",
    "PricingCurrencyContractedUnitPrice",
    "PricingCurrencyEffectiveCost",
    "PricingCurrencyListUnitPrice",
    "PricingQuantity",
    "PricingUnit",
    "ProviderName",
    "PublisherName",
    "RegionId",
    "RegionName",
    "ResourceId",
    "ResourceName",
    "ResourceType",
    "ServiceCategory",
    "ServiceName",
    "ServiceSubcategory",
    "SkuId",
    "SkuMeter",
    "SkuPriceDetails",
    "SkuPriceId",
    "SubAccountId",
    "SubAccountName",
    "SubAccountType",
    "Tags",
)

CUSTOM_COLUMNS: tuple[str, ...] = (
    "x_ChargeId",
    "x_ChargeKind",
    "x_CreditLotId",
    "x_SourceEventId",
    "x_SourceEventSource",
    "x_SettlementEventId",
)

COLUMNS = FOCUS_COLUMNS + CUSTOM_COLUMNS

MONEY_COLUMNS = frozenset({"BilledCost", "EffectiveCost", "ListCost", "ContractedCost"})
DECIMAL_COLUMNS = MONEY_COLUMNS | {
    "ListUnitPrice",
    "ContractedUnitPrice",
    "PricingCurrencyListUnitPrice",
    "PricingCurrencyContractedUnitPrice",
    "PricingCurrencyEffectiveCost",
    "PricingQuantity",
    "ConsumedQuantity",
    "CommitmentDiscountQuantity",
}
DATETIME_COLUMNS = frozenset(
    {"BillingPeriodStart", "BillingPeriodEnd", "ChargePeriodStart", "ChargePeriodEnd"}
)
JSON_COLUMNS = frozenset({"Tags", "SkuPriceDetails"})

_IDS = uuid.UUID("6f1d2b0e-6c4a-5d8e-9b7a-3c2f1e0d4b5a")


class ChargeKind(StrEnum):
    PURCHASE = "purchase"
    USAGE = "usage"
    SETTLEMENT = "settlement"
    OVERAGE = "overage"
    EXPIRY = "expiry"
    REFUND = "refund"
    TAX = "tax"


def charge_id(kind: ChargeKind, *parts: str) -> str:
    """A row id that depends only on what caused the row.

    Replaying the same events always yields the same ids, so a subscriber can
    de-duplicate and a dispute can name a row that will never be renumbered.
    """
    return name_uuid(_IDS, "|".join((str(kind), *parts)))


def lot_id(purchase_source: str, purchase_id: str) -> str:
    """The id of the lot created by one purchase event."""
    return name_uuid(_IDS, f"lot|{purchase_source}|{purchase_id}")


def name_uuid(namespace: uuid.UUID, name: str) -> str:
    """`str(uuid.uuid5(namespace, name))`, without building a UUID object:
    every row needs one, and this is a third of the time."""
    digest = bytearray(hashlib.sha1(namespace.bytes + name.encode()).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50  # version 5
    digest[8] = (digest[8] & 0x3F) | 0x80  # RFC 4122 variant
    text = digest.hex()
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


@dataclass(frozen=True, slots=True)
class Charge:
    """One FOCUS row, with typed values; `focus_row` renders it."""

    charge_id: str
    kind: ChargeKind
    category: str
    frequency: str
    description: str
    billing_account_id: str
    billing_account_name: str
    billing_account_type: str | None
    sub_account_id: str | None
    sub_account_name: str | None
    sub_account_type: str | None
    billing_currency: str
    billing_period: tuple[datetime, datetime]
    charge_period: tuple[datetime, datetime]
    provider: str
    invoice_id: str | None
    billed_cost: Decimal
    effective_cost: Decimal
    list_unit_price: Decimal | None
    contracted_unit_price: Decimal | None
    pricing_quantity: Decimal | None
    pricing_unit: str | None
    pricing_currency: str
    pc_list_unit_price: Decimal | None
    pc_contracted_unit_price: Decimal | None
    pc_effective_cost: Decimal
    pricing_category: str | None
    consumed_quantity: Decimal | None
    consumed_unit: str | None
    service_name: str
    service_category: str
    service_subcategory: str
    sku_id: str | None
    sku_price_id: str | None
    sku_meter: str | None
    sku_price_details: dict[str, str] | None
    resource_id: str | None
    resource_name: str | None
    resource_type: str | None
    region_id: str | None
    region_name: str | None
    source_event_id: str
    source_event_source: str
    lot_id: str | None = None
    settlement_event_id: str | None = None
    tags: dict[str, str] = field(default_factory=dict)

    charge_class: str | None = None
    billing_period_label: str = ""

    @property
    def list_cost(self) -> Decimal:
        """ListUnitPrice x PricingQuantity; a Tax row, unpriced, lists at cost."""
        if self.list_unit_price is None or self.pricing_quantity is None:
            return self.billed_cost
        return money.cost(money.mul(self.list_unit_price, self.pricing_quantity))

    @property
    def contracted_cost(self) -> Decimal:
        if self.contracted_unit_price is None or self.pricing_quantity is None:
            return self.billed_cost
        return money.cost(money.mul(self.contracted_unit_price, self.pricing_quantity))


def focus_row(charge: Charge) -> dict[str, Any]:
    """The row as column -> value, FOCUS columns in spec order, then `x_`.

    Values are `Decimal`, `datetime`, `str`, `dict` (the JSON columns) or None;
    the writers for Kafka, CSV and Parquet decide their text.
    """
    values: dict[str, Any] = {
        "AvailabilityZone": None,
        "BilledCost": charge.billed_cost,
        "BillingAccountId": charge.billing_account_id,
        "BillingAccountName": charge.billing_account_name,
        "BillingAccountType": charge.billing_account_type,
        "BillingCurrency": charge.billing_currency,
        "BillingPeriodEnd": charge.billing_period[1],
        "BillingPeriodStart": charge.billing_period[0],
        "CapacityReservationId": None,
        "CapacityReservationStatus": None,
        "ChargeCategory": charge.category,
        "ChargeClass": charge.charge_class,
        "ChargeDescription": charge.description,
        "ChargeFrequency": charge.frequency,
        "ChargePeriodEnd": charge.charge_period[1],
        "ChargePeriodStart": charge.charge_period[0],
        "CommitmentDiscountCategory": None,
        "CommitmentDiscountId": None,
        "CommitmentDiscountName": None,
        "CommitmentDiscountQuantity": None,
        "CommitmentDiscountStatus": None,
        "CommitmentDiscountType": None,
        "CommitmentDiscountUnit": None,
        "ConsumedQuantity": charge.consumed_quantity,
        "ConsumedUnit": charge.consumed_unit,
        "ContractedCost": charge.contracted_cost,
        "ContractedUnitPrice": charge.contracted_unit_price,
        "EffectiveCost": charge.effective_cost,
        "InvoiceId": charge.invoice_id,
        "InvoiceIssuerName": charge.provider,
        "ListCost": charge.list_cost,
        "ListUnitPrice": charge.list_unit_price,
        "PricingCategory": charge.pricing_category,
        "PricingCurrency": charge.pricing_currency,
        "PricingCurrencyContractedUnitPrice": charge.pc_contracted_unit_price,
        "PricingCurrencyEffectiveCost": charge.pc_effective_cost,
        "PricingCurrencyListUnitPrice": charge.pc_list_unit_price,
        "PricingQuantity": charge.pricing_quantity,
        "PricingUnit": charge.pricing_unit,
        "ProviderName": charge.provider,
        "PublisherName": charge.provider,
        "RegionId": charge.region_id,
        "RegionName": charge.region_name,
        "ResourceId": charge.resource_id,
        "ResourceName": charge.resource_name,
        "ResourceType": charge.resource_type,
        "ServiceCategory": charge.service_category,
        "ServiceName": charge.service_name,
        "ServiceSubcategory": charge.service_subcategory,
        "SkuId": charge.sku_id,
        "SkuMeter": charge.sku_meter,
        "SkuPriceDetails": (
            dict(sorted(charge.sku_price_details.items()))
            if charge.sku_price_details
            else None
        ),
        "SkuPriceId": charge.sku_price_id,
        "SubAccountId": charge.sub_account_id,
        "SubAccountName": charge.sub_account_name,
        "SubAccountType": charge.sub_account_type,
        "Tags": dict(sorted(charge.tags.items())),
        "x_ChargeId": charge.charge_id,
        "x_ChargeKind": str(charge.kind),
        "x_CreditLotId": charge.lot_id,
        "x_SourceEventId": charge.source_event_id,
        "x_SourceEventSource": charge.source_event_source,
        "x_SettlementEventId": charge.settlement_event_id,
    }
    return values  # written in COLUMNS order, which a test holds it to


def row_text(row: dict[str, Any]) -> dict[str, Any]:
    """The row with decimals and times as FOCUS text, JSON columns kept as dicts.

    Money columns show at least two decimal places ("245.00"); every decimal
    is plain text without exponent, so no reader parses it into a float by
    accident and equal values always render alike.
    """
    rendered = dict(row)
    for column in _MONEY_PRESENT:
        value = row.get(column)
        if value is not None:
            rendered[column] = _money_text(value)
    for column in _QUANTITY_PRESENT:
        value = row.get(column)
        if value is not None:
            rendered[column] = _quantity_text(value)
    for column in _DATETIME_PRESENT:
        value = row.get(column)
        if value is not None:
            rendered[column] = format_utc(value)
    return rendered


_MONEY_PRESENT = tuple(c for c in COLUMNS if c in MONEY_COLUMNS)
_QUANTITY_PRESENT = tuple(
    c for c in COLUMNS if c in DECIMAL_COLUMNS and c not in MONEY_COLUMNS
)
_DATETIME_PRESENT = tuple(c for c in COLUMNS if c in DATETIME_COLUMNS)
# Unit prices and zero costs repeat on row after row; their text is cached.
_RENDERED_DECIMALS_MAX = 65_536


@lru_cache(maxsize=_RENDERED_DECIMALS_MAX)
def _money_text(value: Decimal) -> str:
    return money.text(value, 2)


@lru_cache(maxsize=_RENDERED_DECIMALS_MAX)
def _quantity_text(value: Decimal) -> str:
    return money.text(value, 0)
