"""The FOCUS 1.2 virtual-currency appendix, reproduced from the same events.

Scenario A buys 100,000 tokens at the 2 USD list price, scenario B at a
negotiated 1 USD; both then use 245 Q-widget executions (1 token each), 5
Z-widget executions (2 tokens) and 120 workflow operations (3 tokens). Every
cost, price and quantity of the spec's rows must come out of the ledger.
"""

from __future__ import annotations

import csv
import hashlib
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from ledger.accounts import Account, Rules, apply
from ledger.charges import focus_row
from ledger.periods import ChargeGrain
from tests.factories import DATA, event, purchase_doc, spec_prices, usage_doc

EXAMPLES = DATA / "focus-1.2-examples"
NUMERIC = (
    "BilledCost",
    "EffectiveCost",
    "ListCost",
    "ContractedCost",
    "ListUnitPrice",
    "ContractedUnitPrice",
    "PricingCurrencyListUnitPrice",
    "PricingCurrencyContractedUnitPrice",
    "PricingCurrencyEffectiveCost",
    "PricingQuantity",
    "ConsumedQuantity",
)
TEXT = (
    "ChargeCategory",
    "ChargeFrequency",
    "BillingCurrency",
    "PricingCategory",
    "BillingAccountName",
)
SKUS = {"762343": "SKU-762343", "12345": "SKU-12345", "78314": "SKU-78314"}


def _spec_rows(name: str) -> list[dict[str, str]]:
    with (EXAMPLES / name).open(newline="") as handle:
        return [
            {key: value.strip() for key, value in row.items()}
            for row in csv.DictReader(handle)
        ]


def _date(text: str) -> datetime:
    return datetime.strptime(text, "%m/%d/%y").replace(tzinfo=UTC)


def _ledger_rows(amount: str) -> list[dict[str, Any]]:
    prices = spec_prices()
    account = Account("12345")
    documents = [
        purchase_doc(
            "period-1",
            "2025-04-01T00:00:00Z",
            "12345",
            "100000",
            amount,
            expires_at="2026-04-01T00:00:00Z",
            billing_account_name="AwesomeCorpDemo",
        ),
        usage_doc(
            "q-widget",
            "2025-04-01T09:00:00Z",
            "12345",
            "SKU-762343",
            "245",
            resource_id="adbd-12af3-1234",
            resource_name="Alpha Widget",
        ),
        usage_doc(
            "z-widget",
            "2025-04-01T10:00:00Z",
            "12345",
            "SKU-12345",
            "5",
            resource_id="adbd-12af3-1234",
            resource_name="Alpha Widget",
        ),
        usage_doc(
            "workflow",
            "2025-04-01T11:00:00Z",
            "12345",
            "SKU-78314",
            "120",
            resource_id="718239-abd0-12353",
            resource_name="Beta Workflow",
        ),
    ]
    rows = []
    for document in documents:
        outcome = apply(
            account,
            event(document, prices),
            prices,
            Rules(charge_grain=ChargeGrain.DAY),
        )
        assert outcome.rejection is None
        rows += [focus_row(entry.charge) for entry in outcome.entries if entry.charge]
    return rows


@pytest.mark.parametrize(
    ("amount", "purchase_file", "usage_file"),
    [
        (
            "200000.00",
            "virtual_currency_pricing_model_a1.csv",
            "virtual_currency_pricing_model_a2.csv",
        ),
        (
            "100000.00",
            "virtual_currency_pricing_model_b1.csv",
            "virtual_currency_pricing_model_b2.csv",
        ),
    ],
)
def test_the_ledger_reproduces_the_spec_rows(
    amount: str, purchase_file: str, usage_file: str
) -> None:
    spec = _spec_rows(purchase_file) + _spec_rows(usage_file)
    ours = _ledger_rows(amount)

    assert len(ours) == len(spec) == 4
    for theirs, mine in zip(spec, ours, strict=True):
        for column in NUMERIC:
            if theirs[column] == "":
                assert mine[column] is None, column
            else:
                assert mine[column] == Decimal(theirs[column]), (column, mine[column])
        for column in TEXT:
            assert mine[column] == theirs[column], column
        assert mine["ChargePeriodStart"] == _date(theirs["ChargePeriodStart"])
        assert mine["ChargePeriodEnd"] == _date(theirs["ChargePeriodEnd"])
        assert mine["BillingPeriodStart"] == _date(theirs["BillingPeriodStart"])
        assert mine["BillingPeriodEnd"] == _date(theirs["BillingPeriodEnd"])
        if theirs["ChargeCategory"] == "Usage":
            assert mine["SkuId"] == SKUS[theirs["SkuId"]]
            assert mine["PricingCurrency"] == "TKN"
            assert mine["ResourceId"] == theirs["ResourceId"]


def test_b1_b2_leaves_what_the_invoice_paid_minus_what_was_used() -> None:
    rows = _ledger_rows("100000.00")

    used = sum(row["EffectiveCost"] for row in rows if row["ChargeCategory"] == "Usage")
    billed = sum(row["BilledCost"] for row in rows)

    assert billed == Decimal("100000.00")
    assert used == Decimal("615.00")


def test_reference_files_are_the_specs() -> None:
    """The copies in tests/data must stay byte for byte what the spec published."""
    for name, digest in SPEC_DIGESTS.items():
        assert hashlib.sha256((EXAMPLES / name).read_bytes()).hexdigest() == digest


SPEC_DIGESTS = {
    "virtual_currency_pricing_model_a1.csv": (
        "476d16fbe85c72c51f591fa7cba41a293676464e5382f119be9b57786e1b9e66"
    ),
    "virtual_currency_pricing_model_a2.csv": (
        "52eede94a229e9e7f2371c964a24fadd51b907bb45a7f703b7103bbb4f657c17"
    ),
    "virtual_currency_pricing_model_b1.csv": (
        "1dc98c5b50ef212638ab91b47f67b8ecc70f552b6608eb9a4585bc2f1baa4027"
    ),
    "virtual_currency_pricing_model_b2.csv": (
        "a321ccd99c098c60ce1804e2b1820c8498e59fe068173be8b9aa97ca8592a5b1"
    ),
}
