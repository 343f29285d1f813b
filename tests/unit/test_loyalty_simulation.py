"""Loyalty simulation on history: the same rules change nothing; a proposed rule shows its cost."""

from __future__ import annotations

import json

from touchpoint.core.loyalty import default_rules, parse_rules
from touchpoint.core.loyalty_simulation import format_report, simulate

SECRET = b"test-secret"
FUEL = {"sku": "F", "category": "fuel", "quantity": 1, "amount_minor": 1000}
SHOP = {"sku": "S", "category": "shop", "quantity": 1, "amount_minor": 500}


def purchase(event_id: str, customer_no: str, lines: list[dict[str, object]], total: int, day: int) -> str:
    return json.dumps({"event_id": event_id, "type": "purchase", "channel": "branch",
                       "occurred_at": f"2025-03-{day:02d}T10:00:00Z", "identifiers": {"customer_no": customer_no},
                       "payload": {"transaction_id": f"T-{event_id}", "location_id": "FS-1", "lines": lines,
                                   "total_minor": total, "currency": "GBP"}})  # fmt: skip


HISTORY = [
    purchase("p1", "C1", [FUEL, SHOP], 1500, 1),  # fuel and shop: x2 now
    purchase("p2", "C1", [FUEL], 1000, 2),
    purchase("p3", "C2", [SHOP], 500, 3),
]
TRIPLE_FUEL_AND_SHOP = parse_rules("""
versions:
  - version: "proposal"
    effective_from: "2000-01-01T00:00:00Z"
    tiers: [{name: bronze, min_points: 0}]
    rules:
      - {id: fuel_and_shop, type: categories_together, multiplier: 3, params: {categories: [fuel, shop]}}
""")


def test_the_same_rules_affect_nobody() -> None:
    report = simulate(lambda: HISTORY, default_rules(), default_rules(), secret=SECRET)
    assert report["customers_affected"] == 0 and report["biggest_movers"] == []
    assert report["totals"]["current"] == report["totals"]["proposed"] == {
        "earned": 15 * 2 + 10 + 5, "reversed": 0, "expired": 0, "net": 45}


def test_a_proposed_rule_shows_its_cost_per_rule_and_per_customer() -> None:
    report = simulate(lambda: HISTORY, default_rules(), TRIPLE_FUEL_AND_SHOP, secret=SECRET)
    assert report["rules"]["fuel_and_shop"] == {
        "current": {"purchases": 1, "points": 30, "customers": 1},
        "proposed": {"purchases": 1, "points": 45, "customers": 1},
    }
    assert report["totals"]["proposed"]["earned"] == 45 + 10 + 5
    (mover,) = report["biggest_movers"]
    assert (mover["current"], mover["proposed"], mover["difference"]) == (40, 55, 15)
    assert report["customers_affected"] == 1
    text = format_report(report)
    assert "fuel_and_shop" in text and "30 -> 45" in text and "customers affected: 1" in text


def consent(event_id: str, customer_no: str, channel: str, purpose_channel: str, granted: bool, day: int) -> str:
    return json.dumps({"event_id": event_id, "type": "consent", "channel": channel,
                       "occurred_at": f"2025-03-{day:02d}T09:00:00Z", "identifiers": {"customer_no": customer_no},
                       "payload": {"purpose": "marketing", "channel": purpose_channel, "granted": granted}})


def test_movers_say_who_may_be_contacted_and_an_opt_out_through_another_channel_counts() -> None:
    history = [
        consent("c1", "C1", "web", "email", True, 1),
        consent("c2", "C1", "web", "sms", True, 1),
        # Later the call centre records that C1 wants no more marketing e-mail: honoured for e-mail.
        consent("c3", "C1", "phone", "email", False, 4),
        purchase("p1", "C1", [FUEL, SHOP], 1500, 5),
        consent("c4", "C3", "branch", "sms", False, 1),
        purchase("p4", "C3", [FUEL, SHOP], 1500, 6),
    ]
    report = simulate(lambda: history, default_rules(), TRIPLE_FUEL_AND_SHOP, secret=SECRET)
    movers = {m["contactable"].get("sms"): m for m in report["biggest_movers"]}
    assert movers[True]["contactable"] == {"email": False, "sms": True}  # C1
    assert movers[False]["contactable"] == {"sms": False}  # C3
    assert report["customers_affected"] == 2 and report["customers_affected_contactable"] == 1
    assert "of whom 1 may be contacted" in format_report(report) and "(sms)" in format_report(report)
    assert movers[False]["difference"] == movers[True]["difference"] == 15
