"""Alerts once per crossing: a low balance, a lot about to expire."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from typing import Any

from ledger.accounts import Account, Rules, apply
from ledger.alerts import Alert, AlertKind, AlertRules, AlertState, watch
from tests.factories import at, event, purchase_doc, spec_prices, usage_doc

Q = "SKU-762343"  # 1 token per execution
SHARE = AlertRules(balance_low_share=Decimal("0.1"))
WEEK = AlertRules(expiring_within=timedelta(days=7))


def step(account: Account, document: dict[str, Any], rules: AlertRules) -> list[Alert]:
    """Apply one event, then ask for alerts at its time, as the service does."""
    prices = spec_prices()
    happened = event(document, prices)
    outcome = apply(account, happened, prices, Rules())
    assert outcome.rejection is None
    return watch(account, happened.time, rules)


def buy(number: int, time: str, credits: str, **data: Any) -> dict[str, Any]:
    return purchase_doc(f"p{number}", time, "a", credits, credits, **data)


def use(number: int, time: str, credits: str) -> dict[str, Any]:
    return usage_doc(f"u{number}", time, "a", Q, credits)


def test_a_low_balance_is_announced_once_per_crossing() -> None:
    account = Account("a")
    story = [
        buy(1, "2025-04-01T00:00:00Z", "1000"),
        use(1, "2025-04-02T00:00:00Z", "850"),  # 150 left: above 100
        use(2, "2025-04-03T00:00:00Z", "60"),  # 90: crosses
        use(3, "2025-04-04T00:00:00Z", "10"),  # 80: still low, nothing new
        use(4, "2025-04-05T00:00:00Z", "100"),  # -20 (owed): still low
        buy(2, "2025-04-06T00:00:00Z", "2000"),  # 1980: re-armed, threshold 200
        use(5, "2025-04-07T00:00:00Z", "1700"),  # 280
        use(6, "2025-04-08T00:00:00Z", "100"),  # 180: crosses again
    ]

    raised = [step(account, document, SHARE) for document in story]

    assert [len(alerts) for alerts in raised] == [0, 0, 1, 0, 0, 0, 0, 1]
    first, second = raised[2][0], raised[7][0]
    assert first.kind is second.kind is AlertKind.BALANCE_LOW
    assert first.data["balance"] == "90" and first.data["threshold"] == "100"
    assert second.data["balance"] == "180" and second.data["threshold"] == "200"
    assert first.occurred_at == at("2025-04-03T00:00:00Z")
    assert first.alert_id != second.alert_id


def test_the_higher_of_the_absolute_and_the_share_threshold_wins() -> None:
    both = AlertRules(
        balance_low_credits=Decimal(300), balance_low_share=SHARE.balance_low_share
    )
    account = Account("a")

    step(account, buy(1, "2025-04-01T00:00:00Z", "1000"), both)
    early = step(account, use(1, "2025-04-02T00:00:00Z", "750"), both)

    assert [alert.data["threshold"] for alert in early] == ["300"]


def test_a_replay_of_the_same_events_raises_the_same_alert_ids() -> None:
    story = [
        buy(1, "2025-04-01T00:00:00Z", "1000", expires_at="2025-04-09T00:00:00Z"),
        use(1, "2025-04-02T00:00:00Z", "950"),
        buy(2, "2025-04-03T00:00:00Z", "1000"),
        use(2, "2025-04-04T00:00:00Z", "990"),
    ]
    rules = AlertRules(
        balance_low_share=Decimal("0.1"), expiring_within=timedelta(days=7)
    )

    runs = []
    for _ in range(2):
        account = Account("a")
        runs.append([a.alert_id for d in story for a in step(account, d, rules)])

    assert runs[0] == runs[1]
    assert len(runs[0]) == 3  # expiring p1, low once, low again after the top-up


def test_a_lot_about_to_expire_is_announced_once() -> None:
    account = Account("a")
    expires = "2025-04-20T00:00:00Z"

    raised = [
        step(account, buy(1, "2025-04-01T00:00:00Z", "100", expires_at=expires), WEEK),
        step(account, use(1, "2025-04-12T23:59:59Z", "1"), WEEK),  # 7 days + 1 s
        step(account, use(2, "2025-04-13T00:00:00Z", "1"), WEEK),  # 7 days out
        step(account, use(3, "2025-04-15T00:00:00Z", "1"), WEEK),
    ]

    assert [len(alerts) for alerts in raised] == [0, 0, 1, 0]
    (alert,) = raised[2]
    assert alert.kind is AlertKind.EXPIRING
    assert alert.data["lot_id"] == account.lots[0].lot_id
    assert alert.data["credits"] == "98"
    assert alert.data["expires_at"] == "2025-04-20T00:00:00Z"
    assert account.lots[0].expiry_alerted


def test_an_emptied_lot_is_never_announced() -> None:
    account = Account("a")
    step(
        account,
        buy(1, "2025-04-01T00:00:00Z", "10", expires_at="2025-04-20T00:00:00Z"),
        WEEK,
    )
    step(account, use(1, "2025-04-02T00:00:00Z", "10"), WEEK)

    later = watch(account, at("2025-04-15T00:00:00Z"), WEEK)

    assert later == []


def test_no_rules_no_alerts_and_no_change() -> None:
    account = Account("a")
    step(account, buy(1, "2025-04-01T00:00:00Z", "10"), AlertRules())
    account.changed = False

    assert step(account, use(1, "2025-04-02T00:00:00Z", "10"), AlertRules()) == []
    assert account.alerts.low == set()


def test_the_state_survives_a_round_trip_through_json() -> None:
    state = AlertState(
        low={"TKN"}, crossings={"TKN": 2}, last_purchase={"TKN": Decimal("1000.5")}
    )

    assert AlertState.from_json(state.to_json()) == state
    assert AlertState.from_json(None) == AlertState()
