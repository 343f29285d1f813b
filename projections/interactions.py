"""The interactions projection: every accepted event as one row, keyed by its event id.

The front line's cross-channel timeline reads from it. Duplicates (a
re-delivered or re-published event) hit the primary key and change nothing.
An erase record (:mod:`connectors.privacy`) deletes the rows of the customer
it names, after the batch's own rows are in.
"""

from __future__ import annotations

from collections.abc import Sequence

import psycopg
from psycopg.types.json import Jsonb

from connectors.privacy import is_erasure
from connectors.serde import EventSerde
from projections.writer import Record, copy_upsert, json_dumps
from touchpoint.settings import Settings


_COLUMNS = ("event_id", "customer_key", "type", "channel", "occurred_at", "payload", "source_topic",
            "source_partition", "source_offset")


def interaction_row(serde: EventSerde, record: Record) -> tuple[object, ...]:
    """One row of ``interactions`` from one customer-events record (already validated upstream)."""
    event = serde.deserialize(record.value)
    return (
        event.event_id,
        (record.key or b"").decode(),
        event.type,
        event.channel,
        event.occurred_at,
        Jsonb(event.payload.model_dump(mode="json"), dumps=json_dumps),
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
        copy_upsert(cur, "interactions", _COLUMNS,
                    [interaction_row(self._serde, r) for r in records if not is_erasure(r.headers)],
                    "ON CONFLICT (event_id) DO NOTHING")
        if erased:
            cur.execute("DELETE FROM interactions WHERE customer_key = ANY(%s)", (erased,))
