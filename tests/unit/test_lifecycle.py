"""Life-cycle stages: table tests of the stages and their transitions, and their independence of arrival order."""

from __future__ import annotations

import json
import math
import random
from datetime import date, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from touchpoint.core.fold import FoldConfig, fold
from touchpoint.core.lifecycle import Alive, StageRules, stage_on, transitions

RULES = StageRules()
D0 = date(2025, 1, 1)


def day(n: int) -> date:
    return D0 + timedelta(days=n)


@pytest.mark.parametrize(("purchases", "on", "stage"), [
    ([], 10, None),
    ([0], 0, "new"),
    ([0], 89, "new"),
    ([0], 90, "at_risk"),  # the first purchase's 90 days ran out with no other purchase
    ([0, 60], 100, "active"),
    ([0, 60], 150, "at_risk"),
    ([0, 60], 240, "dormant"),
    ([0, 60], 425, "lost"),
    ([0, 400], 410, "won_back"),  # lost (365 days without), then bought again
    ([0, 400], 485, "won_back"),
    ([0, 400, 450], 495, "active"),  # won back for 90 days, then active (still buying)
    ([0, 400], 490, "at_risk"),  # won back, and nothing since for 90 days
    ([0, 200], 210, "active"),  # a dormant customer buying again is active, not won back
])
def test_the_stage_on_a_day(purchases: list[int], on: int, stage: str | None) -> None:
    assert stage_on([day(n) for n in purchases], day(on), RULES)[0] == stage


def test_a_customer_lost_and_won_back_has_every_transition_with_its_reason() -> None:
    found = transitions([day(0), day(30), day(430)], day(600), RULES)
    assert [(t.day, t.before, t.after) for t in found] == [
        (day(0), None, "new"), (day(90), "new", "active"), (day(120), "active", "at_risk"),
        (day(210), "at_risk", "dormant"), (day(395), "dormant", "lost"), (day(430), "lost", "won_back"),
        (day(520), "won_back", "at_risk")]
    assert found[5].why == f"bought on {day(430)} after 400 days without a purchase"
    assert "no purchase for 365 days" in found[4].why


def test_transitions_stop_at_the_day_asked_and_need_a_purchase() -> None:
    assert transitions([day(0), day(30)], day(100), RULES)[-1].after == "active"
    assert transitions([day(5)], day(4), RULES) == []
    assert transitions([], day(4), RULES) == []


def test_stage_rules_must_be_ordered() -> None:
    with pytest.raises(ValueError, match="active_days <= dormant_days"):
        StageRules(active_days=200, dormant_days=100)


@settings(max_examples=200, deadline=None)
@given(purchases=st.lists(st.integers(0, 900), min_size=1, max_size=20), until=st.integers(0, 1200))
def test_transitions_agree_with_the_stage_of_every_day(purchases: list[int], until: int) -> None:
    # Checking only purchase days and the days a count runs out misses no change: day by day agrees.
    days = sorted({day(n) for n in purchases})
    found = transitions(days, day(until), RULES)
    expected, stage = [], None
    for n in range(until + 1):
        now = stage_on(days, day(n), RULES)[0]
        if now != stage:
            expected.append((day(n), now))
            stage = now
    assert [(t.day, t.after) for t in found] == expected


def purchase(n: int, customer: str, on: int) -> dict[str, object]:
    at = (day(on).isoformat() + "T12:00:00.000Z")
    return {"event_id": f"p{n}", "type": "purchase", "channel": "branch", "occurred_at": at,
            "identifiers": {"customer_no": customer},
            "payload": {"transaction_id": f"T{n}", "location_id": "S1", "total_minor": 1000, "currency": "GBP",
                        "lines": [{"sku": "A", "category": "shop", "quantity": 1, "amount_minor": 1000}]}}


def test_the_fold_gives_each_customer_its_stage_and_transitions_whatever_the_arrival_order() -> None:
    events = [purchase(n, c, on) for n, (c, on) in enumerate([("C1", 0), ("C1", 30), ("C1", 430), ("C2", 300)])]
    shuffled = events[:]
    random.Random(4).shuffle(shuffled)
    as_of = "2026-04-06T00:00:00Z"  # day 460

    def lifecycles(order: list[dict[str, object]]) -> dict[str, object]:
        from datetime import datetime

        doc = fold([json.dumps(e) for e in order], as_of=datetime.fromisoformat(as_of.replace("Z", "+00:00")),
                   config=FoldConfig(max_ahead_days=3650), secret=b"k" * 32)
        return {c["identifiers"]["customer_no"][0]: c["lifecycle"] for c in doc["customers"]}

    found = lifecycles(events)
    assert found == lifecycles(shuffled)
    assert found["C1"]["stage"] == "won_back" and found["C1"]["rules_version"] == RULES.version
    assert [t["to"] for t in found["C2"]["transitions"]] == ["new", "at_risk"]


# -- with a value model: P(alive) in the stages --------------------------------------------------------------------

ALIVE = Alive(r=0.243, alpha=4.414, a=0.793, b=2.426, unit_days=7)  # CDNOW's BG/NBD, in weeks


def test_p_alive_for_the_stages_is_the_value_models() -> None:
    import numpy as np

    from touchpoint.core.value import BgNbd, p_alive

    for x, t_x, T in ((0, 0, 30), (1, 14, 20), (3, 100, 200), (8, 250, 400)):
        expected = p_alive(BgNbd(0.243, 4.414, 0.793, 2.426), np.array([float(x)]), np.array([t_x / 7]),
                           np.array([T / 7]))[0]
        assert ALIVE.p(x, t_x, T) == pytest.approx(float(expected), rel=1e-12)


@pytest.mark.parametrize(("x", "t_x"), [(1, 10), (3, 100), (12, 300)])
@pytest.mark.parametrize("threshold", [0.5, 0.1])
def test_p_alive_falls_to_a_threshold_on_the_day_found(x: int, t_x: int, threshold: float) -> None:
    below = ALIVE.days_below(x, t_x, threshold)
    assert below is not None and below >= t_x
    assert ALIVE.p(x, t_x, math.floor(below)) >= threshold - 1e-9
    assert ALIVE.p(x, t_x, math.floor(below) + 1) < threshold
    assert ALIVE.days_below(0, 0, threshold) is None  # without repeats P(alive) stays 1


def test_a_frequent_buyer_who_stops_is_at_risk_before_the_recency_rule_says_so() -> None:
    # Weekly purchases for 20 weeks, then nothing: by the recency rules at risk after 90 days; P(alive) says earlier.
    days = [day(7 * n) for n in range(21)]
    found = transitions(days, day(140 + 365), RULES, ALIVE)
    at_risk = next(t for t in found if t.after == "at_risk")
    assert (at_risk.day - day(140)).days < 90 and at_risk.why.startswith("P(alive)")
    assert "x 20, t_x 140 days" in at_risk.why
    assert found[-1].after == "lost"
    assert [t.after for t in transitions(days, day(140 + 365), RULES)][-1] == "lost"  # lost either way, later without


@settings(max_examples=150, deadline=None)
@given(purchases=st.lists(st.integers(0, 700), min_size=1, max_size=15), until=st.integers(0, 900))
def test_transitions_with_p_alive_agree_with_the_stage_of_every_day(purchases: list[int], until: int) -> None:
    days = sorted({day(n) for n in purchases})
    found = transitions(days, day(until), RULES, ALIVE)
    expected, stage = [], None
    for n in range(until + 1):
        now = stage_on(days, day(n), RULES, ALIVE)[0]
        if now != stage:
            expected.append((day(n), now))
            stage = now
    assert [(t.day, t.after) for t in found] == expected
