"""Which writer schemas the event serde reads as its own (plainly) and which it resolves into its own.

The registry is replaced by an in-memory one holding texts by id (pure logic
under test: the real registry is exercised by the integration and e2e tests).
"""

from __future__ import annotations

import json
from typing import Any

from fastavro import parse_schema

from connectors.platform.serde import EventSerde
from tests.unit.contract_samples import NOW, sample
from touchpoint.contract import encode, event_schema, event_schema_text, to_avro_record, validate_event

CURRENT_ID = 7


class TextsRegistry:
    """Answers a registration with ``CURRENT_ID`` and a lookup with the text stored under the id."""

    def __init__(self, texts: dict[int, str]) -> None:
        self.texts = texts
        self.lookups: list[int] = []

    def register(self, subject: str, schema_text: str) -> int:
        return CURRENT_ID

    def schema(self, schema_id: int) -> Any:
        self.lookups.append(schema_id)
        return parse_schema(json.loads(self.texts[schema_id]))


def _reordered(text: str) -> str:
    """The same schema with every object's keys in reverse order (as a registry may keep a second copy)."""
    return json.dumps(json.loads(text, object_hook=lambda d: dict(reversed(list(d.items())))))


def _purchase_without_campaign_code(text: str) -> str:
    """An older schema: the purchase payload without its optional last field (so resolution is needed)."""
    doc = json.loads(text)

    def strip(node: Any) -> None:
        if isinstance(node, dict):
            if str(node.get("name", "")).endswith("PurchasePayload") and "fields" in node:
                node["fields"] = node["fields"][:-1]
            for value in node.values():
                strip(value)
        elif isinstance(node, list):
            for value in node:
                strip(value)

    strip(doc)
    return json.dumps(doc)


def test_another_id_of_the_current_schema_is_read_as_the_current_schema_and_asked_for_once() -> None:
    registry = TextsRegistry({CURRENT_ID: event_schema_text(), 8: _reordered(event_schema_text())})
    serde = EventSerde(registry)  # type: ignore[arg-type]
    event = validate_event(sample("purchase"), NOW)
    data = encode(8, to_avro_record(event), event_schema())
    assert serde.read_checked(data) == event
    assert serde.read_checked(data) == event
    assert serde._writer_schema(8) is event_schema()  # read plainly, not resolved into an equal schema
    assert registry.lookups == [8]


def test_an_older_schema_is_resolved_into_the_current_one() -> None:
    older = _purchase_without_campaign_code(event_schema_text())
    registry = TextsRegistry({CURRENT_ID: event_schema_text(), 3: older})
    serde = EventSerde(registry)  # type: ignore[arg-type]
    assert serde._writer_schema(3) is not event_schema()
    record = to_avro_record(validate_event(sample("consent"), NOW))
    data = encode(3, record, parse_schema(json.loads(older)))
    assert serde.deserialize(data, NOW).event_id == record["event_id"]
