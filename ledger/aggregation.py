"""Folding many tiny usage rows into few, with totals unchanged to the digit.

A meter that reports every API call makes a row per call. For exports, the
usage rows that agree on everything a FinOps query groups by (billing and
sub account, SKU, lot, resource, tags, charge and billing period, prices,
invoice) fold into one row whose costs and quantities are the exact sums of
the rows folded. `x_AggregatedRows` says how many; `x_ChargeId` is derived
from the group, so the same rows always fold into the same id. Purchases,
refunds, expiries and taxes are never folded.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable
from decimal import Decimal
from typing import Any

from ledger import money
from ledger.charges import COLUMNS, MONEY_COLUMNS

AGGREGATED_COLUMNS = (*COLUMNS, "x_AggregatedRows")
FOLDED_KINDS = frozenset({"usage", "settlement", "overage"})
GROUP_BY = (
    "BillingAccountId",
    "SubAccountId",
    "SkuId",
    "SkuPriceId",
    "x_CreditLotId",
    "ResourceId",
    "RegionId",
    "Tags",
    "ChargePeriodStart",
    "ChargePeriodEnd",
    "BillingPeriodStart",
    "ChargeClass",
    "x_ChargeKind",
    "PricingCategory",
    "ListUnitPrice",
    "ContractedUnitPrice",
    "PricingCurrencyListUnitPrice",
    "PricingCurrencyContractedUnitPrice",
    "InvoiceId",
    "BillingCurrency",
    "PricingCurrency",
)
SUMMED = (
    "BilledCost",
    "EffectiveCost",
    "ListCost",
    "ContractedCost",
    "PricingQuantity",
    "ConsumedQuantity",
    "PricingCurrencyEffectiveCost",
)
_GROUPS = uuid.UUID("c7a8a1f2-2f0b-5a3e-8c1d-9e4b7f60a2d3")


def _key(row: dict[str, Any]) -> str:
    return json.dumps([row.get(column) for column in GROUP_BY], sort_keys=True)


def fold(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rendered rows in, rendered rows out (with `x_AggregatedRows`)."""
    out: list[dict[str, Any]] = []
    groups: dict[str, tuple[dict[str, Any], dict[str, Decimal], int]] = {}
    order: list[str | int] = []
    for row in rows:
        if row.get("x_ChargeKind") not in FOLDED_KINDS:
            order.append(len(out))
            out.append({**row, "x_AggregatedRows": "1"})
            continue
        key = _key(row)
        if key not in groups:
            groups[key] = (row, {column: Decimal(0) for column in SUMMED}, 0)
            order.append(key)
        first, sums, count = groups[key]
        for column in SUMMED:
            if row.get(column) not in (None, ""):
                sums[column] = money.add(sums[column], Decimal(str(row[column])))
        groups[key] = (first, sums, count + 1)
    folded: list[dict[str, Any]] = []
    for item in order:
        if isinstance(item, int):
            folded.append(out[item])
            continue
        first, sums, count = groups[item]
        row = dict(first)
        for column in SUMMED:
            if first.get(column) not in (None, ""):
                places = 2 if column in MONEY_COLUMNS else 0
                row[column] = money.text(sums[column], places)
        if count > 1:
            row["x_ChargeId"] = str(uuid.uuid5(_GROUPS, item))
            row["x_SourceEventId"] = None
            row["x_SourceEventSource"] = None
            row["x_SettlementEventId"] = None
        row["x_AggregatedRows"] = str(count)
        folded.append(row)
    return folded
