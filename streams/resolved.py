"""The records of ``<prefix>.resolved``, the customer-keyed stream from identity to the profile, as Kafka bytes.

One kind of record per :mod:`touchpoint.core.partitions` record, named by the
``touchpoint-record`` header; identity's records also carry their position
(``touchpoint-position: <offset>,<n>``) so a partition drops a re-send.

* ``resolved``: the event's Avro bytes as ingest accepted them; headers name
  the customer, the log's clock, identity's mints and merges (JSON, keyed
  hashes only) and the identifier *kinds* attributed to the customer (the
  profile normalises the event's identifiers itself, so no identifier value
  travels in a header);
  a record of a component folded again (guardrails in event time) also names
  the re-fold (``touchpoint-generation``: the late event), the event's own
  offset in ``accepted`` (``touchpoint-origin``) and the ids no longer live
  that resolve to the customer it mints (``touchpoint-aliases``);
* ``hand-out`` / ``tick`` / ``erase`` / ``reset``: small JSON values;
* ``hand-in``: a view handed over, pickled and signed with the identifier key
  like the state tables (:mod:`touchpoint.core.snapshot`), so a value someone
  else wrote is refused instead of unpickled.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from connectors.platform.serde import EventSerde
from touchpoint.core.fold import Folder
from touchpoint.core.identity import Merged, Minted
from touchpoint.core.instants import any_zone_ms
from touchpoint.core.partitions import Erase, HandIn, HandOut, Record, Reset, Resolved, Tick
from touchpoint.core.snapshot import SnapshotError, seal, unseal

RECORD = "touchpoint-record"
POSITION = "touchpoint-position"
CUSTOMER = "touchpoint-customer"
CLOCK = "touchpoint-clock"
DECISIONS = "touchpoint-decisions"
ATTRIBUTED = "touchpoint-attributed"
GENERATION = "touchpoint-generation"
ORIGIN = "touchpoint-origin"
ALIASES = "touchpoint-aliases"

Headers = list[tuple[str, bytes]]


def encode(record: Record, raw_event: bytes | None, secret: bytes) -> tuple[bytes, bytes, Headers]:
    """(key, value, headers) of one record; ``raw_event``: the Avro bytes of a resolved event."""
    if isinstance(record, HandIn):
        return (record.survivor.encode(), seal(secret, record),
                [(RECORD, b"hand-in"), (CUSTOMER, record.customer_id.encode())])
    position = [(POSITION, f"{record.position[0]},{record.position[1]}".encode())]
    if isinstance(record, Resolved):
        assert raw_event is not None
        decisions = [d.to_json() for d in record.decisions]
        kinds = [ident.kind for ident in record.attributed]
        headers = [
            (RECORD, b"resolved"), *position, (CUSTOMER, record.customer_id.encode()),
            (CLOCK, str(record.clock_ms).encode()), (DECISIONS, json.dumps(decisions).encode()),
            (ATTRIBUTED, ",".join(kinds).encode())]
        if record.generation:
            headers += [(GENERATION, record.generation.encode()), (ORIGIN, str(record.origin).encode()),
                        (ALIASES, ",".join(record.aliases).encode())]
        return record.customer_id.encode(), raw_event, headers
    if isinstance(record, HandOut):
        hand_out = {"customer_id": record.customer_id, "survivor": record.survivor,
                    "event_position": list(record.event_position)}
        return record.customer_id.encode(), json.dumps(hand_out).encode(), [(RECORD, b"hand-out"), *position]
    if isinstance(record, Tick):
        return b"", json.dumps({"tick_ms": record.ms}).encode(), [(RECORD, b"tick"), *position]
    if isinstance(record, Reset):
        reset = {"customer_id": record.customer_id, "now_id": record.now_id, "cause": record.cause,
                 "clock_ms": record.clock_ms}
        return record.customer_id.encode(), json.dumps(reset).encode(), [(RECORD, b"reset"), *position]
    erase = {"customer_id": record.customer_id, "ids": list(record.ids), "clock_ms": record.clock_ms}
    return record.customer_id.encode(), json.dumps(erase).encode(), [(RECORD, b"erase"), *position]


def decode(value: bytes | None, headers: Any, serde: EventSerde, folder: Folder, secret: bytes) -> Record:
    """The record of one message of ``resolved``; ``folder`` normalises a resolved event's identifiers.

    :raises ValueError: not a record of ours (or signed with another key).
    """
    if value is None:
        raise ValueError("a message without a value")
    found = {key: header for key, header in (headers.items() if hasattr(headers, "items") else headers or ())}
    kind = found.get(RECORD, b"").decode()
    if kind == "hand-in":
        try:
            hand_in = unseal(secret, "hand-in", value)
        except SnapshotError as exc:
            raise ValueError(str(exc)) from exc
        if not isinstance(hand_in, HandIn):
            raise ValueError("a hand-in that holds no view")
        return hand_in
    offset, n = (int(part) for part in found[POSITION].decode().split(","))
    position = (offset, n)
    if kind == "resolved":
        event = serde.read_checked(value)  # checked by ingest, once
        decisions = tuple(_decision(doc) for doc in json.loads(found[DECISIONS]))
        kinds = set(found[ATTRIBUTED].decode().split(",")) - {""}
        attributed = tuple(folder.normalise_pair((k, str(v))) for k, v in event.identifiers.items() if k in kinds)
        generation = found.get(GENERATION, b"").decode()
        return Resolved(position, event, found[CUSTOMER].decode(), decisions, attributed,
                        any_zone_ms(event.occurred_at), int(found[CLOCK]), generation,
                        int(found[ORIGIN]) if generation else -1,
                        tuple(found[ALIASES].decode().split(",")) if found.get(ALIASES) else ())
    doc = json.loads(value)
    if kind == "hand-out":
        return HandOut(position, doc["customer_id"], doc["survivor"], tuple(doc["event_position"]))
    if kind == "tick":
        return Tick(position, int(doc["tick_ms"]))
    if kind == "erase":
        return Erase(position, doc["customer_id"], tuple(doc["ids"]), int(doc["clock_ms"]))
    if kind == "reset":
        return Reset(position, doc["customer_id"], doc["now_id"], doc["cause"], int(doc["clock_ms"]))
    raise ValueError(f"not a record of the resolved stream: {kind or 'no record header'}")


_DECISIONS: dict[str, Callable[[dict[str, Any]], Minted | Merged]] = {
    "minted": lambda d: Minted(d["event_id"], d["customer_id"], d["key"], d["kind"], d["shared"]),
    "merged": lambda d: Merged(d["event_id"], d["survivor"], d["merged"], d["via_key"], d["reason"]),
}


def _decision(doc: dict[str, Any]) -> Minted | Merged:
    return _DECISIONS[doc["decision"]](doc)
