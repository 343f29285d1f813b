"""The customer view: every field, order-insensitivity, merges and duplicates."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from touchpoint.contract.models import Event, validate_event
from touchpoint.core.instants import iso_ms
from touchpoint.core.normalise import normalise
from touchpoint.core.profile import (
    DEDUPE_WINDOW,
    TIMELINE,
    CustomerView,
    SegmentConfig,
    evolve,
    merge_views,
    render,
    segment_of,
)

T0 = datetime(2025, 1, 1, tzinfo=UTC)
AS_OF = T0 + timedelta(days=400)

_PAYLOADS: dict[str, tuple[str, dict[str, Any]]] = {
    "purchase": ("branch", {"transaction_id": "T1", "location_id": "FS-1", "total_minor": 1000, "currency": "GBP",
                            "lines": [{"sku": "F", "category": "fuel", "quantity": 1, "amount_minor": 1000}]}),
    "refund": ("branch", {"refund_id": "R1", "transaction_id": "T1", "amount_minor": 100, "currency": "GBP"}),
    "branch_visit": ("branch", {"branch_id": "FS-1", "purpose": "enquiry"}),
    "call": ("phone", {"call_id": "K1", "direction": "inbound", "phase": "started"}),
    "email": ("email", {"message_id": "M1", "action": "sent"}),
    "web": ("web", {"session_id": "S1", "action": "page_view"}),
    "sms": ("sms", {"message_id": "M1", "action": "sent"}),
    "case": ("phone", {"case_id": "X1", "action": "opened", "category": "complaint"}),
    "consent": ("web", {"purpose": "marketing", "channel": "email", "granted": True}),
    "campaign": ("email", {"campaign_id": "CMP-1", "action": "invited"}),
    "profile": ("web", {"name": "Ada"}),
}  # fmt: skip


def ev(event_id: str, typ: str, day: float, via: str | None = None, **payload: Any) -> Event:
    default_channel, default = _PAYLOADS[typ]
    doc = {
        "event_id": event_id,
        "type": typ,
        "channel": via or default_channel,
        "occurred_at": (T0 + timedelta(days=day)).isoformat(),
        "identifiers": {"customer_no": "C1"},
        "payload": {**default, **payload},
    }
    return validate_event(doc, None)


def fold(events: list[Event], customer_id: str = "cus_1") -> CustomerView:
    view = CustomerView(customer_id)
    for event in events:
        evolve(view, event)
    return view


def buy(n: int, day: float, total: int) -> Event:
    return ev(f"p{n}", "purchase", day, transaction_id=f"T{n}", total_minor=total)


# -- every field ----------------------------------------------------------------------


def test_identifiers_per_kind_sorted_display_values() -> None:
    view = CustomerView("cus_1")
    ids = [normalise(k, v, secret=b"s") for k, v in
           [("email", "B@Example.com"), ("email", "a@example.com"), ("card", "4111111111111111"), ("phone", "07700 900001")]]  # fmt: skip  # noqa: E501
    evolve(view, ev("e1", "web", 1), ids[:2])
    evolve(view, ev("e2", "web", 2), ids[1:])
    assert render(view, AS_OF)["identifiers"] == {
        "card": ["…1111"],
        "email": ["a@example.com", "b@example.com"],
        "phone": ["+447700900001"],
    }


def test_timeline_keeps_the_last_50_in_time_order_and_counts_all() -> None:
    events = [ev(f"e{n:03d}", "web" if n % 2 else "call", n / 10) for n in range(120)]
    card = render(fold(events), AS_OF)
    assert [t["event_id"] for t in card["timeline"]] == [f"e{n:03d}" for n in range(70, 120)]
    assert len(card["timeline"]) == TIMELINE
    assert card["timeline"][0] == {"event_id": "e070", "type": "call", "channel": "phone",
                                   "occurred_at": iso_ms(int((T0 + timedelta(days=7)).timestamp() * 1000)),
                                   "detail": {"direction": "inbound", "phase": "started"}}  # fmt: skip
    assert card["counts"] == {"by_channel": {"phone": 60, "web": 60}, "by_type": {"call": 60, "web": 60}, "total": 120}


@pytest.mark.parametrize(("typ", "payload", "detail"), [
    ("purchase", {"total_minor": 4000, "lines": [
        {"sku": "S", "category": "shop", "quantity": 1, "amount_minor": 1000},
        {"sku": "F", "category": "fuel", "quantity": 1, "amount_minor": 2000},
        {"sku": "G", "category": "shop", "quantity": 1, "amount_minor": 1000}]},
     {"total_minor": 4000, "currency": "GBP", "categories": ["fuel", "shop"], "transaction_id": "T1"}),
    ("refund", {}, {"amount_minor": 100, "currency": "GBP", "transaction_id": "T1"}),
    ("call", {"phase": "ended", "ivr_reason": "billing", "duration_s": 185, "outcome": "resolved"},
     {"direction": "inbound", "phase": "ended", "ivr_reason": "billing", "duration_s": 185, "outcome": "resolved"}),
    ("web", {"action": "basket_add", "page": "/fuel-card"}, {"action": "basket_add", "page": "/fuel-card"}),
    ("email", {"action": "bounced", "campaign_id": "CMP-9"}, {"action": "bounced", "campaign_id": "CMP-9"}),
    ("sms", {"action": "opt_out"}, {"action": "opt_out"}),
    ("case", {"action": "closed", "severity": "high"},
     {"action": "closed", "category": "complaint", "severity": "high"}),
    ("consent", {"granted": False}, {"purpose": "marketing", "channel": "email", "granted": False}),
    ("campaign", {"multiplier": 3}, {"action": "invited", "campaign_id": "CMP-1", "multiplier": 3}),
    ("branch_visit", {}, {"purpose": "enquiry", "branch_id": "FS-1"}),
])
def test_timeline_entries_carry_their_payloads_facts(typ: str, payload: dict[str, Any],
                                                     detail: dict[str, Any]) -> None:
    (entry,) = render(fold([ev("e1", typ, 1, **payload)]), AS_OF)["timeline"]
    assert entry["detail"] == detail


def test_a_timeline_entry_from_before_details_renders_without_them() -> None:
    view = fold([ev("e1", "web", 1)])
    view.timeline = [entry[:4] for entry in view.timeline]  # a view pickled before the timeline kept details
    (entry,) = render(view, AS_OF)["timeline"]
    assert "detail" not in entry and entry["event_id"] == "e1"


def test_timeline_ties_broken_by_event_id() -> None:
    card = render(fold([ev("b", "web", 1), ev("a", "web", 1), ev("c", "web", 0.5)]), AS_OF)
    assert [t["event_id"] for t in card["timeline"]] == ["c", "a", "b"]


def test_last_contact_per_channel_is_the_latest() -> None:
    card = render(fold([ev("e1", "web", 3), ev("e2", "web", 1), ev("e3", "call", 2)]), AS_OF)
    assert card["last_contact"] == {"phone": "2025-01-03T00:00:00.000Z", "web": "2025-01-04T00:00:00.000Z"}


@pytest.mark.parametrize(
    ("name", "events", "as_of_day", "rfm"),
    [
        ("no purchases", [ev("w", "web", 1)], 400, {"recency_days": None, "frequency": 0, "monetary_minor": 0}),
        ("one purchase", [buy(1, 10, 2500)], 40, {"recency_days": 30, "frequency": 1, "monetary_minor": 2500}),
        ("window is trailing 365 days", [buy(1, 10, 2500), buy(2, 380, 1000)], 400,
         {"recency_days": 20, "frequency": 1, "monetary_minor": 1000}),
        ("purchases after as_of do not count", [buy(1, 10, 2500), buy(2, 380, 1000)], 100,
         {"recency_days": 90, "frequency": 1, "monetary_minor": 2500}),
        ("refunds of window purchases are netted",
         [buy(1, 10, 2500), ev("r1", "refund", 12, refund_id="R1", transaction_id="T1", amount_minor=500)], 40,
         {"recency_days": 30, "frequency": 1, "monetary_minor": 2000}),
        ("refund after as_of is not netted",
         [buy(1, 10, 2500), ev("r1", "refund", 50, refund_id="R1", transaction_id="T1", amount_minor=500)], 40,
         {"recency_days": 30, "frequency": 1, "monetary_minor": 2500}),
        ("refunds never net below zero",
         [buy(1, 10, 2500), ev("r1", "refund", 12, refund_id="R1", transaction_id="T1", amount_minor=2000),
          ev("r2", "refund", 13, refund_id="R2", transaction_id="T1", amount_minor=2000)], 40,
         {"recency_days": 30, "frequency": 1, "monetary_minor": 0}),
        ("refund of a purchase outside the window is ignored",
         [buy(1, 10, 2500), buy(2, 380, 1000),
          ev("r1", "refund", 381, refund_id="R1", transaction_id="T1", amount_minor=9)],
         400, {"recency_days": 20, "frequency": 1, "monetary_minor": 1000}),
    ],
)  # fmt: skip
def test_rfm(name: str, events: list[Event], as_of_day: int, rfm: dict[str, Any]) -> None:
    assert render(fold(events), T0 + timedelta(days=as_of_day))["rfm"] == rfm, name


@pytest.mark.parametrize(
    ("recency", "frequency", "monetary", "segment"),
    [
        (5, 52, 200_000, "platinum"),
        (60, 12, 100_000, "platinum"),
        (61, 52, 200_000, "gold"),
        (5, 11, 200_000, "gold"),
        (5, 12, 99_999, "iron"),
        (90, 3, 5_000, "lead"),
        (None, 0, 0, "lead"),
    ],
)
def test_value_segment(recency: int | None, frequency: int, monetary: int, segment: str) -> None:
    assert segment_of(recency, frequency, monetary, SegmentConfig()) == segment


def test_segment_thresholds_are_config() -> None:
    view = fold([buy(n, 300 + n, 1000) for n in range(3)])
    assert render(view, AS_OF)["value_segment"] == "lead"
    config = SegmentConfig(high_current_minor=3000, high_potential_frequency=3, high_potential_recency_days=100)
    assert render(view, AS_OF, config)["value_segment"] == "platinum"
    with pytest.raises(ValueError, match="window_days"):
        SegmentConfig(window_days=0)


def test_open_cases_by_latest_action() -> None:
    events = [
        ev("c1", "case", 1, case_id="X1", action="opened"),
        ev("c2", "case", 3, case_id="X1", action="closed"),
        ev("c3", "case", 2, case_id="X1", action="updated"),  # late arrival does not reopen
        ev("c4", "case", 1, case_id="X2", action="opened"),
        ev("c5", "case", 2, case_id="X3", action="updated"),
    ]
    assert render(fold(events), AS_OF)["open_cases"] == ["X2", "X3"]


def test_consent_latest_per_purpose_and_channel_with_opt_outs() -> None:
    events = [
        ev("g1", "consent", 1, purpose="marketing", channel="email", granted=True),
        ev("g2", "consent", 1, purpose="marketing", channel="sms", granted=True),
        ev("g3", "consent", 1, purpose="profiling", channel="web", granted=False),
        ev("u1", "email", 2, action="unsubscribed"),
        ev("o1", "sms", 3, action="opt_out"),
        ev("g4", "consent", 4, purpose="marketing", channel="sms", granted=True),  # granted again later
        ev("g5", "consent", 0.5, purpose="profiling", channel="web", granted=True),  # older: loses
    ]
    assert render(fold(events), AS_OF)["consent"] == {
        "marketing": {"email": False, "sms": True},
        "profiling": {"web": False},
    }


def test_render_shape_and_times() -> None:
    card = render(fold([buy(1, 0.5, 100)]), AS_OF)
    assert list(card) == sorted(card)
    assert card["customer_id"] == "cus_1" and card["aliases"] == [] and card["pseudo"] is False
    assert card["last_contact"] == {"branch": "2025-01-01T12:00:00.000Z"}


@pytest.mark.parametrize(
    ("ms", "iso"),
    [(0, "1970-01-01T00:00:00.000Z"), (1_735_776_245_007, "2025-01-02T00:04:05.007Z"), (-1, "1969-12-31T23:59:59.999Z")],  # noqa: E501
)
def test_iso_ms(ms: int, iso: str) -> None:
    assert iso_ms(ms) == iso


# -- duplicates -------------------------------------------------------------------------


def test_duplicate_event_is_ignored() -> None:
    view = CustomerView("cus_1")
    event = buy(1, 1, 500)
    assert evolve(view, event) is True
    assert evolve(view, ev("w", "web", 2)) is True
    assert evolve(view, event) is False
    card = render(view, T0 + timedelta(days=30))
    assert card["counts"]["total"] == 2 and len(card["timeline"]) == 2 and card["rfm"]["frequency"] == 1


def test_dedupe_window_is_bounded() -> None:
    view = fold([ev(f"e{n}", "web", n / 100) for n in range(DEDUPE_WINDOW + 10)])
    assert len(view.seen) == DEDUPE_WINDOW and "e0" not in view.seen and f"e{DEDUPE_WINDOW + 9}" in view.seen


# -- order-insensitivity and merges --------------------------------------------------------


def _history() -> list[Event]:
    rnd = random.Random(7)
    events = []
    for n in range(90):
        typ = rnd.choice(list(_PAYLOADS))
        day = rnd.randrange(0, 390) + rnd.random()
        extra: dict[str, Any] = {}
        if typ == "purchase":
            extra = {"transaction_id": f"T{n % 20}", "total_minor": 100 * n}
        elif typ == "refund":
            extra = {"refund_id": f"R{n}", "transaction_id": f"T{n % 20}", "amount_minor": 10 + n}
        elif typ == "case":
            extra = {"case_id": f"X{n % 5}", "action": rnd.choice(["opened", "updated", "closed"])}
        elif typ == "consent":
            extra = {"purpose": rnd.choice(["marketing", "profiling"]), "channel": rnd.choice(["email", "sms"]),
                     "granted": rnd.random() < 0.5}  # fmt: skip
        elif typ == "sms":
            extra = {"action": rnd.choice(["sent", "opt_out"])}
        elif typ == "email":
            extra = {"action": rnd.choice(["sent", "unsubscribed"])}
        events.append(ev(f"e{n:03d}", typ, day, **extra))
    return events


HISTORY = _history()
EXPECTED = render(fold(HISTORY), AS_OF)


@pytest.mark.parametrize("split", [0, 1, 30, 45, 89, 90])
@pytest.mark.parametrize("survivor_first", [True, False])
def test_merge_views_of_any_split_equals_one_view(split: int, survivor_first: bool) -> None:
    shuffled = list(HISTORY)
    random.Random(split).shuffle(shuffled)
    a, b = fold(shuffled[:split], "cus_1"), fold(shuffled[split:], "cus_2")
    survivor, merged = (a, b) if survivor_first else (b, a)
    survivor.customer_id, merged.customer_id = "cus_1", "cus_2"
    merge_views(survivor, merged)
    card = render(survivor, AS_OF)
    assert card["aliases"] == ["cus_2"]
    assert {**card, "aliases": []} == EXPECTED


def test_merge_views_is_associative() -> None:
    parts = [fold(HISTORY[i::3], f"cus_{i}") for i in range(3)]
    left = [fold(HISTORY[i::3], f"cus_{i}") for i in range(3)]
    merge_views(parts[1], parts[2])
    merge_views(parts[0], parts[1])  # a + (b + c)
    merge_views(left[0], left[1])
    merge_views(left[0], left[2])  # (a + b) + c
    assert render(parts[0], AS_OF) == render(left[0], AS_OF)
    assert render(parts[0], AS_OF)["aliases"] == ["cus_1", "cus_2"]


def test_merge_views_counts_an_event_seen_by_both_once() -> None:
    a, b = fold(HISTORY[:50], "cus_1"), fold(HISTORY[40:], "cus_2")
    merge_views(a, b)
    assert {**render(a, AS_OF), "aliases": []} == EXPECTED


@settings(max_examples=60, deadline=None)
@given(order=st.permutations(range(len(HISTORY))))
def test_any_permutation_renders_the_same(order: list[int]) -> None:
    assert render(fold([HISTORY[i] for i in order]), AS_OF) == EXPECTED


@pytest.mark.parametrize(
    "ms",
    [0, 1, 999, 1000, 59_999, 60_000, 3_599_999, 86_399_999, 86_400_000, -1, -86_400_000, -86_400_001,
     1_740_823_200_123, 253_402_300_799_999],
)
def test_iso_ms_matches_datetime_formatting(ms: int) -> None:
    instant = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=ms)
    assert iso_ms(ms) == instant.strftime("%Y-%m-%dT%H:%M:%S.") + f"{instant.microsecond // 1000:03d}Z"


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=-62_135_596_800_000, max_value=253_402_300_799_999))
def test_iso_ms_matches_datetime_formatting_everywhere(ms: int) -> None:
    instant = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=ms)
    assert iso_ms(ms) == instant.strftime("%Y-%m-%dT%H:%M:%S.") + f"{instant.microsecond // 1000:03d}Z"


def test_card_names_likely_call_reasons_as_of_its_instant() -> None:
    view = fold([ev("c1", "case", 398), ev("w1", "web", 399.5, action="basket_abandon", session_id="S9"),
                 ev("m1", "email", 100, action="bounced")])
    reasons = render(view, AS_OF)["likely_reasons"]
    # The complaint two days old ranks above yesterday's basket; the bounce is too old to matter.
    assert [r["code"] for r in reasons] == ["open_case", "basket_abandoned"]
    assert reasons[0]["evidence"]["case_id"] == "X1"


def test_merged_views_keep_both_customers_reason_facts() -> None:
    ann, bob = fold([ev("c1", "case", 398)]), fold([ev("r1", "refund", 399)], "cus_2")
    merge_views(ann, bob)
    assert {r["code"] for r in render(ann, AS_OF)["likely_reasons"]} == {"open_case", "refund_in_progress"}


# -- the person ---------------------------------------------------------------------


def test_the_person_keeps_each_fields_latest_value_in_any_order_and_across_a_merge() -> None:
    events = [ev("pr1", "profile", 1, name="Ada", language="en", preferred_channel="email"),
              ev("pr2", "profile", 5, name=None, language="cy"),  # only the language changes
              ev("pr3", "profile", 3, name="Ada L.", preferred_channel=None, language=None)]
    expected = {"language": "cy", "name": "Ada L.", "preferred_channel": "email"}
    for order in (events, events[::-1], [events[1], events[0], events[2]]):
        assert render(fold(order), AS_OF)["person"] == expected
    split = fold(events[:1], "cus_a")
    merge_views(split, fold(events[1:], "cus_b"))
    assert render(split, AS_OF)["person"] == expected
    assert render(fold([]), AS_OF)["person"] == {"language": None, "name": None, "preferred_channel": None}


def test_the_timeline_says_a_name_was_given_but_not_the_name() -> None:
    card = render(fold([ev("pr1", "profile", 1, name="Ada", language="en-GB")]), AS_OF)
    [entry] = card["timeline"]
    assert entry["detail"] == {"language": "en-GB", "name_given": True}
    assert "Ada" not in str(card["timeline"])
