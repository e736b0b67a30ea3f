"""The FOCUS rules the official validator does not check, checked on every output.

`focus-validator` 2.2.1 skips a few rules its rule file states (see
`docs/conformance.md`), and no row-level validator can check sums across
rows. These checks do, on rendered rows (JSON or CSV cells, as published):

- column set and order: the 57 FOCUS columns in spec order, then only `x_`
  columns;
- date/time text is `YYYY-MM-DDTHH:MM:SSZ`;
- ListCost = ListUnitPrice x PricingQuantity and ContractedCost =
  ContractedUnitPrice x PricingQuantity, at the cost scale (exactly; a row
  that folds n rows may differ by n - 1 units of the last place);
- the non-null rules: prices, quantities and SKU columns are null on Tax
  rows and not null on Usage and Purchase rows that are not corrections;
- per lot, the EffectiveCost of its usage, settlement, expiry and refund rows
  plus the basis still in the lot equals the BilledCost of its purchase and
  refund rows, exactly;
- per InvoiceId, the sum of BilledCost equals the invoice's total.

Each violation is a `Finding`; an empty list means the output passed.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from ledger import money
from ledger.charges import DATETIME_COLUMNS, FOCUS_COLUMNS

DATETIME_TEXT = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")
PRICED = (
    "ListUnitPrice",
    "ContractedUnitPrice",
    "PricingCategory",
    "PricingQuantity",
    "PricingUnit",
    "PricingCurrencyListUnitPrice",
    "PricingCurrencyContractedUnitPrice",
    "SkuId",
    "SkuPriceId",
)
LOT_SPENT = frozenset({"usage", "settlement", "expiry", "refund"})
LOT_BILLED = frozenset({"purchase", "refund"})


@dataclass(frozen=True, slots=True)
class Finding:
    """One broken rule: which check, which row (or lot, or invoice), why."""

    check: str
    subject: str
    detail: str


def _decimal(value: Any) -> Decimal | None:
    if value is None or value == "":
        return None
    return Decimal(str(value))


def check_columns(columns: Sequence[str]) -> list[Finding]:
    found: list[Finding] = []
    if list(columns[: len(FOCUS_COLUMNS)]) != list(FOCUS_COLUMNS):
        found.append(
            Finding(
                "columns",
                "header",
                "the FOCUS columns are not all present in specification order",
            )
        )
    for extra in columns[len(FOCUS_COLUMNS) :]:
        if not extra.startswith("x_"):
            found.append(Finding("columns", extra, "a custom column must start x_"))
    return found


def check_row(row: Mapping[str, Any]) -> list[Finding]:
    """The checks that need only the row itself."""
    found: list[Finding] = []
    subject = str(row.get("x_ChargeId") or "?")
    for column in DATETIME_COLUMNS:
        value = row.get(column)
        if value is not None and not DATETIME_TEXT.match(str(value)):
            found.append(Finding("datetime", subject, f"{column} is {value!r}"))
    folded = int(row.get("x_AggregatedRows") or 1)
    for cost, price in (
        ("ListCost", "ListUnitPrice"),
        ("ContractedCost", "ContractedUnitPrice"),
    ):
        unit, quantity = _decimal(row.get(price)), _decimal(row.get("PricingQuantity"))
        actual = _decimal(row.get(cost))
        if unit is None or quantity is None or actual is None:
            continue
        expected = money.cost(money.mul(unit, quantity))
        # Each folded row was rounded once: n rows may differ by n - 1 units.
        tolerance = Decimal(folded - 1).scaleb(-money.COST_PLACES)
        if abs(actual - expected) > tolerance:
            found.append(
                Finding(
                    "unit price x quantity",
                    subject,
                    f"{cost} {actual} but {price} x PricingQuantity is {expected}",
                )
            )
    category = row.get("ChargeCategory")
    correction = row.get("ChargeClass") == "Correction"
    for column in PRICED:
        value = row.get(column)
        if category == "Tax" and value not in (None, ""):
            found.append(Finding("null on tax", subject, f"{column} must be null"))
        if category in ("Usage", "Purchase") and not correction and value in (None, ""):
            found.append(Finding("not null", subject, f"{column} must not be null"))
    return found


def check_lots(
    rows: Iterable[Mapping[str, Any]], basis_left: Mapping[str, Decimal]
) -> list[Finding]:
    """Per lot: spent EffectiveCost + basis left = billed, to the last digit.

    `basis_left` is the ledger's remaining basis per lot (zero once closed).
    """
    spent: dict[str, Decimal] = {}
    billed: dict[str, Decimal] = {}
    for row in rows:
        lot, kind = row.get("x_CreditLotId"), row.get("x_ChargeKind")
        if not lot:
            continue
        if kind in LOT_SPENT:
            spent[lot] = spent.get(lot, Decimal(0)) + (
                _decimal(row["EffectiveCost"]) or 0
            )
        if kind in LOT_BILLED:
            billed[lot] = billed.get(lot, Decimal(0)) + (
                _decimal(row["BilledCost"]) or 0
            )
    found = []
    for lot in sorted(set(spent) | set(billed)):
        left = basis_left.get(lot)
        if left is None:
            found.append(Finding("lot", lot, "the ledger does not know this lot"))
            continue
        total = spent.get(lot, Decimal(0)) + left
        if total != billed.get(lot, Decimal(0)):
            found.append(
                Finding(
                    "lot",
                    lot,
                    f"spent {spent.get(lot, 0)} + left {left} "
                    f"= {total}, but billed {billed.get(lot, 0)}",
                )
            )
    return found


def check_invoices(
    rows: Iterable[Mapping[str, Any]], totals: Mapping[str, Decimal]
) -> list[Finding]:
    """Per InvoiceId in the rows: the sum of BilledCost is the invoice total."""
    sums: dict[str, Decimal] = {}
    for row in rows:
        invoice = row.get("InvoiceId")
        if invoice:
            sums[invoice] = sums.get(invoice, Decimal(0)) + (
                _decimal(row.get("BilledCost")) or 0
            )
    found = []
    for invoice, total in sorted(sums.items()):
        expected = totals.get(invoice)
        if expected is None:
            found.append(Finding("invoice", invoice, "no such invoice in the ledger"))
        elif expected != total:
            found.append(
                Finding(
                    "invoice", invoice, f"rows bill {total}, the invoice is {expected}"
                )
            )
    return found


def check_output(
    columns: Sequence[str],
    rows: Sequence[Mapping[str, Any]],
    basis_left: Mapping[str, Decimal] | None = None,
    invoice_totals: Mapping[str, Decimal] | None = None,
) -> list[Finding]:
    """Every check; the cross-row ones only when the ledger's figures are given."""
    found = check_columns(columns)
    for row in rows:
        found += check_row(row)
    if basis_left is not None:
        found += check_lots(rows, basis_left)
    if invoice_totals is not None:
        found += check_invoices(rows, invoice_totals)
    return found
