"""The customers projection: the latest card per customer, and aliases of merged ones.

Fed by ``touchpoint.customer-views``. A card only replaces one written from
an earlier offset of the same partition (the topic is keyed by customer id,
so a customer's cards arrive in order on one partition): a replayed or stale
card never overwrites a newer one. A merged-away customer's row is deleted
and its id kept as an alias of the survivor.

Identifiers. A card carries the keyed hashes of its customer's identifiers
(``"keys": {kind: [key, ...]}``; older records lack the field and add none);
each key is upserted into ``customer_identifiers`` pointing at the customer.
Only a card that won its ``customers`` upsert moves keys (checked in SQL by
its offset), so a stale card cannot take a key back; a merge moves the
alias's keys to the survivor because the survivor's card lists them.
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
        # (key, kind, customer_id, offset); a key listed twice in the batch goes to the later card.
        keys: dict[str, tuple[str, str, str, int]] = {}
        for customer_id, (record, doc) in latest.items():
            if "merged_into" in doc:
                aliases.append((customer_id, doc["merged_into"], record.offset))
            else:
                view = doc["view"]
                cards.append((customer_id, Jsonb(view), doc["as_of"], view["value_segment"],  # type: ignore[index]
                              record.topic, record.partition, record.offset))
                found = doc.get("keys") or {}
                for kind, kind_keys in found.items():  # type: ignore[attr-defined]
                    for key in kind_keys:
                        if key not in keys or keys[key][3] < record.offset:
                            keys[key] = (key, kind, customer_id, record.offset)
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
        if keys:
            # Set-based, one round trip: only cards whose row now carries their offset (they were not stale).
            rows = list(keys.values())
            cur.execute(
                "INSERT INTO customer_identifiers (key, kind, customer_id, source_offset) "
                "SELECT k.key, k.kind, k.customer_id, k.source_offset "
                "FROM unnest(%s::text[], %s::text[], %s::text[], %s::bigint[]) "
                "AS k(key, kind, customer_id, source_offset) "
                "JOIN customers c ON c.customer_id = k.customer_id AND c.source_offset = k.source_offset "
                "ON CONFLICT (key) DO UPDATE SET customer_id = EXCLUDED.customer_id, kind = EXCLUDED.kind, "
                "source_offset = EXCLUDED.source_offset "
                "WHERE customer_identifiers.customer_id <> EXCLUDED.customer_id",
                ([r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows], [r[3] for r in rows]),
            )
        if aliases:
            cur.executemany(
                "INSERT INTO customer_aliases (alias, survivor, source_offset) VALUES (%s, %s, %s) "
                "ON CONFLICT (alias) DO UPDATE SET survivor = EXCLUDED.survivor, "
                "source_offset = EXCLUDED.source_offset WHERE customer_aliases.source_offset < EXCLUDED.source_offset",
                aliases,
            )
            cur.executemany("DELETE FROM customers WHERE customer_id = %s", [(alias,) for alias, _, _ in aliases])
