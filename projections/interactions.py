"""The interactions projection: every accepted event as one row, keyed by its event id.

The front line's cross-channel timeline reads from it. Duplicates (a
re-delivered or re-published event) hit the primary key. A re-published
event can come keyed by another customer (folded before a merge, published
again after it: another partition), so which copy stays must not depend on
the order partitions are read in: the one at the lowest (partition, offset)
stays, live and on every rebuild.
An erase record (:mod:`connectors.operations.privacy`) deletes the rows of the customer
it names, after the batch's own rows are in.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from connectors.platform.control import is_erasure
from connectors.platform.serde import EventSerde
from projections.writer import Record, copy_upsert, json_dumps
from touchpoint.contract.avro import from_checked_record
from touchpoint.settings import Settings

_COLUMNS = ("event_id", "customer_key", "type", "channel", "occurred_at", "payload", "source_topic",
            "source_partition", "source_offset")
_ON_CONFLICT = (
    "ON CONFLICT (event_id) DO UPDATE SET customer_key = EXCLUDED.customer_key, "
    "source_topic = EXCLUDED.source_topic, source_partition = EXCLUDED.source_partition, "
    "source_offset = EXCLUDED.source_offset "
    "WHERE (EXCLUDED.source_partition, EXCLUDED.source_offset) "
    "< (interactions.source_partition, interactions.source_offset)"
)


def payload_json(doc: dict[str, Any]) -> dict[str, Any]:
    """An event's payload as JSON values, from its decoded Avro record: what the payload model dumps."""
    if doc["type"] in ("campaign", "profile"):  # instants, a named symbol in a union: as the model writes them
        return from_checked_record(doc).payload.model_dump(mode="json")
    return doc["payload"][1]


def interaction_row(serde: EventSerde, record: Record) -> tuple[object, ...]:
    """One row of ``interactions`` from one customer-events record (already validated upstream).

    Read from the Avro record as decoded: building the event's models and dumping the payload again
    was most of the projection's CPU. A campaign's payload holds instants and a profile's an optional channel
    (read back as its type's name and symbol), written as the model writes them; every other payload is the
    record's own fields (equal to the model's dump, tested).
    """
    doc = serde.read_record(record.value)  # customer-events: checked by ingest, once
    return (
        doc["event_id"],
        (record.key or b"").decode(),
        doc["type"],
        doc["channel"],
        doc["occurred_at"],
        Jsonb(payload_json(doc), dumps=json_dumps),
        record.topic,
        record.partition,
        record.offset,
    )


class InteractionsProjection:
    """Writes ``interactions`` from ``touchpoint.customer-events``."""

    name = "interactions"

    def __init__(self, settings: Settings, serde: EventSerde) -> None:
        self.topics = [settings.topic("customer-events")]
        self._serde = serde

    def write(self, cur: psycopg.Cursor, records: Sequence[Record]) -> None:
        erased = [(r.key or b"").decode() for r in records if is_erasure(r.headers)]
        # One row per event id (one statement cannot update a row twice): the same choice as _ON_CONFLICT.
        rows: dict[object, tuple[object, ...]] = {}
        for record in records:
            if not is_erasure(record.headers):
                row = interaction_row(self._serde, record)
                kept = rows.get(row[0])
                if kept is None or (record.partition, record.offset) < (kept[7], kept[8]):
                    rows[row[0]] = row
        copy_upsert(cur, "interactions", _COLUMNS, list(rows.values()), _ON_CONFLICT)
        if erased:
            cur.execute("DELETE FROM interactions WHERE customer_key = ANY(%s)", (erased,))
