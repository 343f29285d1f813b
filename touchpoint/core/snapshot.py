"""The customers stage's state as a table keyed by customer id (pure: no Kafka).

The worker keeps a :class:`~touchpoint.core.fold.Folder` in memory. Rebuilding
it from the whole log on every start grows with the log, so the worker also
writes its state, per customer, to a compacted changelog topic (see
:mod:`streams.state`); a restart reads that table back and replays only the
log after its checkpoint. This module turns a Folder into those records and
records back into a Folder:

* one record per **live customer**, keyed by its id: its view (timeline, RFM
  inputs, cases, consent, loyalty ledger, alert episodes), its identifier keys
  per kind, its aliases (path-compressed, as
  :class:`~touchpoint.core.identity.IdentityState` holds them) with their mint
  positions, identity refusals recorded for it or its aliases, and its due
  times (next alert decision, next points expiry);
* ``None`` (a tombstone) for a customer merged away: its survivor's record
  carries everything it had;
* one **checkpoint** record: the log position the table reflects, the log's
  clock, and the format version.

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

__all__ = [
    "CHECKPOINT_KEY",
    "FORMAT",
    "Checkpoint",
    "SnapshotError",
    "TrackedDueIndex",
    "checkpoint_record",
    "customer_records",
    "restore",
    "track_changes",
]

FORMAT = 2  # 2: erased customers
"""Bump when the pickled shape of a view or of these records changes incompatibly."""

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


def customer_records(folder: Folder, customer_ids: Iterable[str]) -> dict[str, bytes | None]:
    """The signed record of each customer (``None`` for one merged away or never minted)."""
    state = folder.state
    refused: dict[str, list[str]] = defaultdict(list)
    for owner, key in state.refused:
        refused[state.canonical(owner)].append(f"{owner}\x00{key}")
    records: dict[str, bytes | None] = {}
    for customer_id in customer_ids:
        view = folder.views.get(customer_id)
        if view is None:
            records[customer_id] = None
            continue
        aliases = state.aliases.get(customer_id, [])
        doc = {
            "format": FORMAT,
            "view": view,
            "keys": state.keys.get(customer_id, {}),
            "seq": state.seq[customer_id],
            "aliases": [(alias, state.seq[alias]) for alias in aliases],
            "refused": sorted(refused.get(customer_id, ())),
            "alert_due": folder._alert_due.due_of(customer_id),
            "expiry_due": folder._expiry_due.due_of(customer_id),
            "erased": customer_id in state.erased,
        }
        records[customer_id] = _sign(folder.secret, pickle.dumps(doc, protocol=pickle.HIGHEST_PROTOCOL))
    return records


def checkpoint_record(folder: Folder, next_offset: int) -> bytes:
    """The signed checkpoint: the table reflects the log before ``next_offset``."""
    doc = {"format": FORMAT, "next_offset": next_offset, "clock_ms": folder.clock_ms, "latest_ms": folder.latest_ms}
    return _sign(folder.secret, pickle.dumps(doc, protocol=pickle.HIGHEST_PROTOCOL))


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
        folder.views[customer_id] = doc["view"]
        state.keys[customer_id] = doc["keys"]
        for keys in doc["keys"].values():
            for key in keys:
                state.owner[key] = customer_id
        seq[customer_id] = doc["seq"]
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
        folder._alert_due.set(customer_id, doc["alert_due"])
        folder._expiry_due.set(customer_id, doc["expiry_due"])
    if sorted(seq.values()) != list(range(len(seq))):
        raise SnapshotError("the state table's mint positions have gaps: records are missing")
    # Mint order decides merges: the restored map must iterate in the order it was built.
    for customer_id in sorted(seq, key=seq.__getitem__):
        state.seq[customer_id] = seq[customer_id]
    folder.clock_ms, folder.latest_ms = mark["clock_ms"], mark["latest_ms"]
    return Checkpoint(mark["next_offset"], mark["clock_ms"], mark["latest_ms"])
