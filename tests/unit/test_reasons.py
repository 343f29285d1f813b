"""Likely call reasons: each reason alone, windows, ranking, evidence, opening lines, merges, determinism."""

from __future__ import annotations

import itertools
import json
import random
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import ValidationError

from touchpoint.contract.models import Event
from touchpoint.core.alerts import Alert, Reason
from touchpoint.core.instants import epoch_ms, iso_ms
from touchpoint.core.reasons import (
    CASES_KEPT,
    CODES,
    DAY_MS,
    KEPT,
    OpenCase,
    ReasonFacts,
    ReasonsConfig,
    ReasonWeights,
    evolve,
    likely_reasons,
    merge_facts,
)

T0 = epoch_ms(datetime(2025, 3, 1, tzinfo=UTC))
H = 3_600_000
CFG = ReasonsConfig()


def at(day: float) -> int:
    return T0 + round(day * DAY_MS)


def event(eid: str, typ: str, channel: str, ms: int, payload: dict[str, Any]) -> Event:
    return Event.model_validate({
        "event_id": eid,
        "type": typ,
        "channel": channel,
        "occurred_at": iso_ms(ms),
        "identifiers": {"customer_no": "C-1"},
        "payload": payload,
    })


# Builders, one per fact the reasons use: (event id, day) first, then what matters.
def case(eid: str, day: float, case_id: str, action: str, category: str = "complaint") -> Event:
    return event(eid, "case", "phone", at(day), {"case_id": case_id, "action": action, "category": category})


def refund(eid: str, day: float, refund_id: str, amount: int, tid: str = "T-1") -> Event:
    payload = {"refund_id": refund_id, "transaction_id": tid, "amount_minor": amount, "currency": "GBP"}
    return event(eid, "refund", "branch", at(day), payload)


def call(eid: str, day: float, call_id: str, ivr_reason: str | None) -> Event:
    payload: dict[str, Any] = {"call_id": call_id, "direction": "inbound", "phase": "started"}
    if ivr_reason is not None:
        payload["ivr_reason"] = ivr_reason
    return event(eid, "call", "phone", at(day), payload)


def invited(eid: str, day: float, campaign_id: str, channel: str = "email") -> Event:
    return event(eid, "campaign", channel, at(day), {"campaign_id": campaign_id, "action": "invited", "multiplier": 3})


def email(eid: str, day: float, mid: str, action: str, campaign_id: str | None = None) -> Event:
    payload = {"message_id": mid, "action": action} | ({"campaign_id": campaign_id} if campaign_id else {})
    return event(eid, "email", "email", at(day), payload)


def sms(eid: str, day: float, mid: str, action: str, campaign_id: str | None = None) -> Event:
    payload = {"message_id": mid, "action": action} | ({"campaign_id": campaign_id} if campaign_id else {})
    return event(eid, "sms", "sms", at(day), payload)


def web(eid: str, day: float, session_id: str, action: str) -> Event:
    return event(eid, "web", "web", at(day), {"session_id": session_id, "action": action})


def purchase(eid: str, day: float) -> Event:
    payload = {
        "transaction_id": f"T-{eid}",
        "location_id": "FS-0001",
        "lines": [{"sku": "FUEL-95", "category": "fuel", "quantity": 1, "amount_minor": 4000}],
        "total_minor": 4000,
        "currency": "GBP",
    }
    return event(eid, "purchase", "branch", at(day), payload)


def alert(kind: str, severity: str, since_day: float, state: str = "raised", alert_id: str = "") -> dict[str, Any]:
    reasons = [Reason("score", "churn score 60 (threshold 50)", {"score": 60}),
               Reason("cancel_request", "asked to cancel", {})] if kind == "churn" else []
    return Alert(
        alert_id=alert_id or f"cus_1/{kind}/1/{at(since_day)}/{state}",
        kind=kind,  # type: ignore[arg-type]
        state=state,  # type: ignore[arg-type]
        customer_id="cus_1",
        at_ms=at(since_day),
        since_ms=at(since_day),
        raised_ms=at(since_day),
        severity=severity,  # type: ignore[arg-type]
        reasons=tuple(reasons),
    ).to_json()


def fold(events: Sequence[Event]) -> ReasonFacts:
    facts = ReasonFacts()
    for e in events:
        evolve(facts, e)
    return facts


def reasons(
    events: Sequence[Event],
    now_day: float,
    *,
    alerts: Sequence[dict[str, Any]] = (),
    open_cases: Sequence[OpenCase] | None = None,
    config: ReasonsConfig = CFG,
) -> list[dict[str, Any]]:
    return likely_reasons(fold(events), open_cases, alerts, at(now_day), config)


def codes(events: Sequence[Event], now_day: float, **kw: Any) -> list[str]:
    return [r["code"] for r in reasons(events, now_day, **kw)]


# -- each reason alone: present, too old, absent -------------------------------------------

ALONE: list[tuple[str, list[Event], float, list[str]]] = [
    # open case: any age while open; closed is gone; cancel requests are their own code
    ("open complaint", [case("c1", 0, "X1", "opened")], 3, ["open_case"]),
    ("open complaint, updated", [case("c1", 0, "X1", "opened"), case("c2", 1, "X1", "updated")], 3, ["open_case"]),
    ("open case, very old", [case("c1", 0, "X1", "opened", "query")], 400, ["open_case"]),
    ("closed case", [case("c1", 0, "X1", "opened"), case("c2", 2, "X1", "closed")], 3, []),
    ("closed before opened arrives", [case("c2", 2, "X1", "closed"), case("c1", 0, "X1", "opened")], 3, []),
    ("case opened after now", [case("c1", 5, "X1", "opened")], 3, []),
    # cancel request: open at any age, closed within 14 days, or IVR 'cancel' within 14 days
    ("open cancel request", [case("c1", 0, "X1", "opened", "cancel_request")], 100, ["cancel_request"]),
    ("closed cancel request, recent",
     [case("c1", 0, "X1", "opened", "cancel_request"), case("c2", 1, "X1", "closed", "cancel_request")], 10,
     ["cancel_request"]),
    ("closed cancel request, too old",
     [case("c1", 0, "X1", "opened", "cancel_request"), case("c2", 1, "X1", "closed", "cancel_request")], 15, []),
    ("ivr cancel", [call("k1", 0, "K1", "cancel")], 2, ["cancel_request"]),
    ("ivr cancel, too old", [call("k1", 0, "K1", "cancel")], 14, []),
    # declined payment: IVR reason within 7 days
    ("ivr payment declined", [call("k1", 0, "K1", "payment_declined")], 2, ["payment_declined"]),
    ("ivr payment declined, too old", [call("k1", 0, "K1", "payment_declined")], 7, []),
    ("ivr other reason", [call("k1", 0, "K1", "balance")], 1, []),
    ("call without ivr reason", [call("k1", 0, "K1", None)], 1, []),
    # refund within 14 days
    ("refund", [refund("r1", 0, "R1", 1250)], 3, ["refund_in_progress"]),
    ("refund, too old", [refund("r1", 0, "R1", 1250)], 14, []),
    # campaign reached within 14 days: invitation, or a delivered campaign e-mail/text
    ("campaign invited", [invited("i1", 0, "CMP-1")], 2, ["campaign_received"]),
    ("campaign e-mail delivered", [email("m1", 0, "M1", "delivered", "CMP-1")], 2,
     ["campaign_received"]),
    ("campaign sms delivered", [sms("s1", 0, "S1", "sent", "CMP-1"), sms("s2", 0.01, "S1", "delivered", "CMP-1")],
     2, ["campaign_received"]),
    ("campaign, too old", [invited("i1", 0, "CMP-1")], 14, []),
    ("campaign e-mail only sent", [email("m1", 0, "M1", "sent", "CMP-1")], 2, []),
    ("plain e-mail delivered", [email("m1", 0, "M1", "delivered")], 2, []),
    # abandoned basket within 3 days
    ("basket abandoned", [web("w1", 0, "W1", "basket_abandon")], 1, ["basket_abandoned"]),
    ("basket abandoned, too old", [web("w1", 0, "W1", "basket_abandon")], 3, []),
    ("basket added only", [web("w1", 0, "W1", "basket_add")], 1, []),
    # bounced e-mail within 30 days
    ("e-mail bounced", [email("m1", 0, "M1", "sent"), email("m2", 0.001, "M1", "bounced")], 5, ["email_bounced"]),
    ("e-mail bounced, too old", [email("m2", 0, "M1", "bounced")], 30, []),
    # text sent, never arrived: failed after the grace period, within 30 days
    ("sms not delivered", [sms("s1", 0, "S1", "sent")], 1, ["sms_failed"]),
    ("sms not delivered, too old", [sms("s1", 0, "S1", "sent")], 30, []),
    ("sms delivered", [sms("s1", 0, "S1", "sent"), sms("s2", 0.001, "S1", "delivered")], 1, []),
    ("sms opted out", [sms("s1", 0, "S1", "sent"), sms("s2", 0.01, "S1", "opt_out")], 1, []),
    ("sms within grace", [sms("s1", 0, "S1", "sent")], 59 / (24 * 60), []),
    ("sms delivery after now", [sms("s1", 0, "S1", "sent"), sms("s2", 2, "S1", "delivered")], 1, ["sms_failed"]),
    ("sms delivery seen, send evicted", [sms("s2", 0.01, "S1", "delivered")], 1, []),
    # nothing that matters
    ("no events", [], 0, []),
    ("purchase only", [purchase("p1", 0)], 1, []),
]


@pytest.mark.parametrize(("given", "now_day", "expected"), [c[1:] for c in ALONE], ids=[c[0] for c in ALONE])
def test_each_reason_alone(given: list[Event], now_day: float, expected: list[str]) -> None:
    assert codes(given, now_day) == expected


WINDOWS = [
    ("refund_in_progress", refund("r1", 0, "R1", 100), CFG.refund_days),
    ("payment_declined", call("k1", 0, "K1", "payment_declined"), CFG.declined_days),
    ("cancel_request", call("k1", 0, "K1", "cancel"), CFG.cancel_days),
    ("campaign_received", invited("i1", 0, "CMP-1"), CFG.campaign_days),
    ("basket_abandoned", web("w1", 0, "W1", "basket_abandon"), CFG.basket_days),
    ("email_bounced", email("m1", 0, "M1", "bounced"), CFG.bounce_days),
    ("sms_failed", sms("s1", 0, "S1", "sent"), CFG.sms_failed_days),
]


@pytest.mark.parametrize(("code", "given", "days"), WINDOWS, ids=[w[0] for w in WINDOWS])
def test_windows_are_strict(code: str, given: Event, days: int) -> None:
    facts = fold([given])
    # Given a fact at day 0, when judged 1 ms before the window ends / at its end / before the fact, then:
    assert [r["code"] for r in likely_reasons(facts, None, (), at(0) + days * DAY_MS - 1)] == [code]
    assert likely_reasons(facts, None, (), at(0) + days * DAY_MS) == []
    assert likely_reasons(facts, None, (), at(0) - 1) == []


def test_sms_grace_boundary() -> None:
    facts = fold([sms("s1", 0, "S1", "sent")])
    grace = CFG.sms_grace_minutes * 60_000
    assert likely_reasons(facts, None, (), at(0) + grace - 1) == []
    assert [r["code"] for r in likely_reasons(facts, None, (), at(0) + grace)] == ["sms_failed"]


# -- alerts and cases from the read model ---------------------------------------------------

ALERTS: list[tuple[str, list[dict[str, Any]], list[str], list[float]]] = [
    ("churn high", [alert("churn", "high", -2)], ["churn_alert"], [65 * (1 - 2 / 60)]),
    ("churn medium", [alert("churn", "medium", 0)], ["churn_alert"], [50]),
    ("dormancy medium", [alert("dormancy", "medium", 0)], ["dormancy_alert"], [25]),
    ("dormancy high, old", [alert("dormancy", "high", -100)], ["dormancy_alert"], [17.5]),
    ("resolved is skipped", [alert("churn", "high", -2, state="resolved")], [], []),
    ("alert after now is skipped", [alert("churn", "high", 1)], [], []),
    ("both", [alert("dormancy", "high", 0), alert("churn", "medium", 0)], ["churn_alert", "dormancy_alert"],
     [50, 35]),
    ("highest of a kind wins",
     [alert("churn", "medium", 0, alert_id="a"), alert("churn", "high", 0, alert_id="b")], ["churn_alert"], [65]),
]


@pytest.mark.parametrize(("given", "expected", "scores"), [a[1:] for a in ALERTS], ids=[a[0] for a in ALERTS])
def test_active_alerts(given: list[dict[str, Any]], expected: list[str], scores: list[float]) -> None:
    out = reasons([], 0, alerts=given)
    assert [r["code"] for r in out] == expected
    assert [r["score"] for r in out] == pytest.approx(scores, abs=0.001)


def test_alert_objects_and_their_json_give_the_same_reasons() -> None:
    doc = alert("churn", "high", -3)
    obj = Alert(
        alert_id=doc["alert_id"], kind="churn", state="raised", customer_id="cus_1", at_ms=at(-3), since_ms=at(-3),
        raised_ms=at(-3), severity="high",
        reasons=(Reason("score", "churn score 60 (threshold 50)", {"score": 60}),
                 Reason("cancel_request", "asked to cancel", {})),
    )
    assert likely_reasons(ReasonFacts(), None, [obj], at(0)) == likely_reasons(ReasonFacts(), None, [doc], at(0))


def test_churn_alert_evidence_and_text() -> None:
    (r,) = reasons([], 0, alerts=[alert("churn", "high", -3)])
    assert r["text"] == "Churn risk (high) since 3 days ago: asked to cancel"
    assert r["evidence"]["alert_id"] == f"cus_1/churn/1/{at(-3)}/raised"
    assert r["evidence"]["severity"] == "high"
    assert r["evidence"]["age_days"] == 3
    assert r["evidence"]["reason_codes"] == ["score", "cancel_request"]


def test_open_cases_from_the_read_model_replace_the_facts() -> None:
    given = [case("c1", 0, "X1", "opened")]
    override = [OpenCase("X9", "query", at(-1), "ev-x9"), OpenCase("X8", "cancel_request", at(-2), "ev-x8")]
    out = reasons(given, 0, open_cases=override)
    assert [r["code"] for r in out] == ["cancel_request", "open_case"]
    assert out[1]["evidence"]["case_id"] == "X9"
    assert out[0]["evidence"]["case_id"] == "X8"
    assert reasons(given, 0, open_cases=[]) == []


# -- scores and ranking ---------------------------------------------------------------------

SCORES = [
    # (given, now_day, code, score): weight * (1 - min(age, span) / (2 span))
    ([refund("r1", 0, "R1", 100)], 0, "refund_in_progress", 75.0),
    ([refund("r1", 0, "R1", 100)], 7, "refund_in_progress", 56.25),
    ([case("c1", 0, "X1", "opened")], 0, "open_case", 85.0),
    ([case("c1", 0, "X1", "opened")], 30, "open_case", 42.5),
    ([case("c1", 0, "X1", "opened")], 300, "open_case", 42.5),  # floor: half the weight
    ([case("c1", 0, "X1", "opened", "fraud")], 0, "open_case", 95.0),
    ([case("c1", 0, "X1", "opened", "query")], 0, "open_case", 70.0),
    ([case("c1", 0, "X1", "opened", "cancel_request")], 100, "cancel_request", 47.5),
    ([call("k1", 0, "K1", "payment_declined")], 3.5, "payment_declined", 67.5),
    ([web("w1", 0, "W1", "basket_abandon")], 1, "basket_abandoned", 40 * (1 - 1 / 6)),
]


@pytest.mark.parametrize(("given", "now_day", "code", "score"), SCORES)
def test_score_is_weight_times_linear_freshness(given: list[Event], now_day: float, code: str, score: float) -> None:
    (r,) = reasons(given, now_day)
    assert r["code"] == code
    assert r["score"] == pytest.approx(score, abs=0.001)


RANKING: list[tuple[str, list[Event], float, list[dict[str, Any]], list[str]]] = [
    ("cancel > declined > complaint > refund > campaign > bounce > basket",
     [case("c1", 0, "X1", "opened", "cancel_request"), call("k1", 0, "K1", "payment_declined"),
      case("c2", 0, "X2", "opened"), refund("r1", 0, "R1", 500), invited("i1", 0, "CMP-1"),
      email("m1", 0, "M1", "bounced"), web("w1", 0, "W1", "basket_abandon")], 0, [],
     ["cancel_request", "payment_declined", "open_case", "refund_in_progress", "campaign_received"]),
    ("a fresh refund beats an old complaint",
     [case("c1", 0, "X1", "opened"), refund("r1", 29, "R1", 500)], 30, [], ["refund_in_progress", "open_case"]),
    ("a fresh complaint beats a fresh refund",
     [case("c1", 29, "X1", "opened"), refund("r1", 29, "R1", 500)], 30, [], ["open_case", "refund_in_progress"]),
    ("a fresh basket beats a month-old bounce",
     [email("m1", 1, "M1", "bounced"), web("w1", 29.9, "W1", "basket_abandon")], 30, [],
     ["basket_abandoned", "email_bounced"]),
    ("a churn alert sits below a refund, above a campaign",
     [refund("r1", 0, "R1", 500), invited("i1", 0, "CMP-1")], 0, [alert("churn", "high", 0)],
     ["refund_in_progress", "churn_alert", "campaign_received"]),
    ("sms failure and bounce tie: broken by code",
     [email("m1", 0, "M1", "bounced"), sms("s1", 0, "S1", "sent")], 1, [], ["email_bounced", "sms_failed"]),
]


@pytest.mark.parametrize(("given", "now_day", "alerts", "expected"), [r[1:] for r in RANKING],
                         ids=[r[0] for r in RANKING])
def test_ranking_between_reasons(
    given: list[Event], now_day: float, alerts: list[dict[str, Any]], expected: list[str]
) -> None:
    out = reasons(given, now_day, alerts=alerts)
    assert [r["code"] for r in out] == expected
    assert [r["rank"] for r in out] == list(range(1, len(out) + 1))
    assert [r["score"] for r in out] == sorted((r["score"] for r in out), reverse=True)


def test_equal_scores_rank_by_code() -> None:
    flat = ReasonsConfig(weights=ReasonWeights(
        **{name: 50 for name in ReasonWeights.model_fields if name != "case_categories"}, case_categories={}
    ), max_reasons=10, sms_grace_minutes=0)
    given = [case("c1", 0, "X1", "opened", "cancel_request"), call("k1", 0, "K1", "payment_declined"),
             case("c2", 0, "X2", "opened"), refund("r1", 0, "R1", 500), invited("i1", 0, "CMP-1"),
             email("m1", 0, "M1", "bounced"), web("w1", 0, "W1", "basket_abandon"), sms("s1", 0, "S1", "sent")]
    now = at(0)  # every fact at age 0 (freshness 1 whatever the window); no grace, so the text has failed
    facts = fold(given)
    alerts = [alert("churn", "high", 0), alert("dormancy", "medium", 0)]
    out = likely_reasons(facts, None, alerts, now, flat)
    assert [r["code"] for r in out] == sorted(CODES)
    assert len({r["score"] for r in out}) == 1


def test_max_reasons_cuts_the_tail() -> None:
    given = [case("c1", 0, "X1", "opened", "cancel_request"), call("k1", 0, "K1", "payment_declined"),
             case("c2", 0, "X2", "opened"), refund("r1", 0, "R1", 500), invited("i1", 0, "CMP-1"),
             email("m1", 0, "M1", "bounced")]
    assert len(reasons(given, 0)) == 5
    assert codes(given, 0, config=ReasonsConfig(max_reasons=2)) == ["cancel_request", "payment_declined"]


def test_one_entry_per_code_best_item_first() -> None:
    given = [case("c1", 0, "X1", "opened", "query"), case("c2", 5, "X2", "opened", "complaint"),
             case("c3", 6, "X3", "opened", "query")]
    (r,) = reasons(given, 8)
    assert r["code"] == "open_case"
    # complaint (85, 3 days) beats the fresher query (70, 2 days); the older query comes last
    assert r["evidence"]["case_id"] == "X2"
    assert [i["case_id"] for i in r["evidence"]["items"]] == ["X2", "X3", "X1"]
    assert r["evidence"]["count"] == 3
    assert r["text"] == "Open complaint X2, opened 3 days ago (+2 more)"


def test_cancel_request_from_case_and_ivr_is_one_reason() -> None:
    given = [call("k1", 1, "K1", "cancel"), case("c1", 1.02, "X1", "opened", "cancel_request")]
    (r,) = reasons(given, 2)
    assert r["code"] == "cancel_request"
    assert r["evidence"]["count"] == 2
    assert [i.get("case_id", i.get("call_id")) for i in r["evidence"]["items"]] == ["X1", "K1"]
    assert r["evidence"]["source"] == "case"


def test_evidence_items_are_capped() -> None:
    given = [web(f"w{i}", i / 10, f"W{i}", "basket_abandon") for i in range(7)]
    (r,) = reasons(given, 1)
    assert r["evidence"]["count"] == 7
    assert len(r["evidence"]["items"]) == CFG.max_items
    assert r["evidence"]["session_id"] == "W6"


# -- evidence and words ---------------------------------------------------------------------


def test_refund_evidence() -> None:
    given = [refund("r1", 0, "R1", 1250, "T-7"), refund("r2", 2, "R2", 300, "T-8"), refund("r0", -20, "R0", 999)]
    (r,) = reasons(given, 3)
    ev = r["evidence"]
    assert (ev["refund_id"], ev["transaction_id"], ev["amount_minor"], ev["currency"]) == ("R2", "T-8", 300, "GBP")
    assert ev["event_ids"] == ["r2"]
    assert ev["age_days"] == 1
    assert ev["at"] == iso_ms(at(2))
    assert ev["count"] == 2
    assert [i["refund_id"] for i in ev["items"]] == ["R2", "R1"]
    assert ev["total_minor_by_currency"] == {"GBP": 1550}
    assert r["text"] == "Refund R2 of 3.00 GBP on transaction T-8, issued yesterday (+1 more)"


EVIDENCE: list[tuple[str, list[Event], float, dict[str, Any]]] = [
    ("open case", [case("c1", 0, "X1", "opened"), case("c2", 1, "X1", "updated")], 3.5,
     {"case_id": "X1", "category": "complaint", "opened_at": iso_ms(at(0)), "age_days": 3, "event_ids": ["c1"]}),
    ("closed cancel request", [case("c1", 0, "X1", "opened", "cancel_request"),
                               case("c2", 1, "X1", "closed", "cancel_request")], 3,
     {"case_id": "X1", "open": False, "closed_at": iso_ms(at(1)), "age_days": 2, "event_ids": ["c2"],
      "source": "case"}),
    ("declined payment", [call("k1", 0.5, "K1", "payment_declined")], 1,
     {"call_id": "K1", "ivr_reason": "payment_declined", "age_days": 0, "event_ids": ["k1"]}),
    ("campaign", [invited("i1", 0, "CMP-1", "sms"), sms("s1", 0.01, "S1", "delivered", "CMP-1")], 2,
     {"campaign_id": "CMP-1", "channel": "sms", "event_ids": ["i1"], "age_days": 2}),
    ("bounce", [email("m1", 0, "M1", "bounced", "CMP-1")], 4,
     {"message_id": "M1", "campaign_id": "CMP-1", "event_ids": ["m1"], "age_days": 4}),
    ("failed text", [sms("s1", 0, "S1", "sent")], 2,
     {"message_id": "S1", "sent_at": iso_ms(at(0)), "event_ids": ["s1"], "age_days": 2}),
    ("basket", [web("w1", 0, "W1", "basket_abandon")], 0.5,
     {"session_id": "W1", "event_ids": ["w1"], "age_days": 0}),
]


@pytest.mark.parametrize(("given", "now_day", "expected"), [e[1:] for e in EVIDENCE], ids=[e[0] for e in EVIDENCE])
def test_evidence(given: list[Event], now_day: float, expected: dict[str, Any]) -> None:
    (r,) = reasons(given, now_day)
    assert {k: r["evidence"][k] for k in expected} == expected
    assert r["evidence"]["items"][0] == {k: v for k, v in r["evidence"].items() if k not in ("count", "items")}


OPENING: list[tuple[str, list[Event], float, list[dict[str, Any]], str]] = [
    ("complaint 3 days", [case("c1", 0, "X1", "opened")], 3.2, [],
     "I can see you have an open complaint from 3 days ago — is that why you're calling?"),
    ("complaint today", [case("c1", 0, "X1", "opened")], 0.1, [],
     "I can see you have an open complaint from earlier today — is that why you're calling?"),
    ("query yesterday", [case("c1", 0, "X1", "opened", "query")], 1.5, [],
     "I can see you have an open query from yesterday — is that why you're calling?"),
    ("fraud", [case("c1", 0, "X1", "opened", "fraud")], 2, [],
     "I can see you have an open fraud report from 2 days ago — is that why you're calling?"),
    ("other category", [case("c1", 0, "X1", "opened", "card_replacement")], 2, [],
     "I can see you have an open card replacement case from 2 days ago — is that why you're calling?"),
    ("cancel", [case("c1", 0, "X1", "opened", "cancel_request")], 1, [],
     "I can see you asked us to cancel yesterday — is that why you're calling?"),
    ("declined", [call("k1", 0, "K1", "payment_declined")], 0.2, [],
     "I can see you had trouble with a payment earlier today — shall we look at that first?"),
    ("refund", [refund("r1", 0, "R1", 123456)], 4, [],
     "I can see a refund of 1,234.56 GBP was issued 4 days ago — are you calling about that?"),
    ("campaign", [invited("i1", 0, "CMP-20250301")], 2, [],
     "I can see we sent you our offer CMP-20250301 by e-mail 2 days ago — are you calling about that?"),
    ("basket", [web("w1", 0, "W1", "basket_abandon")], 1, [],
     "I can see you were shopping on our website yesterday — can I help you finish your order?"),
    ("bounce", [email("m1", 0, "M1", "bounced")], 5, [],
     "Our e-mail to you 5 days ago bounced — could I check your e-mail address?"),
    ("sms", [sms("s1", 0, "S1", "sent")], 3, [],
     "Our text message 3 days ago didn't reach you — could I check your mobile number?"),
    ("churn", [], 0, [alert("churn", "high", 0)],
     "Thank you for calling — before anything else, is there anything we could be doing better for you?"),
    ("dormancy", [], 0, [alert("dormancy", "medium", -10)],
     "It's good to hear from you again — how can I help today?"),
]


@pytest.mark.parametrize(("given", "now_day", "alerts", "line"), [o[1:] for o in OPENING],
                         ids=[o[0] for o in OPENING])
def test_opening_lines(given: list[Event], now_day: float, alerts: list[dict[str, Any]], line: str) -> None:
    (r,) = reasons(given, now_day, alerts=alerts)
    assert r["opening_line"] == line


# -- facts: evolve and merge ----------------------------------------------------------------

HISTORY: list[Event] = [
    case("c1", 0, "X1", "opened"),
    case("c2", 1, "X1", "updated"),
    case("c3", 0.5, "X2", "opened", "cancel_request"),
    case("c4", 2, "X2", "closed", "cancel_request"),
    refund("r1", 1, "R1", 500),
    refund("r2", 2, "R2", 700),
    call("k1", 2, "K1", "payment_declined"),
    call("k2", 2.1, "K2", "cancel"),
    invited("i1", 0, "CMP-1"),
    email("m1", 0.001, "M1", "delivered", "CMP-1"),
    email("m2", 1, "M2", "bounced"),
    sms("s1", 1, "S1", "sent"),
    sms("s2", 1.001, "S1", "delivered", "CMP-2"),
    sms("s3", 2, "S2", "sent"),
    web("w1", 2.5, "W1", "basket_abandon"),
    purchase("p1", 1),
]


def test_evolve_ignores_what_the_reasons_do_not_use() -> None:
    facts = ReasonFacts()
    assert not evolve(facts, purchase("p1", 0))
    assert not evolve(facts, email("m1", 0, "M1", "opened"))
    assert not evolve(facts, web("w1", 0, "W1", "page_view"))
    assert not evolve(facts, call("k1", 0, "K1", None))
    assert facts == ReasonFacts()
    assert evolve(facts, web("w2", 0, "W2", "basket_abandon"))


def test_evolve_is_idempotent() -> None:
    once = fold(HISTORY)
    twice = fold(HISTORY + HISTORY)
    assert once == twice


@pytest.mark.parametrize("seed", range(8))
def test_evolve_is_order_insensitive(seed: int) -> None:
    shuffled = list(HISTORY)
    random.Random(seed).shuffle(shuffled)
    assert fold(shuffled) == fold(HISTORY)
    assert fold(shuffled).to_json() == fold(HISTORY).to_json()


def split(events: Sequence[Event], parts: int, seed: int) -> list[ReasonFacts]:
    rng = random.Random(seed)
    buckets: list[list[Event]] = [[] for _ in range(parts)]
    for e in events:
        buckets[rng.randrange(parts)].append(e)
    # Redeliveries: some events in two parts.
    for e in rng.sample(list(events), 3):
        buckets[rng.randrange(parts)].append(e)
    return [fold(b) for b in buckets]


def merged(parts: Sequence[ReasonFacts]) -> ReasonFacts:
    into = ReasonFacts()
    for p in parts:
        merge_facts(into, p)
    return into


@pytest.mark.parametrize("seed", range(6))
def test_merge_is_commutative_and_associative(seed: int) -> None:
    a, b, c = split(HISTORY, 3, seed)
    whole = fold(HISTORY)
    for order in itertools.permutations([a, b, c]):
        assert merged(order) == whole
    ab = merged([a, b])
    merge_facts(ab, c)
    bc = merged([b, c])
    merge_facts(a, bc)
    assert ab == a == whole


def test_merge_is_idempotent() -> None:
    facts = fold(HISTORY)
    same = fold(HISTORY)
    merge_facts(facts, same)
    merge_facts(facts, facts)
    assert facts == same
    merge_facts(facts, ReasonFacts())
    assert facts == same


def test_merge_equals_reasons_of_the_whole() -> None:
    a, b = split(HISTORY, 2, 99)
    merge_facts(a, b)
    assert likely_reasons(a, None, (), at(3), CFG) == likely_reasons(fold(HISTORY), None, (), at(3), CFG)


def test_case_merge_keeps_first_and_latest_action() -> None:
    a = fold([case("c2", 1, "X1", "updated")])
    b = fold([case("c1", 0, "X1", "opened"), case("c3", 2, "X1", "updated")])
    merge_facts(a, b)
    f = a.cases["X1"]
    assert (f.first_ms, f.first_event_id, f.last_ms, f.last_event_id, f.action) == (at(0), "c1", at(2), "c3", "updated")


def test_same_instant_ties_break_on_event_id() -> None:
    x = [case("c-b", 1, "X1", "closed"), case("c-a", 1, "X1", "updated")]
    assert fold(x) == fold(x[::-1])
    assert fold(x).cases["X1"].action == "closed"  # "c-b" > "c-a": the later of the two at one instant


@pytest.mark.parametrize(("kind", "make", "limit"), [
    ("baskets", lambda i: web(f"w{i:02d}", i, f"W{i:02d}", "basket_abandon"), KEPT),
    ("refunds", lambda i: refund(f"r{i:02d}", i, f"R{i:02d}", 100), KEPT),
    ("sms", lambda i: sms(f"s{i:02d}", i, f"S{i:02d}", "sent"), KEPT),
    ("cases", lambda i: case(f"c{i:02d}", i, f"X{i:02d}", "opened"), CASES_KEPT),
])
def test_facts_are_bounded_to_the_newest(kind: str, make: Any, limit: int) -> None:
    events = [make(i) for i in range(limit + 5)]
    facts = fold(events)
    kept: dict[str, Any] = getattr(facts, kind)
    assert len(kept) == limit
    # keys are numbered in time order, so the newest are the largest
    assert sorted(kept) == sorted(getattr(fold([e]), kind).popitem()[0] for e in events)[-limit:]
    rev = fold(events[::-1])
    assert rev == facts  # eviction is by time, not arrival


# -- determinism and serialisation ------------------------------------------------------------


def test_same_inputs_same_output_and_json_ready() -> None:
    alerts = [alert("churn", "high", -1), alert("dormancy", "medium", -40)]
    first = likely_reasons(fold(HISTORY), None, alerts, at(3), CFG)
    shuffled = list(HISTORY)
    random.Random(7).shuffle(shuffled)
    second = likely_reasons(fold(shuffled), None, alerts[::-1], at(3), CFG)
    assert first == second
    assert json.loads(json.dumps(first)) == first
    assert [r["code"] for r in first] == [
        "cancel_request", "payment_declined", "open_case", "refund_in_progress", "churn_alert"
    ]


def test_facts_json_round_trip() -> None:
    facts = fold(HISTORY)
    doc = json.loads(json.dumps(facts.to_json()))
    assert ReasonFacts.from_json(doc) == facts
    assert ReasonFacts.from_json({}) == ReasonFacts()


def test_future_facts_are_ignored() -> None:
    assert reasons(HISTORY, -1) == []


# -- config ---------------------------------------------------------------------------------


def test_config_is_frozen_and_strict() -> None:
    with pytest.raises(ValidationError):
        ReasonsConfig(refund_dayz=3)  # type: ignore[call-arg]
    with pytest.raises(ValidationError):
        ReasonsConfig(refund_days=0)
    with pytest.raises(ValidationError):
        CFG.refund_days = 3  # type: ignore[misc]
    with pytest.raises(ValidationError):
        ReasonWeights(refund_in_progress=-1)


def test_config_windows_and_weights_apply() -> None:
    given = [refund("r1", 0, "R1", 100), web("w1", 0, "W1", "basket_abandon")]
    assert codes(given, 5) == ["refund_in_progress"]
    cfg = ReasonsConfig(basket_days=10, weights=ReasonWeights(basket_abandoned=100))
    assert codes(given, 5, config=cfg) == ["basket_abandoned", "refund_in_progress"]
    cfg = ReasonsConfig(declined_ivr_reasons=("payment_declined", "card_declined"))
    assert codes([call("k1", 0, "K1", "card_declined")], 1, config=cfg) == ["payment_declined"]
