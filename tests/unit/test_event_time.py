"""Event time, not arrival order: the same events in another arrival order give the same points.

The fold of a log in event-time order is the reference; the same events arriving in another order
(a late campaign invitation, a refund before the event that links its customer, a late purchase)
must give the same balances and the same points per purchase, a late arrival's share carried by
an ``adjustment`` entry with its reason. Bound (stated in :mod:`touchpoint.core.loyalty`): a
purchase whose points expired keeps them (the histories here are shorter than the expiry).
"""

from __future__ import annotations

import json
import random
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from touchpoint.core.fold import FoldConfig, Folder, fold

SECRET = b"event-time"
T0 = datetime(2025, 3, 1, tzinfo=UTC)


def at(hours: float) -> str:
    return (T0 + timedelta(hours=hours)).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def purchase(event_id: str, ids: dict[str, str], hours: float, tx: str, total: int,
             categories: tuple[str, ...] = ("shop",)) -> dict[str, Any]:
    lines = [{"sku": f"SKU-{c}", "category": c, "quantity": 1, "amount_minor": total // len(categories)}
             for c in categories]
    return {"event_id": event_id, "type": "purchase", "channel": "branch", "occurred_at": at(hours),
            "identifiers": ids, "payload": {"transaction_id": tx, "location_id": "FS-1", "lines": lines,
                                            "total_minor": total, "currency": "GBP"}}


def refund(event_id: str, ids: dict[str, str], hours: float, refund_id: str, tx: str, amount: int) -> dict[str, Any]:
    return {"event_id": event_id, "type": "refund", "channel": "branch", "occurred_at": at(hours),
            "identifiers": ids, "payload": {"refund_id": refund_id, "transaction_id": tx, "amount_minor": amount,
                                            "currency": "GBP"}}


def invitation(event_id: str, ids: dict[str, str], hours: float, campaign: str, multiplier: int | None,
               days: int = 10) -> dict[str, Any]:
    payload: dict[str, Any] = {"campaign_id": campaign, "action": "invited", "starts_at": at(hours),
                               "ends_at": at(hours + 24 * days)}
    if multiplier is not None:
        payload["multiplier"] = multiplier
    return {"event_id": event_id, "type": "campaign", "channel": "email", "occurred_at": at(hours),
            "identifiers": ids, "payload": payload}


def visit(event_id: str, ids: dict[str, str], hours: float) -> dict[str, Any]:
    return {"event_id": event_id, "type": "web", "channel": "web", "occurred_at": at(hours), "identifiers": ids,
            "payload": {"session_id": "S1", "action": "page_view"}}


def folded(events: list[dict[str, Any]]) -> dict[str, Any]:
    return fold([json.dumps(e) for e in events], secret=SECRET)


def in_event_time(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(events, key=lambda e: (e["occurred_at"], e["event_id"]))


def points(doc: dict[str, Any]) -> tuple[int, dict[str, int]]:
    """(total balance, points per transaction: every entry of it, earn and adjustments and reversals)."""
    per_tx: dict[str, int] = defaultdict(int)
    total = 0
    for customer in doc["customers"]:
        total += customer["loyalty"]["balance"]
        for entry in customer["loyalty"]["entries"]:
            per_tx[entry["transaction_id"]] += entry["points"]
    return total, dict(per_tx)


ANN = {"customer_no": "C1"}


def test_a_late_invitation_gives_the_bonus_the_rules_give_in_event_time() -> None:
    invited = invitation("inv", ANN, 0, "CMP-1", 3)
    buys = [purchase("p1", ANN, 24, "T1", 4000), purchase("p2", ANN, 48, "T2", 3000)]
    in_time, late = folded([invited, *buys]), folded([*buys, invited])
    assert points(in_time) == points(late) == (210, {"T1": 120, "T2": 90})
    [card] = late["customers"]
    adjustments = [e for e in card["loyalty"]["entries"] if e["kind"] == "adjustment"]
    assert sorted((e["transaction_id"], e["points"]) for e in adjustments) == [("T1", 80), ("T2", 60)]
    assert all("campaign CMP-1 invitation arrived after the purchase" in e["reason"] for e in adjustments)
    assert {e["id"] for e in adjustments} == {"inv:T1:adjustment", "inv:T2:adjustment"}


def test_an_invitation_after_a_purchase_in_event_time_does_not_score_it_whatever_arrives_first() -> None:
    buy = purchase("p1", ANN, 24, "T1", 4000)
    # The campaign's window reaches back before the invitation was sent: the purchase was not invited.
    backdated = invitation("inv", ANN, 30, "CMP-1", 3)
    backdated["payload"]["starts_at"] = at(0)
    assert points(folded([buy, backdated])) == points(folded([backdated, buy])) == (40, {"T1": 40})


def test_a_refund_before_the_event_that_links_its_customer_is_held_then_reversed() -> None:
    card, email = {"card": "4111111111111111"}, {"email": "ann@example.com"}
    buy = purchase("p1", card, 0, "T1", 8000)  # over the basket threshold: ×2, 160 points
    link = visit("link", {**card, **email}, 24)
    back = refund("r1", email, 48, "R1", "T1", 8000)
    in_time = folded([buy, link, back])
    assert points(in_time) == (0, {"T1": 0})
    before_link = folded([buy, back])
    [held] = [c for c in before_link["customers"] if c["held_refunds"]]
    assert held["held_refunds"] == [{"amount_minor": 8000, "at": at(48), "currency": "GBP", "event_id": "r1",
                                     "refund_id": "R1", "transaction_id": "T1"}]
    assert points(before_link)[0] == 160 and not before_link["rejected"]
    late_link = folded([buy, back, link])
    assert points(late_link) == points(in_time)
    assert [c["held_refunds"] for c in late_link["customers"]] == [[]]
    assert late_link["customers"][0]["counts"] == in_time["customers"][0]["counts"]


def test_a_refund_before_its_purchase_is_held_until_the_purchase_arrives() -> None:
    buy, back = purchase("p1", ANN, 0, "T1", 8000), refund("r1", ANN, 5, "R1", "T1", 4000)
    assert points(folded([back, buy])) == points(folded([buy, back])) == (80, {"T1": 80})


def test_a_held_refund_is_rejected_with_its_reason_after_the_horizon() -> None:
    back = refund("r1", ANN, 0, "R1", "T9", 4000)
    held = fold([json.dumps(back), json.dumps({"tick": at(24 * 29)})], secret=SECRET)
    assert not held["rejected"] and held["customers"][0]["held_refunds"]
    doc = fold([json.dumps(back), json.dumps({"tick": at(24 * 31)})], secret=SECRET)
    assert doc["rejected"] == [{"event_id": "r1", "reason": "payload.transaction_id: refund of T9, not a purchase "
                                                            "of this customer within 30 days of log time"}]
    assert doc["customers"][0]["held_refunds"] == [] and doc["customers"][0]["counts"]["total"] == 0


# -- any arrival order ------------------------------------------------------------------------------------------

_HOURS = st.integers(0, 24 * 25)  # within the offline fold's 30 days of clock check, refunds included


@st.composite
def histories(draw: st.DrawFn) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(purchases and invitations, refunds) of one customer within 28 days (no expiry)."""
    events: list[dict[str, Any]] = []
    buys = draw(st.lists(st.tuples(_HOURS, st.integers(100, 9000), st.sampled_from([("shop",), ("fuel", "shop")])),
                         min_size=1, max_size=6))
    for n, (hours, total, cats) in enumerate(buys):
        events.append(purchase(f"p{n}", ANN, hours, f"T{n}", total, cats))
    for n, (hours, campaign, multiplier, days) in enumerate(draw(st.lists(
            st.tuples(_HOURS, st.sampled_from(["CMP-1", "CMP-2"]), st.sampled_from([None, 2, 3, 4]),
                      st.integers(1, 20)), max_size=4))):
        events.append(invitation(f"i{n}", ANN, hours, campaign, multiplier, days))
    refunds = []
    for n, (which, share, later) in enumerate(draw(st.lists(
            st.tuples(st.integers(0, len(buys) - 1), st.integers(1, 100), st.integers(1, 24 * 3)), max_size=4))):
        hours, total, _ = buys[which]
        # Four refunds at most, each a quarter at most: never above the purchase.
        refunds.append(refund(f"r{n}", ANN, hours + later, f"R{n}", f"T{which}", max(1, total * share // 400)))
    return events, refunds


@settings(max_examples=200, deadline=None)
@given(history=histories(), data=st.data())
def test_any_arrival_order_gives_the_points_of_event_time(
        history: tuple[list[dict[str, Any]], list[dict[str, Any]]], data: st.DataObject) -> None:
    events, refunds = history
    arrival = data.draw(st.permutations(events + refunds))
    reference = folded(in_event_time(events + refunds))
    late = folded(arrival)
    assert points(late) == points(reference)
    assert late["rejected"] == reference["rejected"] == []


@settings(max_examples=150, deadline=None)
@given(history=histories(), data=st.data())
def test_any_arrival_of_purchases_and_refunds_gives_the_points_of_event_time(
        history: tuple[list[dict[str, Any]], list[dict[str, Any]]], data: st.DataObject) -> None:
    events, refunds = history
    buys = [e for e in events if e["type"] == "purchase"]
    arrival = data.draw(st.permutations(buys + refunds))
    reference = folded(in_event_time(buys + refunds))
    late = folded(arrival)
    assert points(late) == points(reference)
    assert late["rejected"] == reference["rejected"] == []
    assert late["customers"][0]["counts"] == reference["customers"][0]["counts"]


def test_a_merge_brings_the_invitation_of_the_other_identifier_to_the_purchases_it_precedes() -> None:
    card, email = {"card": "4111111111111111"}, {"email": "ann@example.com"}
    invited = invitation("inv", email, 0, "CMP-1", 3)
    buy = purchase("p1", card, 24, "T1", 4000)
    link = visit("link", {**card, **email}, 48)
    back = refund("r1", card, 30, "R1", "T1", 1000)  # a quarter refunded: 30 of the 120 points
    expected = (90, {"T1": 90})
    for order in ([invited, buy, back, link], [buy, back, link, invited], [link, buy, invited, back],
                  [back, link, invited, buy]):
        assert points(folded(order)) == expected, [e["event_id"] for e in order]
    [customer] = folded([buy, back, invited, link])["customers"]
    [adjustment] = [e for e in customer["loyalty"]["entries"] if e["kind"] == "adjustment"]
    assert adjustment["id"] == "link:T1:adjustment" and adjustment["points"] == 60  # +80 earned, -20 reversed
    assert adjustment["reason"].startswith("customers merged: ×3")


# -- identity ---------------------------------------------------------------------------------------------------


def customers(doc: dict[str, Any]) -> dict[str, dict[str, list[str]]]:
    """Customer id -> identifiers (displayed), of every live customer."""
    return {c["customer_id"]: c["identifiers"] for c in doc["customers"]}


def test_a_customer_keeps_the_id_of_its_first_event_whatever_arrives_first() -> None:
    email, both = {"email": "ann@example.com"}, {"customer_no": "C1", "email": "ann@example.com"}
    later, first = visit("later", email, 48), visit("first", both, 0)
    in_time, late = folded([first, later]), folded([later, first])
    assert customers(late) == customers(in_time)
    [(customer_id, identifiers)] = customers(in_time).items()
    assert identifiers == {"customer_no": ["C1"], "email": ["ann@example.com"]}
    [renamed] = late["customers"]
    assert renamed["aliases"] and customer_id not in renamed["aliases"]  # the id handed out before is an alias
    assert [d["reason"] for d in late["identity_decisions"] if d["decision"] == "merged"] == [
        f"an earlier event of {renamed['aliases'][0]} arrived: the customer takes the id of its first event"]


def test_the_survivor_of_a_merge_is_the_customer_seen_first_in_event_time() -> None:
    card, email = {"card": "4111111111111111"}, {"email": "ann@example.com"}
    by_card, by_email = visit("c", card, 0), visit("m", email, 24)
    link = visit("link", {**card, **email}, 48)
    reference = customers(folded([by_card, by_email, link]))
    for order in ([by_email, by_card, link], [by_email, link, by_card], [link, by_email, by_card]):
        assert customers(folded(order)) == reference, [e["event_id"] for e in order]


_IDENTIFIER = st.sampled_from([("card", "4111111111111111"), ("card", "5500005555555559"), ("card", "6011000990139424"),
                               ("email", "a@example.com"), ("email", "b@example.com"), ("email", "c@example.com"),
                               ("cookie", "k1"), ("cookie", "k2"), ("cookie", "k3")])


@settings(max_examples=200, deadline=None)
@given(visits=st.lists(st.tuples(st.lists(_IDENTIFIER, min_size=1, max_size=3), st.integers(0, 24 * 25)),
                       min_size=1, max_size=10, unique_by=lambda v: v[1]),
       data=st.data())
def test_any_arrival_order_gives_the_customers_of_event_time(visits: list[tuple[list[tuple[str, str]], int]],
                                                             data: st.DataObject) -> None:
    # Few identifiers, so events link and merge; none over a guardrail's limit (three of a kind at most).
    events = [visit(f"v{n}", dict(ids), hours) for n, (ids, hours) in enumerate(visits)]
    arrival = data.draw(st.permutations(events))
    assert customers(folded(arrival)) == customers(folded(in_event_time(events)))


_CONTESTED = st.sampled_from([("customer_no", "C1"), ("customer_no", "C2"), ("customer_no", "C3"),
                              ("email", "family@example.com"), ("email", "b@example.com"),
                              ("phone", "07700 900123"), ("cookie", "k1"), ("cookie", "k2")])


@settings(max_examples=300, deadline=None)
@given(visits=st.lists(st.tuples(st.lists(_CONTESTED, min_size=1, max_size=3), st.integers(0, 24 * 25),
                                 st.booleans()),
                       min_size=1, max_size=12, unique_by=lambda v: v[1]),
       limits=st.sampled_from([{}, {"email": 1, "phone": 1, "cookie": 1}]), data=st.data())
def test_any_arrival_order_with_contested_identifiers_gives_the_customers_and_points_of_event_time(
        visits: list[tuple[list[tuple[str, str]], int, bool]], limits: dict[str, int], data: st.DataObject) -> None:
    # Three customer numbers over one family e-mail, a landline and two cookies: the guardrails refuse
    # links, and which customer keeps a contested identifier (and the purchases made under it) is
    # decided as in event-time order, however the events arrive.
    events = [purchase(f"p{n}", dict(ids), hours, f"T{n}", 10_000) if buys else visit(f"v{n}", dict(ids), hours)
              for n, (ids, hours, buys) in enumerate(visits)]
    arrival = data.draw(st.permutations(events))
    config = FoldConfig(limits=limits)

    def folded_with(events: list[dict[str, Any]]) -> dict[str, Any]:
        return fold([json.dumps(e) for e in events], secret=SECRET, config=config)

    late, in_time = folded_with(arrival), folded_with(in_event_time(events))
    assert customers(late) == customers(in_time)
    assert points(late) == points(in_time)


def test_a_late_event_that_gives_a_contested_email_to_its_first_holder_moves_what_was_made_under_it() -> None:
    # Ann (C1) used the family e-mail first; Bob's (C2) visit with it arrives first. In event time the
    # e-mail is Ann's, so a purchase under the e-mail alone is hers, with its points, whatever arrives first.
    family = {"email": "family@example.com"}
    ann, bob = visit("ann", {"customer_no": "C1", **family}, 0), visit("bob", {"customer_no": "C2", **family}, 24)
    bought = purchase("buy", family, 48, "T1", 20_000)
    reference = folded([ann, bob, bought])
    late = folded([bob, bought, ann])
    assert customers(late) == customers(reference)
    assert points(late) == points(reference)
    [refolded] = [d for d in late["identity_decisions"] if d["decision"] == "refolded"]
    assert refolded["event_id"] == "ann" and "resolved again" in refolded["reason"]
    owner = next(c for c in late["customers"] if "C1" in c["identifiers"].get("customer_no", []))
    assert owner["identifiers"]["email"] == ["family@example.com"] and owner["loyalty"]["balance"] > 0


# -- alerts -----------------------------------------------------------------------------------------------------


def test_a_late_event_resolves_the_dormancy_episode_it_would_have_prevented_with_the_reason() -> None:
    from touchpoint.core.fold import Folder

    folder = Folder(secret=SECRET, keep_decisions=False)
    for day in (0, 7, 14, 21):
        folder.add_json(json.dumps(visit(f"w{day}", ANN, 24 * day)))
    folder.add_json(json.dumps({"tick": at(24 * 112)}))  # 91 days after the last visit known then
    [(raised, _)] = folder.drain_alerts()
    assert (raised.kind, raised.state) == ("dormancy", "raised")
    folder.add_json(json.dumps(visit("w100", ANN, 24 * 100)))  # it happened before the tick, arrives after it
    folder.add_json(json.dumps({"tick": at(24 * 113)}))
    [(resolved, _)] = folder.drain_alerts()
    assert (resolved.kind, resolved.state) == ("dormancy", "resolved")
    [reason] = resolved.reasons
    assert reason.code == "corrected" and "a late event" in reason.text
    assert reason.evidence["event_ids"] == ["w100"]


def shuffled_worker(seed: int) -> tuple[Folder, list[str]]:
    """A generated population in a random arrival order, and a Folder as a worker runs it (reading them again)."""
    from touchpoint.generate import generate

    docs = [e for e in generate(customers=150, days=120, seed=seed) if e["event_id"].startswith("ev-")]
    random.Random(seed).shuffle(docs)
    lines = [json.dumps(e) for e in docs]
    folder = Folder(secret=SECRET, keep_decisions=False, log_clock_check=False)
    folder.history = lambda positions: [folder.event_of_line(lines[p]) for p in positions]
    return folder, lines


@pytest.mark.parametrize("seed", [7, 33])
def test_the_ledger_as_published_sums_per_customer_to_each_cards_balance_in_any_arrival_order(seed: int) -> None:
    # A generated population in a random arrival order: components folded anew withdraw each entry from the
    # customer it was issued to (a merge brought some into the view) and issue their own, so the entries a
    # worker publishes, summed per customer they resolve to now, are each view's balance.
    folder, lines = shuffled_worker(seed)
    for position, line in enumerate(lines):
        folder.position = position
        folder.add_json(line)
    assert folder.refolds, "the arrival order makes identity resolve a component again"
    owned: dict[str, int] = defaultdict(int)
    for customer_id, entry in folder.drain_entries():
        owned[folder.state.canonical(customer_id)] += entry.points
    balances = {cid: sum(e.points for e in view.loyalty.entries.values()) for cid, view in folder.views.items()}
    assert {cid: owned.get(cid, 0) for cid in balances} == balances
    assert set(owned) <= set(balances)
    # Every customer is a changed card for the worker, also one merged away and live again since (its merge
    # and its card both go out, the card after).
    touched, _ = folder.drain_changes()
    assert set(folder.views) <= touched


@pytest.mark.parametrize("seed", [7, 33, 17])
def test_the_aliases_a_card_lists_are_the_merges_a_worker_publishes_in_any_arrival_order(seed: int) -> None:
    # The read model records an alias from the merge record a worker publishes, and a card lists its aliases: the
    # two must agree, also for a component folded anew whose late event had minted a customer of its own in
    # arrival order (an id no event ever resolved to: no card, no merge record, so no alias either).
    folder, lines = shuffled_worker(seed)
    published: set[str] = set()
    for position, line in enumerate(lines):
        folder.position = position
        folder.add_json(line)
        if position % 50 == 49:  # a worker's batch
            published |= folder.drain_changes()[1].keys()
    published |= folder.drain_changes()[1].keys()
    assert folder.refolds
    listed = {alias for view in folder.views.values() for alias in view.aliases}
    assert listed == published - folder.views.keys()
