"""The alerts projection: the latest transition of each customer's dormancy and churn episodes.

Fed by ``touchpoint.alerts.dormancy`` and ``touchpoint.alerts.churn`` (Avro
``touchpoint.alerts.Alert``, keyed by customer id). One row per (customer,
kind) holds the latest transition, so "active alerts" is ``state <>
'resolved'`` (an index covers it) and the front line reads the reasons,
segment, value and contactability without a second lookup.

Ordering. A customer's alerts of one kind arrive in order on one partition,
so a record replaces a row only when it comes from a later offset of the same
partition: a redelivered batch or a full replay never takes a row back to an
older transition. Should a row's partition ever differ from the record's
(the topic re-created with another partition count), event time (``at``)
decides instead.

Poison. Alerts are written by our own worker, so a record that does not
decode is a bug upstream, not a reason to stop the front line's read model:
it is logged with its position and skipped (its offset still moves on).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from connectors.platform.alert_wire import AlertSerde, alert_topic
from projections.writer import Record, copy_upsert, json_dumps
from touchpoint.errors import SerializationError
from touchpoint.settings import Settings

log = logging.getLogger(__name__)

_COLUMNS = ("customer_id", "kind", "alert_id", "state", "severity", "since", "raised_at", "at", "segment",
            "value_minor", "contactable", "reasons", "source_topic", "source_partition", "source_offset")

_ON_CONFLICT = (
    "ON CONFLICT (customer_id, kind) DO UPDATE SET alert_id = EXCLUDED.alert_id, state = EXCLUDED.state, "
    "severity = EXCLUDED.severity, since = EXCLUDED.since, raised_at = EXCLUDED.raised_at, at = EXCLUDED.at, "
    "segment = EXCLUDED.segment, value_minor = EXCLUDED.value_minor, contactable = EXCLUDED.contactable, "
    "reasons = EXCLUDED.reasons, source_topic = EXCLUDED.source_topic, "
    "source_partition = EXCLUDED.source_partition, source_offset = EXCLUDED.source_offset, "
    "updated_at = clock_timestamp() "
    "WHERE CASE WHEN (alerts.source_topic, alerts.source_partition) "
    "= (EXCLUDED.source_topic, EXCLUDED.source_partition) "
    "THEN alerts.source_offset < EXCLUDED.source_offset ELSE alerts.at <= EXCLUDED.at END"
)


def _instant(text: str) -> datetime:
    return datetime.fromisoformat(text)


def _newer(old: tuple[Record, dict[str, Any]], new: tuple[Record, dict[str, Any]]) -> bool:
    """Whether ``new`` supersedes ``old`` for one (customer, kind): the SQL's rule, within a batch."""
    (old_record, old_doc), (new_record, new_doc) = old, new
    if (old_record.topic, old_record.partition) == (new_record.topic, new_record.partition):
        return new_record.offset > old_record.offset
    return _instant(new_doc["at"]) >= _instant(old_doc["at"])


def alert_row(record: Record, doc: dict[str, Any]) -> tuple[object, ...]:
    """One row of ``alerts`` from a decoded alert and where it was read."""
    return (
        doc["customer_id"], doc["kind"], doc["alert_id"], doc["state"], doc["severity"],
        _instant(doc["since"]), _instant(doc["raised_at"]), _instant(doc["at"]), doc["segment"],
        doc["value_minor"], Jsonb(doc["contactable"], dumps=json_dumps), Jsonb(doc["reasons"], dumps=json_dumps),
        record.topic, record.partition, record.offset,
    )


class AlertsProjection:
    """Writes ``alerts`` from ``touchpoint.alerts.dormancy`` and ``touchpoint.alerts.churn``."""

    name = "alerts"

    def __init__(self, settings: Settings, serde: AlertSerde) -> None:
        self.topics = [alert_topic(settings, "dormancy"), alert_topic(settings, "churn")]
        self._serde = serde

    def write(self, cur: psycopg.Cursor, records: Sequence[Record]) -> None:
        latest: dict[tuple[str, str], tuple[Record, dict[str, Any]]] = {}
        for record in records:
            try:
                doc = self._serde.deserialize(record.value)
            except SerializationError as exc:
                log.warning("alert skipped: not decodable", extra={
                    "topic": record.topic, "partition": record.partition, "offset": record.offset,
                    "error": str(exc)})
                continue
            key = (doc["customer_id"], doc["kind"])
            if key not in latest or _newer(latest[key], (record, doc)):
                latest[key] = (record, doc)
        copy_upsert(cur, "alerts", _COLUMNS, [alert_row(record, doc) for record, doc in latest.values()],
                    _ON_CONFLICT)
