"""The loyalty ledger projection: one row per ledger entry, never two.

Fed by ``touchpoint.loyalty`` (JSON ``{"customer_id": …, "entry": {…}}``,
keyed by customer id). The entry id is the primary key and a row, once
written, is never changed (``ON CONFLICT DO NOTHING``): entries are immutable
facts, so a redelivered batch, a worker that re-emits after a crash or a
full rebuild from the log cannot double a point. A customer's balance is the
sum of the points of its rows and of its aliases' rows.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import psycopg

from projections.writer import Record, copy_upsert
from touchpoint.settings import Settings

_COLUMNS = ("entry_id", "customer_id", "kind", "points", "occurred_at", "source_event_id", "transaction_id",
            "rule_version", "rule_id", "multiplier", "reason", "source_topic", "source_partition", "source_offset")


class LedgerProjection:
    """Writes ``loyalty_ledger`` from ``touchpoint.loyalty``."""

    name = "loyalty"

    def __init__(self, settings: Settings) -> None:
        self.topics = [settings.topic("loyalty")]

    def write(self, cur: psycopg.Cursor, records: Sequence[Record]) -> None:
        rows = []
        for record in records:
            doc = json.loads(record.value)
            entry = doc["entry"]
            rows.append((entry["id"], doc["customer_id"], entry["kind"], entry["points"], entry["at"],
                         entry["source_event_id"], entry.get("transaction_id"), entry["rule_version"],
                         entry["rule_id"], entry.get("multiplier"), entry["reason"],
                         record.topic, record.partition, record.offset))
        copy_upsert(cur, "loyalty_ledger", _COLUMNS, rows, "ON CONFLICT (entry_id) DO NOTHING")
