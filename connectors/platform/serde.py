"""Events to Kafka bytes and back: the contract's codec bound to a registry.

Subject naming follows Confluent's RecordNameStrategy
(``touchpoint.events.Event``): the same record travels on five channel
topics, so one subject with one compatibility history fits better than five
copies under TopicNameStrategy. Readers resolve every writer schema into the
current reader schema, so events written before a compatible change still
decode.
"""

from __future__ import annotations

from datetime import datetime
from functools import cache
from typing import Any

from fastavro.schema import to_parsing_canonical_form

from connectors.platform.registry import RegistryClient
from touchpoint.contract import decode, encode, event_schema, event_schema_text, from_avro_record, to_avro_record
from touchpoint.contract.avro import from_checked_record
from touchpoint.contract.models import Event

SUBJECT = "touchpoint.events.Event"


class EventSerde:
    """Serialises events with the registered writer schema; decodes any registered version."""

    def __init__(self, registry: RegistryClient, subject: str = SUBJECT) -> None:
        self.registry = registry
        self.subject = subject
        self._writer_id: int | None = None
        self._current_ids: set[int] = set()

    @property
    def writer_id(self) -> int:
        """The current schema's id (registered on first use, then cached)."""
        if self._writer_id is None:
            self._writer_id = self.registry.register(self.subject, event_schema_text())
        return self._writer_id

    def serialize(self, event: Event) -> bytes:
        return encode(self.writer_id, to_avro_record(event), event_schema())

    def deserialize(self, data: bytes, now: datetime | None = None) -> Event:
        """Decode and check one message.

        :raises SerializationError: the bytes are not a registered Avro event.
        :raises ContractViolation: they decode but break the contract's checks.
        :raises RegistryError: the registry could not be asked (retry; the message may be fine).
        """
        _, record = decode(data, self._writer_schema, event_schema())
        return from_avro_record(record, now)

    def read_checked(self, data: bytes) -> Event:
        """Decode one message of an internal topic, whose event ingest already checked (not checked again).

        :raises SerializationError: the bytes are not a registered Avro event.
        :raises RegistryError: the registry could not be asked.
        """
        return from_checked_record(self.read_record(data))

    def read_record(self, data: bytes) -> dict[str, Any]:
        """The decoded Avro record of a message of an internal topic (payload as ``(record name, dict)``),
        in the current schema's fields, without building the event's models.

        :raises SerializationError: the bytes are not a registered Avro event.
        :raises RegistryError: the registry could not be asked.
        """
        _, record = decode(data, self._writer_schema, event_schema())
        return record

    def _writer_schema(self, schema_id: int) -> object:
        """The writer schema by id; our own current schema as the very object readers resolve into.

        A registry may hold the current schema under several ids (Apicurio keeps a text that differs only
        in its keys' order as another version, and answers a registration with either id): every id whose
        schema reads the same bytes the same way (the same Parsing Canonical Form) is the current schema,
        so its events are read plainly instead of being resolved into an equal schema at four times the cost.
        """
        if schema_id == self.writer_id or schema_id in self._current_ids:
            return event_schema()
        schema = self.registry.schema(schema_id)
        if to_parsing_canonical_form(schema) == _current_canonical_form():
            self._current_ids.add(schema_id)
            return event_schema()
        return schema


@cache
def _current_canonical_form() -> str:
    return to_parsing_canonical_form(event_schema())
