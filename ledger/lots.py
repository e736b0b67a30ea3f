"""Cost-basis lots: credits bought together, at one price, spent in order.

A lot records what was bought (`quantity`) and paid (`amount`), and what is
left of both (`remaining_quantity`, `remaining_basis`). Its unit cost is the
exact ratio amount / quantity; it is never stored rounded.

The cost of drawing `q` credits from a lot is

    remaining_basis * q / remaining_quantity, rounded to COST_PLACES,

except for the draw that empties the lot, which takes the whole remaining
basis. Expiry and refunds take what is left in the same way. Each draw moves
its exact cost from the lot to a charge, so at any moment

    amount = remaining_basis + sum of the costs of all draws from the lot

and when the lot is empty, its charges add up to what was paid, to the last
digit. `check_conservation` asserts exactly this before a state is committed.

Order. Lots are consumed oldest first: by purchase time, then purchase event
id and source, a total order that does not depend on the order in which
events arrived. An account may instead burn the soonest-expiring lot first
(lots that never expire come last), then oldest first. A consumption at time
`t` may draw only from lots bought at or before `t` and not expired at `t`;
`expires_at` is exclusive (a lot expiring at 10:00 is unusable at 10:00).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from enum import StrEnum

from ledger import money
from ledger.errors import InvariantError
from ledger.prices import DrawOrder

_NEVER = datetime.max.replace(tzinfo=UTC)


class LotStatus(StrEnum):
    OPEN = "open"
    EMPTY = "empty"
    EXPIRED = "expired"
    REFUNDED = "refunded"


@dataclass(slots=True)
class Lot:
    """One purchase's credits; mutable only through the functions below."""

    lot_id: str
    account_id: str
    currency: str
    billing_currency: str
    purchased_at: datetime
    purchase_id: str
    purchase_source: str
    expires_at: datetime | None
    quantity: Decimal
    amount: Decimal
    remaining_quantity: Decimal
    remaining_basis: Decimal
    refunded_amount: Decimal
    invoice_id: str
    sub_account_id: str | None
    sub_account_name: str | None
    sub_account_type: str | None
    status: LotStatus = LotStatus.OPEN
    expiry_alerted: bool = False
    changed: bool = False

    @property
    def fifo_key(self) -> tuple[datetime, str, str]:
        return (self.purchased_at, self.purchase_id, self.purchase_source)

    def usable_at(self, moment: datetime) -> bool:
        """Bought at or before `moment`, not yet expired then, credits left."""
        return (
            self.status is LotStatus.OPEN
            and self.remaining_quantity > 0
            and self.purchased_at <= moment
            and (self.expires_at is None or moment < self.expires_at)
        )

    def unit_cost(self) -> Decimal:
        """What one credit of this lot cost, at the price scale (display only)."""
        return money.price(money.div(self.amount, self.quantity))


@dataclass(frozen=True, slots=True)
class Draw:
    """Credits taken from one lot and the national cost they carry."""

    lot: Lot
    credits: Decimal
    basis: Decimal


def draw_order_key(order: DrawOrder) -> Callable[[Lot], tuple[datetime | str, ...]]:
    """The sort key of lots for a draw policy; both end in the FIFO key."""
    if order is DrawOrder.EXPIRING_FIRST:
        return lambda lot: (lot.expires_at or _NEVER, *lot.fifo_key)
    return lambda lot: lot.fifo_key


def take(lot: Lot, credits: Decimal) -> Draw:
    """Move `credits` and their share of the basis out of the lot.

    Raises:
        InvariantError: more credits than the lot holds.
    """
    if credits <= 0 or credits > lot.remaining_quantity:
        raise InvariantError(
            f"lot {lot.lot_id}: cannot take {credits} of {lot.remaining_quantity}"
        )
    if credits == lot.remaining_quantity:
        basis = lot.remaining_basis
    else:
        basis = money.cost(
            money.div(money.mul(lot.remaining_basis, credits), lot.remaining_quantity)
        )
    lot.remaining_quantity = money.sub(lot.remaining_quantity, credits)
    lot.remaining_basis = money.sub(lot.remaining_basis, basis)
    if lot.remaining_quantity == 0:
        lot.status = LotStatus.EMPTY
    lot.changed = True
    return Draw(lot=lot, credits=credits, basis=basis)


def draw(
    lots: list[Lot], credits: Decimal, moment: datetime, order: DrawOrder
) -> tuple[list[Draw], Decimal]:
    """Draw up to `credits` from the lots usable at `moment`, in policy order.

    Returns the draws and the credits that no lot could cover.
    """
    draws: list[Draw] = []
    wanted = credits
    for lot in sorted(
        (lot for lot in lots if lot.usable_at(moment)),
        key=draw_order_key(order),
    ):
        if wanted <= 0:
            break
        taken = min(wanted, lot.remaining_quantity)
        draws.append(take(lot, taken))
        wanted = money.sub(wanted, taken)
    return draws, wanted


def close(lot: Lot, status: LotStatus) -> Draw | None:
    """Take all that is left (on expiry or refund); None if nothing is left."""
    remaining = lot.remaining_quantity
    draw_all = take(lot, remaining) if remaining > 0 else None
    lot.status = status
    lot.changed = True
    return draw_all


def check_conservation(lot: Lot, drawn_basis_total: Decimal) -> None:
    """Fatal unless what was paid = what is left + what was drawn, exactly.

    Raises:
        InvariantError: the lot has lost or gained value.
    """
    if lot.remaining_quantity < 0 or lot.remaining_basis < 0:
        raise InvariantError(f"lot {lot.lot_id} is negative")
    if money.add(lot.remaining_basis, drawn_basis_total) != lot.amount:
        raise InvariantError(
            f"lot {lot.lot_id}: paid {lot.amount}, left {lot.remaining_basis}, "
            f"drawn {drawn_basis_total}"
        )
    if lot.remaining_quantity == 0 and lot.remaining_basis != 0:
        raise InvariantError(f"lot {lot.lot_id} is empty but holds value")
