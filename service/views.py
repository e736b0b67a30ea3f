"""Text tables for people: balances, FOCUS rows, dead letters.

One renderer per kind of answer, shared by the CLI and the demo, so the same
question reads the same wherever it is asked. Values are rounded for reading
only (credits to 6 places, money to 2 or 6); `--json` output and the rows
themselves keep every digit.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from decimal import Decimal
from typing import Any

from service.queries import Balance


def table(
    headers: Sequence[str], rows: Iterable[Sequence[str]], right: str = ""
) -> list[str]:
    """Aligned columns; the headers whose names are in `right` align right."""
    body = [list(map(str, row)) for row in rows]
    widths = [len(h) for h in headers]
    for row in body:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]

    def line(cells: Sequence[str]) -> str:
        parts = [
            cell.rjust(width) if header in right.split(",") else cell.ljust(width)
            for header, cell, width in zip(headers, cells, widths, strict=True)
        ]
        return "  " + "  ".join(parts).rstrip()

    return [line(headers), *(line(row) for row in body)]


def fixed(value: Decimal | str | None, places: int) -> str:
    if value is None or value == "":
        return ""
    return f"{Decimal(value):.{places}f}"


def balance_lines(balances: Sequence[Balance]) -> list[str]:
    if not balances:
        return ["  no balances"]
    return table(
        ("billing account", "currency", "credits", "owed", "value", "lots"),
        (
            (
                b.account_id,
                b.currency,
                fixed(b.credits, 6),
                fixed(b.owed_credits, 6),
                f"{fixed(b.value, 2)} {b.billing_currency or ''}".strip(),
                str(b.open_lots),
            )
            for b in balances
        ),
        right="credits,owed,value,lots",
    )


def row_lines(rows: Sequence[dict[str, Any]]) -> list[str]:
    """FOCUS rows, one line each: what, whose, when, how much, which invoice."""
    ordered = sorted(
        rows,
        key=lambda r: (r["BillingAccountId"], r["ChargePeriodStart"], r["x_ChargeId"]),
    )
    return table(
        (
            "kind",
            "billing account",
            "charge period",
            "sku",
            "quantity",
            "unit",
            "credits",
            "EffectiveCost",
            "BilledCost",
            "invoice",
        ),
        (
            (
                r["x_ChargeKind"],
                r["BillingAccountId"],
                str(r["ChargePeriodStart"]),
                r["SkuId"],
                fixed(r["ConsumedQuantity"] or r["PricingQuantity"], 3),
                r["ConsumedUnit"] or r["PricingUnit"],
                fixed(r["PricingCurrencyEffectiveCost"], 3),
                fixed(r["EffectiveCost"], 6),
                fixed(r["BilledCost"], 6),
                r["InvoiceId"] or "",
            )
            for r in ordered
        ),
        right="quantity,credits,EffectiveCost,BilledCost",
    )


def dead_letter_lines(records: Sequence[Any]) -> list[str]:
    lines = []
    for record in records:
        headers = {
            name: value.decode(errors="replace") for name, value in record.headers
        }
        where = (
            f"{headers.get('dlq.topic', '?')}[{headers.get('dlq.partition', '?')}]"
            f"@{headers.get('dlq.offset', '?')}"
        )
        lines.append(f"  {headers.get('dlq.reason', '?')} at {where}")
        lines.append(f"      {headers.get('dlq.detail', '')}")
    return lines or ["  none"]
