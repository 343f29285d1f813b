"""Erasure by crypto-shredding and the subject-access export (DESIGN.md §6).

:func:`erase` is ``touchpoint privacy erase --customer ID``:

1. finds the customer (an alias id names its survivor too), its aliases and
   the keys of every identifier they hold, in the read model;
2. records the erasure in the log: a control record (header
   ``touchpoint-record: erase``) on the identity stage's ordered input, so
   the stage forgets the person at that point of the log
   (:meth:`touchpoint.core.fold.Folder.erase`) on every replay too: their
   identifiers link nobody any more and a later event of theirs starts a
   new customer; the stage then tells the projections to drop the person's
   rows (an ``erased`` card, an erase record on ``customer-events``);
3. destroys the data keys of those identifiers in the key store: every
   pseudonym of theirs, on every topic and in every backup, stays sealed
   for good;
4. purges the read model at once (card, aliases, identifier keys,
   interactions) and notes the erasure in ``erasures``.

Ledger entries and alerts stay, keyed by the old pseudonymous id: totals
and counts remain right, and nothing in them names the person. Each step is
idempotent, so an erasure interrupted half-way is completed by running it
again. Keys of identifiers not yet projected when the erasure runs are
not found in step 1; erasing again after the pipeline caught up destroys
them too.

:func:`export` is ``touchpoint privacy export --customer ID``: everything
the read model holds about the person, identifiers opened with their data
keys, in one JSON document.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import psycopg
from kafka import KafkaProducer
from kafka.errors import KafkaError
from psycopg.rows import dict_row, tuple_row

from connectors.platform.control import erasure_record
from connectors.platform.keystore import KeyStore, PostgresKeyStore
from touchpoint.core.masking import open_identifiers, pseudonym_keys
from touchpoint.errors import PublishError, TouchpointError
from touchpoint.kafka_security import kafka_python_options
from touchpoint.settings import Settings

T = TypeVar("T")


class UnknownCustomer(TouchpointError):
    """No customer or alias of that id is in the read model."""


async def reveal_identifiers(identifiers: Mapping[str, Sequence[str]], keystore: KeyStore) -> dict[str, list[str]]:
    """A card's identifiers with their pseudonyms opened (one key-store call); ``(erased)`` when shredded."""
    return open_identifiers(identifiers, await keystore.data_keys(pseudonym_keys(identifiers), create=False))


@dataclass(frozen=True)
class Erasure:
    """What :func:`erase` did."""

    customer_id: str
    aliases: list[str]
    keys_destroyed: int
    rows_purged: int
    log_offset: int
    seconds: float

    def __str__(self) -> str:
        return (f"erased {self.customer_id} (aliases: {', '.join(self.aliases) or 'none'}): "
                f"{self.keys_destroyed} identifier keys destroyed, {self.rows_purged} read-model rows purged here "
                f"(the projections drop the rest as the erasure reaches them), "
                f"erasure recorded at offset {self.log_offset} of the log, in {self.seconds * 1000:.0f} ms")


def _who(conn: psycopg.Connection[Any], customer_id: str) -> tuple[str, list[str]]:
    """The survivor an id names and its aliases."""
    cur = conn.cursor(row_factory=tuple_row)
    row = cur.execute("SELECT survivor FROM customer_aliases WHERE alias = %s", (customer_id,)).fetchone()
    survivor = row[0] if row else customer_id
    aliases = [r[0] for r in cur.execute(
        "SELECT alias FROM customer_aliases WHERE survivor = %s ORDER BY alias", (survivor,)).fetchall()]
    known = cur.execute("SELECT 1 FROM customers WHERE customer_id = %s", (survivor,)).fetchone()
    if known is None and not aliases:
        raise UnknownCustomer(f"no customer {customer_id} in the read model (erased already, or not projected yet)")
    return survivor, aliases


def _publish(settings: Settings, customer_id: str) -> int:
    key, value, headers = erasure_record(customer_id, datetime.now(UTC))
    try:
        producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap, client_id="touchpoint-privacy",
                                 acks="all", enable_idempotence=True, max_block_ms=10_000,
                                 **kafka_python_options(settings))
        try:
            # Partition 0 of the ordered input, like the clock's ticks.
            metadata = producer.send(settings.topic("accepted"), key=key, value=value, headers=headers,
                                     partition=0).get(timeout=30)
        finally:
            producer.close(timeout=5)
    except KafkaError as exc:
        raise PublishError(f"the erasure of {customer_id} could not be recorded in the log: {exc}") from exc
    return int(metadata.offset)


def erase(settings: Settings, customer_id: str, keystore: KeyStore | None = None) -> Erasure:
    """Erase a customer (module docstring); raises :class:`UnknownCustomer` for an id the read model lacks."""
    began = time.perf_counter()
    with psycopg.connect(settings.pg_conninfo()) as conn:
        survivor, aliases = _who(conn, customer_id)
        ids = [survivor, *aliases]
        keys = [r[0] for r in conn.execute(
            "SELECT key FROM customer_identifiers WHERE customer_id = ANY(%s)", (ids,)).fetchall()]
    offset = _publish(settings, survivor)
    destroyed = asyncio.run(_with_store(settings, keystore, lambda store: store.destroy(keys)))
    with psycopg.connect(settings.pg_conninfo()) as conn, conn.transaction():
        purged = 0
        for statement in ("DELETE FROM customer_identifiers WHERE customer_id = ANY(%s)",
                          "DELETE FROM customer_aliases WHERE alias = ANY(%s) OR survivor = ANY(%s)",
                          "DELETE FROM interactions WHERE customer_key = ANY(%s)",
                          "DELETE FROM customers WHERE customer_id = ANY(%s)"):
            purged += conn.execute(statement, (ids,) * statement.count("%s")).rowcount
        conn.execute("INSERT INTO erasures (customer_id, aliases, keys_destroyed) VALUES (%s, %s, %s) "
                     "ON CONFLICT (customer_id) DO UPDATE SET keys_destroyed = erasures.keys_destroyed "
                     "+ EXCLUDED.keys_destroyed, erased_at = EXCLUDED.erased_at", (survivor, aliases, destroyed))
    return Erasure(survivor, aliases, destroyed, purged, offset, time.perf_counter() - began)


async def _with_store(settings: Settings, keystore: KeyStore | None,
                      use: Callable[[KeyStore], Awaitable[T]]) -> T:
    """``use`` the given key store, or the settings' own for the duration of the call."""
    store = keystore or PostgresKeyStore(settings)
    try:
        return await use(store)
    finally:
        if keystore is None:
            await store.close()


def export(settings: Settings, customer_id: str, keystore: KeyStore | None = None) -> dict[str, Any]:
    """Everything the read model holds about a customer, readable (a subject-access export)."""
    with psycopg.connect(settings.pg_conninfo(), row_factory=dict_row) as conn:
        survivor, aliases = _who(conn, customer_id)
        ids = [survivor, *aliases]
        card = conn.execute("SELECT view, as_of FROM customers WHERE customer_id = %s", (survivor,)).fetchone()
        interactions = conn.execute(
            "SELECT event_id, type, channel, occurred_at, payload FROM interactions WHERE customer_key = ANY(%s) "
            "ORDER BY occurred_at, event_id", (ids,)).fetchall()
        ledger = conn.execute(
            "SELECT entry_id, kind, points, occurred_at, reason, rule_id, transaction_id FROM loyalty_ledger "
            "WHERE customer_id = ANY(%s) ORDER BY occurred_at, entry_id", (ids,)).fetchall()
        alerts = conn.execute(
            "SELECT kind, state, severity, since, at, reasons FROM alerts WHERE customer_id = ANY(%s) "
            "ORDER BY kind", (ids,)).fetchall()
        lookups = conn.execute(
            "SELECT at, key_name, role, endpoint, identifier_kind FROM lookup_audit WHERE customer_id = ANY(%s) "
            "ORDER BY at", (ids,)).fetchall()
    view = dict(card["view"]) if card else {}
    if view.get("identifiers"):
        identifiers = view["identifiers"]
        view["identifiers"] = asyncio.run(_with_store(settings, keystore,
                                                      lambda store: reveal_identifiers(identifiers, store)))
    return {"customer_id": survivor, "aliases": aliases, "exported_at": datetime.now(UTC).isoformat(),
            "card": view, "card_as_of": card["as_of"].isoformat() if card else None,
            "interactions": interactions, "loyalty_ledger": ledger, "alerts": alerts,
            "lookups_of_this_customer": lookups}

