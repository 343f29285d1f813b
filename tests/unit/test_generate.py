"""The synthetic population generator: determinism, order and the realism later issues rely on."""

from __future__ import annotations

import io
import re
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from touchpoint.generate import BAD_KINDS, DEFAULT_START, TYPES, generate, population, write_jsonl

CUSTOMERS, DAYS, SEED = 300, 365, 7
CHANNELS = {"branch", "phone", "email", "web", "sms"}
ID_KINDS = {"customer_no", "phone", "email", "card", "cookie", "device"}
ISO_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}(Z|\+00:00)$")
MOBILE = re.compile(r"^(\+447\d{9}|07\d{3} \d{6})$")
LANDLINE = re.compile(r"^(\+4420\d{8}|020 \d{4} \d{4})$")


def _jsonl(*args: Any, **kwargs: Any) -> str:
    buf = io.StringIO()
    write_jsonl(generate(*args, **kwargs), buf)
    return buf.getvalue()


def _at(event: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(event["occurred_at"])


def _is_bad(event: dict[str, Any]) -> bool:
    return bool(event["event_id"].startswith("bad-"))


def _luhn_ok(number: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(number)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _e164(phone: str) -> str:
    digits = phone.replace(" ", "")
    return "+44" + digits[1:] if digits.startswith("0") else digits


@pytest.fixture(scope="module")
def events() -> list[dict[str, Any]]:
    return list(generate(CUSTOMERS, DAYS, SEED))


@pytest.fixture(scope="module")
def good(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in events if not _is_bad(e)]


@pytest.fixture(scope="module")
def purchases(good: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {e["payload"]["transaction_id"]: e for e in good if e["type"] == "purchase"}


# -- determinism and shape ----------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2024])
def test_same_seed_same_bytes(seed: int) -> None:
    first = _jsonl(40, 90, seed)
    assert first == _jsonl(40, 90, seed)
    assert first.endswith("\n") and first.count("\n") > 100


@pytest.mark.parametrize(("a", "b"), [(1, 2), (7, 8), (0, 1000)])
def test_different_seed_different_bytes(a: int, b: int) -> None:
    assert _jsonl(40, 90, a) != _jsonl(40, 90, b)


def test_jsonl_is_compact_with_sorted_keys() -> None:
    line = _jsonl(5, 30, 3).splitlines()[0]
    assert ", " not in line and ": " not in line
    assert line.startswith('{"channel":')
    assert line.index('"identifiers"') < line.index('"occurred_at"') < line.index('"payload"') < line.index('"type"')


def test_write_jsonl_returns_count() -> None:
    buf = io.StringIO()
    assert write_jsonl(generate(5, 30, 3), buf) == len(buf.getvalue().splitlines())


def test_generate_is_lazy_and_streams() -> None:
    stream = generate(20_000, 365, 1, bad_share=0.0)
    assert iter(stream) is stream
    first = next(stream)
    assert first["occurred_at"].startswith("2025-01-01T")


def test_sorted_by_occurred_at(events: list[dict[str, Any]]) -> None:
    times = [_at(e) for e in events if not e["event_id"].startswith("bad-future_time-")]
    assert times == sorted(times)


def test_envelope_shape(events: list[dict[str, Any]], good: list[dict[str, Any]]) -> None:
    ids = [e["event_id"] for e in events]
    assert len(ids) == len(set(ids))
    for e in events:
        assert set(e) == {"event_id", "type", "channel", "occurred_at", "identifiers", "payload"}
        assert ISO_MS.match(e["occurred_at"]), e
    for e in good:
        assert e["event_id"].startswith((f"ev-{SEED}-", f"pf-{SEED}-"))
        assert e["type"] in TYPES and e["channel"] in CHANNELS
        assert e["identifiers"] and set(e["identifiers"]) <= ID_KINDS
        assert all(isinstance(v, str) and v for v in e["identifiers"].values())
        start, end = DEFAULT_START, DEFAULT_START + timedelta(days=DAYS)
        assert start <= _at(e) < end


@pytest.mark.parametrize("start", [datetime(2023, 6, 1, tzinfo=UTC), datetime(2024, 2, 28, 13, 30, tzinfo=UTC)])
def test_start_shifts_the_period(start: datetime) -> None:
    got = [e for e in generate(30, 20, 5, start=start) if not _is_bad(e)]
    assert got and all(start <= _at(e) < start + timedelta(days=20) for e in got)


@pytest.mark.parametrize(
    "kwargs", [{"customers": 0, "days": 1}, {"customers": 1, "days": 0}, {"customers": 1, "days": 1, "bad_share": 1.0}]
)
def test_rejects_bad_arguments(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        generate(seed=1, **kwargs)


# -- realism ------------------------------------------------------------------


def test_every_type_appears(good: list[dict[str, Any]]) -> None:
    assert {e["type"] for e in good} == set(TYPES)


@pytest.mark.parametrize(
    ("type_", "field", "values"),
    [
        ("email", "action", {"sent", "delivered", "opened", "clicked", "bounced"}),
        ("sms", "action", {"sent", "delivered", "opt_out"}),
        ("web", "action", {"page_view", "login", "basket_add", "basket_abandon", "search"}),
        ("case", "category", {"complaint", "query", "cancel_request", "fraud"}),
        ("case", "action", {"opened", "closed"}),
        ("call", "phase", {"started", "ended"}),
        ("consent", "purpose", {"marketing", "profiling"}),
        ("consent", "granted", {True, False}),
        ("profile", "language", {"en-GB", "cy", "pl"}),
        ("profile", "preferred_channel", {"email", "web", "branch", None}),
    ],
)
def test_payload_variety(good: list[dict[str, Any]], type_: str, field: str, values: set[Any]) -> None:
    seen = {e["payload"][field] for e in good if e["type"] == type_}
    assert values <= seen


def test_profiles_give_names_and_leave_every_other_event_as_it_was(good: list[dict[str, Any]]) -> None:
    """A profile per active customer from the first activity, the name mostly given; the other events are the
    ones generated without profiles (their own random stream and ids)."""
    profiles = [e for e in good if e["type"] == "profile"]
    people = {e["identifiers"]["customer_no"] for e in profiles}
    numbers = {e["identifiers"]["customer_no"] for e in good if e["type"] != "profile" and "customer_no" in
               e["identifiers"]}
    assert numbers <= people
    assert sum(e["payload"]["name"] is not None for e in profiles if e["event_id"].endswith("-1")) > 0.8 * len(people)
    first = {e["identifiers"]["customer_no"]: e for e in profiles if e["event_id"].endswith("-1")}
    assert all(first[e["identifiers"]["customer_no"]]["occurred_at"][:10] <= e["occurred_at"][:10]
               for e in good if e["type"] != "profile" and "customer_no" in e["identifiers"])


def test_calls_carry_reason_and_duration(good: list[dict[str, Any]]) -> None:
    calls = [e["payload"] for e in good if e["type"] == "call"]
    assert any("ivr_reason" in p for p in calls if p["phase"] == "started")
    assert all(isinstance(p["duration_s"], int) and p["duration_s"] > 0 for p in calls if p["phase"] == "ended")


def test_basket_kinds(purchases: dict[str, dict[str, Any]]) -> None:
    kinds = Counter(frozenset(line["category"] for line in e["payload"]["lines"]) for e in purchases.values())
    assert set(kinds) == {frozenset({"fuel"}), frozenset({"shop"}), frozenset({"fuel", "shop"})}


def test_totals_both_sides_of_threshold(purchases: dict[str, dict[str, Any]]) -> None:
    totals = [e["payload"]["total_minor"] for e in purchases.values()]
    assert any(t < 5000 for t in totals) and any(t > 5000 for t in totals)
    assert 5000 in totals and 4999 in totals
    for e in purchases.values():
        p = e["payload"]
        assert p["currency"] == "GBP"
        assert p["total_minor"] == sum(line["amount_minor"] for line in p["lines"]) > 0


def test_money_is_int_in_good_events(good: list[dict[str, Any]]) -> None:
    def money(node: Any) -> list[Any]:
        if isinstance(node, dict):
            return [v for k, v in node.items() if k.endswith("_minor")] + [x for v in node.values() for x in money(v)]
        if isinstance(node, list):
            return [x for v in node for x in money(v)]
        return []

    amounts = [a for e in good for a in money(e["payload"])]
    assert amounts and all(type(a) is int and a > 0 for a in amounts)


def test_refunds_reference_earlier_purchases_of_the_same_customer(
    good: list[dict[str, Any]], purchases: dict[str, dict[str, Any]]
) -> None:
    refunded: dict[str, list[int]] = defaultdict(list)
    for e in good:
        if e["type"] != "refund":
            continue
        original = purchases[e["payload"]["transaction_id"]]
        assert _at(original) < _at(e)
        assert set(original["identifiers"].items()) & set(e["identifiers"].items())
        refunded[e["payload"]["transaction_id"]].append(e["payload"]["amount_minor"])
    assert refunded
    for tid, amounts in refunded.items():
        assert sum(amounts) <= purchases[tid]["payload"]["total_minor"]
    totals = {tid: purchases[tid]["payload"]["total_minor"] for tid in refunded}
    assert any(a == [totals[t]] for t, a in refunded.items()), "a full refund"
    assert any(len(a) == 1 and a[0] < totals[t] for t, a in refunded.items()), "a single partial refund"
    assert any(len(a) == 2 for a in refunded.values()), "two partial refunds of one purchase"


def test_campaigns_and_campaign_purchases(good: list[dict[str, Any]], purchases: dict[str, dict[str, Any]]) -> None:
    windows = {}
    for e in good:
        if e["type"] == "campaign":
            p = e["payload"]
            assert e["channel"] in {"email", "sms"}
            assert p["action"] == "invited" and p["multiplier"] == 3
            starts, ends = datetime.fromisoformat(p["starts_at"]), datetime.fromisoformat(p["ends_at"])
            assert _at(e) < starts < ends
            windows[p["campaign_id"]] = (starts, ends)
    coded = [e for e in purchases.values() if "campaign_code" in e["payload"]]
    assert len(windows) >= 5 and coded
    for e in coded:
        starts, ends = windows[e["payload"]["campaign_code"]]
        assert starts <= _at(e) < ends


def test_identifier_formats(good: list[dict[str, Any]]) -> None:
    values: dict[str, set[str]] = defaultdict(set)
    for e in good:
        for kind, value in e["identifiers"].items():
            values[kind].add(value)
    assert all(re.fullmatch(r"C\d{8}", v) for v in values["customer_no"])
    assert all(re.fullmatch(r"\d{16}", v) and _luhn_ok(v) for v in values["card"])
    assert all(MOBILE.match(v) or LANDLINE.match(v) for v in values["phone"])
    assert any(v.startswith("+44") for v in values["phone"]) and any(v.startswith("07") for v in values["phone"])
    assert all(v.count("@") == 1 for v in values["email"])
    assert any(v != v.lower() for v in values["email"]), "some emails written in mixed case"


def test_people_use_several_cookies(good: list[dict[str, Any]]) -> None:
    cookies: dict[str, set[str]] = defaultdict(set)
    for e in good:
        ids = e["identifiers"]
        if "cookie" in ids and "customer_no" in ids:
            cookies[ids["customer_no"]].add(ids["cookie"])
    assert any(len(c) >= 2 for c in cookies.values())


def test_family_emails_shared_by_two_to_four() -> None:
    pop = population(CUSTOMERS, DAYS, SEED)
    shared = [n for n in Counter(e for e in pop.email if e).values() if n > 1]
    assert shared and all(2 <= n <= 4 for n in shared)


def test_family_email_links_several_customer_numbers(good: list[dict[str, Any]]) -> None:
    linked: dict[str, set[str]] = defaultdict(set)
    for e in good:
        ids = e["identifiers"]
        if "email" in ids and "customer_no" in ids:
            linked[ids["email"].lower()].add(ids["customer_no"])
    sizes = [len(c) for c in linked.values()]
    assert max(sizes) >= 2 and max(sizes) <= 4


def test_shop_landline_shared_by_many(good: list[dict[str, Any]]) -> None:
    pop = population(CUSTOMERS, DAYS, SEED)
    assert max(Counter(x for x in pop.landline if x).values()) == 30
    linked: dict[str, set[str]] = defaultdict(set)
    for e in good:
        ids = e["identifiers"]
        if "phone" in ids and "customer_no" in ids:
            linked[_e164(ids["phone"])].add(ids["customer_no"])
    landline = max(linked, key=lambda k: len(linked[k]))
    assert LANDLINE.match(landline) and len(linked[landline]) >= 10


def test_habits_present() -> None:
    pop = population(CUSTOMERS, DAYS, SEED)
    assert set(pop.habit) == {"weekly", "monthly", "occasional", "lapsing"}


def test_lapsing_customers_go_silent(good: list[dict[str, Any]]) -> None:
    pop = population(CUSTOMERS, DAYS, SEED)
    owner: dict[str, int] = {}
    for i in range(CUSTOMERS):
        owner[pop.customer_no[i]] = i
        if pop.card[i]:
            owner[pop.card[i]] = i  # type: ignore[index]
    last: dict[int, datetime] = {}
    for e in good:
        for value in e["identifiers"].values():
            i = owner.get(value)
            if i is not None:
                last[i] = max(last.get(i, _at(e)), _at(e))
    lapsers = [i for i in range(CUSTOMERS) if pop.habit[i] == "lapsing"]
    assert lapsers
    for i in lapsers:
        lapse = pop.lapse_at(i)
        assert lapse is not None
        assert i not in last or last[i] < lapse
    assert sum(i in last for i in lapsers) >= len(lapsers) * 0.8, "lapsers were active before"
    regular = [i for i in range(CUSTOMERS) if pop.habit[i] == "weekly"]
    assert all(pop.lapse_at(i) is None for i in regular)
    recent = DEFAULT_START + timedelta(days=DAYS - 30)
    assert sum(last.get(i, DEFAULT_START) > recent for i in regular) > len(regular) * 0.8


# -- bad events ---------------------------------------------------------------


@pytest.mark.parametrize("bad_share", [0.0, 0.02, 0.1])
def test_bad_share_within_tolerance(bad_share: float) -> None:
    got = list(generate(150, 365, 11, bad_share=bad_share))
    bad = [e for e in got if _is_bad(e)]
    assert abs(len(bad) / len(got) - bad_share) <= max(0.006, bad_share * 0.2)
    if bad_share:
        assert {e["event_id"].split("-")[1] for e in bad} == set(BAD_KINDS)


def _check_bad(kind: str, e: dict[str, Any], purchases: dict[str, dict[str, Any]]) -> bool:
    p = e["payload"]
    match kind:
        case "missing_identifiers":
            return e["identifiers"] == {}
        case "unknown_type":
            return e["type"] not in TYPES
        case "negative_amount":
            return p["total_minor"] < 0
        case "float_money":
            return isinstance(p["total_minor"], float)
        case "future_time":
            return _at(e) > DEFAULT_START + timedelta(days=DAYS + 365 * 5)
        case "malformed_email":
            return not re.fullmatch(r"[^@\s]+@[^@\s]+\.[^@\s]+", e["identifiers"]["email"])
        case "unknown_refund":
            return e["type"] == "refund" and p["transaction_id"] not in purchases
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", BAD_KINDS)
def test_each_bad_kind_is_really_bad(
    kind: str, events: list[dict[str, Any]], purchases: dict[str, dict[str, Any]]
) -> None:
    tagged = [e for e in events if e["event_id"].startswith(f"bad-{kind}-{SEED}-")]
    assert tagged
    assert all(_check_bad(kind, e, purchases) for e in tagged)


# -- properties over seeds ----------------------------------------------------


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(min_value=0, max_value=2**32), customers=st.integers(1, 25), days=st.integers(1, 60))
def test_properties_hold_for_any_seed(seed: int, customers: int, days: int) -> None:
    got = list(generate(customers, days, seed))
    good = [e for e in got if not _is_bad(e)]
    times = [_at(e) for e in got if not e["event_id"].startswith("bad-future_time-")]
    assert times == sorted(times)
    bought = {e["payload"]["transaction_id"]: e["payload"]["total_minor"] for e in good if e["type"] == "purchase"}
    refunded: Counter[str] = Counter()
    for e in good:
        if e["type"] == "refund":
            refunded[e["payload"]["transaction_id"]] += e["payload"]["amount_minor"]
    assert all(amount <= bought[tid] for tid, amount in refunded.items())
