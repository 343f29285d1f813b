"""Dormancy and churn alerts: conditions at their thresholds, episodes, the due index, determinism."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from touchpoint.core.alerts import (
    DAY_MS,
    Alert,
    AlertConfig,
    AlertInputs,
    AlertState,
    Case,
    Consent,
    DormancyFloors,
    DueIndex,
    Interaction,
    Kind,
    Purchase,
    Refund,
    churn_assessment,
    decide,
    dormancy_due_ms,
    dormancy_threshold_ms,
    next_due_ms,
    retire,
)
from touchpoint.core.instants import epoch_ms

T0 = epoch_ms(datetime(2025, 1, 1, tzinfo=UTC))
D = DAY_MS
H = 3_600_000
CFG = AlertConfig()


def at(day: float) -> int:
    return T0 + round(day * D)


def interactions(days: Sequence[float], channel: str = "web") -> tuple[Interaction, ...]:
    return tuple(sorted(Interaction(at(d), f"e{i:04d}", channel) for i, d in enumerate(days)))


def customer(
    days: Sequence[float] = (),
    segment: str = "lead",
    *,
    purchases: Sequence[Purchase] = (),
    refunds: Sequence[Refund] = (),
    cases: Sequence[Case] = (),
    consent: Sequence[Consent] = (),
    customer_id: str = "cus_1",
) -> AlertInputs:
    return AlertInputs(
        customer_id, segment, interactions(days), tuple(purchases), tuple(refunds), tuple(cases), tuple(consent)
    )


def buys(days: Sequence[float], total: int = 1000) -> list[Purchase]:
    return [Purchase(at(d), total, f"T{i}") for i, d in enumerate(days)]


def case(cid: str, category: str, action: str, day: float) -> Case:
    return Case(cid, category, action, at(day), f"ev-{cid}-{action}")


def consent(channel: str, granted: bool, day: float, purpose: str = "marketing") -> Consent:
    return Consent(purpose, channel, granted, at(day), f"ev-consent-{purpose}-{channel}")


def summary(alerts: Sequence[Alert]) -> list[tuple[str, str]]:
    return [(a.state, a.severity) for a in alerts]


# -- configuration --------------------------------------------------------------------


def test_config_defaults_frozen_and_strict() -> None:
    assert CFG.dormancy_factor == 3 and CFG.dormancy_min_interactions == 3
    assert CFG.dormancy_floors.model_dump() == {"platinum": 30, "gold": 45, "iron": 60, "lead": 90}
    assert (CFG.complaint_window_days, CFG.complaint_count, CFG.recent_days, CFG.drop_ratio) == (30, 2, 90, 0.5)
    assert (CFG.cancel_request_category, CFG.complaint_category) == ("cancel_request", "complaint")
    with pytest.raises(ValidationError):
        AlertConfig(dormancy_factr=2)  # type: ignore[call-arg]
    with pytest.raises(ValidationError):
        CFG.churn_threshold = 1  # type: ignore[misc]
    with pytest.raises(ValidationError, match="trailing_days"):
        AlertConfig(recent_days=365)


def test_inputs_must_be_sorted() -> None:
    with pytest.raises(ValueError, match="sorted"):
        AlertInputs("cus_1", "lead", (Interaction(2, "b", "web"), Interaction(1, "a", "web")))


def test_unknown_segment_refused() -> None:
    with pytest.raises(ValueError, match="segment"):
        dormancy_threshold_ms(customer([0], "copper"), CFG)


# -- dormancy -------------------------------------------------------------------------

NO_VISITS = AlertConfig(visit_gap_hours=0)


@pytest.mark.parametrize(
    ("days", "segment", "config", "threshold_ms"),
    [
        # given a usual gap of 10 days: 3 x 10 = 30 days loses to the lead floor of 90
        ([0, 10, 20, 30], "lead", CFG, 90 * D),
        # usual gap 40: 3 x 40 = 120 beats every floor
        ([0, 40, 80, 120], "lead", CFG, 120 * D),
        ([0, 40, 80, 120], "platinum", CFG, 120 * D),
        # usual gap 5: platinum floor 30
        ([0, 5, 10], "platinum", CFG, 30 * D),
        ([0, 5, 10], "gold", CFG, 45 * D),
        ([0, 5, 10], "iron", CFG, 60 * D),
        # even number of gaps: the median is the mean of the middle two (20, 30 -> 25 -> 75 days)
        ([0, 10, 30, 60, 100], "platinum", CFG, 75 * D),
        # fewer than 3 interactions: the floor alone, however long the one gap
        ([0, 50], "platinum", CFG, 30 * D),
        ([0], "gold", CFG, 45 * D),
        ([], "iron", CFG, 60 * D),
        # interactions an hour or two apart are one visit: gaps 30d-1h and 30d -> median 30d-30min
        ([0, 30, 30 + 1 / 24, 60, 60 + 2 / 24], "iron", CFG, 90 * D - 90 * 60_000),
        # ... unless visits are switched off: gaps 1h, 2h, 30d-1h, 30d -> median 15d+30min -> 45d+90min < 60
        ([0, 30, 30 + 1 / 24, 60, 60 + 2 / 24], "iron", NO_VISITS, 60 * D),
        # a burst alone is one visit: the floor
        ([0, 0.01, 0.02, 0.03], "platinum", CFG, 30 * D),
    ],
)
def test_dormancy_threshold(days: list[float], segment: str, config: AlertConfig, threshold_ms: int) -> None:
    inputs = customer(days, segment)
    assert dormancy_threshold_ms(inputs, config) == threshold_ms
    if days:
        assert dormancy_due_ms(inputs, config) == at(max(days)) + threshold_ms + 1


def test_dormancy_due_none_without_interactions() -> None:
    assert dormancy_due_ms(customer([]), CFG) is None
    assert decide(AlertState("dormancy"), customer([]), at(1000), CFG)[1] == []


@pytest.mark.parametrize(("offset_ms", "raised"), [(-1, False), (0, False), (1, True), (D, True)])
def test_dormancy_boundary_silence_equal_to_threshold_is_not_dormant(offset_ms: int, raised: bool) -> None:
    inputs = customer([0, 10, 20], "platinum")  # usual gap 10 -> 30 days = the platinum floor
    now = at(20) + 30 * D + offset_ms
    _, alerts = decide(AlertState("dormancy"), inputs, now, CFG)
    assert summary(alerts) == ([("raised", "medium")] if raised else [])


def test_dormancy_raised_alert_content() -> None:
    inputs = customer([0, 10, 20], "platinum")
    now = at(55)
    state, [alert] = decide(AlertState("dormancy"), inputs, now, CFG)
    since = at(20) + 30 * D + 1
    assert alert.alert_id == f"cus_1/dormancy/1/{since}/raised"
    assert (alert.kind, alert.state, alert.customer_id, alert.at_ms, alert.since_ms, alert.raised_ms) == (
        "dormancy", "raised", "cus_1", now, since, now,
    )  # fmt: skip
    [reason] = alert.reasons
    assert reason.code == "silent" and reason.text.startswith("no interaction for 35 days")
    assert reason.evidence["event_ids"] == ["e0002"]
    assert (reason.evidence["threshold_days"], reason.evidence["usual_gap_days"]) == (30, 10)
    doc = alert.to_json()
    assert doc["at"] == "2025-02-25T00:00:00.000Z" and doc["since"] == "2025-02-20T00:00:00.001Z"
    assert json.loads(json.dumps(doc)) == doc
    assert state.open and state.anchor_ms == at(20) and state.since_ms == since


# Given interactions on days 0, 10, 20 (platinum: dormant beyond 30 days, high beyond 60), when the
# steps happen in order, then each step emits these transitions. "event" folds an interaction and
# decides at its time; "late" folds it without deciding (it arrives after later ticks); "tick" decides.
EPISODES: list[tuple[str, list[tuple[str, float, list[tuple[str, str]]]]]] = [
    ("raise once, no repeat while open", [
        ("tick", 49, []), ("tick", 51, [("raised", "medium")]), ("tick", 60, []), ("tick", 70, []),
    ]),
    ("escalate past twice the threshold", [
        ("tick", 51, [("raised", "medium")]), ("tick", 80, []), ("tick", 80.001, [("escalated", "high")]),
        ("tick", 120, []),
    ]),
    ("first look long after: high straight away", [("tick", 100, [("raised", "high")]), ("tick", 101, [])]),
    ("return resolves", [
        ("tick", 51, [("raised", "medium")]), ("event", 55, [("resolved", "medium")]), ("tick", 60, []),
    ]),
    ("raise again after the return", [
        ("tick", 51, [("raised", "medium")]), ("event", 55, [("resolved", "medium")]), ("tick", 85, []),
        ("tick", 86, [("raised", "medium")]),
    ]),
    ("a late decision sees the return and the next silence", [
        ("tick", 51, [("raised", "medium")]), ("late", 55, []),
        ("tick", 90, [("resolved", "medium"), ("raised", "medium")]),
    ]),
    ("activity before the threshold: nothing", [
        ("event", 45, []), ("tick", 70, []), ("tick", 76, [("raised", "medium")]),
    ]),
    ("time never goes backwards", [("tick", 51, [("raised", "medium")]), ("tick", 40, []), ("tick", 52, [])]),
]  # fmt: skip


@pytest.mark.parametrize("steps", [s for _, s in EPISODES], ids=[name for name, _ in EPISODES])
def test_dormancy_episodes(steps: list[tuple[str, float, list[tuple[str, str]]]]) -> None:
    days: list[float] = [0, 10, 20]
    state = AlertState("dormancy")
    ids: list[str] = []
    for what, day, expected in steps:
        if what in ("event", "late"):
            days.append(day)
        if what == "late":
            continue
        state, alerts = decide(state, customer(days, "platinum"), at(day), CFG)
        assert summary(alerts) == expected, (what, day)
        ids += [a.alert_id for a in alerts]
        if alerts:
            assert state.open is (alerts[-1].state != "resolved")
    assert len(ids) == len(set(ids))


def test_dormancy_resolution_carries_the_return() -> None:
    state, _ = decide(AlertState("dormancy"), customer([0, 10, 20], "platinum"), at(51), CFG)
    state, [alert] = decide(state, customer([0, 10, 20, 55], "platinum"), at(55), CFG)
    assert alert.state == "resolved" and alert.since_ms == at(50) + 1 and alert.raised_ms == at(51)
    assert alert.reasons[0].code == "returned" and alert.reasons[0].evidence["event_ids"] == ["e0003"]
    assert not state.open and state.episodes == 1


def test_dormancy_episode_survives_a_rising_floor() -> None:
    # Raised as iron (60 days); the segment decays to lead (90) with no return: the episode stays open.
    state, [raised] = decide(AlertState("dormancy"), customer([0], "iron"), at(61), CFG)
    state, alerts = decide(state, customer([0], "lead"), at(70), CFG)
    assert alerts == [] and state.open and state.since_ms == raised.since_ms


# -- churn ----------------------------------------------------------------------------

WEEKLY = [7 * w for w in range(53)]  # days 0..364
LAPSED = [7 * w for w in range(41)]  # days 0..280, then nothing
NOW = 365.0


def churn(**kw: Any) -> AlertInputs:
    days = kw.pop("days", None)
    purchases = kw.get("purchases", ())
    if days is None:
        days = sorted({(p.ms - T0) / D for p in purchases} | {0.0, NOW - 1})
    return customer(days, **kw)


CHURN_SIGNALS: list[tuple[str, AlertInputs, tuple[str, ...]]] = [
    ("nothing", churn(purchases=buys(WEEKLY)), ()),
    ("cancel request open", churn(cases=[case("X1", "cancel_request", "opened", NOW - 2)]), ("cancel_request",)),
    ("cancel request closed, silent since",
     churn(days=[0, 300], cases=[case("X1", "cancel_request", "closed", 300)]), ("cancel_request",)),
    ("cancel request closed, active since: saved",
     churn(days=[0, 300, 301], cases=[case("X1", "cancel_request", "closed", 300)]), ()),
    ("cancel request open, active since, recent: still counts",
     churn(days=[0, 300, 301], cases=[case("X1", "cancel_request", "opened", 300)]), ("cancel_request",)),
    ("cancel request open, active since, stale",
     churn(days=[0, 200, 364], cases=[case("X1", "cancel_request", "opened", 200)]), ()),
    ("other case categories do not count", churn(cases=[case("X1", "query", "opened", 360)]), ()),
    ("two complaints in 30 days",
     churn(cases=[case("X1", "complaint", "opened", 340), case("X2", "complaint", "closed", 360)]), ("complaints",)),
    ("one complaint", churn(cases=[case("X1", "complaint", "opened", 360)]), ()),
    ("two complaints, one exactly 30 days ago",
     churn(cases=[case("X1", "complaint", "opened", NOW - 30), case("X2", "complaint", "opened", 360)]), ()),
    ("two complaints, one a day less than 30 ago",
     churn(cases=[case("X1", "complaint", "opened", NOW - 29), case("X2", "complaint", "opened", 360)]),
     ("complaints",)),
    ("purchases stop", churn(purchases=buys(LAPSED)), ("activity_drop",)),
    ("spend drops, count holds",
     churn(purchases=buys([d for d in WEEKLY if d <= 275]) + buys([d for d in WEEKLY if d > 275], 100)),
     ("activity_drop",)),
    ("young customer: no baseline yet", churn(days=[300, 364], purchases=buys([300, 307, 314])), ()),
    ("opted out on every channel",
     churn(consent=[consent("email", False, 100), consent("sms", False, 200)]), ("opted_out",)),
    ("one channel still granted",
     churn(consent=[consent("email", False, 100), consent("sms", True, 200)]), ()),
    ("a single withdrawal is not every channel", churn(consent=[consent("email", False, 100)]), ()),
    ("profiling does not count",
     churn(consent=[consent("email", False, 100, "profiling"), consent("sms", False, 100, "profiling")]), ()),
    ("refunds above 30 % of spend",
     churn(purchases=buys(WEEKLY[-10:]),
           refunds=[Refund(at(360), 2000, "R1", "T1"), Refund(at(361), 2000, "R2", "T2")]),
     ("refunds",)),
    ("refunds exactly 30 % of spend",
     churn(purchases=buys(WEEKLY[-10:]),
           refunds=[Refund(at(360), 1500, "R1", "T1"), Refund(at(361), 1500, "R2", "T2")]),
     ()),
    ("one large refund", churn(purchases=buys(WEEKLY[-10:]), refunds=[Refund(at(360), 9000, "R1", "T1")]), ()),
]  # fmt: skip


@pytest.mark.parametrize(("inputs", "codes"), [c[1:] for c in CHURN_SIGNALS], ids=[c[0] for c in CHURN_SIGNALS])
def test_churn_signal_alone(inputs: AlertInputs, codes: tuple[str, ...]) -> None:
    assessment = churn_assessment(inputs, at(NOW), CFG)
    assert assessment.codes == codes
    weights = CFG.weights.model_dump()
    assert assessment.score == sum(weights[c] for c in codes)
    _, alerts = decide(AlertState("churn"), inputs, at(NOW), CFG)
    assert summary(alerts) == ([("raised", "medium")] if assessment.score >= 50 else [])
    for reason in assessment.reasons:
        assert reason.text and reason.evidence


COMPLAINTS = [case("X1", "complaint", "opened", 340), case("X2", "complaint", "closed", 360)]
OPTED_OUT = [consent("email", False, 100), consent("sms", False, 200)]
EARLY_OPT_OUT = [consent("email", False, 44), consent("sms", False, 45)]
REFUNDED = [Refund(at(360), 2000, "R1", "T1"), Refund(at(361), 2000, "R2", "T2")]


@pytest.mark.parametrize(
    ("inputs", "score", "expected"),
    [
        (churn(purchases=buys(LAPSED), cases=COMPLAINTS), 60, [("raised", "medium")]),
        (churn(cases=[*COMPLAINTS, case("X3", "cancel_request", "opened", 362)]), 90, [("raised", "high")]),
        (churn(cases=COMPLAINTS, consent=OPTED_OUT), 50, [("raised", "medium")]),
        (churn(purchases=buys(WEEKLY[-10:]), refunds=REFUNDED, consent=OPTED_OUT), 40, []),
        (churn(purchases=buys(LAPSED), cases=[*COMPLAINTS, case("X3", "cancel_request", "opened", 362)],
               consent=OPTED_OUT), 140, [("raised", "high")]),
    ],
)  # fmt: skip
def test_churn_signals_combined(inputs: AlertInputs, score: int, expected: list[tuple[str, str]]) -> None:
    assert churn_assessment(inputs, at(NOW), CFG).score == score
    assert summary(decide(AlertState("churn"), inputs, at(NOW), CFG)[1]) == expected


@pytest.mark.parametrize(("threshold", "raised"), [(29, True), (30, True), (31, False)])
def test_churn_threshold_is_reached_not_crossed(threshold: int, raised: bool) -> None:
    config = AlertConfig(churn_threshold=threshold)
    _, alerts = decide(AlertState("churn"), churn(cases=COMPLAINTS), at(NOW), config)
    assert bool(alerts) is raised


def test_churn_reasons_carry_evidence() -> None:
    inputs = churn(
        purchases=buys(WEEKLY[-10:]), refunds=REFUNDED,
        cases=[*COMPLAINTS, case("X3", "cancel_request", "opened", NOW - 2)],
    )  # fmt: skip
    _, [alert] = decide(AlertState("churn"), inputs, at(NOW), CFG)
    reasons = {r.code: r for r in alert.reasons}
    assert list(reasons) == ["score", "cancel_request", "complaints", "refunds"]
    assert reasons["score"].evidence == {"score": 110}
    assert reasons["cancel_request"].text == "cancel request X3 2 days ago (open)"
    assert reasons["cancel_request"].evidence["event_ids"] == ["ev-X3-opened"]
    assert reasons["complaints"].evidence["case_ids"] == ["X1", "X2"]
    assert reasons["complaints"].evidence["event_ids"] == ["ev-X1-opened", "ev-X2-closed"]
    assert reasons["refunds"].evidence["refund_ids"] == ["R1", "R2"]
    assert (reasons["refunds"].evidence["refunded_minor"], reasons["refunds"].evidence["spend_minor"]) == (4000, 10000)


def test_activity_drop_evidence() -> None:
    reason = churn_assessment(churn(purchases=buys(LAPSED)), at(NOW), CFG).reasons[0]
    ev = reason.evidence
    # baseline (day 0, day 275]: the purchases on days 7..273, 39 of them over 275 days
    assert (ev["recent_purchases"], ev["baseline_days"], ev["baseline_purchases_per_window"]) == (1, 275, 12.76)
    assert ev["last_transaction_id"] == "T40" and ev["purchases_dropped"] and ev["spend_dropped"]


# Given a customer, when these facts arrive at these days, then the churn episode does this.
CHURN_EPISODES: list[tuple[str, list[tuple[float, dict[str, Any], list[tuple[str, str]]]]]] = [
    ("escalate when a cancel request joins", [
        (50, {"cases": [case("X1", "complaint", "opened", 40), case("X2", "complaint", "opened", 50)],
              "consent": EARLY_OPT_OUT}, [("raised", "medium")]),
        (51, {}, []),
        (52, {"cases": [case("X3", "cancel_request", "opened", 52)]}, [("escalated", "high")]),
        (53, {}, []),
    ]),
    ("case closed and activity returns: resolved", [
        (100, {"cases": [case("X1", "cancel_request", "opened", 100)]}, [("raised", "medium")]),
        (105, {"cases": [case("X1", "cancel_request", "closed", 105)]}, []),  # silent since: still at risk
        (106, {"days": [106]}, [("resolved", "medium")]),
        (107, {}, []),
        (120, {"cases": [case("X2", "cancel_request", "opened", 120)]}, [("raised", "medium")]),
    ]),
    ("complaints age out", [
        (50, {"cases": [case("X1", "complaint", "opened", 40), case("X2", "complaint", "opened", 50)],
              "consent": EARLY_OPT_OUT}, [("raised", "medium")]),
        (69.9, {}, []),
        (70, {}, [("resolved", "medium")]),
    ]),
]  # fmt: skip


@pytest.mark.parametrize("steps", [s for _, s in CHURN_EPISODES], ids=[n for n, _ in CHURN_EPISODES])
def test_churn_episodes(steps: list[tuple[float, dict[str, Any], list[tuple[str, str]]]]) -> None:
    days: list[float] = [0]
    cases: dict[str, Case] = {}
    consents: list[Consent] = []
    state = AlertState("churn")
    for day, facts, expected in steps:
        days += facts.get("days", [])
        for c in facts.get("cases", []):
            cases[c.case_id] = c
            days.append((c.ms - T0) / D)
        consents += facts.get("consent", [])
        inputs = customer(days, cases=list(cases.values()), consent=consents)
        state, alerts = decide(state, inputs, at(day), CFG)
        assert summary(alerts) == expected, day


def test_churn_resolution_names_what_cleared() -> None:
    state, _ = decide(
        AlertState("churn"), customer([0, 100], cases=[case("X1", "cancel_request", "opened", 100)]), at(100), CFG
    )
    inputs = customer([0, 100, 101], cases=[case("X1", "cancel_request", "closed", 100)])
    state, [alert] = decide(state, inputs, at(101), CFG)
    assert alert.alert_id == f"cus_1/churn/1/{at(100)}/resolved"
    assert alert.reasons[0].code == "below_threshold" and alert.reasons[0].evidence["cleared"] == ["cancel_request"]
    assert not state.open


def test_facts_after_now_are_ignored() -> None:
    inputs = customer([0, 10], cases=[case("X1", "cancel_request", "opened", 10)])
    assert churn_assessment(inputs, at(9), CFG).codes == ()
    assert churn_assessment(inputs, at(10), CFG).codes == ("cancel_request",)


# -- state, merges --------------------------------------------------------------------


def test_state_json_round_trip() -> None:
    state, _ = decide(
        AlertState("churn"), customer([0, 100], cases=[case("X1", "cancel_request", "opened", 100)]), at(100), CFG
    )
    doc = json.loads(json.dumps(state.to_json()))
    assert AlertState.from_json(doc) == state
    assert AlertState.from_json(AlertState("dormancy").to_json()) == AlertState("dormancy")
    with pytest.raises(ValueError):
        AlertState.from_json({**doc, "kind": "fraud"})


def test_retire_resolves_the_merged_customers_open_episode() -> None:
    state, [raised] = decide(AlertState("dormancy"), customer([0], "lead", customer_id="cus_b"), at(100), CFG)
    closed, [alert] = retire(state, "cus_b", at(101), into="cus_a")
    assert (alert.state, alert.customer_id, alert.since_ms) == ("resolved", "cus_b", raised.since_ms)
    assert alert.reasons[0].evidence == {"into": "cus_a"} and not closed.open
    assert retire(closed, "cus_b", at(102), into="cus_a")[1] == []


# -- due index ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sets", "now", "popped", "left"),
    [
        ([("b", 5), ("a", 5), ("c", 3)], 5, ["c", "a", "b"], []),  # by due time, then id
        ([("a", 5), ("b", 6)], 5, ["a"], ["b"]),  # due == now is due
        ([("a", 5), ("a", 9)], 5, [], ["a"]),  # moved later: the old entry is stale
        ([("a", 9), ("a", 2)], 5, ["a"], []),  # moved earlier
        ([("a", 5), ("a", 9), ("a", 5)], 9, ["a"], []),  # back again: popped once
        ([("a", 5), ("a", None)], 9, [], []),  # None discards
    ],
)
def test_due_index(sets: list[tuple[str, int | None]], now: int, popped: list[str], left: list[str]) -> None:
    index = DueIndex()
    for cid, due in sets:
        index.set(cid, due)
    assert index.pop_due(now) == popped
    assert [cid for cid, _ in index.items()] == left
    assert index.pop_due(now) == []


def test_due_index_compacts_stale_entries() -> None:
    index = DueIndex()
    for i in range(1000):
        index.set("a", 10_000 - i)
        index.set("b", i)
    assert len(index._heap) <= 2 * len(index) + 65
    assert index.peek() == 999 and index.pop_due(20_000) == ["b", "a"]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(
    st.tuples(st.just("set"), st.sampled_from("abcdef"), st.one_of(st.none(), st.integers(0, 50))),
    st.tuples(st.just("pop"), st.just(""), st.integers(0, 50)),
)))  # fmt: skip
def test_due_index_matches_a_plain_dict(ops: list[tuple[str, str, int | None]]) -> None:
    index = DueIndex()
    model: dict[str, int] = {}
    for op, cid, n in ops:
        if op == "set":
            index.set(cid, n)
            if n is None:
                model.pop(cid, None)
            else:
                model[cid] = n
        else:
            assert n is not None
            due = sorted((d, c) for c, d in model.items() if d <= n)
            assert index.pop_due(n) == [c for _, c in due]
            for _, c in due:
                del model[c]
        assert index.items() == sorted(model.items())
        assert index.peek() == (min(model.values()) if model else None)


# -- determinism ----------------------------------------------------------------------

day_st = st.integers(0, 500).map(lambda h: h * 0.5)  # half days over ~250 days


@st.composite
def customers(draw: st.DrawFn, customer_id: str = "cus_1") -> AlertInputs:
    days = draw(st.lists(day_st, min_size=1, max_size=12))
    bought = draw(st.lists(st.sampled_from(days), max_size=8, unique=True))
    purchases = [Purchase(at(d), draw(st.integers(100, 5000)), f"T{i}") for i, d in enumerate(bought)]
    refunds = [Refund(p.ms + D, p.total_minor // 2, f"R{i}", p.transaction_id)
               for i, p in enumerate(purchases) if draw(st.booleans())]  # fmt: skip
    cases = [
        Case(f"X{i}", draw(st.sampled_from(["cancel_request", "complaint", "query"])),
             draw(st.sampled_from(["opened", "closed"])), at(d), f"ev-X{i}")
        for i, d in enumerate(draw(st.lists(st.sampled_from(days), max_size=4)))
    ]  # fmt: skip
    consents = [Consent("marketing", ch, draw(st.booleans()), at(draw(st.sampled_from(days))), f"ev-c-{ch}")
                for ch in draw(st.lists(st.sampled_from(["email", "sms", "web"]), unique=True))]  # fmt: skip
    segment = draw(st.sampled_from(["platinum", "gold", "iron", "lead"]))
    return AlertInputs(customer_id, segment, interactions(days), tuple(purchases), tuple(refunds),
                       tuple(cases), tuple(consents))  # fmt: skip


SMALL = AlertConfig(
    recent_days=20, trailing_days=60, min_baseline_days=10, min_baseline_purchases=1,
    complaint_window_days=10, cancel_request_days=15, refund_window_days=40, refund_min_count=1,
    opt_out_min_channels=1, churn_threshold=30,
    dormancy_floors=DormancyFloors(platinum=5, gold=8, iron=12, lead=20),
)  # fmt: skip
"""Windows short enough for the generated histories to cross every edge."""


def run(inputs: Sequence[AlertInputs], ticks: Sequence[int], config: AlertConfig, *, indexed: bool) -> list[Alert]:
    """Decide every customer at every tick, or only those the due index pops."""
    states: dict[tuple[str, Kind], AlertState] = {}
    index = DueIndex()
    by_id = {c.customer_id: c for c in inputs}
    for cid in by_id:
        index.set(cid, ticks[0])
    out: list[Alert] = []
    for now in ticks:
        # Within one tick both ways go by customer id (the index would go by due time first).
        for cid in sorted(index.pop_due(now)) if indexed else sorted(by_id):
            for kind in ("dormancy", "churn"):
                state, alerts = decide(states.get((cid, kind), AlertState(kind)), by_id[cid], now, config)
                states[cid, kind] = state
                out += alerts
            index.set(cid, next_due_ms(by_id[cid], now, config))
    return out


@settings(max_examples=150, deadline=None)
@given(st.lists(customers(), min_size=1, max_size=4), st.lists(st.integers(0, 400 * 24), min_size=1, max_size=60))
def test_same_log_same_alerts_and_the_due_index_misses_nothing(pop: list[AlertInputs], hours: list[int]) -> None:
    pop = [replace(c, customer_id=f"cus_{i}") for i, c in enumerate(pop)]
    ticks = sorted({T0 + h * H for h in hours})
    first = run(pop, ticks, SMALL, indexed=False)
    assert run(pop, ticks, SMALL, indexed=False) == first
    assert run(pop, ticks, SMALL, indexed=True) == first
    assert len({a.alert_id for a in first}) == len(first)


@settings(max_examples=150, deadline=None)
@given(customers(), st.integers(0, 600 * 24))
def test_nothing_changes_before_next_due(inputs: AlertInputs, hour: int) -> None:
    now = T0 + hour * H

    def look(t: int) -> tuple[tuple[str, ...], bool, bool]:
        seen = [i for i in inputs.interactions if i.ms <= t]
        threshold = dormancy_threshold_ms(inputs, SMALL, t)
        silent = t - seen[-1].ms if seen else -1
        return churn_assessment(inputs, t, SMALL).codes, silent > threshold, silent > 2 * threshold

    due = next_due_ms(inputs, now, SMALL)
    end = due if due is not None else now + 400 * D
    assert end > now
    for t in sorted({now, end - 1, (now + end) // 2, now + (end - now) // 7}):
        assert look(t) == look(now), (now, t, due)


@settings(max_examples=100, deadline=None)
@given(
    st.lists(day_st, min_size=1, max_size=10),
    st.sampled_from(["platinum", "gold", "iron", "lead"]),
    st.lists(st.integers(0, 400 * 24), max_size=30),
    st.lists(st.integers(0, 400 * 24), max_size=30),
)
def test_ticks_split_differently_raise_the_same_dormancy_episode(
    days: list[float], segment: str, a: list[int], b: list[int]
) -> None:
    inputs = customer(days, segment)
    due = dormancy_due_ms(inputs, CFG)
    assert due is not None
    final = due + 300 * D  # both logs end with a tick well past the start

    def raised(hours: list[int]) -> list[tuple[str, int]]:
        state = AlertState("dormancy")
        out = []
        for now in [*sorted(T0 + h * H for h in hours if T0 + h * H > at(max(days))), final]:
            state, alerts = decide(state, inputs, now, CFG)
            out += [(x.alert_id, x.since_ms) for x in alerts if x.state == "raised"]
        return out

    assert raised(a) == raised(b) == [(f"cus_1/dormancy/1/{due}/raised", due)]
