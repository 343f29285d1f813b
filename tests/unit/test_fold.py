"""The offline fold: config, rejections, merges of views, determinism, the generated population."""

from __future__ import annotations

import io
import json
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from touchpoint.core.fold import FoldConfig, Folder, fold, fold_to_json
from touchpoint.core.identity import customer_id_for
from touchpoint.core.normalise import normalise
from touchpoint.core.profile import SegmentConfig
from touchpoint.errors import ConfigError
from touchpoint.generate import generate, population, write_jsonl

SECRET = b"test-secret"
T0 = datetime(2025, 3, 1, tzinfo=UTC)


def event(event_id: str, ids: dict[str, str], typ: str = "web", minutes: int = 0, **payload: Any) -> str:
    channel, default = {
        "web": ("web", {"session_id": "S1", "action": "page_view"}),
        "purchase": ("branch", {"transaction_id": "T1", "location_id": "FS-1", "total_minor": 1000, "currency": "GBP",
                                "lines": [{"sku": "F", "category": "fuel", "quantity": 1, "amount_minor": 1000}]}),
        "refund": ("branch", {"refund_id": "R1", "transaction_id": "T1", "amount_minor": 100, "currency": "GBP"}),
        "call": ("phone", {"call_id": "K1", "direction": "inbound", "phase": "started"}),
    }[typ]  # fmt: skip
    at = (T0 + timedelta(minutes=minutes)).isoformat().replace("+00:00", "Z")
    doc = {"event_id": event_id, "type": typ, "channel": channel, "occurred_at": at, "identifiers": ids,
           "payload": {**default, **payload}}  # fmt: skip
    return json.dumps(doc)


def run(lines: list[str], **kwargs: Any) -> dict[str, Any]:
    return fold(lines, secret=SECRET, **kwargs)


def by_id(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["customer_id"]: c for c in doc["customers"]}


# -- config -------------------------------------------------------------------------------


def test_config_defaults() -> None:
    config = FoldConfig()
    assert config.limits == {"customer_no": 1, "card": 10, "email": 5, "phone": 5, "device": 20, "cookie": 200}
    assert config.segment == SegmentConfig() and config.region == "GB" and config.shared == frozenset()


def test_config_loads_from_json(tmp_path: Path) -> None:
    path = tmp_path / "fold.json"
    path.write_text(json.dumps({"limits": {"email": 2}, "shared": ["phone:abc"], "region": "US",
                                "segment": {"high_current_minor": 5000}}))  # fmt: skip
    config = FoldConfig.load(path)
    assert config.limits["email"] == 2 and config.limits["card"] == 10
    assert config.shared == frozenset({"phone:abc"}) and config.region == "US"
    assert config.segment == SegmentConfig(high_current_minor=5000)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", "invalid"),
        ('{"limits": {"email": 0}}', "limits: limit for email must be an integer of at least 1"),
        ('{"limits": {"passport": 1}}', "unknown identifier kind 'passport'"),
        ('{"colour": "red"}', "colour: Extra inputs are not permitted"),
        ('{"segment": {"window_days": 0}}', "window_days must be at least 1"),
        ('{"shared_identifiers": {"shoe": ["x"]}}', "unknown identifier kind 'shoe'"),
        ('{"max_ahead_days": 0}', "max_ahead_days"),
    ],
)
def test_config_errors_are_clear(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "fold.json"
    path.write_text(text)
    with pytest.raises(ConfigError, match="fold config .* is invalid") as info:
        FoldConfig.load(path)
    assert message in str(info.value)


def test_config_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read fold config"):
        FoldConfig.load(tmp_path / "nope.json")


def test_fold_needs_a_secret() -> None:
    with pytest.raises(ConfigError, match="identifier key"):
        fold([], secret=b"")


# -- rejections -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "lines", "rejected"),
    [
        ("not JSON", ["{oops"], [("line 1", "not JSON")]),
        ("contract violation", [event("e1", {})], [("e1", "identifiers: at least one identifier is required")]),
        ("unknown type", [json.dumps({"event_id": "e1", "type": "x"})], [("e1", "unknown event type 'x'")]),
        ("invalid card", [event("e1", {"card": "4111111111111112"})], [("e1", "identifiers.card: card number fails the Luhn check")]),  # noqa: E501
        ("invalid phone", [event("e1", {"phone": "+1 212 555 01"})], [("e1", "identifiers.phone: not a possible phone number")]),  # noqa: E501
        ("refund of an unknown purchase, held past the horizon",
         [event("e1", {"customer_no": "C1"}, "refund", transaction_id="T9"), json.dumps({"tick": "2025-04-01T00:00:00Z"})],  # noqa: E501
         [("e1", "refund of T9, not a purchase of this customer within 30 days of log time")]),
        ("refund of another customer's purchase, held past the horizon",
         [event("e1", {"customer_no": "C1"}, "purchase"), event("e2", {"customer_no": "C2"}, "refund", 5),
          json.dumps({"tick": "2025-04-01T00:00:00Z"})],
         [("e2", "refund of T1, not a purchase of this customer within 30 days")]),
        ("refunds above the purchase",
         [event("e1", {"customer_no": "C1"}, "purchase"),
          event("e2", {"customer_no": "C1"}, "refund", 5, refund_id="R1", amount_minor=600),
          event("e3", {"customer_no": "C1"}, "refund", 6, refund_id="R2", amount_minor=401)],
         [("e3", "refunds of T1 would total 1001, above its total_minor 1000")]),
        ("too far ahead of the log",
         [event("e1", {"cookie": "k"}), event("e2", {"cookie": "k"}, minutes=60 * 24 * 3650)],
         [("e2", "occurred_at: is 3650.0 days after the latest event before it")]),
    ],
)  # fmt: skip
def test_rejected_with_reasons(name: str, lines: list[str], rejected: list[tuple[str, str]]) -> None:
    doc = run(lines)
    assert [r["event_id"] for r in doc["rejected"]] == [e for e, _ in rejected], name
    for got, (_, reason) in zip(doc["rejected"], rejected, strict=True):
        assert reason in got["reason"], name


def test_an_event_id_that_is_not_unicode_is_rejected_as_its_escape() -> None:
    """JSON may spell a lone surrogate (``"\\ud800"``): refused, and printed as the escape it came in."""
    line = event("e1", {"cookie": "k"}).replace('"e1"', '"\\ud800"')
    assert "\\ud800" in line
    doc = json.loads(fold_to_json([line, event("e2", {"cookie": "k"})], secret=SECRET))
    assert [r["event_id"] for r in doc["rejected"]] == ["\\ud800"]
    assert doc["rejected"][0]["reason"].startswith("event_id:")
    assert len(doc["customers"]) == 1


def test_event_identity_rejects_changes_nothing() -> None:
    good = [event("e1", {"customer_no": "C1"}, "purchase")]
    bad = [event("e2", {"customer_no": "C1", "email": "not an e-mail"}, "purchase", 5, transaction_id="T9")]
    assert run(good + bad)["rejected"][0]["event_id"] == "e2"
    assert run(good + bad)["customers"] == run(good)["customers"]
    assert run(good + bad)["identity_decisions"] == run(good)["identity_decisions"]


def test_refund_the_profile_rejects_keeps_identity_but_changes_no_history() -> None:
    """Identity judges identifiers, the profile judges history: the split the workers run in."""
    good = [event("e1", {"customer_no": "C1"}, "purchase"), event("e0", {"email": "x@example.com"}, "web", 1)]
    bad = [event("e2", {"customer_no": "C1", "email": "x@example.com"}, "refund", 5, transaction_id="T9"),
           json.dumps({"tick": "2025-04-01T00:00:00Z"})]  # the refund waits 30 days for its purchase
    before, after = run(good + bad[1:]), run(good + bad)
    assert [r["event_id"] for r in after["rejected"]] == ["e2"]
    assert "not a purchase of this customer" in after["rejected"][0]["reason"]
    assert [d["decision"] for d in after["identity_decisions"][len(before["identity_decisions"]):]] == ["merged"]
    [merged] = after["customers"]
    assert merged["identifiers"] == {"customer_no": ["C1"], "email": ["x@example.com"]}
    assert merged["counts"]["total"] == 2 and "refund" not in merged["counts"]["by_type"]
    assert merged["loyalty"] == next(c for c in before["customers"] if "customer_no" in c["identifiers"])["loyalty"]


def test_now_judges_event_time_like_ingest() -> None:
    lines = [event("e1", {"cookie": "k"}, minutes=60 * 25)]
    doc = run(lines, now_for_validation=T0)
    assert doc["rejected"][0]["event_id"] == "e1" and "after now" in doc["rejected"][0]["reason"]
    assert not run(lines)["rejected"]


# -- the folded document -------------------------------------------------------------------------


def test_merge_in_identity_merges_views() -> None:
    doc = run([
        event("e1", {"cookie": "k1"}, minutes=1),
        event("e2", {"customer_no": "C1"}, "purchase", minutes=2),
        event("e3", {"customer_no": "C1", "cookie": "k1"}, minutes=3),
    ])  # fmt: skip
    (card,) = doc["customers"]
    survivor = customer_id_for(normalise("cookie", "k1", secret=SECRET).key)
    assert card["customer_id"] == survivor
    assert card["aliases"] == [customer_id_for(normalise("customer_no", "C1", secret=SECRET).key)]
    assert card["identifiers"] == {"cookie": ["k1"], "customer_no": ["C1"]}
    assert [t["event_id"] for t in card["timeline"]] == ["e1", "e2", "e3"]
    assert card["rfm"] == {"frequency": 1, "monetary_minor": 1000, "recency_days": 0}
    assert [d["decision"] for d in doc["identity_decisions"]] == ["minted", "minted", "merged"]


def test_card_never_in_clear_anywhere() -> None:
    lines = [event("e1", {"card": "4111 1111 1111 1111", "customer_no": "C1"}, "purchase"),
             event("e2", {"card": "4000-0000-0000-0002"}, minutes=1)]  # fmt: skip
    out = fold_to_json(lines, secret=SECRET)
    for clear in ("4111111111111111", "4111 1111", "4000000000000002", "4000-0000", "41111111", "111111111111"):
        assert clear not in out
    assert '"card":["…0002"]' in out and '"card":["…1111"]' in out


def test_as_of_defaults_to_the_latest_event() -> None:
    lines = [event("e1", {"customer_no": "C1"}, "purchase"), event("e2", {"customer_no": "C1"}, minutes=60 * 24 * 10)]
    assert run(lines)["customers"][0]["rfm"]["recency_days"] == 10
    assert run(lines, as_of=T0 + timedelta(days=30))["customers"][0]["rfm"]["recency_days"] == 30


def test_shared_landline_gets_a_pseudo_customer_and_unmerge_by_refold() -> None:
    lines = [
        event("e1", {"customer_no": "C1"}, minutes=1),
        event("e2", {"email": "b@example.com"}, minutes=2),
        event("e3", {"customer_no": "C1", "phone": "020 7946 0001"}, "call", 3),
        event("e4", {"email": "b@example.com", "phone": "+442079460001"}, "call", 4),  # wrongly joins C1 and b
        event("e5", {"phone": "+442079460001"}, "call", 5),
    ]
    joined = run(lines)
    assert len(joined["customers"]) == 1
    config = FoldConfig(shared_identifiers={"phone": ["+44 20 7946 0001"]})
    split = run(lines, config=config)
    cards = by_id(split)
    assert len(cards) == 3 and not [d for d in split["identity_decisions"] if d["decision"] == "merged"]
    shop = cards[customer_id_for(normalise("phone", "+442079460001", secret=SECRET).key)]
    assert shop["pseudo"] is True and shop["identifiers"] == {"phone": ["+442079460001"]}
    assert [t["event_id"] for t in shop["timeline"]] == ["e5"]
    refused = [d for d in split["identity_decisions"] if d["decision"] == "link_refused"]
    assert [(d["event_id"], d["reason"]) for d in refused] == [("e3", "marked shared"), ("e4", "marked shared")]
    # The same by key, as an operator copies it from a decision.
    assert run(lines, config=FoldConfig(shared=frozenset({refused[0]["key"]}))) == split


def test_fold_to_json_is_compact_sorted_and_has_its_four_keys() -> None:
    out = fold_to_json([event("e1", {"cookie": "k"})], secret=SECRET)
    doc = json.loads(out)
    assert list(doc) == ["customers", "identity_decisions", "loyalty_unscored", "rejected"]
    assert out == json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def test_folder_in_batches_equals_one_pass() -> None:
    lines = [event(f"e{n}", {"cookie": f"k{n % 3}", "device": f"d{n % 2}"}, minutes=n) for n in range(20)]
    folder = Folder(secret=SECRET)
    for batch in (lines[:7], lines[7:8], lines[8:]):
        for line in batch:
            folder.add_json(line)
    assert folder.result() == run(lines)


_IDS = st.fixed_dictionaries(
    {},
    optional={
        "customer_no": st.sampled_from(["C1", "C2", "C3"]),
        "email": st.sampled_from(["a@example.com", "B@example.com", "fam@example.net"]),
        "phone": st.sampled_from(["07700 900001", "+447700900002", "020 7946 0001"]),
        "cookie": st.sampled_from(["k1", "k2", "k3", "k4"]),
    },
).filter(bool)


def log_lines(log: list[object]) -> list[str]:
    """The JSON lines of a drawn log: ``(identifiers, type, minutes)`` events (purchases and refunds of
    three transactions) and literal lines (ticks, blanks, junk) as they are."""
    lines = []
    for n, item in enumerate(log):
        if isinstance(item, str):
            lines.append(item)
            continue
        ids, typ, minutes = item  # type: ignore[misc]
        extra = {"transaction_id": f"T{n % 3}"} if typ in ("purchase", "refund") else {}
        lines.append(event(f"e{n}", ids, typ, minutes, **extra))
    return lines


@settings(max_examples=60, deadline=None)
@given(log=st.lists(st.tuples(_IDS, st.sampled_from(["web", "purchase", "call"])), max_size=25))
def test_folding_is_deterministic(log: list[tuple[dict[str, str], str]]) -> None:
    lines = [event(f"e{n}", ids, typ, n, transaction_id=f"T{n}") if typ == "purchase" else event(f"e{n}", ids, typ, n)
             for n, (ids, typ) in enumerate(log)]  # fmt: skip
    first = fold_to_json(lines, secret=SECRET)
    assert first == fold_to_json(list(lines), secret=SECRET)
    doc = json.loads(first)
    for card in doc["customers"]:
        assert len(card["identifiers"].get("customer_no", [])) <= 1
        assert all(len(v) <= 5 for v in card["identifiers"].values())


@settings(max_examples=60, deadline=None)
@given(log=st.lists(st.tuples(_IDS, st.sampled_from(["web", "purchase", "call"])), min_size=1, max_size=25),
       data=st.data())
def test_any_batching_with_redelivery_equals_one_pass(log: list[tuple[dict[str, str], str]],
                                                      data: st.DataObject) -> None:
    """What the worker does: batches with changes drained between them, and after a
    crash the events since the last commit folded a second time (at-least-once)."""
    lines = [event(f"e{n}", ids, typ, n, transaction_id=f"T{n}") if typ == "purchase" else event(f"e{n}", ids, typ, n)
             for n, (ids, typ) in enumerate(log)]  # fmt: skip
    cuts = sorted(data.draw(st.lists(st.integers(0, len(lines)), max_size=4)))
    redelivered = data.draw(st.integers(0, len(lines)))
    folder = Folder(secret=SECRET)
    start = 0
    for cut in [*cuts, len(lines)]:
        for line in lines[start:cut]:
            folder.add_json(line)
        folder.drain_changes()
        start = max(start, cut)
    for line in lines[len(lines) - redelivered:]:  # re-delivered after a restart
        folder.add_json(line)
    once = Folder(secret=SECRET)
    for line in lines:
        once.add_json(line)
    assert folder.result()["customers"] == once.result()["customers"]
    # A re-delivered event meets a later state; it may only repeat a refusal (the identity
    # topic is at-least-once, readers key decisions by event id), never link or merge again.
    batched, single = folder.result()["identity_decisions"], once.result()["identity_decisions"]
    assert batched[: len(single)] == single
    replayed = {f"e{n}" for n in range(len(lines) - redelivered, len(lines))}
    assert all(d["decision"] == "link_refused" and d["event_id"] in replayed for d in batched[len(single):])


# -- the generated population ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def generated() -> tuple[list[str], str]:
    buf = io.StringIO()
    write_jsonl(generate(customers=300, days=365, seed=3), buf)
    lines = buf.getvalue().splitlines()
    return lines, fold_to_json(lines, secret=SECRET)


def test_generated_every_customer_no_on_exactly_one_customer(generated: tuple[list[str], str]) -> None:
    _, out = generated
    doc = json.loads(out)
    owners = Counter(no for c in doc["customers"] for no in c["identifiers"].get("customer_no", []))
    assert set(owners) == set(population(300, 365, 3).customer_no)
    assert set(owners.values()) == {1}
    assert all(len(c["identifiers"].get("customer_no", [])) <= 1 for c in doc["customers"])


def test_generated_households_are_not_merged(generated: tuple[list[str], str]) -> None:
    _, out = generated
    doc = json.loads(out)
    pop = population(300, 365, 3)
    shared = {e for e, n in Counter(e for e in pop.email if e).items() if n > 1}
    assert shared, "the population should have family emails"
    customer_of = {no: c["customer_id"] for c in doc["customers"] for no in c["identifiers"].get("customer_no", [])}
    for email in shared:
        members = [pop.customer_no[i] for i, e in enumerate(pop.email) if e == email]
        assert len({customer_of[no] for no in members}) == len(members), email
    refusals = [d for d in doc["identity_decisions"] if d["decision"] == "link_refused"]
    assert refusals and all("customer_no (limit 1)" in d["reason"] for d in refusals)


def test_generated_bad_events_are_rejected_with_reasons(generated: tuple[list[str], str]) -> None:
    lines, out = generated
    doc = json.loads(out)
    bad = {json.loads(line)["event_id"] for line in lines if '"bad-' in line}
    # Refunds of unknown purchases wait 30 days of log time for them; the file has no ticks: all still held.
    held = {h["event_id"] for c in doc["customers"] for h in c["held_refunds"]}
    assert held and {e.split("-")[1] for e in held} == {"unknown_refund"}
    assert {r["event_id"] for r in doc["rejected"]} | held == bad
    assert not {r["event_id"] for r in doc["rejected"]} & held
    assert all(r["reason"] for r in doc["rejected"])
    kinds = Counter(event_id.split("-")[1] for event_id in {r["event_id"] for r in doc["rejected"]} | held)
    assert set(kinds) == {"missing_identifiers", "unknown_type", "negative_amount", "float_money", "future_time",
                          "malformed_email", "unknown_refund"}  # fmt: skip


def test_generated_two_folds_are_byte_identical(generated: tuple[list[str], str]) -> None:
    lines, out = generated
    assert fold_to_json(lines, secret=SECRET).encode() == out.encode()


# -- internals kept equal while made faster ---------------------------------------------------


def test_merge_of_a_merge_repoints_merged_into() -> None:
    """A customer merged away, whose survivor is then merged, ends up pointing at the last survivor."""
    folder = Folder(secret=SECRET)
    for line in [
        event("e1", {"cookie": "k1"}, minutes=1),
        event("e2", {"cookie": "k2"}, minutes=2),
        event("e3", {"cookie": "k3"}, minutes=3),
        event("e4", {"cookie": "k2", "device": "d1"}, minutes=4),
        event("e5", {"cookie": "k3", "device": "d1"}, minutes=5),  # k3 joins k2
        event("e6", {"cookie": "k1", "device": "d1"}, minutes=6),  # k1 joins them, and is the oldest
    ]:
        folder.add_json(line)
    c1, c2, c3 = (customer_id_for(normalise("cookie", k, secret=SECRET).key) for k in ("k1", "k2", "k3"))
    touched, merged = folder.drain_changes()
    assert merged == {c3: c1, c2: c1}
    assert list(merged) == [c3, c2]  # in the order they were merged away
    assert touched == {c1}
    # Drained: the next merge starts from nothing.
    folder.add_json(event("e7", {"cookie": "k4"}, minutes=7))
    folder.add_json(event("e8", {"cookie": "k4", "device": "d1"}, minutes=8))
    c4 = customer_id_for(normalise("cookie", "k4", secret=SECRET).key)
    assert folder.drain_changes()[1] == {c4: c1}


@pytest.mark.parametrize(
    ("written", "expected"),
    [
        ("2025-03-01T10:00:00.123Z", "2025-03-01T10:00:00.123Z"),
        ("2025-03-01T10:00:00.123999Z", "2025-03-01T10:00:00.123Z"),  # truncated to the millisecond
        ("2025-03-01T10:00:00+00:00", "2025-03-01T10:00:00.000Z"),
        ("2025-03-01T11:30:00.5+01:30", "2025-03-01T10:00:00.500Z"),
        ("2025-03-01T04:59:59.9999-05:00", "2025-03-01T09:59:59.999Z"),
    ],
)
def test_event_times_in_any_offset_fold_to_utc_milliseconds(written: str, expected: str) -> None:
    doc = json.loads(event("e1", {"cookie": "k"}))
    doc["occurred_at"] = written
    (card,) = run([json.dumps(doc)])["customers"]
    assert card["timeline"][0]["occurred_at"] == expected
    assert card["last_contact"] == {"web": expected}


def test_blank_lines_are_skipped_but_counted() -> None:
    lines = ["\n", event("e1", {"cookie": "k"}) + "\n", " \t\n", "\u00a0\n", "{not json\n"]
    doc = run(lines)
    assert len(doc["customers"]) == 1
    assert doc["rejected"] == [{"event_id": "line 5", "reason": doc["rejected"][0]["reason"]}]
    assert doc["rejected"][0]["reason"].startswith("not JSON")


def test_fold_json_bytes_equal_the_json_module(generated: tuple[list[str], str]) -> None:
    """orjson writes the document; the bytes must be what json.dumps would write."""
    _, out = generated
    assert out == json.dumps(json.loads(out), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


# -- loyalty through the fold ------------------------------------------------------------

FUEL = {"sku": "F", "category": "fuel", "quantity": 1, "amount_minor": 4000}
SHOP = {"sku": "S", "category": "shop", "quantity": 1, "amount_minor": 2000}


def loyalty_of(doc: dict[str, Any]) -> dict[str, Any]:
    (customer,) = doc["customers"]
    return customer["loyalty"]


def test_fold_scores_purchases_and_reverses_refunds() -> None:
    ann = {"customer_no": "C1"}
    doc = run([
        event("p1", ann, "purchase", lines=[FUEL, SHOP], total_minor=6000),  # 60 points, x2 (highest, no stacking)
        event("r1", ann, "refund", minutes=5, amount_minor=3000),  # half refunded: 60 of 120 back
    ])  # fmt: skip
    loyalty = loyalty_of(doc)
    assert [(e["kind"], e["points"]) for e in loyalty["entries"]] == [("reversal", -60), ("earn", 120)]
    assert loyalty["balance"] == 60 and loyalty["entry_count"] == 2
    assert "×2" in loyalty["entries"][1]["reason"]


def test_ledgers_follow_identity_merges_and_a_merged_customers_purchase_can_be_refunded() -> None:
    doc = run([
        event("p1", {"customer_no": "C1"}, "purchase", transaction_id="T1", total_minor=1000),
        event("p2", {"email": "ann@example.com"}, "purchase", minutes=1, transaction_id="T2", total_minor=2000),
        event("w1", {"customer_no": "C1", "email": "ann@example.com"}, minutes=2),  # one person: merge
        event("r2", {"customer_no": "C1"}, "refund", minutes=3, transaction_id="T2", amount_minor=2000),
    ])  # fmt: skip
    loyalty = loyalty_of(doc)
    assert sorted((e["source_event_id"], e["points"]) for e in loyalty["entries"]) == [
        ("p1", 10), ("p2", 20), ("r2", -20)]
    assert loyalty["balance"] == 10


def test_refund_in_another_currency_is_rejected_and_reverses_nothing() -> None:
    ann = {"customer_no": "C1"}
    doc = run([event("p1", ann, "purchase"), event("r1", ann, "refund", minutes=1, currency="EUR")])
    assert doc["rejected"] == [{"event_id": "r1", "reason": "payload.currency: refund in EUR of T1, a purchase in GBP"}]
    assert loyalty_of(doc)["balance"] == 10


def test_campaign_invitation_triples_a_purchase_in_its_window() -> None:
    ann = {"customer_no": "C1"}
    invited = json.dumps({"event_id": "c1", "type": "campaign", "channel": "email", "identifiers": ann,
                          "occurred_at": "2025-02-28T00:00:00Z",
                          "payload": {"campaign_id": "CMP-1", "action": "invited"}})  # fmt: skip
    doc = run([invited, event("p1", ann, "purchase")])
    (earn,) = loyalty_of(doc)["entries"]
    assert earn["points"] == 30 and earn["rule_id"] == "campaign"


def test_rules_come_from_the_config_and_a_purchase_before_them_is_listed_unscored(tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text('versions:\n  - version: "v9"\n    effective_from: "2025-03-01T00:10:00Z"\n'
                     '    minor_per_point: 10\n    tiers: [{name: base, min_points: 0}]\n    rules: []\n')
    ann = {"customer_no": "C1"}
    doc = run([event("p1", ann, "purchase"), event("p2", ann, "purchase", minutes=20, transaction_id="T2")],
              config=FoldConfig(loyalty_rules=rules))
    (earn,) = loyalty_of(doc)["entries"]
    assert (earn["source_event_id"], earn["points"], earn["rule_version"]) == ("p2", 100, "v9")
    assert [u["event_id"] for u in doc["loyalty_unscored"]] == ["p1"]
    assert "no loyalty rules in force" in doc["loyalty_unscored"][0]["reason"]


# -- ticks: alerts and expiries ------------------------------------------------------------


def tick(at: datetime) -> str:
    return json.dumps({"tick": at.isoformat().replace("+00:00", "Z")})


def visits(ids: dict[str, str], days: list[int]) -> list[str]:
    return [event(f"w{d}", ids, minutes=d * 1440, session_id=f"S{d}") for d in days]


def test_dormancy_is_raised_by_a_tick_and_resolved_when_the_customer_returns() -> None:
    ann = {"customer_no": "C1"}
    lines = [*visits(ann, [0, 7, 14, 21]), tick(T0 + timedelta(days=60))]  # usual gap 7 days, floor 90 (lead)
    folder = Folder(secret=SECRET, keep_decisions=False)
    for line in lines:
        folder.add_json(line)
    assert folder.drain_alerts() == []  # 39 days of silence: below the lead floor of 90 days
    folder.add_json(tick(T0 + timedelta(days=112)))  # 91 days after the last visit
    ((raised, context),) = folder.drain_alerts()
    assert (raised.kind, raised.state) == ("dormancy", "raised")
    assert context == {"segment": "lead", "value_minor": 0, "contactable": {}}
    for line in [event("w130", ann, minutes=130 * 1440), tick(T0 + timedelta(days=131))]:
        folder.add_json(line)
    ((resolved, _),) = folder.drain_alerts()
    assert (resolved.kind, resolved.state, resolved.alert_id.split("/")[2]) == ("dormancy", "resolved", "1")


def test_fold_as_of_applies_a_final_tick_and_the_card_lists_alerts() -> None:
    lines = visits({"customer_no": "C1"}, [0, 7, 14])
    (quiet,) = run(lines, as_of=T0 + timedelta(days=50))["customers"]
    assert quiet["alerts"] == []
    (lapsed,) = run(lines, as_of=T0 + timedelta(days=120))["customers"]
    (alert,) = lapsed["alerts"]
    # Silent *more* than 90 days.
    assert (alert["kind"], alert["state"], alert["since"]) == ("dormancy", "raised", "2025-06-13T00:00:00.001Z")
    assert any(r["code"] == "dormancy_alert" for r in lapsed["likely_reasons"])


def test_a_merge_resolves_the_merged_customers_open_episode() -> None:
    folder = Folder(secret=SECRET, keep_decisions=False)
    for line in [*visits({"email": "bob@example.com"}, [0]), *visits({"customer_no": "C1"}, [1]),
                 tick(T0 + timedelta(days=100))]:
        folder.add_json(line)
    raised = {a.customer_id for a, _ in folder.drain_alerts()}
    assert len(raised) == 2  # both silent past the floor
    folder.add_json(event("w101", {"customer_no": "C1", "email": "bob@example.com"}, minutes=101 * 1440))
    (retired,) = [a for a, _ in folder.drain_alerts()]
    assert retired.state == "resolved" and retired.reasons[0].code == "merged"
    assert retired.customer_id in raised and retired.customer_id not in folder.views


def test_points_expire_at_the_tick_after_their_time_and_become_ledger_entries() -> None:
    ann = {"customer_no": "C1"}
    folder = Folder(secret=SECRET, keep_decisions=False)
    folder.add_json(event("p1", ann, "purchase"))
    folder.add_json(tick(T0 + timedelta(days=700)))
    assert [e.kind for _, e in folder.drain_entries()] == ["earn"]
    folder.add_json(tick(T0 + timedelta(days=740)))  # 24 months after 2025-03-01
    ((customer_id, expiry),) = folder.drain_entries()
    assert (expiry.kind, expiry.points) == ("expiry", -10)
    assert customer_id in folder.touched
    folder.add_json(tick(T0 + timedelta(days=800)))
    assert folder.drain_entries() == []


def test_ticks_never_go_backwards_and_a_bad_tick_is_rejected() -> None:
    folder = Folder(secret=SECRET)
    folder.add_json(tick(T0 + timedelta(days=5)))
    folder.add_json(tick(T0))
    assert folder.clock_ms == int((T0 + timedelta(days=5)).timestamp() * 1000)
    folder.add_json('{"tick": "2025-03-01T00:00:00"}')
    assert folder.rejected[0]["reason"].startswith("not a tick")


# -- erasure on request ---------------------------------------------------------------------


def erased_folder() -> tuple[Folder, str, str]:
    """Ann (two ids merged by one event), dormant with an open alert, then erased."""
    folder = Folder(secret=SECRET, keep_decisions=False)
    ann_web, ann_no = {"email": "ann@example.com"}, {"customer_no": "C1"}
    lines = [event("w0", ann_web), event("p1", ann_no, "purchase", minutes=1440),
             event("w2", {**ann_web, **ann_no}, minutes=2 * 1440), *visits(ann_no, [7, 14, 21]),
             tick(T0 + timedelta(days=112))]
    for line in lines:
        folder.add_json(line)
    ((raised, _),) = folder.drain_alerts()
    assert raised.state == "raised"
    folder.drain_changes()
    old = customer_id_for(normalise("email", "ann@example.com", secret=SECRET).key)  # minted first: survives
    alias = customer_id_for(normalise("customer_no", "C1", secret=SECRET).key)
    assert folder.state.canonical(alias) == old != alias
    return folder, old, alias


def test_erasure_forgets_the_person_resolves_their_alert_and_keeps_the_ledger() -> None:
    folder, old, alias = erased_folder()
    ledger_before = list(folder.views[old].loyalty.entries)
    assert folder.erase(alias) == [old, alias]  # an alias names the person too
    assert not any(owner in (old, alias) for owner in folder.state.owner.values())
    ((resolved, _),) = folder.drain_alerts()
    assert (resolved.customer_id, resolved.state, resolved.reasons[0].code) == (old, "resolved", "erased")
    card = folder.result()["customers"]
    erased = next(c for c in card if c["customer_id"] == old)
    assert erased["identifiers"] == {} and erased["counts"]["total"] == 0 and erased["aliases"] == []
    assert ledger_before, "the person had points: the ledger entries issued stay on the log and in the read model"
    assert folder.erase(old) == [] and folder.erase("cus_unknown") == []  # twice, or unknown: nothing


def test_a_person_who_comes_back_after_erasure_is_a_new_customer() -> None:
    folder, old, alias = erased_folder()
    folder.erase(old)
    folder.add_json(event("back", {"email": "ann@example.com", "customer_no": "C1"}, minutes=120 * 1440))
    new = folder.last_customer_id
    assert new is not None and new not in (old, alias)
    assert folder.views[new].identifiers.keys() == {"customer_no", "email"}
    assert folder.views[old].identifiers == {}


def test_erasure_survives_a_snapshot_restore() -> None:
    from touchpoint.core.snapshot import checkpoint_record, customer_records, restore

    folder, old, _ = erased_folder()
    folder.erase(old)
    records = {k: v for k, v in customer_records(folder, list(folder.views)).items() if v is not None}
    restored = Folder(secret=SECRET, keep_decisions=False)
    restore(restored, {**records, "__checkpoint__": checkpoint_record(folder, 99)})
    restored.add_json(event("back", {"customer_no": "C1"}, minutes=120 * 1440))
    assert restored.last_customer_id not in (None, old)


def test_timeline_shows_the_points_a_purchase_earned_and_why_and_those_its_refund_reversed() -> None:
    ids = {"customer_no": "C1"}
    (card,) = run([event("p1", ids, "purchase", 0, total_minor=6000, lines=[
        {"sku": "F", "category": "fuel", "quantity": 1, "amount_minor": 4000},
        {"sku": "S", "category": "shop", "quantity": 1, "amount_minor": 2000}]),
        event("r1", ids, "refund", 60, amount_minor=3000)])["customers"]
    purchase, refund = card["timeline"]
    ledger = card["loyalty"]["entries"]
    earned = [e for e in ledger if e["kind"] == "earn"]
    reversed_ = [e for e in ledger if e["kind"] == "reversal"]
    assert earned and reversed_
    assert purchase["detail"]["points"] == sum(e["points"] for e in earned) > 0
    assert purchase["detail"]["points_why"] == [e["reason"] for e in earned]
    assert purchase["detail"]["categories"] == ["fuel", "shop"]
    assert refund["detail"]["points"] == sum(e["points"] for e in reversed_) < 0
    assert refund["detail"]["amount_minor"] == 3000
