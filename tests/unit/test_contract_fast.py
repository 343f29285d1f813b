"""The fast check never accepts what the contract refuses, and accepts the usual events with equal values."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from tests.unit.contract_samples import NOW, SAMPLES, sample
from touchpoint.contract import fast
from touchpoint.contract.models import ContractViolation, Event, validate_event
from touchpoint.core.instants import epoch_ms
from touchpoint.generate import generate, write_jsonl

CONTEXT = {"now": NOW, "pseudonymised": False}


def both(doc: Any, context: dict[str, Any] = CONTEXT) -> tuple[Event | None, Event | None]:
    """(contract's event or None, fast check's event or None) for one JSON document."""
    text = json.dumps(doc)
    try:
        contract: Event | None = Event.model_validate_json(text, context=context)
    except ValidationError:
        contract = None
    try:
        quick: Event | None = fast.validate_json(text, context)
    except ValidationError:
        quick = None
    return contract, quick


def assert_never_looser(doc: Any, context: dict[str, Any] = CONTEXT) -> Event | None:
    """The rule of :mod:`touchpoint.contract.fast`: fast accepts => the contract accepts, equal values."""
    contract, quick = both(doc, context)
    if quick is not None:
        assert contract is not None, f"fast check accepted what the contract refuses: {doc!r}"
        assert isinstance(quick, type(contract))
        assert epoch_ms(quick.occurred_at) == epoch_ms(contract.occurred_at)
        mine, theirs = quick.model_dump(), contract.model_dump()
        mine.pop("occurred_at")
        theirs.pop("occurred_at")
        assert mine == theirs
    return quick


@pytest.mark.parametrize("event_type", sorted(SAMPLES))
def test_every_sample_is_accepted_alike(event_type: str) -> None:
    assert assert_never_looser(sample(event_type)) is not None


BAD_MONEY = [10.0, 10.5, True, False, "10", -1, 2**63, 2**70, None, [1], {"a": 1}]
BAD_CURRENCY = ["eur", "EU", "EURO", "", " EUR", "EUR\n", "ÉUR", 978, None]
PHONES = ["+44 20 7946 0958", "(020) 7946-0958", "+4420794", "123456", "1234567", "+1234567890123456",
          "12345678901234567", "++441234567", "+44.20.7946.0958", "٠١٢٣٤٥٦٧٨", "+44 20 7946 0958\n",
          " +44207946095", "44a2079460958", "", "+", "1-2-3-4-5-6-7"]
EMAILS = ["jane.doe@example.com", "Jane@Example.COM", "a@b.c", "a@b", "@b.c", "a@@b.c", "a b@c.d",
          "a@b .c", "jané@exämple.com", "a@b.c\n", "a\x1c@b.c", "a@b\u00a0.c", "a@.c", "a@b.", "", "a@b.c.d"]
TIMES = ["2025-03-01T09:15:02.250Z", "2025-03-01T09:15:02.250999Z", "2025-03-01T09:15:02.250999+05:30",
         "2025-03-01T09:15:02", "2025-03-01", "0001-01-01T00:00:00+01:00", "2025-03-02T12:00:00.001Z",
         "2025-03-02T12:00:00.000999Z", "2025-03-02T12:00:00Z", 1740820502, "not a time", None]


@pytest.mark.parametrize("value", BAD_MONEY)
def test_money_never_looser(value: Any) -> None:
    for path in (("total_minor",), ("lines", 0, "amount_minor")):
        doc = sample("purchase")
        target = doc["payload"]
        for part in path[:-1]:
            target = target[part]
        target[path[-1]] = value
        assert assert_never_looser(doc) is None
    doc = sample("refund")
    doc["payload"]["amount_minor"] = value
    assert assert_never_looser(doc) is None


@pytest.mark.parametrize("value", BAD_CURRENCY)
def test_currency_never_looser(value: Any) -> None:
    for event_type in ("purchase", "refund"):
        doc = sample(event_type)
        doc["payload"]["currency"] = value
        assert assert_never_looser(doc) is None


@pytest.mark.parametrize("value", PHONES)
def test_phone_never_looser(value: str) -> None:
    doc = sample("call")
    doc["identifiers"]["phone"] = value
    assert_never_looser(doc)


@pytest.mark.parametrize("value", EMAILS)
def test_email_never_looser(value: str) -> None:
    doc = sample("email")
    doc["identifiers"]["email"] = value
    assert_never_looser(doc)


@pytest.mark.parametrize("value", TIMES)
@pytest.mark.parametrize("now", [NOW, None])
def test_event_time_never_looser_and_same_millisecond(value: Any, now: datetime | None) -> None:
    doc = sample("web")
    doc["occurred_at"] = value
    assert_never_looser(doc, {"now": now, "pseudonymised": False})


def test_every_character_in_an_email_or_phone_never_looser() -> None:
    """Whitespace differs between Python's ``\\s`` and the Rust regex's: try every character of the BMP's start."""
    for code in range(0x3100):
        char = chr(code)
        doc = sample("email")
        doc["identifiers"]["email"] = f"ja{char}ne@exa{char}mple.com"
        assert_never_looser(doc)
        doc = sample("call")
        doc["identifiers"]["phone"] = f"+44 20{char}7946 0958"
        assert_never_looser(doc)


def test_other_checks_are_the_contracts_own() -> None:
    doc = sample("web")
    doc["identifiers"] = {}
    assert assert_never_looser(doc) is None  # at least one identifier
    doc = sample("web")
    doc["occurred_at"] = "2025-03-05T00:00:00Z"  # more than 24h after NOW
    assert assert_never_looser(doc) is None
    doc = sample("refund")
    doc["payload"]["amount_minor"] = 0
    assert assert_never_looser(doc) is None
    doc = sample("campaign")
    doc["payload"]["ends_at"] = doc["payload"]["starts_at"]
    assert assert_never_looser(doc) is None
    doc = sample("web")
    doc["identifiers"]["passport"] = "X1"
    assert assert_never_looser(doc) is None
    doc = sample("web")
    doc["type"] = "fax"
    assert assert_never_looser(doc) is None


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)


@settings(max_examples=300, deadline=None)
@given(event_type=st.sampled_from(sorted(SAMPLES)), data=st.data())
def test_any_one_field_replaced_never_looser(event_type: str, data: st.DataObject) -> None:
    doc = sample(event_type)
    where = data.draw(st.sampled_from(["top", "payload", "identifiers"]))
    target = doc if where == "top" else doc[where]
    key = data.draw(st.sampled_from(sorted(target)) if target else st.just("x"))
    target[key] = data.draw(json_values)
    assert_never_looser(doc)


def test_generated_events_take_the_fast_path() -> None:
    """The population the fold benchmark folds: every event the contract takes, the fast check takes alike."""
    buffer = io.StringIO()
    write_jsonl(generate(60, 60, 5), buffer)
    lines = buffer.getvalue().splitlines()
    accepted = 0
    for line in lines:
        doc = json.loads(line)
        if list(doc) == ["tick"]:
            continue
        try:
            validate_event(doc, None)
        except ContractViolation:
            assert_never_looser(doc, {"now": None, "pseudonymised": False})
            continue
        assert assert_never_looser(doc, {"now": None, "pseudonymised": False}) is not None, line
        accepted += 1
    assert accepted > 500


def test_the_instant_is_the_contracts_to_the_millisecond() -> None:
    doc = sample("web")
    doc["occurred_at"] = "1969-12-31T23:59:59.999999-00:30"
    quick = assert_never_looser(doc, {"now": None, "pseudonymised": False})
    assert quick is not None
    assert epoch_ms(quick.occurred_at) == epoch_ms(datetime(1970, 1, 1, 0, 29, 59, 999000, tzinfo=UTC))


def test_any_zone_ms_is_epoch_ms() -> None:
    from datetime import timedelta, timezone
    from random import Random

    from pydantic_core import TzInfo

    from touchpoint.core.instants import any_zone_ms

    rng = Random(3)
    zones = [UTC, TzInfo(0), timezone(timedelta(0)), TzInfo(3600), timezone(timedelta(hours=-5, minutes=-30))]
    for _ in range(20_000):
        instant = datetime(1, 1, 2, tzinfo=UTC) + timedelta(microseconds=rng.randint(0, 315_000_000_000_000_000))
        instant = instant.replace(tzinfo=rng.choice(zones))
        assert any_zone_ms(instant) == epoch_ms(instant)
    with pytest.raises(TypeError):
        any_zone_ms(datetime(2020, 1, 1))
