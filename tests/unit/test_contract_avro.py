"""The Avro side of the contract: exact bytes, round trips, evolution, drift, hostile input."""

from __future__ import annotations

import json
from datetime import datetime
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin, get_type_hints

import pytest
from fastavro import parse_schema
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel
from typing_extensions import is_typeddict

from tests.unit.contract_samples import NOW, SAMPLES, sample
from touchpoint.contract.avro import decode, encode, from_avro_record, to_avro_record
from touchpoint.contract.models import PAYLOAD_MODELS, ContractViolation, Event, validate_event
from touchpoint.contract.schemas import (
    SCHEMA_FILES,
    event_schema,
    event_schema_text,
    expand,
    schema_files,
    schemas_dir,
)
from touchpoint.errors import RegistryError, SerializationError

SCHEMA_ID = 7
SCHEMAS = {SCHEMA_ID: event_schema()}
schema_for = SCHEMAS.__getitem__

# Computed once from contract_samples and pasted: any change to these bytes is a wire-format change.
GOLDEN = {
    "purchase": (
        "00000000071e706f732d373738312d3030303132330000d4dbe68faa65041663"
        "7573746f6d65725f6e6f10432d31303032333408636172642036303131303030"
        "39393031333934323400000e542d38383132330c42522d303137040e4655454c"
        "2d3935086675656c02c06110434f464645452d4c0873686f70049c0900dc6a06"
        "4555520210535052494e473235"
    ),
    "call": (
        "00000000071a6374692d35353132302d656e6406028082fb95aa65020a70686f"
        "6e65202b34342032302037393436203039353800060a35353132300002020e62"
        "696c6c696e6702f00402107265736f6c7665640208412d3737"
    ),
    "consent": (
        "000000000720707265662d63656e7472652d30393132100680d68988aa650416"
        "637573746f6d65725f6e6f10432d3130303233340a656d61696c286a616e652e"
        "646f65406578616d706c652e636f6d0010000800"
    ),
}


def _bytes_of(event_type: str) -> bytes:
    return encode(SCHEMA_ID, to_avro_record(validate_event(sample(event_type), NOW)))


@pytest.mark.parametrize("event_type", GOLDEN)
def test_golden_bytes(event_type: str) -> None:
    golden = bytes.fromhex(GOLDEN[event_type])
    assert _bytes_of(event_type) == golden
    schema_id, record = decode(golden, schema_for)
    assert schema_id == SCHEMA_ID
    assert from_avro_record(record) == validate_event(sample(event_type), NOW)


@pytest.mark.parametrize("event_type", SAMPLES)
def test_round_trip(event_type: str) -> None:
    event = validate_event(sample(event_type), NOW)
    data = encode(SCHEMA_ID, to_avro_record(event))
    schema_id, record = decode(data, schema_for)
    back = from_avro_record(record, NOW)
    assert (schema_id, back, type(back)) == (SCHEMA_ID, event, type(event))
    assert back.model_dump() == event.model_dump()
    assert encode(SCHEMA_ID, to_avro_record(back)) == data  # and stable


def test_the_payload_branch_must_match_the_type() -> None:
    record = to_avro_record(validate_event(sample("email"), NOW))
    _, payload = record["payload"]
    record["payload"] = ("touchpoint.events.SmsPayload", payload)  # same shape, wrong branch
    with pytest.raises(ContractViolation, match="payload"):
        from_avro_record(record)


# --- evolution --------------------------------------------------------------


def _v2_reader() -> Any:
    """The Event schema with ``WebPayload`` v2 (gains an optional ``referrer``)."""
    files = [schemas_dir() / "evolution" / "web.v2.avsc" if f.name == "web.avsc" else f for f in schema_files()]
    return parse_schema(expand(files))


@pytest.mark.parametrize("event_type", SAMPLES)
def test_data_written_with_v1_reads_with_v2(event_type: str) -> None:
    old = _bytes_of(event_type)
    _, as_written = decode(old, schema_for)
    _, as_read = decode(old, schema_for, reader_schema=_v2_reader())
    if event_type == "web":
        name, payload = as_read["payload"]
        assert payload.pop("referrer") is None  # the new field takes its default
        as_read["payload"] = (name, payload)
    assert as_read == as_written


def _before_profile() -> Any:
    """The Event schema as it was before the profile type: without its enum symbol and union branch."""
    schema = expand(schema_files())
    for field in schema["fields"]:
        if field["name"] == "type":
            field["type"]["symbols"].remove("profile")
        elif field["name"] == "payload":
            field["type"] = [branch for branch in field["type"] if branch.get("name") != "ProfilePayload"]
    return parse_schema(schema)


@pytest.mark.parametrize("event_type", [t for t in SAMPLES if t != "profile"])
def test_data_written_before_the_profile_type_reads_with_the_current_schema(event_type: str) -> None:
    """Adding ``profile`` was a backward-compatible change: every event written before reads the same."""
    record = to_avro_record(validate_event(sample(event_type), NOW))
    old = encode(SCHEMA_ID, record, _before_profile())
    _, as_read = decode(old, lambda _: _before_profile(), reader_schema=event_schema())
    assert from_avro_record(as_read, NOW) == validate_event(sample(event_type), NOW)


# --- the models and the .avsc files cannot drift ----------------------------

_PRIMITIVES = {"string": "str", "int": "int", "long": "long", "boolean": "bool"}


def _named_types(node: Any, found: dict[str, Any]) -> dict[str, Any]:
    if isinstance(node, list):
        for branch in node:
            _named_types(branch, found)
    elif isinstance(node, dict):
        if node.get("type") in ("record", "enum"):
            found[node["name"]] = node
        for child in (*[f["type"] for f in node.get("fields", [])], node.get("items"), node.get("values")):
            _named_types(child, found)
    return found


def _avro_shape(node: Any, named: dict[str, Any], field: str = "") -> Any:
    if isinstance(node, str):
        return _avro_shape(named[node], named, field) if node in named else _PRIMITIVES[node]
    if isinstance(node, list):
        assert node[0] == "null" and len(node) == 2, f"{field}: only optional unions expected"
        return ("optional", _avro_shape(node[1], named, field))
    if node.get("logicalType") == "timestamp-millis":
        return "datetime"
    kind = node["type"]
    if kind == "enum":
        return ("enum", tuple(node["symbols"]))
    if kind == "array":
        return ("list", _avro_shape(node["items"], named, field))
    if kind == "map":
        return ("map", _avro_shape(node["values"], named, field))
    if kind == "record":
        fields = {}
        for f in node["fields"]:
            shape = _avro_shape(f["type"], named, f["name"])
            optional = isinstance(shape, tuple) and shape[0] == "optional"
            # An optional field must default to null, a required one must have no default.
            assert ("default" in f and f["default"] is None) == optional, f"{f['name']}: default"
            fields[f["name"]] = shape
        return ("record", node["name"].rsplit(".", 1)[-1], fields)
    return _avro_shape(kind, named, field)


def _py_shape(tp: Any, field: str = "") -> Any:
    origin = get_origin(tp)
    if origin is Annotated:
        return _py_shape(get_args(tp)[0], field)
    if origin in (Union, UnionType):
        present = [arg for arg in get_args(tp) if arg is not type(None)]
        assert len(present) == 1 < len(get_args(tp)), f"{field}: only optional unions expected"
        return ("optional", _py_shape(present[0], field))
    if origin is Literal:
        return ("enum", get_args(tp))
    if origin is list:
        return ("list", _py_shape(get_args(tp)[0], field))
    if is_typeddict(tp):
        values = {_py_shape(hint) for hint in get_type_hints(tp).values()}
        assert len(values) == 1, "a map has one value type"
        return ("map", values.pop())
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        fields = {}
        for name, info in tp.model_fields.items():
            shape = _py_shape(info.annotation, name)
            # Money is a long on the wire; every other integer an int.
            fields[name] = "long" if name.endswith("_minor") else shape
            assert (not info.is_required() and info.default is None) == (shape[0] == "optional"), name
        return ("record", tp.__name__, fields)
    return {str: "str", int: "int", bool: "bool", datetime: "datetime"}[tp]


@pytest.fixture(scope="module")
def avro_event() -> tuple[dict[str, Any], dict[str, Any]]:
    schema = json.loads(event_schema_text())
    return schema, _named_types(schema, {})


@pytest.mark.parametrize("event_type", SAMPLES)
def test_payload_model_matches_its_avro_record(event_type: str, avro_event: Any) -> None:
    _, named = avro_event
    model = PAYLOAD_MODELS[event_type]
    assert _avro_shape(f"touchpoint.events.{model.__name__}", named) == _py_shape(model)


def test_envelope_model_matches_the_avro_event(avro_event: Any) -> None:
    schema, named = avro_event
    envelope_fields = {**Event.model_fields}
    del envelope_fields["payload"]
    avro = _avro_shape({**schema, "fields": schema["fields"][:-1]}, named)
    envelope = ("record", "Event", {name: _py_shape(info.annotation, name) for name, info in envelope_fields.items()})
    assert avro == envelope
    # The union lists the payload records in the order of the EventType symbols.
    union, symbols = schema["fields"][-1]["type"], named["touchpoint.events.EventType"]["symbols"]
    branches = [b if isinstance(b, str) else b["name"] for b in union]
    assert branches == [f"touchpoint.events.{PAYLOAD_MODELS[s].__name__}" for s in symbols]


def test_every_field_and_named_type_is_documented(avro_event: Any) -> None:
    _, named = avro_event
    for name, node in named.items():
        assert node.get("doc"), name
        for f in node.get("fields", []):
            assert f.get("doc"), f"{name}.{f['name']}"


def test_every_schema_file_is_loaded() -> None:
    # The alerts' own records (connectors/platform/alert_wire.py, access_wire.py) are not part of the event contract.
    own = {"alert.avsc", "access_alert.avsc"}
    assert sorted(p.name for p in schemas_dir().glob("*.avsc") if p.name not in own) == sorted(SCHEMA_FILES)
    parse_schema(json.loads(event_schema_text()))  # self-contained: no named types from elsewhere


# --- hostile bytes ----------------------------------------------------------

GOLDEN_BYTES = [bytes.fromhex(h) for h in GOLDEN.values()]
_VALID = GOLDEN_BYTES[0]


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "shorter than"),
        (b"\x00\x00\x00\x07", "shorter than"),
        (b"\x01" + _VALID[1:], "magic byte is 1"),
        (b"{" + _VALID[1:], "magic byte is 123"),
        (b"\x00\x00\x00\x00\x08" + _VALID[5:], "unknown schema id 8"),
        (_VALID[:-1], "cannot decode"),
        (_VALID + b"\x00", "1 bytes left over"),
        (_VALID[:5] + b"\xff" * 20, "cannot decode"),
        (_VALID[:5], "cannot decode"),
    ],
    ids=["empty", "short header", "magic 1", "json", "unknown id", "truncated", "trailing", "garbage", "no body"],
)
def test_bad_bytes(data: bytes, reason: str) -> None:
    with pytest.raises(SerializationError, match=reason):
        decode(data, schema_for)


def test_not_bytes() -> None:
    with pytest.raises(SerializationError, match="expected bytes"):
        decode("00000000", schema_for)  # type: ignore[arg-type]


@pytest.mark.parametrize("golden", GOLDEN_BYTES, ids=list(GOLDEN))
def test_every_truncation_is_refused(golden: bytes) -> None:
    for end in range(len(golden)):
        with pytest.raises(SerializationError):
            decode(golden[:end], schema_for)


def test_registry_failures_are_not_dead_lettered() -> None:
    def unreachable(schema_id: int) -> Any:
        raise RegistryError("registry down")

    with pytest.raises(RegistryError):
        decode(_VALID, unreachable)


def test_encode_refuses_a_record_that_does_not_fit() -> None:
    record = to_avro_record(validate_event(sample("refund"), NOW))
    del record["event_id"]
    with pytest.raises(SerializationError, match="schema 7"):
        encode(SCHEMA_ID, record)
    with pytest.raises(SerializationError):
        encode(2**32, to_avro_record(validate_event(sample("refund"), NOW)))


def _decode_and_check(data: bytes) -> None:
    """What the validate stage does: only our two errors may come out."""
    try:
        _, record = decode(data, schema_for)
        from_avro_record(record)
    except (SerializationError, ContractViolation):
        pass


# database=None: keep hypothesis from writing a .hypothesis/ directory into the repository.
@settings(database=None, max_examples=400, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes(data: bytes) -> None:
    _decode_and_check(data)


@settings(database=None, max_examples=400, deadline=None)
@given(st.binary(max_size=300))
def test_random_body_behind_a_valid_header(body: bytes) -> None:
    _decode_and_check(_VALID[:5] + body)


@settings(database=None, max_examples=400, deadline=None)
@given(st.sampled_from(GOLDEN_BYTES), st.data())
def test_corrupted_messages(golden: bytes, data: st.DataObject) -> None:
    at = data.draw(st.integers(5, len(golden) - 1))
    replacement = data.draw(st.binary(min_size=1, max_size=4))
    end = data.draw(st.integers(at + 1, len(golden)))
    _decode_and_check(golden[:at] + replacement + golden[end:])


def test_a_checked_record_reads_back_as_the_contract_reads_it() -> None:
    """Internal topics skip the second check: the events built equal the contract's (every sample, a population)."""
    from touchpoint.contract.avro import from_checked_record
    from touchpoint.generate import generate

    events = [validate_event(sample(name), NOW) for name in SAMPLES]
    events += [validate_event(doc, None) for doc in generate(40, 90, seed=4) if doc["event_id"].startswith("ev-")]
    assert {event.type for event in events} == set(PAYLOAD_MODELS)
    for event in events:
        _, record = decode(encode(7, to_avro_record(event)), lambda _: event_schema(), event_schema())
        checked = from_checked_record(record)
        assert type(checked) is type(event) and checked == from_avro_record(record, None, pseudonymised=False)
        assert checked == event and checked.model_dump() == event.model_dump()
