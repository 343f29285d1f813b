"""The customers projection: the latest card per customer, and aliases of merged ones.

Fed by ``touchpoint.customer-views``. A card only replaces one written from
an earlier offset of the same partition (the topic is keyed by customer id,
so a customer's cards arrive in order on one partition): a replayed or stale
card never overwrites a newer one. A merged-away customer's row is deleted
and its id kept as an alias of the survivor.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import psycopg
from psycopg.types.json import Jsonb

from projections.writer import Record
from touchpoint.settings import Settings


class CustomersProjection:
    """Writes ``customers`` and ``customer_aliases`` from ``touchpoint.customer-views``."""

    name = "customers"

    def __init__(self, settings: Settings) -> None:
        self.topics = [settings.topic("customer-views")]

    def write(self, cur: psycopg.Cursor, records: Sequence[Record]) -> None:
        # Within a batch only the last record per customer matters.
        latest: dict[str, tuple[Record, dict[str, object]]] = {}
        for record in records:
            doc = json.loads(record.value)
            latest[str(doc["customer_id"])] = (record, doc)
        cards, aliases = [], []
        for customer_id, (record, doc) in latest.items():
            if "merged_into" in doc:
                aliases.append((customer_id, doc["merged_into"], record.offset))
            else:
                view = doc["view"]
                cards.append((customer_id, Jsonb(view), doc["as_of"], view["value_segment"],  # type: ignore[index]
                              record.topic, record.partition, record.offset))
        if cards:
            cur.executemany(
                "INSERT INTO customers (customer_id, view, as_of, value_segment, source_topic, source_partition, "
                "source_offset) VALUES (%s, %s, %s, %s, %s, %s, %s) "
                "ON CONFLICT (customer_id) DO UPDATE SET view = EXCLUDED.view, as_of = EXCLUDED.as_of, "
                "value_segment = EXCLUDED.value_segment, source_offset = EXCLUDED.source_offset, "
                "updated_at = clock_timestamp() "
                "WHERE customers.source_offset < EXCLUDED.source_offset",
                cards,
            )
        if aliases:
            cur.executemany(
                "INSERT INTO customer_aliases (alias, survivor, source_offset) VALUES (%s, %s, %s) "
                "ON CONFLICT (alias) DO UPDATE SET survivor = EXCLUDED.survivor, "
                "source_offset = EXCLUDED.source_offset WHERE customer_aliases.source_offset < EXCLUDED.source_offset",
                aliases,
            )
            cur.executemany("DELETE FROM customers WHERE customer_id = %s", [(alias,) for alias, _, _ in aliases])
