"""Access alerts on the wire: the Avro record on ``touchpoint.alerts.access`` and its serde.

Wire. One Avro record ``touchpoint.alerts.AccessAlert`` (``schemas/access_alert.avsc``) in the Confluent
wire format, subject ``touchpoint.alerts.AccessAlert``, keyed by the API key's name; like the customer
alerts (:mod:`connectors.platform.alert_wire`) an output of the backbone with its own compatibility
history, not part of the event contract. Dicts are what :func:`touchpoint.core.access.access_alerts`
gives: times as ISO-8601 UTC text with milliseconds and ``Z``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from functools import cache
from typing import Any

from fastavro import parse_schema

from connectors.platform.alert_wire import AlertSerde, instant_ms, schema_file_text
from touchpoint.core.instants import epoch_ms, iso_ms
from touchpoint.errors import SerializationError

__all__ = ["FIELDS", "SUBJECT", "AccessAlertSerde", "access_schema_text"]

SUBJECT = "touchpoint.alerts.AccessAlert"
SCHEMA_FILE = "access_alert.avsc"
FIELDS = ("alert_id", "reason", "key_name", "role", "window_start", "window_end", "at", "lookups", "customers",
          "refused", "usual_lookups", "ceiling", "text")
"""The keys of an access alert dict, no more, no fewer."""
_TIMES = ("window_start", "window_end", "at")


def access_schema_text() -> str:
    """The ``AccessAlert`` schema as compact JSON: the text to register."""
    return schema_file_text(SCHEMA_FILE)


@cache
def _schema() -> Any:
    return parse_schema(json.loads(access_schema_text()))


def to_avro_record(doc: Mapping[str, Any]) -> dict[str, Any]:
    """The record fastavro writes for an access alert dict.

    :raises SerializationError: a key is missing or unknown, or a time is not an aware ISO-8601 instant.
    """
    if not isinstance(doc, Mapping):
        raise SerializationError(f"an access alert is a mapping, got {type(doc).__name__}")
    if missing := [k for k in FIELDS if k not in doc]:
        raise SerializationError(f"access alert misses {', '.join(missing)}")
    if extra := sorted(set(doc) - set(FIELDS)):
        raise SerializationError(f"access alert has unknown keys {', '.join(extra)}")
    record = {k: doc[k] for k in FIELDS}
    record.update({name: instant_ms(f"access alert {name}", doc[name]) for name in _TIMES})
    return record


def from_avro_record(record: Mapping[str, Any]) -> dict[str, Any]:
    """The dict a decoded record holds (the inverse of :func:`to_avro_record`)."""
    doc = {k: record[k] for k in FIELDS}
    for name in _TIMES:
        instant = record[name]
        doc[name] = iso_ms(instant if isinstance(instant, int) else epoch_ms(instant))
    return dict(sorted(doc.items()))


class AccessAlertSerde(AlertSerde):
    """Access alert dicts to Confluent-framed Avro and back, against the registry (schema registered lazily)."""

    SUBJECT = SUBJECT
    WHAT = "an access alert"
    schema_text = staticmethod(access_schema_text)
    schema = staticmethod(_schema)
    to_record = staticmethod(to_avro_record)
    from_record = staticmethod(from_avro_record)
