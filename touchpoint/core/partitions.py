"""The fold split in two stages, as the workers run it: identity in one ordered place, views in partitions.

Pure: no Kafka, no Faust. :class:`IdentityLog` is identity's side: it runs
:meth:`~touchpoint.core.fold.Folder.identify` on every event of the one
ordered log, in order, and says what goes to which partition of the
customer-keyed stream. :class:`ProfilePartition` is one partition's side:
it runs :meth:`~touchpoint.core.fold.Folder.follow` on what arrives there.
The union of every partition's views is exactly what one Folder, folding
the whole log, holds (a property test checks it for random partitionings and
arrival orders).

What goes to a partition, per message of the ordered log (each stamped with
its position ``(offset, n)``: the message's offset and a count over what it
caused, so a partition drops what it folded already when identity re-sends
after a crash):

* an event: :class:`Resolved` to its customer's partition, with identity's
  mints and merges, the identifiers attributed and the log's clock;
* before it, for every customer the event merged away, a :class:`HandOut`
  to *that* customer's partition. The partition takes the view out
  (:meth:`~touchpoint.core.fold.Folder.hand_over`) and sends it as a
  :class:`HandIn` to the survivor's partition;
* a tick: :class:`Tick` to every partition;
* an erasure: :class:`Erase` to the erased customer's partition;
* a late event whose component identity resolved again in event-time order
  (guardrails in event time, see :mod:`touchpoint.core.fold`): a
  :class:`Reset` to the partition of every id of the component that has a
  view (the view is taken out: ledger withdrawn, an id not live any more
  retired), then every event of the component, in event-time order, as
  :class:`Resolved` records (with hand-outs for their merges) carrying the
  re-fold's generation, read again from the log by the Folder's history.

A partition that reaches an event whose merged customers have not been handed
in yet holds it, and everything after it, until they are (a partition
keeps one order). A hold always waits for a hand-out that identity wrote
earlier in its log, so holds never wait on each other in a circle.
"""

from __future__ import annotations

import zlib
from collections import deque
from dataclasses import dataclass, field

from touchpoint.contract.models import Event
from touchpoint.core.fold import Folder, Handover, Refold, Rejected, Who
from touchpoint.core.identity import Decision, Merged, Minted
from touchpoint.core.normalise import Identifier

__all__ = [
    "Erase",
    "HandIn",
    "HandOut",
    "IdentityLog",
    "Position",
    "ProfilePartition",
    "Record",
    "Reset",
    "Resolved",
    "Tick",
    "partition_of",
]

Position = tuple[int, int]
"""Where identity wrote a record: (offset in the ordered log, count over what that message caused)."""


def partition_of(customer_id: str, partitions: int) -> int:
    """The partition of the customer-keyed stream that holds ``customer_id``'s view (stable across processes)."""
    return zlib.crc32(customer_id.encode()) % partitions


@dataclass(frozen=True, slots=True)
class Resolved:
    """An event, resolved by identity: to be followed by the customer's partition."""

    position: Position
    event: Event | None  # None where identity forwards the event's bytes instead (streams.identity)
    customer_id: str
    decisions: tuple[Decision, ...]  # mints and merges only: what the views need
    attributed: tuple[Identifier, ...]
    ms: int
    clock_ms: int
    generation: str = ""  # a component folded again: the late event that caused it (see Folder.reset_view)
    origin: int = -1  # the event's own offset in the ordered log, when it is re-sent by a later one
    aliases: tuple[str, ...] = ()  # a re-fold's view minted here: the ids no longer live resolving to it

    @property
    def merged(self) -> list[str]:
        return [d.merged for d in self.decisions if isinstance(d, Merged)]


@dataclass(frozen=True, slots=True)
class HandOut:
    """``customer_id`` merged into ``survivor`` by the event identity wrote at ``event_position``."""

    position: Position
    customer_id: str
    survivor: str
    event_position: Position


@dataclass(frozen=True, slots=True)
class HandIn:
    """A view handed out for the survivor's partition (not identity's: it has no position of its own)."""

    customer_id: str
    survivor: str
    event_position: Position
    handover: Handover


@dataclass(frozen=True, slots=True)
class Tick:
    position: Position
    ms: int


@dataclass(frozen=True, slots=True)
class Erase:
    """Erase ``customer_id`` (the live id; ``ids``: it and its aliases, as identity forgot them)."""

    position: Position
    customer_id: str
    ids: tuple[str, ...]
    clock_ms: int


@dataclass(frozen=True, slots=True)
class Reset:
    """Take ``customer_id``'s view out: its component is folded anew (``now_id``: the live id it resolves
    to when it is not live any more; ``cause``: the late event)."""

    position: Position
    customer_id: str
    now_id: str | None
    cause: str
    clock_ms: int


Record = Resolved | HandOut | HandIn | Tick | Erase | Reset


class IdentityLog:
    """Identity's stage: the ordered log in, records for the partitions out.

    :param folder: a Folder used for :meth:`~Folder.identify` and
        :meth:`~Folder.forget` only (it holds no views).
    """

    def __init__(self, folder: Folder, partitions: int) -> None:
        self.folder = folder
        self.partitions = partitions

    def event(self, offset: int, event: Event) -> tuple[str, tuple[Decision, ...], list[tuple[int, Record]]]:
        """Resolve one event: (customer id, every decision, records by partition).

        :raises Rejected: identity refused it (nothing changed).
        """
        self.folder.position = offset
        return self.resolve(offset, event, self.folder.identify(event))

    def who(self, offset: int, who: Who) -> tuple[str, tuple[Decision, ...], list[tuple[int, Record]]]:
        """:meth:`event` from what identity reads of it; the Resolved record carries no event (the live stage
        forwards the event's bytes).

        :raises Rejected: identity refused it (nothing changed).
        """
        self.folder.position = offset
        return self.resolve(offset, None, self.folder.identify_who(who))

    def resolve(self, offset: int, event: Event | None,
                identified: tuple[str, tuple[Decision, ...], tuple[Identifier, ...], int],
                ) -> tuple[str, tuple[Decision, ...], list[tuple[int, Record]]]:
        customer_id, decisions, attributed, ms = identified
        refold = self.folder.take_refold()
        if refold is not None:
            return customer_id, decisions, self._refolded(offset, refold)
        records: list[tuple[int, Record]] = []
        merges = [d for d in decisions if isinstance(d, Merged)]
        event_position = (offset, len(merges))
        for n, merge in enumerate(merges):
            records.append((partition_of(merge.merged, self.partitions),
                            HandOut((offset, n), merge.merged, merge.survivor, event_position)))
        views = tuple(d for d in decisions if isinstance(d, (Minted, Merged)))
        clock = self.folder.latest_ms
        assert clock is not None  # identify moved it
        records.append((partition_of(customer_id, self.partitions),
                        Resolved(event_position, event, customer_id, views, attributed, ms, clock)))
        return customer_id, decisions, records

    def _refolded(self, offset: int, refold: Refold) -> list[tuple[int, Record]]:
        """The records of a component resolved again: resets of its views, then its events in event-time order."""
        clock = self.folder.latest_ms
        assert clock is not None
        parts = self.partitions
        records: list[tuple[int, Record]] = []
        for n, cid in enumerate(refold.before):
            records.append((partition_of(cid, parts),
                            Reset((offset, n), cid, refold.resolved.get(cid), refold.cause, clock)))
        n = len(refold.before)
        for step in refold.steps:
            merges = [d for d in step.decisions if isinstance(d, Merged)]
            event_position = (offset, n + len(merges))
            for k, merge in enumerate(merges):
                records.append((partition_of(merge.merged, parts),
                                HandOut((offset, n + k), merge.merged, merge.survivor, event_position)))
            views = tuple(d for d in step.decisions if isinstance(d, (Minted, Merged)))
            records.append((partition_of(step.customer_id, parts),
                            Resolved(event_position, step.event, step.customer_id, views, step.attributed, step.ms,
                                     clock, refold.cause, step.position, step.aliases)))
            n = event_position[1] + 1
        return records

    def tick(self, offset: int, ms: int) -> list[tuple[int, Record]]:
        """Time passes: a tick for every partition."""
        self.folder.tick(ms)
        clock = self.folder.clock_ms
        assert clock is not None
        return [(p, Tick((offset, 0), clock)) for p in range(self.partitions)]

    def erase(self, offset: int, customer_id: str) -> tuple[list[str], list[tuple[int, Record]]]:
        """Forget a customer's identifiers: (ids erased, the erasure for its partition); nothing if unknown."""
        ids = self.folder.forget(customer_id)
        if not ids:
            return [], []
        record = Erase((offset, 0), ids[0], tuple(ids), self.folder.latest_ms or 0)
        return ids, [(partition_of(ids[0], self.partitions), record)]


@dataclass
class Outcome:
    """What folding records in a partition produced, beyond the Folder's own drains."""

    followed: list[Resolved] = field(default_factory=list)  # events now in a view: on to customer-events
    rejected: list[tuple[Resolved, str]] = field(default_factory=list)  # refunds refused: the dead-letter topic
    hand_ins: list[tuple[int, HandIn]] = field(default_factory=list)  # views for other partitions
    erased: list[str] = field(default_factory=list)  # ids erased (the live one first, then its aliases)
    dropped: list[Resolved] = field(default_factory=list)  # events identity re-sent, folded already
    held: list[Resolved] = field(default_factory=list)  # refunds waiting in a view for their purchase
    # Refunds held earlier, now folded (customer, event): on to customer-events; and held refunds refused
    # (customer, event, reason, identity's position of it): the dead-letter topic.
    released: list[tuple[str, Event]] = field(default_factory=list)
    held_rejected: list[tuple[str, Event, str, int]] = field(default_factory=list)
    # Ids an event folded here merged away -> that event's position (orders the merge against cards of the id).
    merged_at: dict[str, Position] = field(default_factory=dict)


class ProfilePartition:
    """One partition of the customer-keyed stream: a Folder's views, fed in the partition's order.

    :param folder: a Folder used for :meth:`~Folder.follow` and the rest of the profile's half.
    """

    def __init__(self, folder: Folder, partition: int, partitions: int) -> None:
        self.folder = folder
        self.partition = partition
        self.partitions = partitions
        #: The position of the last identity record folded (a record at or before it is a re-send).
        self.last: Position = (-1, -1)
        #: Records waiting for a merged customer's view, with their offsets in this partition.
        self.held: deque[tuple[int, Record]] = deque()
        #: Views handed in ahead of the event that merges them, by merged customer id.
        self.arrived: dict[str, HandIn] = {}
        #: Ids whose entry in :attr:`arrived` came or went since the caller last cleared this (state writes).
        self.arrived_changed: set[str] = set()
        #: The offset after the last record fed.
        self.fed = 0
        self.outcome = Outcome()

    @property
    def next_offset(self) -> int:
        """Where a replay must start for this state: the first record held, else the first not fed."""
        return self.held[0][0] if self.held else self.fed

    def feed(self, offset: int, record: Record) -> None:
        """Fold one record that arrived at ``offset`` (in the partition's order), or hold it."""
        self.fed = offset + 1
        if isinstance(record, HandIn):
            self._arrive(record)
        else:
            self.held.append((offset, record))
        self._release()

    def receive(self, hand_in: HandIn) -> None:
        """A view handed in straight from another partition of the same process, ahead of its copy in the log.

        Its copy still arrives through :meth:`feed` (it is what a restart replays); by then it is a
        re-send (the merge was folded) or the same view again. Saves the round trip through Kafka that
        every hold otherwise waits for, with everything behind it in the partition.
        """
        self._arrive(hand_in)
        self._release()

    def _arrive(self, hand_in: HandIn) -> None:
        if hand_in.event_position > self.last:  # else: a re-sent view of a merge folded already
            self.arrived[hand_in.customer_id] = hand_in
            self.arrived_changed.add(hand_in.customer_id)

    def _release(self) -> None:
        """Fold the held records, in order, up to the first still waiting for a merged view."""
        held, arrived = self.held, self.arrived
        while held:
            _, next_record = held[0]
            if isinstance(next_record, Resolved) and next_record.position > self.last and any(
                    merged not in arrived for merged in next_record.merged):
                return  # its merged views are on their way
            held.popleft()
            self._fold(next_record)

    def drain(self) -> Outcome:
        """What the records folded since the last call produced."""
        outcome, self.outcome = self.outcome, Outcome()
        outcome.released, outcome.held_rejected = self.folder.drain_held()
        return outcome

    def _fold(self, record: Record) -> None:
        if record.position <= self.last:  # type: ignore[union-attr]
            if isinstance(record, Resolved):
                self.outcome.dropped.append(record)
            return  # identity re-sent it after a restart; folded already
        self.last = record.position  # type: ignore[union-attr]
        folder, outcome = self.folder, self.outcome
        if isinstance(record, Resolved):
            for merged in record.merged:
                folder.take_over(self.arrived.pop(merged).handover)
                self.arrived_changed.add(merged)
                outcome.merged_at[merged] = record.position
            folder.advance(record.clock_ms)
            try:
                assert record.event is not None, "a Resolved record to follow carries its event"
                folded = folder.follow(record.event, record.customer_id, record.decisions, record.attributed,
                                       record.ms, record.origin if record.origin >= 0 else record.position[0],
                                       record.generation, record.aliases)
            except Rejected as exc:
                outcome.rejected.append((record, str(exc)))
            else:
                (outcome.followed if folded else outcome.held).append(record)
        elif isinstance(record, HandOut):
            handover = folder.hand_over(record.customer_id)
            if handover is None:
                raise LookupError(f"partition {self.partition} holds no view of {record.customer_id} to hand out")
            hand_in = HandIn(record.customer_id, record.survivor, record.event_position, handover)
            target = partition_of(record.survivor, self.partitions)
            if target == self.partition:
                self.arrived[record.customer_id] = hand_in
                self.arrived_changed.add(record.customer_id)
            else:
                outcome.hand_ins.append((target, hand_in))
        elif isinstance(record, Tick):
            folder.tick(record.ms)
        elif isinstance(record, Reset):
            folder.advance(record.clock_ms)
            folder.reset_view(record.customer_id, record.now_id, record.cause)
            if record.now_id is not None:
                outcome.merged_at[record.customer_id] = record.position
        else:
            assert isinstance(record, Erase), record
            folder.advance(record.clock_ms)
            folder.erase_view(record.customer_id)
            outcome.erased += record.ids

