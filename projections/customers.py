"""The customers projection: the latest card per customer, and aliases of merged ones.

Fed by ``touchpoint.customer-views``. Stale writes: a card replaces the
stored one only when it is newer, i.e. its identity position (how far the
profile had folded the ordered log when it wrote it) is later, or equal and
it comes from a later offset of the same partition; records written before
positions existed compare their ``as_of`` (the log's clock) instead. So
neither a replayed card nor an older version re-emitted later (an agent
restarted on an older state) ever overwrites a newer one. Within a batch the
same order picks the winner (:func:`newer`), so how the log is cut into
batches never changes the result. The same positions order a card against
the merge of its id, which comes from another partition (the survivor's):
a card older than the merge is not written, so a partition replaying after
a restart never brings a merged id back; a card newer than it (the id live
again) ends the alias.
A merged-away customer's row is deleted and its id kept as an alias of the
survivor. An erased customer (``{"erased": true}``, :mod:`connectors.operations.privacy`)
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

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import orjson
import psycopg
from psycopg.types.json import Json

from connectors.platform.keystore import PostgresKeyStore
from projections.writer import Record
from touchpoint.contract.cards import Kind, read_card
from touchpoint.core.masking import agent_identifiers, pseudonym_keys
from touchpoint.core.pseudonym import is_sealed_text, text_key
from touchpoint.settings import Settings

# Which of two records about one id is newer, in SQL (``old``, ``new``: the rows' table names) as in newer().
_NEWER = (
    "CASE WHEN {old}.source_position IS NOT NULL AND {new}.source_position IS NOT NULL "
    "AND {old}.source_position <> {new}.source_position THEN {old}.source_position < {new}.source_position "
    "WHEN ({old}.source_position IS NULL OR {new}.source_position IS NULL) AND {old}.as_of <> {new}.as_of "
    "THEN {old}.as_of < {new}.as_of "
    "ELSE ({old}.source_topic, {old}.source_partition) <> ({new}.source_topic, {new}.source_partition) "
    "OR {old}.source_offset < {new}.source_offset END"
)
_ON_CONFLICT = (
    "ON CONFLICT (customer_id) DO UPDATE SET view = EXCLUDED.view, masked_identifiers = EXCLUDED.masked_identifiers, "
    "identifiers_at = EXCLUDED.identifiers_at, agent_keys = EXCLUDED.agent_keys, as_of = EXCLUDED.as_of, "
    "value_segment = EXCLUDED.value_segment, source_topic = EXCLUDED.source_topic, "
    "source_partition = EXCLUDED.source_partition, source_offset = EXCLUDED.source_offset, "
    "source_position = EXCLUDED.source_position, updated_at = clock_timestamp() "
    "WHERE " + _NEWER.format(old="customers", new="EXCLUDED")
)
# Between a merge record and a card of one id: ``{a}`` is later than ``{b}`` by identity's position (records
# without positions keep the older rule: a card read after the merge brings the id back).
_LATER = ("{a}.source_position IS NOT NULL AND {b}.source_position IS NOT NULL "
          "AND {a}.source_position > {b}.source_position")


def newer(old: tuple[Record, datetime, int | None], new: tuple[Record, datetime, int | None]) -> bool:
    """Whether the record ``new`` supersedes ``old`` for one customer id (``_NEWER``'s rule).

    Each with its as_of and identity's position (:func:`~touchpoint.contract.cards.log_position`): the
    later position wins; records without one compare their as_of; at a tie the later record of the same
    partition, or the one from another partition read later.
    """
    (old_record, old_at, old_position), (new_record, new_at, new_position) = old, new
    if old_position is not None and new_position is not None:
        if old_position != new_position:
            return new_position > old_position
    elif old_at != new_at:
        return new_at > old_at
    if (old_record.topic, old_record.partition) != (new_record.topic, new_record.partition):
        return True
    return new_record.offset > old_record.offset


# The batch's winning cards, staged with what the writer took out of them. The column is ``json`` (the
# card's text, checked), not ``jsonb``: PostgreSQL parsing a card into jsonb and taking the view, as_of,
# segment and keys out of it cost ~140 µs a 12 KB card of its CPU; a binary COPY of the view's text into
# json ~50 (bench.pipeline's half-rate phase: the customers projection was a sixth of the machine's CPU).
_STAGE = ("CREATE TEMP TABLE IF NOT EXISTS _stage_views (customer_id text, view json COMPRESSION lz4, "
          "masked_identifiers json, identifiers_at integer, agent_keys text[], as_of timestamptz, value_segment text, "
          "source_topic text, "
          "source_partition integer, source_offset bigint, "
          "source_position bigint) "
          "ON COMMIT DELETE ROWS; "
          "CREATE TEMP TABLE IF NOT EXISTS _stage_keys (key text, kind text, customer_id text, source_offset bigint) "
          "ON COMMIT DELETE ROWS; DELETE FROM _stage_views; DELETE FROM _stage_keys")
_STAGE_TYPES = ["text", "json", "json", "int4", "text[]", "timestamptz", "text", "text", "int4", "int8", "int8"]
# A card older than the merge of its id (a partition replaying after a restart) is not written.
_UPSERT = ("INSERT INTO customers AS customers (customer_id, view, masked_identifiers, identifiers_at, agent_keys, "
           "as_of, "
           "value_segment, source_topic, "
           "source_partition, source_offset, source_position) SELECT * FROM _stage_views s "
           "WHERE NOT EXISTS (SELECT FROM customer_aliases a WHERE a.alias = s.customer_id AND "
           + _LATER.format(a="a", b="s") + ") " + _ON_CONFLICT)
# An id merged away and live again (identity gives a customer the id of its first event, once that event
# arrives): its card is newer than its merge record, so it is no alias any more.
_UNALIAS = ("DELETE FROM customer_aliases a USING _stage_views s WHERE a.alias = s.customer_id AND NOT ("
            + _LATER.format(a="a", b="s") + ")")
_ALIAS = ("INSERT INTO customer_aliases AS a (alias, survivor, source_offset, source_position) "
          "SELECT m.* FROM unnest(%s::text[], %s::text[], %s::bigint[], %s::bigint[]) "
          "AS m(alias, survivor, source_offset, source_position) "
          "WHERE NOT EXISTS (SELECT FROM customers c WHERE c.customer_id = m.alias AND "
          + _LATER.format(a="c", b="m") + ") "
          "ON CONFLICT (alias) DO UPDATE SET survivor = EXCLUDED.survivor, source_offset = EXCLUDED.source_offset, "
          "source_position = EXCLUDED.source_position WHERE CASE "
          "WHEN a.source_position IS NOT NULL AND EXCLUDED.source_position IS NOT NULL "
          "THEN a.source_position < EXCLUDED.source_position ELSE a.source_offset < EXCLUDED.source_offset END")
# The merged-away id's row goes, unless it is a card newer than the merge (the id live again).
_UNROW = ("DELETE FROM customers c USING unnest(%s::text[], %s::bigint[]) AS m(alias, source_position) "
          "WHERE c.customer_id = m.alias AND NOT (" + _LATER.format(a="c", b="m") + ")")
# Only cards whose row now carries their offset move keys (they were not stale); a key listed by two
# cards of the batch goes to the later one.
_KEYS = ("INSERT INTO customer_identifiers (key, kind, customer_id, source_offset) "
         "SELECT DISTINCT ON (k.key) k.key, k.kind, k.customer_id, k.source_offset FROM _stage_keys k "
         "JOIN customers c ON c.customer_id = k.customer_id AND c.source_offset = k.source_offset "
         "ORDER BY k.key, k.source_offset DESC "
         "ON CONFLICT (key) DO UPDATE SET customer_id = EXCLUDED.customer_id, kind = EXCLUDED.kind, "
         "source_offset = EXCLUDED.source_offset WHERE customer_identifiers.customer_id <> EXCLUDED.customer_id")


_WRAPPED = "SELECT key, wrapped FROM identifier_keys WHERE key = ANY(%s)"


def _identifiers_of(doc: dict[str, Any]) -> object:
    view = doc.get("view")
    return view.get("identifiers") if isinstance(view, dict) else None


Newest = tuple[Record, datetime, int | None, Kind, dict[str, Any] | None]
"""A customer's newest record: the record, its as_of, position, kind and parsed value (None: a card, unparsed)."""


def _as_is(value: bytes) -> bytes:
    """A view's JSON bytes for ``Json``: already JSON, not dumped again."""
    return value


def card_rows(record: Record, as_of: datetime, position: int | None, doc: dict[str, Any],
              data_keys: Mapping[str, bytes]) -> tuple[tuple[object, ...], list[tuple[str, str, str, int]]]:
    """A card record's row of ``_stage_views`` and its rows of ``_stage_keys``.

    The view is serialised with its identifiers last (:func:`view_text`), and beside it the identifiers an agent
    sees (:func:`~touchpoint.core.masking.agent_identifiers`), so a lookup sends the one text with those in place,
    and the names of the data keys that open what an agent sees whole (the customer numbers left sealed there,
    the person's sealed name).
    """
    customer_id = str(doc["customer_id"])
    view = doc.get("view")
    segment = view.get("value_segment") if isinstance(view, dict) else None
    keys = doc.get("keys")
    found = [(str(key), str(kind), customer_id, record.offset)
             for kind, listed in (keys.items() if isinstance(keys, dict) else ())
             if isinstance(listed, list) for key in listed]
    # No view: NULL, which the table refuses with PostgreSQL's reason (not a JSON null it would keep).
    stored = masked = at = agent_keys = None
    if view is not None:
        text, at = view_text(view)
        stored = Json(text, dumps=_as_is)
        if at is not None:
            shown = agent_identifiers(view["identifiers"], data_keys)
            masked = Json(orjson.dumps(shown), dumps=_as_is)
            agent_keys = sorted(pseudonym_keys(shown) | _name_keys(view))
    return (customer_id, stored, masked, at, agent_keys, as_of, segment, record.topic, record.partition,
            record.offset, position), found


def _name_keys(view: dict[str, Any]) -> set[str]:
    """The data-key name of the view's sealed name, if it has one."""
    person = view.get("person")
    name = person.get("name") if isinstance(person, dict) else None
    if isinstance(name, str) and is_sealed_text(name):
        try:
            return {text_key(name)}
        except ValueError:  # not well formed: nothing opens it (the card shows it as it is)
            return set()
    return set()


def view_text(view: Any) -> tuple[bytes, int | None]:
    """A view's JSON text with ``person`` then ``identifiers`` last, and where ``identifiers`` begins (None: the view
    has no identifiers object): ``text[:at] + b'"identifiers":' + other + b"}"`` is the view with ``other``
    identifiers, and the person (what else an agent sees whole: a sealed name) is just before ``at``."""
    if not isinstance(view, dict) or not isinstance(view.get("identifiers"), dict):
        return orjson.dumps(view), None
    head = orjson.dumps({k: v for k, v in view.items() if k not in _LAST})[:-1]  # without its closing brace
    if head != b"{":
        head += b","
    if "person" in view:
        head += b'"person":' + orjson.dumps(view["person"]) + b","
    return head + b'"identifiers":' + orjson.dumps(view["identifiers"]) + b"}", len(head)


_LAST = frozenset({"person", "identifiers"})


class CustomersProjection:
    """Writes ``customers`` and ``customer_aliases`` from ``touchpoint.customer-views``."""

    name = "customers"

    def __init__(self, settings: Settings) -> None:
        self.topics = [settings.topic("customer-views")]
        self.keystore = PostgresKeyStore(settings)  # opens data keys this writer reads itself (no connection)

    def newest(self, records: Sequence[Record], latest: dict[str, Newest], slim: bool = True) -> None:
        """Fold ``records`` into ``latest``: each customer id's newest record so far (:func:`newer`).

        A rebuild writes only those (:mod:`projections.rebuild`); ``slim`` keeps each record without its
        value (a card is large; its place in the log is enough). Values are parsed only when the headers do
        not say what they hold.
        """
        for record in records:
            kind, as_of, position, doc = read_card(record.value, record.headers)
            customer_id = str(doc["customer_id"]) if doc is not None else (record.key or b"").decode()
            at = datetime.fromisoformat(as_of)
            found = latest.get(customer_id)
            if found is None or newer(found[:3], (record, at, position)):
                latest[customer_id] = (record._replace(value=b"") if slim else record, at, position, kind, doc)

    def write(self, cur: psycopg.Cursor, records: Sequence[Record]) -> None:
        # Within a batch only the newest record per customer id matters.
        latest: dict[str, Newest] = {}
        self.newest(records, latest, slim=False)
        cards, keys, aliases, erased = [], [], [], []
        parsed: list[tuple[Record, datetime, int | None, dict[str, Any]]] = []
        for customer_id, (record, at, position, kind, doc) in latest.items():
            if kind == "erased":
                erased.append(customer_id)
            elif kind == "merged":
                assert doc is not None
                aliases.append((customer_id, doc["merged_into"], record.offset, position))
            else:
                parsed.append((record, at, position, orjson.loads(record.value) if doc is None else doc))
        if parsed:
            # The batch's data keys in one statement (destroyed ones are absent: those identifiers show erased).
            wanted = set().union(*(pseudonym_keys(_identifiers_of(doc)) for *_, doc in parsed))
            data_keys: dict[str, bytes] = {}
            if wanted:
                found_keys = cur.execute(_WRAPPED, (sorted(wanted),)).fetchall()
                data_keys = self.keystore.open_wrapped([k for k, _ in found_keys], [w for _, w in found_keys])
            for record, at, position, doc in parsed:
                row, found = card_rows(record, at, position, doc, data_keys)
                cards.append(row)
                keys.extend(found)
        if cards:
            cur.execute(_STAGE)
            with cur.copy("COPY _stage_views FROM STDIN (FORMAT BINARY)") as copy:
                copy.set_types(_STAGE_TYPES)
                for row in cards:
                    copy.write_row(row)
            if keys:
                with cur.copy("COPY _stage_keys FROM STDIN (FORMAT BINARY)") as copy:
                    copy.set_types(["text", "text", "text", "int8"])
                    for key_row in keys:
                        copy.write_row(key_row)
            cur.execute(_UPSERT)
            cur.execute(_KEYS)
            cur.execute(_UNALIAS)
        if aliases:
            names, survivors, offsets, positions = (list(column) for column in zip(*aliases, strict=True))
            cur.execute(_ALIAS, (names, survivors, offsets, positions))
            cur.execute(_UNROW, (names, positions))
            # Keys still on a merged-away id go to its survivor (when the merge stands). Its survivor's card
            # lists them too, but cards come on other partitions: an older card of the alias read after the
            # survivor's (a rebuild, a writer catching up after a broker restart) took them back.
            cur.execute(
                "UPDATE customer_identifiers SET customer_id = a.survivor FROM customer_aliases a "
                "WHERE a.alias = ANY(%s) AND customer_identifiers.customer_id = a.alias",
                (names,),
            )
        if erased:
            cur.execute("DELETE FROM customer_identifiers WHERE customer_id = ANY(%s)", (erased,))
            cur.execute("DELETE FROM customer_aliases WHERE alias = ANY(%s) OR survivor = ANY(%s)", (erased, erased))
            cur.execute("DELETE FROM customers WHERE customer_id = ANY(%s)", (erased,))
