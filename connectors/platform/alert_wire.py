"""Alerts on the wire: the Avro record on the alert topics and its serde (the human line and the
tail: :mod:`connectors.operations.alerts`).

Wire. An alert is one Avro record ``touchpoint.alerts.Alert``
(``schemas/alert.avsc``) in the Confluent wire format, subject
``touchpoint.alerts.Alert`` (RecordNameStrategy, like the events: one record
on two topics, ``touchpoint.alerts.dormancy`` and ``touchpoint.alerts.churn``,
keyed by customer id). It is deliberately not part of the event contract
(:data:`touchpoint.contract.schemas.SCHEMA_FILES`): alerts are an output of
the backbone with a compatibility history of their own, so the file is
loaded here, self-contained, from the same directory.

Dicts. Producers and consumers speak the JSON form of an alert (what
:meth:`touchpoint.core.alerts.Alert.to_json` gives, plus ``segment``,
``value_minor`` and ``contactable``): times as ISO-8601 UTC text with
milliseconds and ``Z``, reasons as ``{"code", "text", "evidence"}``.
:func:`to_avro_record` / :func:`from_avro_record` map that dict to the record
fastavro writes and back, exactly: times become ``timestamp-millis`` and the
free-form evidence travels as JSON text (``evidence_json``, keys sorted).
Every problem with a dict or with bytes is a :class:`SerializationError`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from functools import cache
from typing import Any

from fastavro import parse_schema

from connectors.platform.registry import RegistryClient
from touchpoint.contract.avro import decode, encode
from touchpoint.contract.schemas import schemas_dir
from touchpoint.core.instants import epoch_ms, iso_ms
from touchpoint.errors import ConfigError, SerializationError
from touchpoint.settings import Settings

SUBJECT = "touchpoint.alerts.Alert"
SCHEMA_FILE = "alert.avsc"
KINDS = ("dormancy", "churn")
SEGMENTS = ("platinum", "gold", "iron", "lead")
FIELDS = ("alert_id", "kind", "state", "customer_id", "at", "since", "raised_at", "severity", "reasons",
          "segment", "value_minor", "contactable")
"""The keys of an alert dict, no more, no fewer."""
_TIMES = ("at", "since", "raised_at")


def alert_topic(settings: Settings, kind: str) -> str:
    """The topic alerts of one kind travel on, e.g. ``touchpoint.alerts.churn``."""
    if kind not in KINDS:
        raise ValueError(f"unknown alert kind {kind!r}; expected one of {', '.join(KINDS)}")
    return settings.topic(f"alerts.{kind}")


# -- the schema -----------------------------------------------------------------------


@cache
def schema_file_text(name: str) -> str:
    """A schema file of ``schemas/`` as compact JSON: the text to register."""
    path = schemas_dir() / name
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"schema {path} cannot be read: {exc}") from exc
    return json.dumps(doc, separators=(",", ":"))


def alert_schema_text() -> str:
    """The ``Alert`` schema as compact JSON: the text to register."""
    return schema_file_text(SCHEMA_FILE)


@cache
def alert_schema() -> Any:
    """The parsed ``Alert`` schema (one object, so decoding our own writes skips resolution)."""
    return parse_schema(json.loads(alert_schema_text()))


# -- dict <-> record ------------------------------------------------------------------


def instant_ms(name: str, value: Any) -> int:
    """Epoch ms of an aware ISO-8601 text ``value`` (``name`` for the error).

    :raises SerializationError: not text, not ISO-8601, or no time zone.
    """
    if not isinstance(value, str):
        raise SerializationError(f"{name}: expected ISO-8601 text, got {type(value).__name__}")
    try:
        instant = datetime.fromisoformat(value)
    except ValueError as exc:
        raise SerializationError(f"{name}: {value!r} is not an ISO-8601 instant") from exc
    if instant.tzinfo is None:
        raise SerializationError(f"{name}: {value!r} has no time zone")
    return epoch_ms(instant)


def _reason_record(index: int, reason: Any) -> dict[str, Any]:
    if not isinstance(reason, Mapping) or set(reason) != {"code", "text", "evidence"}:
        raise SerializationError(f"alert reasons[{index}]: expected {{code, text, evidence}}, got {reason!r}")
    if not isinstance(reason["evidence"], Mapping):
        raise SerializationError(f"alert reasons[{index}].evidence: expected an object")
    try:
        # Sorted and compact: one evidence, one text (the bytes of a replayed alert are the same).
        evidence = json.dumps(reason["evidence"], sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise SerializationError(f"alert reasons[{index}].evidence is not JSON: {exc}") from exc
    return {"code": reason["code"], "text": reason["text"], "evidence_json": evidence}


def to_avro_record(doc: Mapping[str, Any]) -> dict[str, Any]:
    """The record fastavro writes for an alert dict.

    :param doc: the alert's JSON form (see the module docstring), exactly the keys of :data:`FIELDS`.
    :raises SerializationError: a key is missing or unknown, a time is not an aware ISO-8601
        instant, ``value_minor`` is not an integer, a consent flag is not a boolean, an evidence is
        not JSON. (Enum symbols and string types are checked by the encoder.)
    """
    if not isinstance(doc, Mapping):
        raise SerializationError(f"an alert is a mapping, got {type(doc).__name__}")
    if missing := [k for k in FIELDS if k not in doc]:
        raise SerializationError(f"alert misses {', '.join(missing)}")
    if extra := sorted(set(doc) - set(FIELDS)):
        raise SerializationError(f"alert has unknown keys {', '.join(extra)}")
    value = doc["value_minor"]
    if not isinstance(value, int) or isinstance(value, bool):
        raise SerializationError(f"alert value_minor: expected an integer, got {value!r}")
    contactable = doc["contactable"]
    if not isinstance(contactable, Mapping) or not all(
            isinstance(k, str) and isinstance(v, bool) for k, v in contactable.items()):
        raise SerializationError(f"alert contactable: expected {{channel: bool}}, got {contactable!r}")
    reasons = doc["reasons"]
    if not isinstance(reasons, Sequence) or isinstance(reasons, str | bytes):
        raise SerializationError(f"alert reasons: expected a list, got {type(reasons).__name__}")
    record = {k: doc[k] for k in FIELDS}
    record.update({name: instant_ms(f"alert {name}", doc[name]) for name in _TIMES})
    record["reasons"] = [_reason_record(i, r) for i, r in enumerate(reasons)]
    record["contactable"] = dict(contactable)
    return record


def from_avro_record(record: Mapping[str, Any]) -> dict[str, Any]:
    """The alert dict a decoded record holds (the inverse of :func:`to_avro_record`).

    :raises SerializationError: an evidence is not the JSON text of an object.
    """
    doc = {k: record[k] for k in FIELDS}
    for name in _TIMES:
        instant = record[name]
        doc[name] = iso_ms(instant if isinstance(instant, int) else epoch_ms(instant))
    reasons = []
    for i, reason in enumerate(record["reasons"]):
        try:
            evidence = json.loads(reason["evidence_json"])
        except ValueError as exc:
            raise SerializationError(f"alert reasons[{i}].evidence_json is not JSON: {exc}") from exc
        if not isinstance(evidence, dict):
            raise SerializationError(f"alert reasons[{i}].evidence_json is not a JSON object")
        reasons.append({"code": reason["code"], "evidence": evidence, "text": reason["text"]})
    doc["reasons"] = reasons
    doc["contactable"] = dict(record["contactable"])
    return dict(sorted(doc.items()))


# -- bytes ----------------------------------------------------------------------------


class AlertSerde:
    """Alert dicts to Confluent-framed Avro and back, against the registry.

    A subclass names another record (:class:`connectors.platform.access_wire.AccessAlertSerde`): its subject,
    schema and dict <-> record mapping, as the class attributes below.

    :param registry: where the schema is registered (lazily, on first use) and writer
        schemas of other versions are fetched.
    :param subject: the registry subject (RecordNameStrategy by default).
    """

    SUBJECT = SUBJECT
    WHAT = "an alert"
    schema_text = staticmethod(alert_schema_text)
    schema = staticmethod(alert_schema)
    to_record = staticmethod(to_avro_record)
    from_record = staticmethod(from_avro_record)

    def __init__(self, registry: RegistryClient, subject: str | None = None) -> None:
        self.registry = registry
        self.subject = subject or self.SUBJECT
        self._writer_id: int | None = None

    @property
    def writer_id(self) -> int:
        """The current schema's id (registered on first use, then cached)."""
        if self._writer_id is None:
            self._writer_id = self.registry.register(self.subject, self.schema_text())
        return self._writer_id

    def serialize(self, doc: Mapping[str, Any]) -> bytes:
        """One dict as message bytes.

        :raises SerializationError: the dict is not this record.
        :raises RegistryError: the registry could not register the schema.
        """
        return encode(self.writer_id, self.to_record(doc), self.schema())

    def deserialize(self, data: bytes) -> dict[str, Any]:
        """One message's dict, the same shape :meth:`serialize` took.

        :raises SerializationError: the bytes are not a registered Avro record of this kind.
        :raises RegistryError: the registry could not be asked (retry; the message may be fine).
        """
        _, record = decode(data, self._writer_schema, self.schema())
        try:
            return self.from_record(record)
        except (KeyError, TypeError) as exc:  # a writer schema that is not this record at all
            raise SerializationError(f"message is not {self.WHAT}: {exc!r}") from exc

    def _writer_schema(self, schema_id: int) -> Any:
        if schema_id == self.writer_id:
            return self.schema()
        return self.registry.schema(schema_id)
