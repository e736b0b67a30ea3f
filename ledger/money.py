"""Decimal rules for every quantity and amount the ledger holds.

Everything numeric in focus-ledger is a `Decimal`; no value ever passes through
a binary float. This module owns the limits and the rounding:

- Credits, consumed quantities and pricing quantities keep at most
  `QUANTITY_PLACES` decimal places. Input with more places is rejected, never
  rounded, because rounding a meter reading silently changes what was used.
- National-currency costs are computed at `COST_PLACES` decimal places with
  banker's rounding (`ROUND_HALF_EVEN`). AI usage is often a fraction of a cent,
  so cents would lose it.
- Unit prices are computed at `PRICE_PLACES` places, the same way.
- No value may have more than `INTEGER_DIGITS_MAX` digits before the point, so
  that every value fits `NUMERIC(38, 12)` in PostgreSQL with room for sums.

Rounding happens in exactly one place per derived value. The cost of a draw
from a lot is the only rounded cost that matters for conservation, and the draw
that empties a lot takes the lot's whole remaining basis instead of a rounded
share (see `ledger.lots`), so a lot's costs always add up to what was paid.
"""

from __future__ import annotations

from decimal import ROUND_HALF_EVEN, Context, Decimal, InvalidOperation

QUANTITY_PLACES = 12
COST_PLACES = 12
PRICE_PLACES = 12
INTEGER_DIGITS_MAX = 18

# Wide enough that products and quotients of in-range values are exact before
# the one final quantization; the traps make any overflow loud, not silent.
_CONTEXT = Context(prec=80, rounding=ROUND_HALF_EVEN, Emin=-999, Emax=999)

ZERO = Decimal(0)
ONE = Decimal(1)

_QUANTUM = {places: Decimal(1).scaleb(-places) for places in range(0, 40)}


class DecimalRangeError(ValueError):
    """A decimal input is outside what the ledger accepts."""


def parse_decimal(
    value: object,
    *,
    places_max: int = QUANTITY_PLACES,
    what: str = "value",
) -> Decimal:
    """Turn a JSON string or integer (or an exact Decimal) into a checked Decimal.

    Floats are refused outright: by the time a float exists, precision may
    already be gone. JSON numbers reach here as `Decimal` or `int` because the
    event decoder parses them that way.

    Raises:
        DecimalRangeError: not a finite decimal, too many places or digits.
    """
    if isinstance(value, (bool, float)):
        raise DecimalRangeError(f"{what} must be a decimal string, not {value!r}")
    if isinstance(value, int):
        number = Decimal(value)
    elif isinstance(value, Decimal):
        number = value
    elif isinstance(value, str):
        text = value.strip()
        if not text or len(text) > 64 or text != value:
            raise DecimalRangeError(f"{what} is not a decimal string: {value[:70]!r}")
        try:
            number = Decimal(text)
        except InvalidOperation:
            raise DecimalRangeError(
                f"{what} is not a decimal string: {value[:70]!r}"
            ) from None
    else:
        raise DecimalRangeError(f"{what} must be a decimal string")
    return check_decimal(number, places_max=places_max, what=what)


def check_decimal(number: Decimal, *, places_max: int, what: str) -> Decimal:
    """Refuse NaN, infinities, too many places and too many integer digits."""
    if not number.is_finite():
        raise DecimalRangeError(f"{what} must be finite, got {number}")
    if number == 0:
        return ZERO
    if _places(number) > places_max:
        # "1.50000" has five places but only two that carry a value.
        number = number.normalize(_CONTEXT)
        if _places(number) > places_max:
            raise DecimalRangeError(f"{what} has more than {places_max} decimal places")
    if number.adjusted() + 1 > INTEGER_DIGITS_MAX:
        raise DecimalRangeError(
            f"{what} has more than {INTEGER_DIGITS_MAX} digits before the point"
        )
    return number


def _places(number: Decimal) -> int:
    exponent = number.as_tuple().exponent
    return max(0, -exponent) if isinstance(exponent, int) else 0


def quantize(value: Decimal, places: int) -> Decimal:
    """Round to `places` decimal places with banker's rounding."""
    return value.quantize(_QUANTUM[places], rounding=ROUND_HALF_EVEN, context=_CONTEXT)


def cost(value: Decimal) -> Decimal:
    """A national-currency cost at the ledger's cost scale."""
    return quantize(value, COST_PLACES)


def price(value: Decimal) -> Decimal:
    """A unit price at the ledger's price scale."""
    return quantize(value, PRICE_PLACES)


def quantity(value: Decimal) -> Decimal:
    """A credit or meter quantity at the ledger's quantity scale."""
    return quantize(value, QUANTITY_PLACES)


def mul(a: Decimal, b: Decimal) -> Decimal:
    """An exact product (the context is wide enough for in-range operands)."""
    return _CONTEXT.multiply(a, b)


def div(a: Decimal, b: Decimal) -> Decimal:
    """A quotient at the wide context's precision, to be quantized by the caller."""
    return _CONTEXT.divide(a, b)


def add(a: Decimal, b: Decimal) -> Decimal:
    """An exact sum."""
    return _CONTEXT.add(a, b)


def sub(a: Decimal, b: Decimal) -> Decimal:
    """An exact difference."""
    return _CONTEXT.subtract(a, b)


def text(value: Decimal, places_min: int = 0) -> str:
    """Plain decimal text: no exponent, trailing zeros trimmed to `places_min`.

    FOCUS forbids exponents, thousands separators and signs other than a
    leading minus; a value's text is the same however it was computed, which
    keeps row content (and so row comparison) deterministic.
    """
    whole, _, fraction = format(value, "f").partition(".")
    fraction = fraction.rstrip("0")
    if len(fraction) < places_min:
        fraction += "0" * (places_min - len(fraction))
    if whole == "-0" and not fraction.strip("0"):
        whole = "0"
    return f"{whole}.{fraction}" if fraction else whole
