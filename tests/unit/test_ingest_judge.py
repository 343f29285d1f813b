"""The ingest agent's verdict on every kind of bad input that can reach a channel topic.

The registry is replaced by an in-memory one (pure logic under test: the
real registry is exercised by the integration and e2e tests).
"""

from __future__ import annotations

import json
import random
from datetime import timedelta
from typing import Any

import pytest
from fastavro import parse_schema

from connectors.platform.serde import EventSerde
from streams.ingest import Accepted, Rejected, judge
from tests.unit.contract_samples import NOW, sample
from touchpoint.contract import encode, event_schema, event_schema_text, to_avro_record, validate_event
from touchpoint.errors import RegistryError

SCHEMA_ID = 42


class InMemoryRegistry:
    """Knows one schema id; optionally down."""

    def __init__(self, down: bool = False) -> None:
        self.down = down
        self.parsed = parse_schema(json.loads(event_schema_text()))

    def register(self, subject: str, schema_text: str) -> int:
        return SCHEMA_ID

    def schema(self, schema_id: int) -> Any:
        if self.down:
            raise RegistryError("registry unreachable")
        if schema_id != SCHEMA_ID:
            raise LookupError(schema_id)
        return self.parsed


def serde(down: bool = False) -> EventSerde:
    return EventSerde(InMemoryRegistry(down))  # type: ignore[arg-type]


def avro_of(doc: dict[str, Any], mutate: Any = None) -> bytes:
    record = to_avro_record(validate_event(doc, NOW))
    if mutate is not None:
        mutate(record)
    return encode(SCHEMA_ID, record, event_schema())


def test_every_good_type_is_accepted() -> None:
    for type_ in ("purchase", "refund", "branch_visit", "call", "email", "web", "sms", "case", "consent", "campaign"):
        verdict = judge(serde(), avro_of(sample(type_)), NOW)
        assert isinstance(verdict, Accepted), (type_, verdict)
        assert verdict.event.type == type_


def _set(path: tuple[Any, ...], value: Any) -> Any:
    def mutate(record: dict[str, Any]) -> None:
        target: Any = record
        for step in path[:-1]:
            target = target[step]
        target[path[-1]] = value

    return mutate


GOOD_PURCHASE = avro_of(sample("purchase"))


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (None, "undecodable: empty message"),
        (b"", "undecodable: message of 0 bytes"),
        (b"\x00\x00\x00", "undecodable: message of 3 bytes"),
        (b'{"event_id": "json-not-avro"}', "undecodable: magic byte is 123"),
        (b"\x00\x00\x00\x00\x07rest", "undecodable: unknown schema id 7"),
        (GOOD_PURCHASE[:-4], "undecodable: cannot decode body"),
        (GOOD_PURCHASE + b"\x00\x01", "undecodable: 2 bytes left over"),
        (avro_of(sample("purchase"), _set(("identifiers",), {})), "contract: identifiers"),
        (avro_of(sample("purchase"), _set(("payload", 1, "total_minor"), -1)), "contract: payload.total_minor"),
        (avro_of(sample("refund"), _set(("payload", 1, "amount_minor"), 0)), "contract: payload.amount_minor"),
        (avro_of(sample("purchase"), _set(("payload", 1, "currency"), "pounds")), "contract: payload.currency"),
        (avro_of(sample("purchase"), _set(("payload", 1, "lines"), [])), "contract: payload.lines"),
        (avro_of(sample("purchase"), _set(("identifiers",), {"passport": "X"})), "contract: identifiers"),
        (avro_of(sample("purchase"), _set(("type",), "web")), "contract: payload: record"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_bad_input_is_rejected_with_a_reason(raw: bytes | None, reason: str) -> None:
    verdict = judge(serde(), raw, NOW)
    assert isinstance(verdict, Rejected)
    assert verdict.reason.startswith(reason), verdict.reason


def test_time_far_ahead_of_the_message_is_rejected() -> None:
    raw = avro_of(sample("web"))
    assert isinstance(judge(serde(), raw, NOW), Accepted)
    early = judge(serde(), raw, NOW - timedelta(days=2))
    assert isinstance(early, Rejected) and early.reason.startswith("contract: occurred_at")


def test_random_bytes_never_raise() -> None:
    rng = random.Random(5)
    for _ in range(2000):
        raw = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 80)))
        assert isinstance(judge(serde(), raw, NOW), Rejected)
    for cut in range(len(GOOD_PURCHASE)):
        assert isinstance(judge(serde(), GOOD_PURCHASE[:cut], NOW), Rejected)


def test_registry_outage_is_not_the_message_fault() -> None:
    # Written with a schema this reader does not hold itself: the registry must be asked.
    other_writer = b"\x00\x00\x00\x00\x2b" + GOOD_PURCHASE[5:]
    with pytest.raises(RegistryError):
        judge(serde(down=True), other_writer, NOW)


def test_own_schema_needs_no_registry_round_trip() -> None:
    assert isinstance(judge(serde(down=True), GOOD_PURCHASE, NOW), Accepted)
