"""The own FOCUS checks: they pass on the ledger's rows and catch each break."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from ledger.accounts import Account, Rules, apply
from ledger.aggregation import AGGREGATED_COLUMNS, fold
from ledger.charges import COLUMNS, focus_row, row_text
from ledger.conformance import check_output
from tests.factories import event, purchase_doc, refund_doc, spec_prices, usage_doc

W = "SKU-78314"


def ledger_rows() -> tuple[
    list[dict[str, Any]], dict[str, Decimal], dict[str, Decimal]
]:
    """Rows of a small story, with the ledger's lot basis and invoice totals."""
    prices = spec_prices()
    account = Account("a")
    documents = [
        purchase_doc("p1", "2025-04-01T00:00:00Z", "a", "3", "1.00", tax_amount="0.19"),
        usage_doc("u1", "2025-04-01T10:00:00Z", "a", W, "0.5"),
        usage_doc("u2", "2025-04-01T10:30:00Z", "a", W, "0.5"),
        purchase_doc("p2", "2025-04-02T00:00:00Z", "a", "10", "7.00"),
        refund_doc("r1", "2025-04-03T00:00:00Z", "a", "p2", "5.00", quantity="6"),
    ]
    rows = []
    for document in documents:
        outcome = apply(account, event(document, prices), prices, Rules())
        rows += [row_text(focus_row(e.charge)) for e in outcome.entries if e.charge]
    basis = {lot.lot_id: lot.remaining_basis for lot in account.lots}
    totals: dict[str, Decimal] = {}
    for row in rows:
        totals[row["InvoiceId"]] = totals.get(row["InvoiceId"], Decimal(0)) + Decimal(
            row["BilledCost"]
        )
    return rows, basis, totals


def test_the_ledgers_rows_pass_every_check() -> None:
    rows, basis, totals = ledger_rows()

    assert check_output(list(COLUMNS), rows, basis, totals) == []


@pytest.mark.parametrize(
    ("column", "value", "check"),
    [
        ("ChargePeriodStart", "2025-04-01 10:00:00", "datetime"),
        ("ListCost", "999.00", "unit price x quantity"),
        ("ContractedCost", "0.01", "unit price x quantity"),
        ("SkuId", None, "not null"),
        ("PricingQuantity", None, "not null"),
        ("EffectiveCost", "0.11", "lot"),
    ],
)
def test_each_break_of_a_usage_row_is_found(
    column: str, value: str | None, check: str
) -> None:
    rows, basis, totals = ledger_rows()
    usage = next(row for row in rows if row["x_ChargeKind"] == "usage")
    usage[column] = value

    findings = check_output(list(COLUMNS), rows, basis, totals)

    assert check in {finding.check for finding in findings}


def test_a_priced_tax_row_a_wrong_invoice_and_stray_columns_are_found() -> None:
    rows, basis, totals = ledger_rows()
    tax = next(row for row in rows if row["ChargeCategory"] == "Tax")
    tax["SkuId"] = "SKU-45678"
    tax["BilledCost"] = "0.20"

    findings = check_output([*COLUMNS, "Extra"], rows, basis, totals)

    assert {"null on tax", "invoice", "columns"} <= {f.check for f in findings}


def test_folding_keeps_every_total_and_passes_the_checks() -> None:
    rows, basis, totals = ledger_rows()

    folded = fold(rows)

    assert len(folded) < len(rows)
    for column in (
        "BilledCost",
        "EffectiveCost",
        "ListCost",
        "ContractedCost",
        "PricingCurrencyEffectiveCost",
    ):
        before = sum(Decimal(r[column]) for r in rows if r[column] is not None)
        after = sum(Decimal(r[column]) for r in folded if r[column] is not None)
        assert before == after, column
    assert check_output(list(AGGREGATED_COLUMNS), folded, basis, totals) == []
    assert fold(rows) == folded  # the same rows fold into the same ids
