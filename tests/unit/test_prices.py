"""The price list is checked at start: a bad one stops the service."""

from __future__ import annotations

from decimal import Decimal

import pytest

from ledger.errors import PriceListError
from ledger.prices import PriceList, parse_pricing_unit
from tests.factories import SPEC, sample_prices

BASE = (SPEC / "prices.toml").read_text()


def test_the_sample_price_list_loads() -> None:
    prices = sample_prices()

    assert prices.skus["llm-large-input"].pricing_unit_size == 1_000_000
    assert prices.terms("acct-globex").overage_unit_price is not None


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (('list_price = "1"', "list_price = 1.0"), "decimal string"),
        (('USD = "2"', 'USD = "-2"'), "negative"),
        (("[currencies.TKN]", "[currencies.USD]"), "not an ISO 4217"),
        (('currency = "TKN"', 'currency = "XXX"'), "not a defined currency"),
        (
            ('pricing_unit = "Executions"', 'pricing_unit = "1,000 Tokens"'),
            "pricing unit",
        ),
    ],
)
def test_a_broken_price_list_names_its_problem(
    change: tuple[str, str], message: str
) -> None:
    with pytest.raises(PriceListError, match=message):
        PriceList.from_toml(BASE.replace(*change, 1))


def test_overage_terms_need_a_price_and_a_currency() -> None:
    with pytest.raises(PriceListError, match="overage"):
        PriceList.from_toml(BASE + '\n[accounts.x]\nshortfall = "overage"\n')


def test_pricing_units_carry_their_size() -> None:
    assert parse_pricing_unit("1000 Tokens") == (Decimal(1000), "Tokens")
    assert parse_pricing_unit("Workflow Operations") == (
        Decimal(1),
        "Workflow Operations",
    )
