"""Events to Avro records and records to bytes, in the Confluent wire format.

Records. :func:`to_avro_record` / :func:`from_avro_record` map a model to the
dict fastavro writes and back. The payload is a union of ten records, several
of which look alike (``EmailPayload`` and ``SmsPayload`` both hold a
``message_id``, an ``action`` "sent" and an optional ``campaign_id``), so
letting fastavro guess the branch from the dict's shape could write the wrong
one. The branch is therefore always named: written as fastavro's tuple
notation ``("touchpoint.events.EmailPayload", {...})`` and read back with
``return_record_name=True``, which yields the same tuple; on the way back the
branch must agree with ``type``. Payload model class names equal the Avro
record names, which the drift test checks.

Bytes. ``encode`` / ``decode`` speak the Confluent framing: magic byte 0, the
writer schema id as 4 big-endian bytes, then the schemaless Avro body. They
are pure: the registry lookup is a ``schema_for(id)`` callable passed in.
Decoding runs on untrusted bytes, so whatever goes wrong in there (fastavro
raises EOFError, ValueError, IndexError, OverflowError, UnicodeDecodeError and
more on garbage) becomes one :class:`SerializationError`; the only other
exceptions that leave ``decode`` are the ``TouchpointError`` s ``schema_for``
raises on purpose (an unreachable registry must be retried, not dead-lettered).
"""

from __future__ import annotations

import io
import struct
from collections.abc import Callable
from datetime import datetime
from typing import Any, cast

from fastavro import schemaless_reader, schemaless_writer

from touchpoint.contract.models import (
    EVENT_MODELS,
    PAYLOAD_MODELS,
    ContractViolation,
    Event,
    PurchaseLine,
    validate_event,
)
from touchpoint.contract.schemas import NAMESPACE, event_schema
from touchpoint.errors import SerializationError, TouchpointError

MAGIC = 0
_HEADER = struct.Struct(">BI")  # magic byte, schema id


def to_avro_record(event: Event) -> dict[str, Any]:
    """The dict fastavro writes for ``event`` (payload branch named explicitly)."""
    record = event.model_dump()
    record["payload"] = (f"{NAMESPACE}.{type(event.payload).__name__}", record["payload"])
    return record


def from_avro_record(record: dict[str, Any], now: datetime | None = None, *, pseudonymised: bool = True) -> Event:
    """The event a decoded record holds, checked against the contract.

    :param record: as :func:`decode` returns it (payload as ``(record name, dict)``).
    :param now: judge ``occurred_at`` against it; ``None`` skips that check (replays).
    :param pseudonymised: identifiers are pseudonyms, as on the topics (the default).
    :raises ContractViolation: the record does not honour the contract.
    """
    doc = dict(record)
    if isinstance(doc.get("payload"), tuple):
        name, doc["payload"] = doc["payload"]
        model = PAYLOAD_MODELS.get(doc.get("type"))  # type: ignore[arg-type]
        if model is not None and name != f"{NAMESPACE}.{model.__name__}":
            raise ContractViolation([("payload", f"record {name} does not match type {doc['type']!r}")])
        if doc.get("type") == "profile" and isinstance(doc["payload"], dict):
            doc["payload"] = _named_symbols(doc["payload"])
    return validate_event(doc, now, pseudonymised=pseudonymised)


def _named_symbols(payload: dict[str, Any]) -> dict[str, Any]:
    """A profile payload with its optional channel as the symbol: ``["null", "Channel"]`` names a type defined
    elsewhere, so ``return_record_name`` reads it back as ``(type name, symbol)``."""
    channel = payload.get("preferred_channel")
    return {**payload, "preferred_channel": channel[1]} if isinstance(channel, tuple) else payload


def from_checked_record(record: dict[str, Any]) -> Event:
    """The event of a record the contract already accepted, built without checking it again.

    For the internal topics only (``accepted``, ``resolved``): ingest decoded and checked every event
    once, at the edge, and forwards its bytes as they were; the stages behind it read them back into
    the same models without paying for the contract's validators a second and a third time (18 µs
    of an event's ~36 µs in identity's half of the fold). The record must come from :func:`decode`
    with the current schema as reader schema, so its fields are exactly the models' fields. Equal to
    :func:`from_avro_record` for every event the contract accepts (tested).
    """
    kind = record["type"]
    payload = record["payload"][1]
    if kind == "purchase":
        payload = {**payload, "lines": [PurchaseLine.model_construct(**line) for line in payload["lines"]]}
    elif kind == "profile":
        payload = _named_symbols(payload)
    return EVENT_MODELS[kind].model_construct(
        event_id=record["event_id"], type=kind, channel=record["channel"], occurred_at=record["occurred_at"],
        identifiers=record["identifiers"], payload=cast(Any, PAYLOAD_MODELS[kind].model_construct(**payload)))


def encode(schema_id: int, record: Any, schema: Any = None) -> bytes:
    """Frame ``record`` written with ``schema`` (default: the current ``Event`` schema).

    :raises SerializationError: the record does not fit the schema, or the id is out of range.
    """
    buffer = io.BytesIO()
    try:
        buffer.write(_HEADER.pack(MAGIC, schema_id))
        # strict: a missing or unknown field is an error, not silently a default.
        schemaless_writer(buffer, event_schema() if schema is None else schema, record, strict=True)
    except Exception as exc:  # fastavro raises many unrelated types on a bad record
        raise SerializationError(f"cannot encode record with schema {schema_id}: {exc}") from exc
    return buffer.getvalue()


def decode(data: bytes, schema_for: Callable[[int], Any], reader_schema: Any = None) -> tuple[int, Any]:
    """Unframe and read one message.

    :param data: the message value.
    :param schema_for: parsed writer schema by id; raises ``LookupError`` for an
        unknown id (reported as a ``SerializationError``) or a ``TouchpointError``
        (propagated unchanged).
    :param reader_schema: the schema to resolve into (schema evolution); default the writer's.
    :returns: ``(schema_id, record)``, union records as ``(record name, dict)``.
    :raises SerializationError: on anything that is not one whole valid message.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise SerializationError(f"expected bytes, got {type(data).__name__}")
    if len(data) < _HEADER.size:
        raise SerializationError(f"message of {len(data)} bytes is shorter than the {_HEADER.size}-byte header")
    magic, schema_id = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise SerializationError(f"magic byte is {magic}, expected {MAGIC}: not Confluent wire format")
    try:
        writer = schema_for(schema_id)
    except TouchpointError:
        raise
    except LookupError as exc:
        raise SerializationError(f"unknown schema id {schema_id}") from exc
    body = io.BytesIO(bytes(data[_HEADER.size :]))
    # Resolving a schema into itself changes nothing but costs several times the plain read.
    reader = None if writer is reader_schema else reader_schema
    try:
        record = schemaless_reader(body, writer, reader, return_record_name=True)
    except Exception as exc:  # untrusted bytes: every failure of the reader means "bad message"
        raise SerializationError(f"cannot decode body with schema {schema_id}: {exc!r}") from exc
    if trailing := len(data) - _HEADER.size - body.tell():
        # A body that reads fine but leaves bytes over was written with another schema.
        raise SerializationError(f"{trailing} bytes left over after the record (schema {schema_id})")
    return schema_id, record
