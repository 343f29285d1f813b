"""The alerts' wire: the Avro record and its exact bytes, the serde's errors, the human line, ticks."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, cast

import pytest
from fastavro import parse_schema

from connectors.operations.alerts import format_alert
from connectors.platform.alert_wire import (
    FIELDS,
    SUBJECT,
    AlertSerde,
    alert_schema,
    alert_schema_text,
    from_avro_record,
    to_avro_record,
)
from connectors.platform.control import TICK_HEADER, TICK_KEY, TICK_VALUE, tick_record
from connectors.platform.registry import RegistryClient
from touchpoint.contract.schemas import SCHEMA_FILES, schemas_dir
from touchpoint.core.alerts import Alert, Reason
from touchpoint.errors import SerializationError


class FakeRegistry:
    """The two calls the serde makes, in memory."""

    def __init__(self, first_id: int = 41) -> None:
        self.texts: dict[int, str] = {}
        self.subjects: list[str] = []
        self._next = first_id

    def register(self, subject: str, schema_text: str) -> int:
        self.subjects.append(subject)
        for schema_id, text in self.texts.items():
            if text == schema_text:
                return schema_id
        self._next += 1
        self.texts[self._next] = schema_text
        return self._next

    def schema(self, schema_id: int) -> Any:
        if schema_id not in self.texts:
            raise LookupError(schema_id)
        return parse_schema(json.loads(self.texts[schema_id]))


def serde(registry: FakeRegistry | None = None) -> AlertSerde:
    return AlertSerde(cast(RegistryClient, registry or FakeRegistry()))


CHURN: dict[str, Any] = {
    "alert_id": "cus_ab12/churn/1/2026-01-03T10:00:00.000Z/raised",
    "kind": "churn",
    "state": "raised",
    "customer_id": "cus_ab12",
    "at": "2026-01-05T10:00:00.000Z",
    "since": "2026-01-03T10:00:00.000Z",
    "raised_at": "2026-01-05T10:00:00.000Z",
    "severity": "high",
    "reasons": [
        {"code": "cancel_request", "text": "cancel request 2 days ago",
         "evidence": {"event_ids": ["case-1"], "days_ago": 2}},
        {"code": "complaints", "text": "2 complaints in 30 days",
         "evidence": {"count": 2, "nested": {"ratio": 0.5, "none": None, "ok": True}}},
    ],
    "segment": "gold",
    "value_minor": 123456,
    "contactable": {"email": True, "sms": True, "phone": False},
}
RESOLVED: dict[str, Any] = {
    **CHURN, "kind": "dormancy", "state": "resolved", "severity": "medium", "reasons": [], "segment": "lead",
    "value_minor": -50, "contactable": {}, "alert_id": "cus_ab12/dormancy/3/2026-01-03T10:00:00.000Z/resolved",
}

# Computed once from CHURN with writer id 42 and pasted: any change to these bytes is a wire-format change.
GOLDEN_CHURN = (
    "000000002a606375735f616231322f636875726e2f312f323032362d30312d30"
    "335431303a30303a30302e3030305a2f7261697365640200106375735f616231"
    "3280a4cbd9f16680c4e5b4f06680a4cbd9f16602041c63616e63656c5f726571"
    "756573743263616e63656c2072657175657374203220646179732061676f4a7b"
    "22646179735f61676f223a322c226576656e745f696473223a5b22636173652d"
    "31225d7d14636f6d706c61696e74732e3220636f6d706c61696e747320696e20"
    "33302064617973707b22636f756e74223a322c226e6573746564223a7b226e6f"
    "6e65223a6e756c6c2c226f6b223a747275652c22726174696f223a302e357d7d"
    "000280890f060a656d61696c0106736d73010a70686f6e650000"
)


# --- the schema ----------------------------------------------------------------------


def test_schema_is_self_contained_documented_and_outside_the_event_contract() -> None:
    doc = json.loads(alert_schema_text())
    assert doc["name"] == "Alert" and doc["namespace"] == "touchpoint.alerts"
    assert SUBJECT == "touchpoint.alerts.Alert"
    assert "alert.avsc" not in SCHEMA_FILES and (schemas_dir() / "alert.avsc").is_file()
    assert [f["name"] for f in doc["fields"]] == list(FIELDS)
    parse_schema(doc)  # no named type from elsewhere

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if node.get("type") in ("record", "enum"):
                assert node.get("doc"), node["name"]
            for f in node.get("fields", []):
                assert f.get("doc"), f["name"]
                walk(f["type"])
            walk(node.get("items"))

    walk(doc)
    times = [f["name"] for f in doc["fields"] if isinstance(f["type"], dict) and
             f["type"].get("logicalType") == "timestamp-millis"]
    assert times == ["at", "since", "raised_at"]


# --- dict <-> record -----------------------------------------------------------------


@pytest.mark.parametrize("doc", [CHURN, RESOLVED], ids=["churn", "resolved"])
def test_record_mapping_round_trips(doc: dict[str, Any]) -> None:
    record = to_avro_record(doc)
    assert record["at"] == 1_767_607_200_000 and isinstance(record["since"], int)
    assert all(set(r) == {"code", "text", "evidence_json"} for r in record["reasons"])
    assert from_avro_record(record) == doc


def test_evidence_travels_as_sorted_compact_json() -> None:
    record = to_avro_record(CHURN)
    assert record["reasons"][0]["evidence_json"] == '{"days_ago":2,"event_ids":["case-1"]}'


def test_core_alert_json_plus_the_customer_fields_round_trips() -> None:
    alert = Alert(alert_id="cus_x/dormancy/1/2026-02-01T00:00:00.000Z/escalated/high", kind="dormancy",
                  state="escalated", customer_id="cus_x", at_ms=1_770_000_000_123, since_ms=1_769_904_000_000,
                  raised_ms=1_769_904_000_000, severity="high",
                  reasons=(Reason("silence", "silent for 95 days", {"silent_days": 95, "threshold_days": 45}),))
    doc = {**alert.to_json(), "segment": "platinum", "value_minor": 250_000, "contactable": {"email": False}}
    codec = serde()
    assert codec.deserialize(codec.serialize(doc)) == doc


@pytest.mark.parametrize("doc", [CHURN, RESOLVED], ids=["churn", "resolved"])
def test_serde_round_trips_and_registers_once(doc: dict[str, Any]) -> None:
    registry = FakeRegistry()
    codec = serde(registry)
    data = codec.serialize(doc)
    assert data[:5] == b"\x00\x00\x00\x00\x2a"  # magic byte, writer id 42
    assert codec.deserialize(data) == doc
    codec.serialize(doc)
    assert registry.subjects == [SUBJECT]


def test_a_writer_schema_fetched_by_id_is_resolved_into_ours() -> None:
    data = serde(FakeRegistry()).serialize(CHURN)
    # The reader's registry holds id 42 as another text of the same record (no docs), and its own current
    # schema under another id: the writer schema is fetched by id and resolved into the current one.
    reader_registry = FakeRegistry(first_id=90)
    undocumented = json.loads(alert_schema_text(), object_hook=lambda d: {k: v for k, v in d.items() if k != "doc"})
    reader_registry.texts[42] = json.dumps(undocumented)
    reader = serde(reader_registry)
    assert reader.deserialize(data) == CHURN
    assert reader.writer_id == 91


def test_a_foreign_writer_schema_is_a_serialization_error() -> None:
    registry = FakeRegistry()
    foreign = {"type": "record", "name": "X", "fields": [{"name": "a", "type": "string"}]}
    registry.texts[7] = json.dumps(foreign)
    with pytest.raises(SerializationError):
        serde(registry).deserialize(b"\x00\x00\x00\x00\x07\x02a")


def test_golden_bytes() -> None:
    golden = bytes.fromhex(GOLDEN_CHURN)
    assert serde().serialize(CHURN) == golden
    assert serde().deserialize(golden) == CHURN


def test_a_time_in_another_zone_is_normalised_to_utc_milliseconds() -> None:
    doc = {**CHURN, "at": "2026-01-05T11:00:00.000999+01:00"}
    assert serde().deserialize(serde().serialize(doc))["at"] == "2026-01-05T10:00:00.000Z"


def _without(key: str) -> dict[str, Any]:
    return {k: v for k, v in CHURN.items() if k != key}


@pytest.mark.parametrize("doc, message", [
    (_without("segment"), "misses segment"),
    ({**CHURN, "episode": 1}, "unknown keys episode"),
    ({**CHURN, "at": "2026-01-05T10:00:00"}, "no time zone"),
    ({**CHURN, "since": "yesterday"}, "not an ISO-8601"),
    ({**CHURN, "raised_at": 1_767_607_200_000}, "expected ISO-8601 text"),
    ({**CHURN, "kind": "fraud"}, "cannot encode"),
    ({**CHURN, "state": "open"}, "cannot encode"),
    ({**CHURN, "severity": "low"}, "cannot encode"),
    ({**CHURN, "segment": "bronze"}, "cannot encode"),
    ({**CHURN, "customer_id": None}, "cannot encode"),
    ({**CHURN, "value_minor": True}, "value_minor"),
    ({**CHURN, "value_minor": 12.5}, "value_minor"),
    ({**CHURN, "contactable": {"email": "yes"}}, "contactable"),
    ({**CHURN, "reasons": "cancel"}, "reasons"),
    ({**CHURN, "reasons": [{"code": "x", "text": "y"}]}, r"reasons\[0\]"),
    ({**CHURN, "reasons": [{"code": "x", "text": "y", "evidence": [1]}]}, r"reasons\[0\].evidence"),
    ({**CHURN, "reasons": [{"code": "x", "text": "y", "evidence": {"r": float("nan")}}]}, "not JSON"),
    ({**CHURN, "reasons": [{"code": "x", "text": "y", "evidence": {"when": datetime(2026, 1, 1)}}]}, "not JSON"),
])
def test_bad_alerts_are_refused(doc: dict[str, Any], message: str) -> None:
    with pytest.raises(SerializationError, match=message):
        serde().serialize(doc)


@pytest.mark.parametrize("data", [
    b"", b"\x00\x00\x00", b"\x01\x00\x00\x00\x2a", b"\x00\x00\x00\x00\x2a\xff\xff",
    bytes.fromhex(GOLDEN_CHURN)[:-3], bytes.fromhex(GOLDEN_CHURN) + b"\x00\x00",
])
def test_bad_bytes_are_a_serialization_error(data: bytes) -> None:
    codec = serde()
    codec.serialize(CHURN)  # writer id 42 known
    with pytest.raises(SerializationError):
        codec.deserialize(data)


def test_an_unknown_schema_id_is_a_serialization_error() -> None:
    data = serde().serialize(CHURN)
    with pytest.raises(SerializationError, match="unknown schema id 7"):
        serde().deserialize(b"\x00\x00\x00\x00\x07" + data[5:])


def test_bad_evidence_text_on_the_wire_is_a_serialization_error() -> None:
    record = to_avro_record(CHURN)
    record["reasons"][0]["evidence_json"] = "[1, 2]"
    with pytest.raises(SerializationError, match="not a JSON object"):
        from_avro_record(record)


# --- the human line --------------------------------------------------------------------


def test_human_line() -> None:
    assert format_alert(CHURN) == (
        "2026-01-05T10:00:00.000Z RAISED    churn    high   cus_ab12 (gold, 1234.56) contactable: email,sms"
        " — cancel_request: cancel request 2 days ago; complaints: 2 complaints in 30 days")
    assert format_alert(RESOLVED) == (
        "2026-01-05T10:00:00.000Z RESOLVED  dormancy medium cus_ab12 (lead, -0.50) contactable: none")


# --- ticks -----------------------------------------------------------------------------


@pytest.mark.parametrize("at, text", [
    (datetime(2026, 1, 5, 10, 0, tzinfo=UTC), "2026-01-05T10:00:00.000Z"),
    (datetime(2026, 1, 5, 10, 0, 0, 123_999, tzinfo=UTC), "2026-01-05T10:00:00.123Z"),
    (datetime(2026, 1, 5, 12, 30, tzinfo=timezone(timedelta(hours=2, minutes=30))), "2026-01-05T10:00:00.000Z"),
])
def test_tick_record(at: datetime, text: str) -> None:
    key, value, headers = tick_record(at)
    assert key == TICK_KEY == b"clock"
    assert value == b'{"tick":"' + text.encode() + b'"}'
    assert json.loads(value) == {"tick": text}
    assert headers == [(TICK_HEADER, TICK_VALUE)] == [("touchpoint-record", b"tick")]


def test_a_naive_tick_is_refused() -> None:
    with pytest.raises(ValueError, match="aware"):
        tick_record(datetime(2026, 1, 5, 10, 0))  # noqa: DTZ001


def test_alert_schema_is_parsed_once() -> None:
    assert alert_schema() is alert_schema()
