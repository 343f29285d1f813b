"""The loyalty ledger: earn, refunds, campaigns, expiry, tiers, merges, the rendered card."""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from touchpoint.contract.models import CampaignPayload, PurchasePayload, RefundPayload
from touchpoint.core.instants import epoch_ms
from touchpoint.core.loyalty import (
    LedgerEntry,
    LoyaltyRules,
    LoyaltyState,
    NoRulesInForce,
    RefundRejected,
    UnknownPurchase,
    add_months,
    balance,
    default_rules,
    earned_12m,
    expire,
    merge,
    on_campaign,
    on_purchase,
    on_refund,
    pending_expiries,
    summary,
    tier_at,
)

RULES = default_rules()
DAY = 86_400_000


def ms(year: int, month: int = 1, day: int = 1, hour: int = 12) -> int:
    return epoch_ms(datetime(year, month, day, hour, tzinfo=UTC))


T0 = ms(2025, 1, 1)


def purchase(tx: str, total: int, *categories: str, currency: str = "GBP") -> PurchasePayload:
    cats = categories or ("fuel",)
    lines = [{"sku": f"SKU-{c}", "category": c, "quantity": 1, "amount_minor": total if i == 0 else 0}
             for i, c in enumerate(cats)]  # fmt: skip
    return PurchasePayload.model_validate(
        {"transaction_id": tx, "location_id": "FS-0001", "lines": lines, "total_minor": total, "currency": currency}
    )


def refund(refund_id: str, tx: str, amount: int, currency: str = "GBP") -> RefundPayload:
    return RefundPayload.model_validate(
        {"refund_id": refund_id, "transaction_id": tx, "amount_minor": amount, "currency": currency}
    )


def campaign(cid: str, action: str = "invited", **fields: Any) -> CampaignPayload:
    return CampaignPayload.model_validate({"campaign_id": cid, "action": action, **fields})


def buy(state: LoyaltyState, tx: str, total: int, at: int = T0, *categories: str,
        rules: LoyaltyRules = RULES) -> list[LedgerEntry]:  # fmt: skip
    return on_purchase(state, f"ev-{tx}", at, purchase(tx, total, *categories), rules)


# -- earn -------------------------------------------------------------------------


def test_earn_entry_explains_itself() -> None:
    state = LoyaltyState()
    [entry] = buy(state, "T1", 3450, T0, "fuel", "shop")
    assert entry == LedgerEntry(
        id="ev-T1:T1:earn", kind="earn", points=68, at_ms=T0, source_event_id="ev-T1", transaction_id="T1",
        rule_version="2025.1", rule_id="fuel_and_shop", multiplier=2, reason="×2: fuel and shop in one visit",
    )  # fmt: skip
    assert entry.to_json() == {
        "id": "ev-T1:T1:earn", "kind": "earn", "points": 68, "at": "2025-01-01T12:00:00.000Z",
        "reason": "×2: fuel and shop in one visit", "source_event_id": "ev-T1", "transaction_id": "T1",
        "rule_version": "2025.1", "rule_id": "fuel_and_shop", "multiplier": 2,
    }  # fmt: skip
    assert balance(state) == 68
    lot = state.lots["T1"]
    assert (lot.event_id, lot.points, lot.earn_id, lot.reversed_points, lot.refunded_minor) == (
        "ev-T1", 68, entry.id, 0, 0)


def test_base_only_purchase_is_named_base() -> None:
    state = LoyaltyState()
    [entry] = buy(state, "T1", 1234)
    assert (entry.points, entry.rule_id, entry.multiplier) == (12, "base", 1)


def test_redelivered_purchase_adds_nothing() -> None:
    state = LoyaltyState()
    buy(state, "T1", 6000)
    assert on_purchase(state, "ev-T1", T0, purchase("T1", 6000), RULES) == []
    # The same transaction sent again under another event id is still the same purchase.
    assert on_purchase(state, "ev-resent", T0 + 5, purchase("T1", 6000), RULES) == []
    assert balance(state) == 120 and len(state.entries) == 1


def test_purchase_before_the_rules_is_an_error() -> None:
    state = LoyaltyState()
    with pytest.raises(NoRulesInForce):
        buy(state, "T1", 1000, ms(1999, 12, 31))
    assert state == LoyaltyState()


# -- campaigns through the ledger ----------------------------------------------------

WINDOW = {"starts_at": "2025-01-02T00:00:00Z", "ends_at": "2025-01-16T00:00:00Z"}


@pytest.mark.parametrize(
    ("events", "at", "points"),
    [
        pytest.param([], ms(2025, 1, 5), 10, id="uninvited"),
        pytest.param([("invited", WINDOW)], ms(2025, 1, 1, 23), 10, id="before-window"),
        pytest.param([("invited", WINDOW)], ms(2025, 1, 5), 30, id="inside-window"),
        pytest.param([("invited", WINDOW)], ms(2025, 1, 16, 0), 10, id="at-window-end"),
        pytest.param([("invited", WINDOW)], ms(2025, 2, 1), 10, id="after-window"),
        pytest.param([("invited", {**WINDOW, "multiplier": 4})], ms(2025, 1, 5), 40, id="invitation-multiplier"),
        pytest.param([("started", WINDOW)], ms(2025, 1, 5), 10, id="started-is-not-an-invitation"),
        pytest.param([("ended", {})], ms(2025, 1, 5), 10, id="ended-is-not-an-invitation"),
        pytest.param([("invited", {})], ms(2025, 1, 14), 30, id="no-window-default-14-days"),
        pytest.param([("invited", {})], ms(2025, 1, 16), 10, id="no-window-after-14-days"),
    ],
)
def test_campaign_invitation_scores_purchases_in_its_window(
    events: list[tuple[str, dict[str, Any]]], at: int, points: int
) -> None:
    state = LoyaltyState()
    for i, (action, fields) in enumerate(events):
        on_campaign(state, f"ev-c{i}", T0, campaign("CMP-1", action, **fields), RULES)
    [entry] = buy(state, "T1", 1000, at)
    assert entry.points == points


def test_latest_invitation_of_a_campaign_wins_whatever_the_order() -> None:
    early = ("ev-a", T0, campaign("CMP-1", multiplier=2, **WINDOW))
    late = ("ev-b", T0 + 1, campaign("CMP-1", multiplier=5, **WINDOW))
    for order in ([early, late], [late, early]):
        state = LoyaltyState()
        for event_id, at, payload in order:
            on_campaign(state, event_id, at, payload, RULES)
        assert state.invitations["CMP-1"][-1].event_id == "ev-b"
        assert buy(state, "T1", 1000, ms(2025, 1, 5))[0].points == 50


# -- refunds ---------------------------------------------------------------------------

REFUND_TABLE = [
    # (purchase total, its categories, refund parts) -> points reversed in total after each part
    pytest.param(7500, ("fuel",), [2500, 2500, 2500], [50, 100, 150], id="thirds"),
    pytest.param(999, ("fuel",), [333, 333, 333], [3, 6, 9], id="uneven-base"),
    pytest.param(1001, ("fuel",), [1, 1000], [0, 10], id="tiny-then-rest"),
    pytest.param(3450, ("fuel", "shop"), [1000, 1000, 1000, 450], [19, 39, 59, 68], id="x2-in-four-parts"),
    pytest.param(7500, ("fuel",), [5000, 5000], [100, 150], id="over-refund-capped"),
    pytest.param(7500, ("fuel",), [7500], [150], id="full-in-one"),
    pytest.param(50, ("fuel",), [50], [0], id="zero-points-purchase"),
]  # fmt: skip


@pytest.mark.parametrize(("total", "categories", "parts", "reversed_after"), REFUND_TABLE)
def test_partial_refunds_reverse_floor_of_the_share(
    total: int, categories: tuple[str, ...], parts: list[int], reversed_after: list[int]
) -> None:
    state = LoyaltyState()
    [earn] = buy(state, "T1", total, T0, *categories)
    refunded = 0
    for i, (amount, expected) in enumerate(zip(parts, reversed_after, strict=True)):
        refunded += amount
        [entry] = on_refund(state, f"ev-r{i}", T0 + (i + 1) * DAY, refund(f"R{i}", "T1", amount))
        assert (entry.id, entry.kind, entry.transaction_id) == (f"ev-r{i}:T1:reversal", "reversal", "T1")
        assert earn.points * min(refunded, total) // total == expected
        assert state.lots["T1"].reversed_points == expected
        assert balance(state) == earn.points - expected
    assert state.lots["T1"].refunded_minor == sum(parts)


def test_reversal_reason_and_rule_of_the_purchase() -> None:
    state = LoyaltyState()
    buy(state, "T1", 3450, T0, "fuel", "shop")
    [entry] = on_refund(state, "ev-r", T0 + DAY, refund("R1", "T1", 1000))
    assert entry.reason == "refund of 10.00 (10.00 of 34.50 refunded): 19 of 68 points reversed"
    assert (entry.points, entry.rule_id, entry.multiplier, entry.rule_version) == (-19, "fuel_and_shop", 2, "2025.1")


def test_refund_of_an_unknown_purchase_is_rejected_with_a_reason() -> None:
    state = LoyaltyState()
    buy(state, "T1", 1000)
    before = copy.deepcopy(state)
    with pytest.raises(UnknownPurchase) as caught:
        on_refund(state, "ev-r", T0, refund("R1", "T-OTHER", 100))
    assert isinstance(caught.value, ValueError)
    assert (caught.value.refund_id, caught.value.transaction_id) == ("R1", "T-OTHER")
    assert "no purchase with this transaction id" in caught.value.reason
    assert state == before


def test_refund_in_another_currency_is_rejected() -> None:
    state = LoyaltyState()
    buy(state, "T1", 1000)
    with pytest.raises(RefundRejected, match="currency EUR but the purchase was in GBP"):
        on_refund(state, "ev-r", T0, refund("R1", "T1", 100, currency="EUR"))
    assert "R1" not in state.refunds


@pytest.mark.parametrize("event_id", ["ev-r1", "ev-r1-again"])
def test_redelivered_refund_adds_nothing(event_id: str) -> None:
    state = LoyaltyState()
    buy(state, "T1", 6000)
    on_refund(state, "ev-r1", T0 + DAY, refund("R1", "T1", 3000))
    after_first = copy.deepcopy(state)
    assert on_refund(state, event_id, T0 + DAY, refund("R1", "T1", 3000)) == []
    assert state == after_first and balance(state) == 60


SWITCH = LoyaltyRules.model_validate({"versions": [
    {"version": "v1", "effective_from": "2000-01-01T00:00:00Z",
     "rules": [{"id": "big_basket", "type": "basket_threshold", "multiplier": 2}]},
    {"version": "v2", "effective_from": "2025-06-01T00:00:00Z", "minor_per_point": 10,
     "rules": [{"id": "big_basket", "type": "basket_threshold", "multiplier": 5}]},
]})  # fmt: skip


def test_refund_after_a_rule_change_reverses_what_was_earned() -> None:
    state = LoyaltyState()
    [old] = buy(state, "T1", 6000, ms(2025, 5, 31), rules=SWITCH)
    [new] = buy(state, "T2", 6000, ms(2025, 6, 1), rules=SWITCH)
    assert (old.points, old.rule_version, new.points, new.rule_version) == (120, "v1", 3000, "v2")
    [part] = on_refund(state, "ev-r1", ms(2025, 7, 1), refund("R1", "T1", 1000))
    [rest] = on_refund(state, "ev-r2", ms(2025, 7, 2), refund("R2", "T1", 5000))
    assert (part.points, rest.points) == (-20, -100)
    assert part.rule_version == rest.rule_version == "v1"
    assert balance(state) == 3000


# -- expiry ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("start", "months", "expected"),
    [
        ((2025, 1, 31), 1, (2025, 2, 28)),
        ((2024, 1, 31), 1, (2024, 2, 29)),
        ((2025, 3, 15), 24, (2027, 3, 15)),
        ((2025, 3, 31), -1, (2025, 2, 28)),
        ((2025, 12, 1), 1, (2026, 1, 1)),
        ((2025, 1, 1), -12, (2024, 1, 1)),
    ],
)
def test_add_months(start: tuple[int, int, int], months: int, expected: tuple[int, int, int]) -> None:
    assert add_months(ms(*start), months) == ms(*expected)


def test_expiry_oldest_first_and_idempotent() -> None:
    state = LoyaltyState()
    buy(state, "T2", 2000, ms(2025, 3, 1))
    buy(state, "T1", 1000, ms(2025, 1, 1))
    buy(state, "T3", 3000, ms(2025, 2, 1))
    on_refund(state, "ev-r", ms(2025, 4, 1), refund("R1", "T3", 1500))  # T3 keeps 15 of 30
    assert expire(state, ms(2026, 12, 31)) == []
    first = expire(state, ms(2027, 2, 1))
    assert [(e.id, e.points, e.at_ms) for e in first] == [
        ("ev-T1:T1:expiry", -10, ms(2027, 1, 1)), ("ev-T3:T3:expiry", -15, ms(2027, 2, 1))]
    assert expire(state, ms(2027, 2, 1)) == []
    assert balance(state) == 20
    assert [e.id for e in expire(state, ms(2030, 1, 1))] == ["ev-T2:T2:expiry"]
    assert expire(state, ms(2030, 1, 1)) == [] and balance(state) == 0
    assert first[0].reason == "expired: 10 points earned 2025-01-01 on transaction T1"


def test_expiry_boundary_is_inclusive() -> None:
    state = LoyaltyState()
    buy(state, "T1", 1000, T0)
    due = add_months(T0, 24)
    assert expire(state, due - 1) == []
    assert [e.points for e in expire(state, due)] == [-10]


def test_fully_refunded_lot_has_nothing_to_expire() -> None:
    state = LoyaltyState()
    buy(state, "T1", 1000, T0)
    on_refund(state, "ev-r", T0 + DAY, refund("R1", "T1", 1000))
    assert expire(state, ms(2030)) == [] and balance(state) == 0


def test_expiry_uses_the_period_of_the_version_earned_under() -> None:
    rules = LoyaltyRules.model_validate({"versions": [
        {"version": "v1", "effective_from": "2000-01-01T00:00:00Z", "expiry_months": 6},
        {"version": "v2", "effective_from": "2025-03-01T00:00:00Z", "expiry_months": 36},
    ]})  # fmt: skip
    state = LoyaltyState()
    buy(state, "T1", 1000, T0, rules=rules)
    buy(state, "T2", 1000, ms(2025, 3, 1), rules=rules)
    assert [e.transaction_id for e in expire(state, ms(2027, 12, 31))] == ["T1"]


REFUND_AFTER_EXPIRY = [
    # (refund time, expire() called first up to) -> entries from on_refund
    pytest.param(ms(2027, 2, 1), None, ["expiry", "reversal"], id="refund-dated-after-expiry"),
    pytest.param(ms(2027, 2, 1), ms(2027, 1, 15), ["reversal"], id="after-expiry-materialised"),
    pytest.param(ms(2026, 12, 1), ms(2027, 1, 15), ["reversal"], id="late-refund-dated-before-expiry"),
]  # fmt: skip


@pytest.mark.parametrize(("refund_at", "expired_up_to", "kinds"), REFUND_AFTER_EXPIRY)
def test_refund_after_expiry_reverses_nothing_more(refund_at: int, expired_up_to: int | None, kinds: list[str]) -> None:
    state = LoyaltyState()
    buy(state, "T1", 6000, T0)  # 120 points, expire 2027-01-01
    if expired_up_to is not None:
        expire(state, expired_up_to)
    entries = on_refund(state, "ev-r", refund_at, refund("R1", "T1", 6000))
    assert [e.kind for e in entries] == kinds
    assert entries[-1].points == 0 and "after the points expired" in entries[-1].reason
    assert balance(state) == 0
    assert expire(state, ms(2030)) == []
    [again] = on_refund(state, "ev-r2", refund_at + 1, refund("R2", "T1", 10))
    assert again.points == 0 and balance(state) == 0


def test_refund_before_expiry_then_expiry_takes_the_rest() -> None:
    state = LoyaltyState()
    buy(state, "T1", 6000, T0)
    on_refund(state, "ev-r", ms(2026, 6, 1), refund("R1", "T1", 1500))  # 30 of 120
    [entry] = expire(state, ms(2027, 1, 1, 12))
    assert entry.points == -90 and balance(state) == 0


# -- tiers ---------------------------------------------------------------------------

TIER_TABLE = [
    # (points earned on 2025-01-01) -> tier (bronze 0, silver 2000, gold 5000)
    pytest.param(0, "bronze", id="nothing"),
    pytest.param(1999, "bronze", id="one-below-silver"),
    pytest.param(2000, "silver", id="silver-exactly"),
    pytest.param(4999, "silver", id="one-below-gold"),
    pytest.param(5000, "gold", id="gold-exactly"),
]


PLAIN = LoyaltyRules.model_validate({"versions": [{
    "version": "plain", "effective_from": "2000-01-01T00:00:00Z",
    "tiers": [{"name": "bronze", "min_points": 0}, {"name": "silver", "min_points": 2000},
              {"name": "gold", "min_points": 5000}],
}]})  # fmt: skip


@pytest.mark.parametrize(("points", "tier"), TIER_TABLE)
def test_tier_thresholds(points: int, tier: str) -> None:
    state = LoyaltyState()
    buy(state, "T1", points * 100, T0, rules=PLAIN)
    assert tier_at(state, T0, PLAIN) == (tier, points)


def test_tier_window_is_the_trailing_12_months() -> None:
    state = LoyaltyState()
    buy(state, "T1", 100_000, T0)  # 2000 points
    end = add_months(T0, 12)
    assert tier_at(state, T0 - 1, RULES) == ("bronze", 0)  # not yet earned
    assert tier_at(state, end - 1, RULES) == ("silver", 2000)
    assert tier_at(state, end, RULES) == ("bronze", 0)  # the window is (as_of - 12 months, as_of]


def test_refunds_reduce_earned_expiry_does_not() -> None:
    rules = LoyaltyRules.model_validate({"versions": [{
        "version": "short", "effective_from": "2000-01-01T00:00:00Z", "expiry_months": 3,
        "tiers": [{"name": "bronze", "min_points": 0}, {"name": "silver", "min_points": 1000}],
    }]})  # fmt: skip
    state = LoyaltyState()
    buy(state, "T1", 100_000, T0, rules=rules)  # 1000 points
    on_refund(state, "ev-r", ms(2025, 2, 1), refund("R1", "T1", 10_000))  # -100
    assert earned_12m(state, ms(2025, 1, 31)) == 1000  # the refund is later
    assert tier_at(state, ms(2025, 2, 1), rules) == ("bronze", 900)
    expire(state, ms(2025, 6, 1))
    assert balance(state) == 0
    assert earned_12m(state, ms(2025, 6, 1)) == 900


# -- the card --------------------------------------------------------------------------


def test_summary_is_read_only_and_includes_due_expiries() -> None:
    state = LoyaltyState()
    buy(state, "T1", 1000, T0)
    buy(state, "T2", 6000, ms(2026, 6, 1), "fuel", "shop")
    on_refund(state, "ev-r", ms(2026, 6, 2), refund("R1", "T2", 3000))
    before = copy.deepcopy(state)
    card = summary(state, ms(2027, 3, 1), RULES, recent=2)
    assert state == before
    assert card["balance"] == 120 - 60 == sum(e.points for e in state.entries.values()) - 10
    assert card["entry_count"] == 4
    assert [e["id"] for e in card["entries"]] == ["ev-T1:T1:expiry", "ev-r:T2:reversal"]
    assert (card["tier"], card["earned_12m"]) == ("bronze", 60)
    assert summary(state, ms(2027, 3, 1), RULES, recent=2) == card
    json.dumps(card)
    assert [e["kind"] for e in summary(state, ms(2027, 3, 1), RULES)["entries"]] == [
        "expiry", "reversal", "earn", "earn"]


def test_summary_balance_equals_balance_after_expire() -> None:
    state = LoyaltyState()
    buy(state, "T1", 1000, T0)
    buy(state, "T2", 2000, ms(2025, 6, 1))
    as_of = ms(2027, 3, 1)
    card = summary(state, as_of, RULES)
    assert len(pending_expiries(state, as_of)) == 1
    expire(state, as_of)
    assert summary(state, as_of, RULES) == card
    assert card["balance"] == balance(state) == 20


def test_empty_summary() -> None:
    assert summary(LoyaltyState(), T0, RULES) == {
        "balance": 0, "tier": "bronze", "earned_12m": 0, "entry_count": 0, "entries": []}


# -- merges ----------------------------------------------------------------------------


def _customer_a() -> LoyaltyState:
    state = LoyaltyState()
    buy(state, "A1", 6000, T0)
    buy(state, "A2", 3450, T0 + DAY, "fuel", "shop")
    on_refund(state, "ev-ra", T0 + 2 * DAY, refund("RA", "A1", 2000))
    on_campaign(state, "ev-ca", T0, campaign("CMP-1", **WINDOW), RULES)
    return state


def _customer_b() -> LoyaltyState:
    state = LoyaltyState()
    buy(state, "B1", 1000, T0 + 3 * DAY)
    on_campaign(state, "ev-cb", T0 + 1, campaign("CMP-1", multiplier=4, **WINDOW), RULES)
    on_campaign(state, "ev-cc", T0, campaign("CMP-2"), RULES)
    return state


def merged(into: LoyaltyState, *others: LoyaltyState) -> LoyaltyState:
    result = copy.deepcopy(into)
    for other in others:
        merge(result, other)
    return result


def test_merge_is_a_union_without_doubling() -> None:
    a, b = _customer_a(), _customer_b()
    ab = merged(a, b)
    assert set(ab.entries) == set(a.entries) | set(b.entries)
    assert balance(ab) == balance(a) + balance(b)
    assert set(ab.lots) == {"A1", "A2", "B1"}
    assert ab.invitations["CMP-1"][-1].event_id == "ev-cb" and "CMP-2" in ab.invitations


def test_merge_is_commutative_and_idempotent() -> None:
    a, b = _customer_a(), _customer_b()
    ab = merged(a, b)
    assert ab == merged(b, a)
    assert merged(ab, b) == ab
    assert merged(ab, a) == ab
    assert merged(a, a) == a


def test_merge_does_not_share_lots() -> None:
    a, b = _customer_a(), _customer_b()
    b_before = copy.deepcopy(b)
    ab = merged(a, b)
    on_refund(ab, "ev-rb", T0 + 4 * DAY, refund("RB", "B1", 500))
    assert b == b_before


def test_refund_of_the_other_customers_purchase_after_merge() -> None:
    a, b = _customer_a(), _customer_b()
    with pytest.raises(UnknownPurchase):
        on_refund(a, "ev-rb", T0 + 4 * DAY, refund("RB", "B1", 1000))
    merge(a, b)
    [entry] = on_refund(a, "ev-rb", T0 + 4 * DAY, refund("RB", "B1", 1000))
    # B1 earned 10 and then 30 more when b's invitation (earlier in event time) arrived after it.
    assert entry.points == -40
    assert on_purchase(a, "ev-B1", T0 + 3 * DAY, purchase("B1", 1000), RULES) == []  # redelivered after merge


def test_merge_with_an_older_copy_of_the_same_customer() -> None:
    # The same ledger seen at two moments (a replayed worker): the union is the newer one.
    old = _customer_a()
    new = copy.deepcopy(old)
    on_refund(new, "ev-ra2", T0 + 5 * DAY, refund("RA2", "A1", 4000))
    buy(new, "A3", 500, T0 + 6 * DAY)
    assert merged(old, new) == new == merged(new, old)
    assert merged(old, new).lots["A1"].reversed_points == 120


# -- properties ----------------------------------------------------------------------


@dataclass(frozen=True)
class Op:
    kind: str  # "buy" | "refund" | "expire"
    n: int  # transaction index
    amount: int
    days: int  # time step before the operation


_ops = st.lists(
    st.builds(
        Op,
        st.sampled_from(["buy", "buy", "refund", "refund", "expire"]),
        st.integers(0, 5),
        st.integers(1, 12_000),
        st.integers(0, 200),
    ),
    max_size=40,
)
_categories = st.sampled_from([("fuel",), ("shop",), ("fuel", "shop")])


def _run(ops: list[Op], cats: tuple[str, ...] = ("fuel",), prefix: str = "") -> tuple[LoyaltyState, list[int]]:
    """Apply ``ops``; check the balance after every step. Returns the state and the balances."""
    state = LoyaltyState()
    at = T0
    balances = []
    for i, op in enumerate(ops):
        at += op.days * DAY
        tx = f"{prefix}T{op.n}"
        before = balance(state)
        if op.kind == "buy":
            buy(state, tx, op.amount, at, *cats)
        elif op.kind == "refund" and tx in state.lots:
            on_refund(state, f"{prefix}ev-r{i}", at, refund(f"{prefix}R{i}", tx, op.amount))
            assert balance(state) <= before  # a refund never adds points
        elif op.kind == "expire":
            expire(state, at)
        assert balance(state) >= 0
        for lot in state.lots.values():
            expired = -state.entries[lot.expiry_id].points if lot.expiry_id in state.entries else 0
            assert 0 <= lot.reversed_points <= lot.points * min(lot.refunded_minor, lot.total_minor) // max(
                lot.total_minor, 1)
            assert lot.points - lot.reversed_points - expired >= 0
        balances.append(balance(state))
    return state, balances


@settings(max_examples=300, deadline=None)
@given(_ops, _categories)
def test_refunds_alone_never_make_a_balance_negative(ops: list[Op], cats: tuple[str, ...]) -> None:
    state, _ = _run(ops, cats)
    assert balance(state) == sum(e.points for e in state.entries.values())


@settings(max_examples=300, deadline=None)
@given(_ops, st.integers(1, 50_000), st.lists(st.integers(1, 100), min_size=1, max_size=6), _categories)
def test_a_full_refund_returns_to_the_pre_purchase_balance(
    ops: list[Op], total: int, weights: list[int], cats: tuple[str, ...]
) -> None:
    state, _ = _run([op for op in ops if op.kind != "expire"], cats)
    before = balance(state)
    at = T0 + (sum(op.days for op in ops) + 1) * DAY
    on_purchase(state, "ev-new", at, purchase("NEW", total, *cats), RULES)
    # Split the total into parts by the weights (the last part takes the rounding).
    parts = [total * w // sum(weights) for w in weights[:-1]]
    parts.append(total - sum(parts))
    for i, part in enumerate(p for p in parts if p > 0):
        on_refund(state, f"ev-new-r{i}", at + i, refund(f"NEW-R{i}", "NEW", part))
    assert balance(state) == before


@settings(max_examples=200, deadline=None)
@given(_ops, _ops, _ops, st.permutations([0, 1, 2]))
def test_merge_order_does_not_matter(a_ops: list[Op], b_ops: list[Op], c_ops: list[Op], order: list[int]) -> None:
    states = [_run(ops, prefix=p)[0] for ops, p in ((a_ops, "a"), (b_ops, "b"), (c_ops, "c"))]
    reference = merged(states[0], states[1], states[2])
    first, *rest = (states[i] for i in order)
    assert merged(first, *rest) == reference
    assert merged(reference, *states) == reference  # idempotent
    assert balance(reference) == sum(balance(s) for s in states)


@settings(max_examples=200, deadline=None)
@given(_ops, st.integers(0, 40))
def test_merging_an_older_copy_gives_the_newer(ops: list[Op], cut: int) -> None:
    older, _ = _run(ops[:cut])
    newer, _ = _run(ops)
    assert merged(older, newer) == newer == merged(newer, older)


@settings(max_examples=150, deadline=None)
@given(_ops)
def test_redelivering_every_event_changes_nothing(ops: list[Op]) -> None:
    once, _ = _run(ops)
    twice = LoyaltyState()
    at = T0
    for i, op in enumerate(ops):
        at += op.days * DAY
        for _ in range(2):
            if op.kind == "buy":
                buy(twice, f"T{op.n}", op.amount, at)
            elif op.kind == "refund" and f"T{op.n}" in twice.lots:
                on_refund(twice, f"ev-r{i}", at, refund(f"R{i}", f"T{op.n}", op.amount))
            elif op.kind == "expire":
                expire(twice, at)
    assert twice == once
