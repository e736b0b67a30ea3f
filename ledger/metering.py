"""Usage priced in credits, and cut into the pieces that lots pay for.

A `Metered` is one usage event as its FOCUS rows will show it: the SKU, the
credits it costs, its pricing and consumed quantities and where it happened,
before any lot is involved. Drawing from lots cuts it into pieces (one per
lot, and one for what no lot covered); a deficit keeps the uncovered piece
until a purchase pays for it.

Cutting keeps the totals exact: each piece takes its share of the quantities
in proportion to its credits, rounded to the quantity scale, and the last
piece takes what is left. So the rows of one usage always add up to what the
meter measured.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime
from decimal import Decimal

from ledger import money
from ledger.events import Event, UsageData
from ledger.prices import PriceList


@dataclass(frozen=True, slots=True)
class Metered:
    """A usage (or the part of one) priced in credits."""

    usage_id: str
    usage_source: str
    occurred_at: datetime
    sku_id: str
    currency: str
    credits: Decimal
    pricing_quantity: Decimal
    consumed_quantity: Decimal
    pc_list_unit_price: Decimal
    pc_contracted_unit_price: Decimal
    pricing_category: str
    sub_account_id: str | None = None
    sub_account_name: str | None = None
    sub_account_type: str | None = None
    resource_id: str | None = None
    resource_name: str | None = None
    region_id: str | None = None
    region_name: str | None = None
    tags: dict[str, str] = field(default_factory=dict)

    def cut(self, credits: Decimal) -> tuple[Metered, Metered | None]:
        """Split off the piece worth `credits`; returns (piece, rest or None)."""
        if credits >= self.credits:
            return self, None
        pricing = money.quantity(
            money.div(money.mul(self.pricing_quantity, credits), self.credits)
        )
        consumed = money.quantity(
            money.div(money.mul(self.consumed_quantity, credits), self.credits)
        )
        piece = replace(
            self, credits=credits, pricing_quantity=pricing, consumed_quantity=consumed
        )
        rest = replace(
            self,
            credits=money.sub(self.credits, credits),
            pricing_quantity=money.sub(self.pricing_quantity, pricing),
            consumed_quantity=money.sub(self.consumed_quantity, consumed),
        )
        return piece, rest


def meter(event: Event, data: UsageData, prices: PriceList) -> Metered:
    """Price a usage in credits: the meter's own price, else price list x quantity.

    Pricing quantity = consumed quantity / the size of the SKU's pricing unit.
    The account's contracted credit price applies where it has one.
    """
    sku = prices.skus[data.sku_id]
    pricing_quantity = money.quantity(money.div(data.quantity, sku.pricing_unit_size))
    if data.credits is not None:
        credits = data.credits
        contracted = (
            money.price(money.div(credits, pricing_quantity))
            if pricing_quantity
            else Decimal(0)
        )
        category = "Dynamic"
    else:
        contracted = prices.contracted_price(event.account_id, sku)
        credits = money.quantity(money.mul(pricing_quantity, contracted))
        category = "Standard"
    return Metered(
        usage_id=event.id,
        usage_source=event.source,
        occurred_at=event.time,
        sku_id=sku.sku_id,
        currency=sku.currency,
        credits=credits,
        pricing_quantity=pricing_quantity,
        consumed_quantity=data.quantity,
        pc_list_unit_price=sku.list_price,
        pc_contracted_unit_price=contracted,
        pricing_category=category,
        sub_account_id=data.sub_account_id,
        sub_account_name=data.sub_account_name,
        sub_account_type=data.sub_account_type,
        resource_id=data.resource_id,
        resource_name=data.resource_name,
        region_id=data.region_id,
        region_name=data.region_name or prices.regions.get(data.region_id or ""),
        tags=dict(data.tags),
    )
