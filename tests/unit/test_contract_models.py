"""The event contract's models: every type validates, every bad input is named by its field."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, get_args

import pytest
from pydantic import ValidationError

from connectors.platform.topics import CHANNELS
from tests.unit.contract_samples import NOW, SAMPLES, sample
from touchpoint.contract.models import (
    PAYLOAD_MODELS,
    Channel,
    ContractViolation,
    Event,
    EventType,
    PurchaseEvent,
    validate_event,
)
from touchpoint.errors import TouchpointError


@pytest.mark.parametrize("event_type", SAMPLES)
def test_every_sample_validates_to_the_model_of_its_type(event_type: str) -> None:
    event = validate_event(sample(event_type), NOW)
    assert isinstance(event, Event)
    assert type(event).__name__.removesuffix("Event") == type(event.payload).__name__.removesuffix("Payload")
    assert isinstance(event.payload, PAYLOAD_MODELS[event_type])
    assert event.type == event_type


def test_model_validate_on_the_base_dispatches_on_type() -> None:
    event = Event.model_validate(sample("purchase"))
    assert isinstance(event, PurchaseEvent)
    assert event.payload.lines[1].amount_minor == 590
    assert Event.model_validate_json(json.dumps(sample("purchase"))) == event


def test_the_enumerations_agree_with_the_topics() -> None:
    assert set(get_args(EventType)) == set(PAYLOAD_MODELS)
    assert set(get_args(Channel)) == set(CHANNELS)


def test_time_is_kept_in_utc_to_the_millisecond() -> None:
    doc = sample("branch_visit")  # 08:45 at +01:00
    doc["occurred_at"] = "2025-03-01T08:45:00.123456+01:00"
    assert validate_event(doc, NOW).occurred_at == datetime(2025, 3, 1, 7, 45, 0, 123000, tzinfo=UTC)


@pytest.mark.parametrize(
    ("ahead", "ok"), [(timedelta(hours=24), True), (timedelta(hours=24, milliseconds=1), False)]
)
def test_at_most_24h_ahead_of_now(ahead: timedelta, ok: bool) -> None:
    doc = sample("web")
    doc["occurred_at"] = (NOW + ahead).isoformat()
    if ok:
        validate_event(doc, NOW)
    else:
        with pytest.raises(ContractViolation):
            validate_event(doc, NOW)
    validate_event(doc, None)  # no `now`, no judgement (replays)


def test_pseudonymised_identifiers_are_not_checked_for_shape() -> None:
    doc = sample("call")
    doc["identifiers"] = {"phone": "ph:9f2c", "email": "em:77ab"}
    validate_event(doc, NOW, pseudonymised=True)
    with pytest.raises(ContractViolation):
        validate_event(doc, NOW)


def test_events_are_frozen() -> None:
    event = validate_event(sample("sms"), NOW)
    with pytest.raises(ValidationError):
        event.event_id = "other"  # type: ignore[misc]


def test_a_naive_now_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="aware"):
        validate_event(sample("sms"), datetime(2025, 3, 1))


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """A mutation setting ``path`` (dotted, list indexes as digits) to ``value``."""

    def mutate(doc: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        for key in parents:
            doc = doc[int(key)] if key.isdigit() else doc[key]  # type: ignore[index]
        doc[last] = value

    return mutate


def _drop(path: str) -> Callable[[dict[str, Any]], None]:
    def mutate(doc: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        for key in parents:
            doc = doc[key]
        del doc[last]

    return mutate


BAD = [
    # (case, sample type, mutation, field path expected among the problems)
    ("no identifier", "purchase", _set("identifiers", {}), "identifiers"),
    ("unknown identifier kind", "purchase", _set("identifiers.passport", "X1"), "identifiers.passport"),
    ("unknown type", "purchase", _set("type", "visit"), "type"),
    ("missing type", "purchase", _drop("type"), "type"),
    ("unknown channel", "web", _set("channel", "fax"), "channel"),
    ("negative line money", "purchase", _set("payload.lines.0.amount_minor", -1), "payload.lines.0.amount_minor"),
    ("negative total", "purchase", _set("payload.total_minor", -6830), "payload.total_minor"),
    ("float money", "purchase", _set("payload.total_minor", 68.30), "payload.total_minor"),
    ("whole float money", "refund", _set("payload.amount_minor", 590.0), "payload.amount_minor"),
    ("string money", "refund", _set("payload.amount_minor", "590"), "payload.amount_minor"),
    ("bool money", "refund", _set("payload.amount_minor", True), "payload.amount_minor"),
    ("zero refund", "refund", _set("payload.amount_minor", 0), "payload.amount_minor"),
    ("no lines", "purchase", _set("payload.lines", []), "payload.lines"),
    ("zero quantity", "purchase", _set("payload.lines.1.quantity", 0), "payload.lines.1.quantity"),
    ("naive time", "call", _set("occurred_at", "2025-03-01T11:02:40"), "occurred_at"),
    ("not a time", "call", _set("occurred_at", "yesterday"), "occurred_at"),
    ("2 days in the future", "call", _set("occurred_at", "2025-03-03T12:00:00Z"), "occurred_at"),
    ("bad email", "email", _set("identifiers.email", "jane.doe@"), "identifiers.email"),
    ("bad phone", "call", _set("identifiers.phone", "call me maybe"), "identifiers.phone"),
    ("short phone", "sms", _set("identifiers.phone", "+44 12"), "identifiers.phone"),
    ("lower-case currency", "refund", _set("payload.currency", "eur"), "payload.currency"),
    ("long currency", "purchase", _set("payload.currency", "EURO"), "payload.currency"),
    ("missing payload field", "refund", _drop("payload.transaction_id"), "payload.transaction_id"),
    ("missing payload", "web", _drop("payload"), "payload"),
    ("payload of another type", "sms", _set("payload", SAMPLES["web"]["payload"]), "payload.message_id"),
    ("extra field", "case", _set("source", "crm"), "source"),
    ("extra payload field", "case", _set("payload.priority", 1), "payload.priority"),
    ("empty event id", "case", _set("event_id", ""), "event_id"),
    ("unknown enum symbol", "email", _set("payload.action", "read"), "payload.action"),
    ("string bool", "consent", _set("payload.granted", "no"), "payload.granted"),
    ("consent channel", "consent", _set("payload.channel", "post"), "payload.channel"),
    ("campaign ends first", "campaign", _set("payload.ends_at", "2025-02-01T00:00:00Z"), "payload.ends_at"),
    ("zero multiplier", "campaign", _set("payload.multiplier", 0), "payload.multiplier"),
    ("negative duration", "call", _set("payload.duration_s", -5), "payload.duration_s"),
    ("empty profile", "profile", _set("payload", {}), "payload"),
    ("profile of nulls", "profile", _set("payload", {"name": None, "language": None, "preferred_channel": None}),
     "payload"),
    ("not a language tag", "profile", _set("payload.language", "English"), "payload.language"),
    ("language with a space", "profile", _set("payload.language", "en GB"), "payload.language"),
    ("empty name", "profile", _set("payload.name", ""), "payload.name"),
    ("name too long", "profile", _set("payload.name", "A" * 201), "payload.name"),
    ("preferred channel", "profile", _set("payload.preferred_channel", "post"), "payload.preferred_channel"),
]


@pytest.mark.parametrize(("case", "event_type", "mutate", "path"), BAD, ids=[row[0] for row in BAD])
def test_bad_input_names_the_field(case: str, event_type: str, mutate: Callable[..., None], path: str) -> None:
    doc = sample(event_type)
    mutate(doc)
    with pytest.raises(ContractViolation) as caught:
        validate_event(doc, NOW)
    assert path in [field for field, _ in caught.value.problems]
    assert isinstance(caught.value, TouchpointError)
    assert path in str(caught.value)  # the dead-letter reason names it too


def test_every_problem_is_reported_at_once() -> None:
    doc = sample("purchase")
    doc["channel"] = "fax"
    doc["payload"]["currency"] = "eur"
    doc["payload"]["total_minor"] = -1
    with pytest.raises(ContractViolation) as caught:
        validate_event(doc, NOW)
    assert {p for p, _ in caught.value.problems} == {"channel", "payload.currency", "payload.total_minor"}


@pytest.mark.parametrize("doc", [None, [], "event", 42])
def test_a_non_object_is_a_violation(doc: Any) -> None:
    with pytest.raises(ContractViolation, match="object"):
        validate_event(doc, NOW)


def test_messages_speak_the_contract() -> None:
    doc = sample("purchase")
    doc["payload"]["total_minor"] = 68.30
    with pytest.raises(ContractViolation) as caught:
        validate_event(doc, NOW)
    assert caught.value.problems == [
        ("payload.total_minor", "money must be an integer number of minor units, not float")
    ]


@pytest.mark.parametrize(
    ("type_", "path", "value", "field"),
    [
        ("purchase", ("payload", "total_minor"), 2**63, "payload.total_minor"),
        ("purchase", ("payload", "lines", 0, "quantity"), 2**31, "payload.lines.0.quantity"),
        ("call", ("payload", "duration_s"), 2**31, "payload.duration_s"),
    ],
)
def test_integers_beyond_their_avro_type_are_refused(type_: str, path: tuple[object, ...], value: int,
                                                      field: str) -> None:
    doc = sample(type_)
    target: Any = doc
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = value
    with pytest.raises(ContractViolation) as raised:
        validate_event(doc, NOW)
    assert field in [p for p, _ in raised.value.problems]


def test_instant_before_year_one_in_utc_is_refused_not_a_crash() -> None:
    doc = sample("web")
    doc["occurred_at"] = "0001-01-01T00:00:00+01:00"
    with pytest.raises(ContractViolation) as raised:
        validate_event(doc, NOW)
    assert [p for p, _ in raised.value.problems] == ["occurred_at"]


def test_messages_may_fail_and_cases_carry_a_subject() -> None:
    """What an agent's timeline tells: a message that failed (not only bounced), the subject of a case."""
    for kind in ("email", "sms"):
        doc = sample(kind)
        doc["payload"]["action"] = "failed"
        assert validate_event(doc, NOW).payload.action == "failed"  # type: ignore[union-attr]
    assert validate_event(sample("case"), NOW).payload.subject == "Close my loyalty account"  # type: ignore[union-attr]
    doc = sample("case")
    del doc["payload"]["subject"]
    assert validate_event(doc, NOW).payload.subject is None  # type: ignore[union-attr]
