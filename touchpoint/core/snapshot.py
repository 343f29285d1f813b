"""The identity and profile stages' state as tables keyed by customer id (pure: no Kafka).

Each stage keeps a :class:`~touchpoint.core.fold.Folder` in memory (identity's
half, or a profile partition's views). Rebuilding it from the whole log on
every start grows with the log, so the worker also writes its state, per
customer, to a compacted changelog topic (see :mod:`streams.state`); a restart
reads that table back and replays only the log after its checkpoint. This
module turns a Folder into those records and records back into a Folder:

* one record per **live customer**, keyed by its id, with what the Folder
  holds of it: its view (timeline, RFM inputs, cases, consent, loyalty
  ledger, alert episodes) and due times (next alert decision, next points
  expiry) if it keeps views; its identifier keys per kind, its aliases
  (path-compressed, as :class:`~touchpoint.core.identity.IdentityState` holds
  them) with their mint positions and identity refusals recorded for it or its
  aliases if it resolves identity;
* ``None`` (a tombstone) for a customer merged away (its survivor's record
  carries everything it had) or handed over to another partition;
* for a profile partition, the views handed in and not merged yet
  (:func:`partition_records`);
* one **checkpoint** record: the log position the table reflects, the log's
  clock, the format version and, for a profile partition, the last identity
  position folded.

Together the records rebuild exactly the Folder that wrote them (a unit test
folds, snapshots, restores and folds on, against an uninterrupted fold).

Values are pickled (the views are plain Python objects with slots; a JSON
mapping of every nested state would be a second schema to keep in step) and
signed with an HMAC from the identifier key, so a value that someone else
wrote to the topic is refused instead of unpickled. A record of another
format version, a bad signature or one that no longer unpickles makes the
whole table unusable: the worker then rebuilds from the log, which stays the
source of truth.
"""

from __future__ import annotations

import hashlib
import hmac
import pickle
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from touchpoint.core.alerts import DueIndex
from touchpoint.core.fold import Folder
from touchpoint.core.partitions import ProfilePartition

__all__ = [
    "CHECKPOINT_KEY",
    "FORMAT",
    "Checkpoint",
    "SnapshotError",
    "TrackedDueIndex",
    "checkpoint_record",
    "customer_records",
    "partition_from_records",
    "partition_records",
    "restore",
    "seal",
    "unseal",
    "track_changes",
]

# 2: erased customers; 3: identity and views in separate stages, view keys;
# 4: invitation histories, lots keep their basket, held refunds, customers' first events;
# 5: guardrails in event time (a customer's event positions, latest event, keys refused; ledger generations)
FORMAT = 5
"""Bump when the pickled shape of a view or of these records changes incompatibly."""

ARRIVED = "__arrived__:"
"""Key prefix of a view handed in to a profile partition and not merged yet."""

CHECKPOINT_KEY = "__checkpoint__"
"""The checkpoint's key; customer ids start with ``cus_``, so it never collides."""

_SIGNATURE = 32  # bytes of HMAC-SHA256 in front of every value


class SnapshotError(Exception):
    """The table cannot be used (format, signature or content); rebuild from the log."""


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """What the table reflects: the log up to (not including) ``next_offset``."""

    next_offset: int
    clock_ms: int | None
    latest_ms: int | None
    last: tuple[int, int] | None = None  # a profile partition's last identity position folded


class TrackedDueIndex(DueIndex):
    """A :class:`DueIndex` that remembers whose due time changed (their record must be rewritten)."""

    __slots__ = ("changed",)

    def __init__(self, changed: set[str]) -> None:
        super().__init__()
        self.changed = changed

    def set(self, customer_id: str, due_ms: int | None) -> None:
        self.changed.add(customer_id)
        super().set(customer_id, due_ms)

    def discard(self, customer_id: str) -> None:
        self.changed.add(customer_id)
        super().discard(customer_id)

    def pop_due(self, now_ms: int) -> list[str]:
        due = super().pop_due(now_ms)
        self.changed.update(due)  # decided at this tick: alert episodes and lots may have moved
        return due


def track_changes(folder: Folder) -> set[str]:
    """Make ``folder``'s due indexes report changes into the returned set (before any event is added).

    Events and merges are reported by :meth:`Folder.drain_changes`; ticks
    change customers through the due indexes only, which this tracks.
    """
    changed: set[str] = set()
    for name in ("_alert_due", "_expiry_due"):
        tracked = TrackedDueIndex(changed)
        old: DueIndex = getattr(folder, name)
        for customer_id in sorted(old._due):
            tracked.set(customer_id, old._due[customer_id])
        setattr(folder, name, tracked)
    changed.clear()
    return changed


def _sign(secret: bytes, payload: bytes) -> bytes:
    return hmac.new(secret, payload, hashlib.sha256).digest() + payload


def _unsign(secret: bytes, key: str, value: bytes) -> Any:
    signature, payload = value[:_SIGNATURE], value[_SIGNATURE:]
    if not hmac.compare_digest(signature, hmac.new(secret, payload, hashlib.sha256).digest()):
        raise SnapshotError(f"state record {key!r}: bad signature (written with another identifier key?)")
    try:
        return pickle.loads(payload)  # noqa: S301 - signed by us, checked above
    except Exception as exc:  # an unpickling error of any kind: the code moved on
        raise SnapshotError(f"state record {key!r} no longer reads: {exc}") from exc


def seal(secret: bytes, value: Any) -> bytes:
    """``value`` pickled and signed, as state records are (for a view handed between workers)."""
    return _sign(secret, pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL))


def unseal(secret: bytes, name: str, value: bytes) -> Any:
    """The value :func:`seal` sealed. :raises SnapshotError: another key signed it, or it no longer reads."""
    return _unsign(secret, name, value)


def customer_records(folder: Folder, customer_ids: Iterable[str]) -> dict[str, bytes | None]:
    """The signed record of each customer (``None`` for one merged away, handed over or never minted).

    A record holds what ``folder`` keeps of the customer: its identity (keys, mint position,
    aliases, refusals) if the Folder resolves identity, its view and due times if it keeps views.
    """
    state = folder.state
    refused: dict[str, list[str]] = defaultdict(list)
    for owner, key in state.refused:
        refused[state.canonical(owner)].append(f"{owner}\x00{key}")
    records: dict[str, bytes | None] = {}
    for customer_id in customer_ids:
        doc: dict[str, Any] = {"format": FORMAT}
        if customer_id in state.seq and customer_id not in state.alias:
            doc.update({
                "keys": state.keys.get(customer_id, {}),
                "seq": state.seq[customer_id],
                "first": state.first.get(customer_id),
                "aliases": [(alias, state.seq[alias]) for alias in state.aliases.get(customer_id, [])],
                "refused": sorted(refused.get(customer_id, ())),
                "erased": customer_id in state.erased,
                # guardrails in event time (Folder._track): empty unless the Folder has a history
                "positions": folder._positions.get(customer_id, []),
                "latest_at": folder._latest_at.get(customer_id),
                "refused_keys": sorted(folder._refused_keys.get(customer_id, ())),
                "linked_at": {key: folder._linked_at[key] for keys in state.keys.get(customer_id, {}).values()
                              for key in keys if key in folder._linked_at},
            })
        view = folder.views.get(customer_id)
        if view is not None:
            doc.update({
                "view": view,
                "alert_due": folder._alert_due.due_of(customer_id),
                "expiry_due": folder._expiry_due.due_of(customer_id),
            })
        records[customer_id] = _sign(folder.secret, pickle.dumps(doc, protocol=pickle.HIGHEST_PROTOCOL)) \
            if len(doc) > 1 else None
    return records


def checkpoint_record(folder: Folder, next_offset: int, last: tuple[int, int] | None = None) -> bytes:
    """The signed checkpoint: the table reflects the log before ``next_offset``.

    :param last: a partition's position of the last identity record folded (see
        :class:`~touchpoint.core.partitions.ProfilePartition`).
    """
    doc = {"format": FORMAT, "next_offset": next_offset, "clock_ms": folder.clock_ms, "latest_ms": folder.latest_ms,
           "last": last}
    return _sign(folder.secret, pickle.dumps(doc, protocol=pickle.HIGHEST_PROTOCOL))


def partition_records(part: ProfilePartition, customer_ids: Iterable[str],
                      arrived_ids: Iterable[str] = ()) -> dict[str, bytes | None]:
    """A profile partition's records: customers, views handed in and not yet merged, and its checkpoint."""
    records = customer_records(part.folder, customer_ids)
    for customer_id in arrived_ids:
        hand_in = part.arrived.get(customer_id)
        records[ARRIVED + customer_id] = None if hand_in is None else _sign(
            part.folder.secret, pickle.dumps({"format": FORMAT, "hand_in": hand_in}, protocol=pickle.HIGHEST_PROTOCOL))
    records[CHECKPOINT_KEY] = checkpoint_record(part.folder, part.next_offset, part.last)
    return records


def partition_from_records(folder: Folder, partition: int, partitions: int,
                           records: Mapping[str, bytes]) -> ProfilePartition:
    """The :class:`ProfilePartition` that :func:`partition_records` wrote, on an empty ``folder``.

    Feed it from its ``fed`` offset on. :raises SnapshotError: as :func:`restore`.
    """
    arrived = {key: value for key, value in records.items() if key.startswith(ARRIVED)}
    mark = restore(folder, {key: value for key, value in records.items() if key not in arrived})
    part = ProfilePartition(folder, partition, partitions)
    part.fed = mark.next_offset
    part.last = mark.last if mark.last is not None else part.last
    for key, value in arrived.items():
        doc = _unsign(folder.secret, key, value)
        if doc.get("format") != FORMAT:
            raise SnapshotError(f"state record {key!r} is format {doc.get('format')}, not {FORMAT}")
        part.arrived[key.removeprefix(ARRIVED)] = doc["hand_in"]
    return part


def restore(folder: Folder, records: Mapping[str, bytes]) -> Checkpoint:
    """Load ``records`` (the table's latest value per key, tombstones dropped) into an empty ``folder``.

    :raises SnapshotError: no checkpoint, another format, a bad signature, or
        records that contradict each other; ``folder`` must then be discarded.
    """
    if folder.views or folder.state.seq:
        raise ValueError("restore needs an empty Folder")
    if CHECKPOINT_KEY not in records:
        raise SnapshotError("the state table has no checkpoint")
    mark = _unsign(folder.secret, CHECKPOINT_KEY, records[CHECKPOINT_KEY])
    if mark.get("format") != FORMAT:
        raise SnapshotError(f"the state table is format {mark.get('format')}, this worker reads {FORMAT}")
    state = folder.state
    seq: dict[str, int] = {}
    for customer_id, value in records.items():
        if customer_id == CHECKPOINT_KEY:
            continue
        doc = _unsign(folder.secret, customer_id, value)
        if doc.get("format") != FORMAT:
            raise SnapshotError(f"state record {customer_id!r} is format {doc.get('format')}, not {FORMAT}")
        if "view" in doc:
            folder.views[customer_id] = doc["view"]
            folder._alert_due.set(customer_id, doc["alert_due"])
            folder._expiry_due.set(customer_id, doc["expiry_due"])
        if "seq" not in doc:
            continue
        state.keys[customer_id] = doc["keys"]
        for keys in doc["keys"].values():
            for key in keys:
                state.owner[key] = customer_id
        seq[customer_id] = doc["seq"]
        if doc["first"] is not None:
            ms, event_id = doc["first"]
            state.first[customer_id] = (ms, event_id)
        if doc["aliases"]:
            state.aliases[customer_id] = [alias for alias, _ in doc["aliases"]]
        for alias, position in doc["aliases"]:
            state.alias[alias] = customer_id
            seq[alias] = position
        for pair in doc["refused"]:
            owner, key = pair.split("\x00", 1)
            state.refused.add((owner, key))
        if doc["erased"]:
            state.erased.add(customer_id)
        if doc["positions"]:
            folder._positions[customer_id] = list(doc["positions"])
        if doc["latest_at"] is not None:
            ms, event_id = doc["latest_at"]
            folder._latest_at[customer_id] = (ms, event_id)
        for key in doc["refused_keys"]:
            folder._refused_keys.setdefault(customer_id, set()).add(key)
            folder._refusers.setdefault(key, set()).add(customer_id)
        folder._linked_at.update(doc["linked_at"])
    # Who may have a component beyond themselves (Folder._component): recomputed, not stored.
    folder._marked.update(folder._refused_keys)
    folder._marked.update(state.canonical(state.owner[key]) for key in folder._refusers if key in state.owner)
    if sorted(seq.values()) != list(range(len(seq))):
        raise SnapshotError("the state table's mint positions have gaps: records are missing")
    # Mint order decides merges: the restored map must iterate in the order it was built.
    for customer_id in sorted(seq, key=seq.__getitem__):
        state.seq[customer_id] = seq[customer_id]
    folder.clock_ms, folder.latest_ms = mark["clock_ms"], mark["latest_ms"]
    last = mark["last"]
    return Checkpoint(mark["next_offset"], mark["clock_ms"], mark["latest_ms"], None if last is None else tuple(last))
