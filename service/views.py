"""Text tables for people: balances, FOCUS rows, dead letters.

One renderer per kind of answer, shared by the CLI and the demo, so the same
question reads the same wherever it is asked. Values are rounded for reading
only (credits to 6 places, money to 2 or 6); `--json` output and the rows
themselves keep every digit.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

from ledger import money
from service.deadletters import DeadLetter
from service.queries import Balance, EntryView, LotView
from service.reports import InvoiceReconciliation, PeriodLine


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


def lot_lines(lots: Sequence[LotView]) -> list[str]:
    if not lots:
        return ["  no lots"]
    return table(
        (
            "lot",
            "bought",
            "currency",
            "left",
            "of",
            "value left",
            "unit cost",
            "expires",
            "invoice",
            "status",
        ),
        (
            (
                lot.lot_id[:8],
                _instant(lot.purchased_at),
                lot.currency,
                fixed(lot.remaining_quantity, 6),
                fixed(lot.quantity, 0),
                f"{fixed(lot.remaining_basis, 6)} {lot.billing_currency}",
                fixed(lot.unit_cost, 8),
                _instant(lot.expires_at) if lot.expires_at else "never",
                lot.invoice_id,
                lot.status,
            )
            for lot in lots
        ),
        right="left,of,value left,unit cost",
    )


def history_lines(entries: Sequence[EntryView]) -> list[str]:
    if not entries:
        return ["  no journal lines"]
    return table(
        ("seq", "when", "kind", "credits", "value", "lot", "event", "invoice"),
        (
            (
                str(entry.seq),
                _instant(entry.occurred_at),
                entry.kind,
                fixed(entry.credits, 6),
                fixed(entry.basis, 6),
                (entry.lot_id or "")[:8],
                entry.event_id,
                entry.invoice_id or "",
            )
            for entry in entries
        ),
        right="seq,credits,value",
    )


def dead_letter_table(letters: Sequence[DeadLetter]) -> list[str]:
    if not letters:
        return ["  no dead letters"]
    lines = table(
        ("offset", "reason", "read at", "event", "account", "bytes"),
        (
            (
                str(letter.offset),
                letter.reason,
                letter.where,
                letter.event_id or "",
                letter.account_id or "",
                f"{len(letter.value)}{'+' if letter.truncated else ''}",
            )
            for letter in letters
        ),
        right="offset,bytes",
    )
    details = [f"  {letter.offset}: {letter.detail}" for letter in letters]
    return [*lines, "", *details]


def _instant(moment: datetime | None) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ") if moment else ""


def as_data(value: Any) -> Any:
    """Dataclasses, lists and decimals as JSON-ready data (decimals as text)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        data = {
            f.name: as_data(getattr(value, f.name)) for f in dataclasses.fields(value)
        }
        for name in ("credits_billed", "balanced", "billed_total", "effective_total"):
            if hasattr(value, name):
                data[name] = as_data(getattr(value, name))
        return data
    if isinstance(value, list | tuple):
        return [as_data(item) for item in value]
    if isinstance(value, dict):
        return {key: as_data(item) for key, item in value.items()}
    if isinstance(value, Decimal):
        return money.text(value)
    if isinstance(value, datetime):
        return value.isoformat()
    return value


def reconciliation_lines(result: InvoiceReconciliation) -> list[str]:
    currency = result.billing_currency or ""

    def amount(value: Decimal) -> str:
        return f"{fixed(value, 2):>16} {currency}"

    lines = [
        f"invoice {result.invoice_id}",
        f"  billed                    {amount(result.billed)}",
    ]
    if result.tax:
        lines.append(f"    of which tax            {amount(result.tax)}")
    if result.other_rows:
        lines.append(f"    of which other charges  {amount(result.other_rows)}")
    lines += [
        f"    for credits             {amount(result.credits_billed)}",
        f"  consumed                  {amount(result.total('consumed'))}",
        f"  expired                   {amount(result.total('expired'))}",
        f"  refunded                  {amount(result.total('returned'))}",
        f"  forfeited on refund       {amount(result.total('forfeited'))}",
        f"  remaining in lots         {amount(result.total('remaining'))}",
        "  consumed + expired + refunded + forfeited + remaining = credits billed: "
        + ("yes" if result.balanced else "NO"),
        "",
        "  per lot:",
    ]
    lines += table(
        (
            "lot",
            "account",
            "bought",
            "paid",
            "consumed",
            "expired",
            "refunded",
            "remaining",
            "status",
        ),
        (
            (
                lot.lot_id[:8],
                lot.account_id,
                fixed(lot.credits_bought, 0),
                fixed(lot.paid, 2),
                fixed(lot.consumed, 2),
                fixed(lot.expired, 2),
                fixed(lot.returned + lot.forfeited, 2),
                fixed(lot.remaining, 2),
                lot.status,
            )
            for lot in result.lots
        ),
        right="bought,paid,consumed,expired,refunded,remaining",
    )
    return lines


def period_lines(lines_: Sequence[PeriodLine]) -> list[str]:
    if not lines_:
        return ["  no rows in that billing period"]
    out: list[str] = []
    for line in lines_:
        currency = line.billing_currency or ""
        opening = sum((b.credits for b in line.opening), Decimal(0))
        closing = sum((b.credits for b in line.closing), Decimal(0))
        out.append(f"{line.billing_account_id}, billing period {line.period}")
        out += table(
            ("kind", "BilledCost", "EffectiveCost", "credits"),
            (
                (
                    kind,
                    fixed(line.billed[kind], 2),
                    fixed(line.effective[kind], 6),
                    fixed(line.credits[kind], 6),
                )
                for kind in sorted(line.billed)
            ),
            right="BilledCost,EffectiveCost,credits",
        )
        out.append(
            f"  total billed {fixed(line.billed_total, 2)} {currency}, effective "
            f"{fixed(line.effective_total, 6)} {currency}; credits at start "
            f"{fixed(opening, 6)}, at end {fixed(closing, 6)}"
        )
        out.append("")
    return out
