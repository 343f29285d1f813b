"""The customers projection: the latest card per customer, and aliases of merged ones.

Fed by ``touchpoint.customer-views``. Stale writes: a card replaces the
stored one only when it is newer, i.e. its ``as_of`` (the log's clock when
the agent rendered it) is later, or equal and it comes from a later offset of
the same partition (the topic is keyed by customer id, so a customer's cards
arrive in order on one partition). So neither a replayed card nor an older
version re-emitted later (an agent restarted on an older state) ever
overwrites a newer one. Within a batch the same order picks the winner
(:func:`newer`), so how the log is cut into batches never changes the result.
A merged-away customer's row is deleted and its id kept as an alias of the
survivor. An erased customer (``{"erased": true}``, :mod:`connectors.privacy`)
loses its row, its aliases and its identifier keys.

Identifiers. A card carries the keyed hashes of its customer's identifiers
(``"keys": {kind: [key, ...]}``; older records lack the field and add none);
each key is upserted into ``customer_identifiers`` pointing at the customer.
Only a card that won its ``customers`` upsert moves keys (checked in SQL by
its offset), so a stale card cannot take a key back; a merge moves the
alias's keys to the survivor because the survivor's card lists them, and the
merge record moves any key still on the alias (an older card of the alias
read after the survivor's, from another partition), so how partitions
interleave never changes which customer a key ends on.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import orjson
import psycopg
from psycopg.types.json import Jsonb

from projections.writer import Record, copy_upsert, json_dumps
from touchpoint.settings import Settings

_COLUMNS = ("customer_id", "view", "as_of", "value_segment", "source_topic", "source_partition", "source_offset")

# The SQL form of newer(): (as_of, offset on the same partition) must grow; another partition: as_of alone.
_ON_CONFLICT = (
    "ON CONFLICT (customer_id) DO UPDATE SET view = EXCLUDED.view, as_of = EXCLUDED.as_of, "
    "value_segment = EXCLUDED.value_segment, source_topic = EXCLUDED.source_topic, "
    "source_partition = EXCLUDED.source_partition, source_offset = EXCLUDED.source_offset, "
    "updated_at = clock_timestamp() "
    "WHERE customers.as_of < EXCLUDED.as_of OR (customers.as_of = EXCLUDED.as_of AND ("
    "(customers.source_topic, customers.source_partition) <> (EXCLUDED.source_topic, EXCLUDED.source_partition) "
    "OR customers.source_offset < EXCLUDED.source_offset))"
)


def newer(old: tuple[Record, dict[str, Any]], new: tuple[Record, dict[str, Any]]) -> bool:
    """Whether the record ``new`` supersedes ``old`` for one customer id (``_ON_CONFLICT``'s rule)."""
    (old_record, old_doc), (new_record, new_doc) = old, new
    old_at, new_at = datetime.fromisoformat(old_doc["as_of"]), datetime.fromisoformat(new_doc["as_of"])
    if old_at != new_at:
        return new_at > old_at
    if (old_record.topic, old_record.partition) != (new_record.topic, new_record.partition):
        return True
    return new_record.offset > old_record.offset


class CustomersProjection:
    """Writes ``customers`` and ``customer_aliases`` from ``touchpoint.customer-views``."""

    name = "customers"

    def __init__(self, settings: Settings) -> None:
        self.topics = [settings.topic("customer-views")]

    def write(self, cur: psycopg.Cursor, records: Sequence[Record]) -> None:
        # Within a batch only the newest record per customer id matters.
        latest: dict[str, tuple[Record, dict[str, Any]]] = {}
        for record in records:
            doc = orjson.loads(record.value)  # a card of ~10 KB: orjson parses it in a fraction of json.loads
            customer_id = str(doc["customer_id"])
            if customer_id not in latest or newer(latest[customer_id], (record, doc)):
                latest[customer_id] = (record, doc)
        cards, aliases, erased = [], [], []
        # (key, kind, customer_id, offset); a key listed twice in the batch goes to the later card.
        keys: dict[str, tuple[str, str, str, int]] = {}
        for customer_id, (record, doc) in latest.items():
            if doc.get("erased"):
                erased.append(customer_id)
            elif "merged_into" in doc:
                aliases.append((customer_id, doc["merged_into"], record.offset))
            else:
                view = doc["view"]
                cards.append((customer_id, Jsonb(view, dumps=json_dumps), doc["as_of"], view["value_segment"],
                              record.topic, record.partition, record.offset))
                found = doc.get("keys") or {}
                for kind, kind_keys in found.items():
                    for key in kind_keys:
                        if key not in keys or keys[key][3] < record.offset:
                            keys[key] = (key, kind, customer_id, record.offset)
        copy_upsert(cur, "customers", _COLUMNS, cards, _ON_CONFLICT)
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
            cur.execute(
                "INSERT INTO customer_aliases (alias, survivor, source_offset) "
                "SELECT * FROM unnest(%s::text[], %s::text[], %s::bigint[]) "
                "ON CONFLICT (alias) DO UPDATE SET survivor = EXCLUDED.survivor, "
                "source_offset = EXCLUDED.source_offset WHERE customer_aliases.source_offset < EXCLUDED.source_offset",
                ([a for a, _, _ in aliases], [s for _, s, _ in aliases], [o for _, _, o in aliases]),
            )
            cur.execute("DELETE FROM customers WHERE customer_id = ANY(%s)", ([alias for alias, _, _ in aliases],))
            # Keys still on a merged-away id go to its survivor. Its survivor's card lists them too, but
            # cards come on other partitions: an older card of the alias read after the survivor's
            # (a rebuild, a writer catching up after a broker restart) took them back.
            cur.execute(
                "UPDATE customer_identifiers SET customer_id = a.survivor "
                "FROM unnest(%s::text[], %s::text[]) AS a(alias, survivor) "
                "WHERE customer_identifiers.customer_id = a.alias",
                ([a for a, _, _ in aliases], [s for _, s, _ in aliases]),
            )
        if erased:
            cur.execute("DELETE FROM customer_identifiers WHERE customer_id = ANY(%s)", (erased,))
            cur.execute("DELETE FROM customer_aliases WHERE alias = ANY(%s) OR survivor = ANY(%s)", (erased, erased))
            cur.execute("DELETE FROM customers WHERE customer_id = ANY(%s)", (erased,))
