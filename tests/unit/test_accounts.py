"""The accounting of one event against one account: lots, draws and policies."""

from __future__ import annotations

from decimal import Decimal

from ledger.accounts import Account, EntryKind, Outcome, Rules, apply, expire_due
from ledger.charges import ChargeKind
from ledger.events import Reason
from ledger.lots import LotStatus
from ledger.prices import PriceList
from tests.factories import at, event, purchase_doc, refund_doc, spec_prices, usage_doc

RULES = Rules()
Q = "SKU-762343"  # 1 token per execution
W = "SKU-78314"  # 3 tokens per workflow operation


def book(account: Account, document: dict, prices: PriceList | None = None) -> Outcome:  # type: ignore[type-arg]
    prices = prices or spec_prices()
    return apply(account, event(document, prices), prices, RULES)


def charges(outcome: Outcome) -> list:  # type: ignore[type-arg]
    return [entry.charge for entry in outcome.entries if entry.charge is not None]


def test_a_draw_across_two_lots_costs_each_lot_its_own_price() -> None:
    account = Account("a")
    book(account, purchase_doc("p1", "2025-04-01T00:00:00Z", "a", "100", "100.00"))
    book(account, purchase_doc("p2", "2025-04-02T00:00:00Z", "a", "300", "150.00"))

    outcome = book(account, usage_doc("u", "2025-04-03T00:00:00Z", "a", W, "50"))

    rows = charges(outcome)
    assert [row.lot_id for row in rows] == [lot.lot_id for lot in account.lots]
    assert [row.pc_effective_cost for row in rows] == [Decimal(100), Decimal(50)]
    assert [row.effective_cost for row in rows] == [Decimal("100.00"), Decimal("25")]
    assert sum(row.pricing_quantity for row in rows) == Decimal(50)
    assert sum(row.consumed_quantity for row in rows) == Decimal(50)
    assert rows[0].contracted_unit_price == Decimal(3)
    assert rows[1].contracted_unit_price == Decimal("1.5")
    assert len({row.charge_id for row in rows}) == 2


def test_fifo_order_is_purchase_time_not_arrival_order() -> None:
    account = Account("a")
    book(account, purchase_doc("later", "2025-04-05T00:00:00Z", "a", "10", "20.00"))
    book(account, purchase_doc("earlier", "2025-04-01T00:00:00Z", "a", "10", "10.00"))

    rows = charges(book(account, usage_doc("u", "2025-04-06T00:00:00Z", "a", Q, "4")))

    assert len(rows) == 1
    assert rows[0].effective_cost == Decimal("4.00")


def test_usage_cannot_draw_a_lot_bought_after_it() -> None:
    account = Account("a")
    book(account, purchase_doc("future", "2025-04-20T00:00:00Z", "a", "10", "30.00"))

    # A late usage from before the purchase cannot spend the purchase's credits.
    outcome = book(account, usage_doc("u", "2025-04-15T00:00:00Z", "a", Q, "2"))

    assert [entry.kind for entry in outcome.entries] == [EntryKind.DEFICIT]
    assert account.lots[0].remaining_quantity == 10


def test_expiry_is_exclusive_a_lot_is_unusable_at_its_expires_at() -> None:
    account = Account("a")
    book(
        account,
        purchase_doc(
            "old",
            "2025-04-01T00:00:00Z",
            "a",
            "10",
            "10.00",
            expires_at="2025-04-10T00:00:00Z",
        ),
    )

    just_before = book(account, usage_doc("u1", "2025-04-09T23:59:59Z", "a", Q, "1"))
    at_expiry = book(account, usage_doc("u2", "2025-04-10T00:00:00Z", "a", Q, "2"))

    assert [entry.kind for entry in just_before.entries] == [EntryKind.USAGE]
    kinds = [entry.kind for entry in at_expiry.entries]
    assert kinds == [EntryKind.EXPIRY, EntryKind.DEFICIT]
    assert account.balance("TKN", at("2025-04-10T00:00:00Z")) == Decimal(-2)


def test_expiry_books_the_basis_left_and_the_lot_adds_up_to_what_was_paid() -> None:
    account = Account("a")
    book(
        account,
        purchase_doc(
            "p",
            "2025-04-01T00:00:00Z",
            "a",
            "3",
            "10.00",
            expires_at="2025-05-01T00:00:00Z",
        ),
    )
    used = charges(book(account, usage_doc("u", "2025-04-02T00:00:00Z", "a", Q, "1")))

    expired = expire_due(account, at("2025-05-01T00:00:00Z"), spec_prices(), RULES)

    assert [entry.kind for entry in expired] == [EntryKind.EXPIRY]
    expiry = expired[0].charge
    assert expiry is not None
    assert expiry.kind is ChargeKind.EXPIRY
    assert expiry.pc_effective_cost == Decimal(2)
    assert used[0].effective_cost == Decimal("3.333333333333")
    assert used[0].effective_cost + expiry.effective_cost == Decimal("10.00")
    assert account.lots[0].status is LotStatus.EXPIRED
    assert expiry.charge_period[0] == at("2025-05-01T00:00:00Z")


def test_expiring_first_burns_the_soonest_expiry_then_fifo() -> None:
    prices = spec_prices('[accounts.a]\ndraw_order = "expiring-first"\n')
    account = Account("a")
    book(
        account,
        purchase_doc("never", "2025-04-01T00:00:00Z", "a", "10", "10.00"),
        prices,
    )
    book(
        account,
        purchase_doc(
            "soon",
            "2025-04-02T00:00:00Z",
            "a",
            "10",
            "20.00",
            expires_at="2025-06-01T00:00:00Z",
        ),
        prices,
    )

    rows = charges(
        book(account, usage_doc("u", "2025-04-03T00:00:00Z", "a", Q, "4"), prices)
    )

    assert [row.effective_cost for row in rows] == [Decimal("8.00")]


def test_a_deficit_is_owed_then_settled_first_by_the_next_purchase() -> None:
    account = Account("a")
    book(account, purchase_doc("p1", "2025-04-01T00:00:00Z", "a", "10", "10.00"))
    outcome = book(account, usage_doc("u", "2025-04-02T10:30:00Z", "a", W, "5"))

    assert [entry.kind for entry in outcome.entries] == [
        EntryKind.USAGE,
        EntryKind.DEFICIT,
    ]
    assert account.balance("TKN", at("2025-04-03T00:00:00Z")) == Decimal(-5)

    settled = book(
        account, purchase_doc("p2", "2025-04-04T00:00:00Z", "a", "20", "40.00")
    )

    kinds = [entry.kind for entry in settled.entries]
    assert kinds == [EntryKind.PURCHASE, EntryKind.SETTLEMENT]
    settlement = settled.entries[1].charge
    assert settlement is not None
    assert settlement.effective_cost == Decimal("10")
    assert settlement.pc_effective_cost == Decimal(5)
    assert settlement.pricing_quantity + charges(outcome)[0].pricing_quantity == 5
    assert settlement.charge_period[0] == at("2025-04-02T10:00:00Z")
    assert settlement.source_event_id == "u"
    assert settlement.settlement_event_id == "p2"
    assert account.balance("TKN", at("2025-04-05T00:00:00Z")) == Decimal(15)


def test_overage_bills_what_credits_do_not_cover() -> None:
    prices = spec_prices(
        '[accounts.a]\nshortfall = "overage"\noverage_unit_price = "2.5"\n'
        'billing_currency = "USD"\n'
    )
    rules = Rules(overage_invoice_pattern="{account}-{period}-PROVISIONAL")
    account = Account("a")
    apply(
        account,
        event(purchase_doc("p", "2025-04-01T00:00:00Z", "a", "10", "10.00"), prices),
        prices,
        rules,
    )

    outcome = apply(
        account,
        event(usage_doc("u", "2025-04-02T00:00:00Z", "a", W, "5"), prices),
        prices,
        rules,
    )

    rows = charges(outcome)
    assert [row.kind for row in rows] == [ChargeKind.USAGE, ChargeKind.OVERAGE]
    overage = rows[1]
    assert overage.pc_effective_cost == Decimal(5)
    assert overage.billed_cost == overage.effective_cost == Decimal("12.5")
    assert overage.invoice_id == "a-2025-04-PROVISIONAL"
    assert account.balance("TKN", at("2025-04-03T00:00:00Z")) == 0


def test_refund_at_cost_has_no_effective_cost_and_closes_the_lot() -> None:
    account = Account("a")
    book(account, purchase_doc("p", "2025-04-01T00:00:00Z", "a", "100", "50.00"))
    book(account, usage_doc("u", "2025-04-02T00:00:00Z", "a", Q, "40"))

    outcome = book(account, refund_doc("r", "2025-04-03T00:00:00Z", "a", "p", "30.00"))

    refund = charges(outcome)[0]
    assert refund.kind is ChargeKind.REFUND
    assert refund.billed_cost == Decimal("-30.00")
    assert refund.effective_cost == 0
    assert refund.pricing_quantity == Decimal(-60)
    assert account.lots[0].status is LotStatus.REFUNDED


def test_a_refund_larger_than_what_remains_is_rejected_and_changes_nothing() -> None:
    account = Account("a")
    book(account, purchase_doc("p", "2025-04-01T00:00:00Z", "a", "100", "50.00"))
    book(account, usage_doc("u", "2025-04-02T00:00:00Z", "a", Q, "40"))
    before = (account.lots[0].remaining_quantity, account.lots[0].remaining_basis)

    too_many = book(
        account,
        refund_doc("r1", "2025-04-03T00:00:00Z", "a", "p", "1.00", quantity="61"),
    )
    too_much = book(
        account, refund_doc("r2", "2025-04-03T00:00:00Z", "a", "p", "50.01")
    )
    unknown = book(
        account, refund_doc("r3", "2025-04-03T00:00:00Z", "a", "nope", "1.00")
    )

    assert too_many.rejection is not None
    assert too_many.rejection.reason is Reason.REFUND_EXCEEDS
    assert too_much.rejection is not None
    assert too_much.rejection.reason is Reason.REFUND_EXCEEDS
    assert unknown.rejection is not None
    assert unknown.rejection.reason is Reason.UNKNOWN_PURCHASE
    assert (
        account.lots[0].remaining_quantity,
        account.lots[0].remaining_basis,
    ) == before


def test_a_second_billing_currency_is_rejected() -> None:
    account = Account("a")
    book(account, purchase_doc("p", "2025-04-01T00:00:00Z", "a", "10", "10.00"))

    outcome = book(
        account,
        purchase_doc(
            "e", "2025-04-02T00:00:00Z", "a", "10", "9.00", billing_currency="EUR"
        ),
    )

    assert outcome.rejection is not None
    assert outcome.rejection.reason is Reason.CURRENCY_MISMATCH
    assert len(account.lots) == 1


def test_meter_priced_usage_uses_the_meters_credits() -> None:
    account = Account("a")
    book(account, purchase_doc("p", "2025-04-01T00:00:00Z", "a", "100", "100.00"))

    rows = charges(
        book(
            account, usage_doc("u", "2025-04-02T00:00:00Z", "a", Q, "10", credits="7.5")
        )
    )

    assert rows[0].pc_effective_cost == Decimal("7.5")
    assert rows[0].pc_contracted_unit_price == Decimal("0.75")
    assert rows[0].pricing_category == "Dynamic"


def test_contracted_credit_prices_apply_to_their_account() -> None:
    prices = spec_prices('[accounts.a.contracted]\nSKU-78314 = "2"\n')
    account = Account("a")
    book(
        account, purchase_doc("p", "2025-04-01T00:00:00Z", "a", "100", "100.00"), prices
    )

    rows = charges(
        book(account, usage_doc("u", "2025-04-02T00:00:00Z", "a", W, "10"), prices)
    )

    assert rows[0].pc_list_unit_price == Decimal(3)
    assert rows[0].pc_contracted_unit_price == Decimal(2)
    assert rows[0].pc_effective_cost == Decimal(20)
    assert rows[0].list_cost == Decimal(60)
    assert rows[0].contracted_cost == Decimal(20)


def test_a_rejected_purchase_leaves_the_account_unchanged() -> None:
    account = Account("a")

    outcome = book(
        account,
        purchase_doc(
            "p",
            "2025-04-02T00:00:00Z",
            "a",
            "10",
            "1.00",
            expires_at="2025-04-01T00:00:00Z",
        ),
    )

    assert outcome.rejection is not None
    assert outcome.entries == []
    assert account.lots == []
    assert not account.changed


def test_rows_before_a_renaming_purchase_keep_the_old_name() -> None:
    account = Account("a")
    book(
        account,
        purchase_doc(
            "p1",
            "2025-04-01T00:00:00Z",
            "a",
            "10",
            "10.00",
            expires_at="2025-04-05T00:00:00Z",
            billing_account_name="Old Name",
        ),
    )

    outcome = book(
        account,
        purchase_doc(
            "p2", "2025-04-06T00:00:00Z", "a", "10", "10.00", billing_account_name="New"
        ),
    )

    names = {row.kind: row.billing_account_name for row in charges(outcome)}
    assert names == {ChargeKind.EXPIRY: "Old Name", ChargeKind.PURCHASE: "New"}
