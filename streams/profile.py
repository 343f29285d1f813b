"""The profile stage: each customer's view, loyalty and alerts, in partitions keyed by customer id.

Input is ``touchpoint.resolved``, the customer-keyed stream the identity stage
(:mod:`streams.identity`) writes: every partition is folded by its own
:class:`~touchpoint.core.partitions.ProfilePartition` (the profile's half of
the pure core, :meth:`Folder.follow <touchpoint.core.fold.Folder.follow>`),
so the partitions spread over the workers. When an event merges a customer
whose view lives in another partition, that partition hands the view over
(a ``hand-in`` record on ``resolved``, to the survivor's partition) and the
survivor's partition holds its records until it arrives.

Output, per batch:

* ``touchpoint.customer-events``: each event the profile folded, its Avro
  bytes keyed by its customer id;
* ``touchpoint.customer-views``: the rendered card of every customer the
  batch changed (compacted, keyed by customer id) with the keyed hashes of
  its identifiers (for lookups; never clear values), and for a customer
  merged away a record naming its survivor. Through a backlog
  (``HOLD_AFTER_FULL_BATCHES`` full batches in a row) a partition renders
  its changed customers' cards only when its state write is due (every
  ``STATE_FLUSH_BACKLOG_S``), once per customer however many batches
  changed it, as Kafka Streams' record cache does for a table's updates. A
  card goes out before the state that covers it is written, so a restart
  replays every change whose card had not gone out;
* ``touchpoint.loyalty``: every ledger entry issued, as JSON
  ``{"customer_id", "entry"}``; the entry id is derived from the log, so a
  re-emission is the same entry;
* ``touchpoint.alerts.dormancy`` / ``.churn``: alert transitions (Avro), with
  the customer's segment, value and contactability;
* ``touchpoint.resolved``: views handed in to other partitions;
* ``touchpoint.dlq``: refunds the profile refuses once history is known
  (above their purchase, in another currency), and refunds held for a
  purchase their customer never came to hold within ``refund_hold_days``,
  with the reason and source position. A held refund waits in its view (and
  state record) and goes to ``customer-events`` when it is folded.

Erasures: for the erased id and each alias, an ``{"erased": true}`` card and
an erase record on ``customer-events``, so the projections drop the rows.

State: ``touchpoint.profile-state``, one partition per partition of
``resolved`` (:mod:`streams.state`): the views, due times, views handed in
but not merged yet, and a checkpoint (where a replay of the partition must
start, and the last identity position folded), written in one transaction
per partition after the batch's output is acknowledged. The first message
of a partition (on start, or after a rebalance or a fenced write) loads its
table and replays ``resolved`` from the checkpoint up to that message,
publishing what the replay folds: all of it is idempotent downstream, and a
held record's output may never have gone out.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import faust
import orjson
from aiokafka.errors import KafkaError, ProducerFenced
from opentelemetry import trace

from connectors.platform.alert_wire import AlertSerde, alert_topic
from connectors.platform.control import erasure_record
from connectors.platform.registry import RegistryClient
from connectors.platform.serde import EventSerde
from streams import resolved
from streams.batch import STATE_FLUSH_BACKLOG_S, STATE_FLUSH_S, Outgoing, Received, add_stage
from streams.identity import stage_folder
from streams.ingest import dlq_headers
from streams.state import StateTable, read_range
from touchpoint.contract.cards import card_record, erased_record, log_position, merged_record
from touchpoint.core.fold import Folder
from touchpoint.core.partitions import ProfilePartition, Resolved
from touchpoint.core.profile import render
from touchpoint.core.snapshot import SnapshotError, partition_from_records, partition_records, track_changes
from touchpoint.settings import Settings
from touchpoint.telemetry import context_from_headers, count_events, kafka_headers, tracer, tracing_installed
from touchpoint.telemetry_attrs import MESSAGING_OFFSET, MESSAGING_PARTITION, MESSAGING_TOPIC

log = logging.getLogger(__name__)

HOLD_AFTER_FULL_BATCHES = 3
"""Cards are held only after this many full batches in a row: one full batch is often just the input that
came in while a state write paused the stage, and holding cards then took the p99 event-to-row latency at
half bench.pipeline's rate from 0.5 s to 1.3 s."""

_TRACER = tracer(__name__)


def as_of_of(folder: Folder) -> datetime:
    """The log's clock: the latest event time or tick folded so far."""
    return datetime.fromtimestamp(0, UTC) + timedelta(milliseconds=folder.latest_ms or 0)


class PartitionStage:
    """One partition of ``resolved``: its ProfilePartition, state table, and raw messages of held records."""

    def __init__(self, settings: Settings, partition: int) -> None:
        self.settings = settings
        self.table = StateTable(settings, "profile-state", partition)
        self.part, self.changed = self._new(partition, None)
        #: The next offset the state expects; -1: recover before the next message.
        self.position = -1
        self._flushed_at = 0.0
        self._written: tuple[int, tuple[int, int]] | None = None  # (next offset, last position) last written
        #: A resolved event's position -> its Avro bytes and trace headers, until it is folded.
        self.raw: dict[tuple[int, int], tuple[bytes | None, Any]] = {}
        #: Customers changed since their card last went out -> the log's clock and identity's position at
        #: their last change, the card's as_of and position (cards wait in a backlog, see the module).
        self.unrendered: dict[str, tuple[datetime, int]] = {}

    def raw_of(self, record: Resolved) -> tuple[bytes | None, Any]:
        return self.raw.pop(record.position)

    def _new(self, partition: int, records: dict[str, bytes] | None) -> tuple[ProfilePartition, set[str]]:
        folder = stage_folder(self.settings)
        changed = track_changes(folder)
        if records is None:
            part = ProfilePartition(folder, partition, self.settings.topic_partitions)
        else:
            part = partition_from_records(folder, partition, self.settings.topic_partitions, records)
            changed.clear()  # restoring set every due time; the table holds those records already
        return part, changed

    async def load(self) -> int:
        """Claim and read this partition's table (the worker made the topic); returns where a replay starts."""
        partition = self.part.partition
        await self.table.claim()  # fences a previous owner of the partition
        records = await self.table.load()
        try:
            self.part, self.changed = self._new(partition, records or None)
        except SnapshotError as exc:
            log.warning("profile state table unusable, rebuilding the partition from the log",
                        extra={"partition": partition, "reason": str(exc)})
            self.part, self.changed = self._new(partition, None)
        self.raw = {}
        self.unrendered = {}  # the replay from the table's checkpoint changes them again
        return self.part.fed

    def write_due(self, backlog: bool) -> bool:
        """Whether the state table is due to be written (and so the cards held back to go out)."""
        return time.monotonic() - self._flushed_at >= (STATE_FLUSH_BACKLOG_S if backlog else STATE_FLUSH_S)

    async def persist(self, backlog: bool) -> None:
        """Write the changed customers, arrived views and the checkpoint, at most every ``STATE_FLUSH_S``
        (in a backlog, every ``STATE_FLUSH_BACKLOG_S``)."""
        if not self.write_due(backlog) or self.unrendered:
            return  # not yet; or cards of changes it covers did not go out yet (handle() lets them out first)
        now = time.monotonic()
        part = self.part
        if self.position < 0 or (not self.changed and not part.arrived_changed
                                 and (part.next_offset, part.last) == self._written):
            return  # not ours any more, or nothing new: no write (and no claim on a partition moved away)
        records = partition_records(part, sorted(self.changed), sorted(part.arrived_changed))
        checkpoint = records.pop("__checkpoint__")
        try:
            await self.table.write(records, ("__checkpoint__", checkpoint))  # type: ignore[arg-type]
        except ProducerFenced:
            log.warning("profile state table claimed by another worker; recovering before the next message",
                        extra={"partition": part.partition})
            self.position = -1
            await self.table.close()
            return
        except KafkaError as exc:
            log.warning("profile state table write failed, retried with the next batch: %s", exc)
            await self.table.close()
            return
        self.changed.clear()
        part.arrived_changed.clear()
        self._flushed_at = now
        self._written = (part.next_offset, part.last)


class ProfileLoop:
    """The profile stage's batches (:class:`streams.batch.Stage`): fold each partition, publish, persist."""

    name = "profile"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.topics = [settings.topic("resolved")]
        registry = RegistryClient(settings.registry_url)
        self.serde = EventSerde(registry)
        self.alert_serde = AlertSerde(registry)
        self.secret = settings.identifier_key.get_secret_value().encode()
        self.names = {name: settings.topic(name)
                      for name in ("customer-events", "customer-views", "loyalty", "resolved", "dlq")}
        self.stages: dict[int, PartitionStage] = {}
        self.traced = False  # whether spans record (set per batch)
        #: Partitions whose table is loaded but not replayed yet -> the offset their replay starts at.
        self.loaded: dict[int, int] = {}
        self.full_batches = 0  # full batches in a row: a backlog, in which cards are held

    async def start(self) -> None:
        # A new consumer may get other partitions: each recovers at its first message.
        for stage in self.stages.values():
            stage.position = -1
        self.loaded = {}

    async def handle(self, batch: list[Received], emit: Callable[[list[Outgoing]], None],
                     backlog: bool) -> list[Outgoing]:
        out: list[Outgoing] = []
        touched: set[int] = set()
        stages = self.stages
        self.traced = tracing_installed()
        await self.assigned({message.partition for message in batch})
        starts = self.loaded
        for message in batch:
            stage = stages[message.partition]
            if message.offset != stage.position and (stage.position < 0 or message.offset > stage.position):
                # First message of the partition, or not the one our state expects (the partition was
                # another worker's meanwhile, or our table write was fenced): load, replay, go on.
                start = starts.pop(message.partition, None)
                await self.recover(stage, message.topic, message.offset, out, emit,
                                   await stage.load() if start is None else start)
            if message.offset < stage.position:
                continue  # fed already
            self.feed(stage, message.topic, message.offset, message.value, message.headers, out)
            touched.add(message.partition)
        self.publish_all(touched, out)
        self.full_batches = self.full_batches + 1 if backlog else 0
        hold = self.full_batches >= HOLD_AFTER_FULL_BATCHES
        for stage in stages.values():
            if stage.unrendered and (not hold or stage.write_due(backlog)):
                self.render_cards(stage, out)
        return out

    async def assigned(self, partitions: set[int], whole: bool = False) -> None:
        """Read the tables of partitions new to this consumer, side by side (each is a few round trips).

        Called with the consumer's whole assignment when it changes (``whole``), before the partitions'
        first messages, so the first events after a start or a rebalance do not wait for their tables;
        and with a batch's partitions, for any that came unloaded.
        """
        if whole:  # a table loaded for a partition taken away again is another worker's now
            self.loaded = {p: start for p, start in self.loaded.items() if p in partitions}
        for partition in partitions:
            if partition not in self.stages:  # a stage builds a Folder: only for a partition new to us
                self.stages[partition] = PartitionStage(self.settings, partition)
        loading = [p for p in sorted(partitions) if p not in self.loaded and self.stages[p].position < 0]
        for partition, start in zip(loading, await asyncio.gather(*(self.stages[p].load() for p in loading)),
                                    strict=True):
            self.loaded[partition] = start

    async def after_batch(self, backlog: bool) -> None:
        # Each partition writes its own table with its own producer: side by side, one pause, not three.
        await asyncio.gather(*(stage.persist(backlog) for stage in self.stages.values()))

    async def close(self) -> None:
        for stage in self.stages.values():
            await stage.table.close()

    async def recover(self, stage: PartitionStage, topic: str, up_to: int, out: list[Outgoing],
                      emit: Callable[[list[Outgoing]], None], start: int) -> None:
        """Replay the partition from ``start`` (where its loaded table ends) up to ``up_to``, publishing."""
        restored = len(stage.part.folder.views)
        replayed = 0
        async for message in read_range(self.settings, topic, stage.part.partition, start, up_to):
            self.feed(stage, topic, message.offset, message.value, message.headers, out)
            replayed += 1
            if len(out) >= self.settings.stage_batch_size:  # a whole log's replay must not wait in memory
                self.publish_all({stage.part.partition}, out)
                emit(out)
                out.clear()
        self.publish_all({stage.part.partition}, out)
        stage.position = max(start, up_to)
        log.info("profile state rebuilt: partition %d restored=%d customers from the state table at offset %d, "
                 "replayed=%d records up to offset %d", stage.part.partition, restored, start, replayed,
                 stage.position)

    def feed(self, stage: PartitionStage, topic: str, offset: int, value: bytes | None, headers: Any,
             out: list[Outgoing]) -> None:
        if not self.traced:
            self.fold_message(stage, topic, offset, value, headers, out)
            return
        with _TRACER.start_as_current_span(
                "profile", context=context_from_headers(headers), kind=trace.SpanKind.CONSUMER,
                attributes={MESSAGING_TOPIC: topic, MESSAGING_PARTITION: stage.part.partition,
                            MESSAGING_OFFSET: offset}):
            self.fold_message(stage, topic, offset, value, headers, out, kafka_headers() or None)

    def fold_message(self, stage: PartitionStage, topic: str, offset: int, value: bytes | None, headers: Any,
                     out: list[Outgoing], trace_headers: list[tuple[str, bytes]] | None = None) -> None:
        """Fold one message of a partition; an event waits in ``stage.raw`` (with the trace to continue)."""
        part = stage.part
        stage.position = offset + 1
        try:
            record = resolved.decode(value, headers, self.serde, part.folder, self.secret)
        except (ValueError, KeyError) as exc:
            # Nobody but the two stages writes here; a record that does not read is kept, with why.
            out.append((self.names["dlq"], None, value, dlq_headers(f"not a record of resolved: {exc}", topic,
                                                                    part.partition, offset)))
            count_events("profile", "dead_lettered", 1)
            return
        if isinstance(record, Resolved):
            stage.raw[record.position] = (value, trace_headers)
        part.feed(offset, record)

    def publish_all(self, partitions: set[int], out: list[Outgoing]) -> None:
        """Add what these partitions folded to ``out``, and what views they handed in locally released.

        Every partition's output must be in ``out`` before the batch's state is written, so a
        partition that a local hand-in released is published in the same call.
        """
        pending = set(partitions)
        while pending:
            partition = min(pending)
            pending.discard(partition)
            pending |= self.publish(self.stages[partition], out)

    def publish(self, stage: PartitionStage, out: list[Outgoing]) -> set[int]:
        """Add what the stage folded since the last call to ``out``; returns the partitions it handed views to.

        A view for a partition this worker holds (and has recovered) is handed in straight away as well
        as written to ``resolved``: the survivor's partition holds every record behind the merge until
        the view arrives, and a round trip through Kafka per merge kept the profile waiting (30,000
        events: 28,000 records held at once, batches of two or three records, 911 events/s).
        """
        part, folder = stage.part, stage.part.folder
        outcome = part.drain()
        for record in outcome.followed:
            value, trace_headers = stage.raw_of(record)
            out.append((self.names["customer-events"], record.customer_id.encode(), value, trace_headers))
        count_events("profile", "folded", len(outcome.followed))
        for record, reason in outcome.rejected:
            value, _ = stage.raw_of(record)
            # Named by where it came in: its offset in the ordered log (identity's position).
            out.append((self.names["dlq"], record.customer_id.encode(), value,
                        dlq_headers(reason, self.settings.topic("accepted"), 0, record.position[0])))
        for record in outcome.held:
            stage.raw.pop(record.position, None)  # kept in the view (and its state record) until decided
        # Held refunds decided since: their bytes again from the event (the view keeps the event, not them).
        for customer_id, event in outcome.released:
            out.append((self.names["customer-events"], customer_id.encode(), self.serde.serialize(event), None))
        for customer_id, event, reason, position in outcome.held_rejected:
            out.append((self.names["dlq"], customer_id.encode(), self.serde.serialize(event),
                        dlq_headers(reason, self.settings.topic("accepted"), 0, position)))
        count_events("profile", "folded", len(outcome.released))
        count_events("profile", "dead_lettered", len(outcome.rejected) + len(outcome.held_rejected))
        handed: set[int] = set()
        for target, hand_in in outcome.hand_ins:
            key, value, headers = resolved.encode(hand_in, None, self.secret)
            out.append((self.names["resolved"], key, value, headers, target))
            local = self.stages.get(target)
            if local is not None and local.position >= 0:
                local.part.receive(hand_in)
                handed.add(target)
        for alert, context in folder.drain_alerts():
            doc = {**alert.to_json(), **context}
            out.append((alert_topic(self.settings, alert.kind), alert.customer_id.encode(),
                        self.alert_serde.serialize(doc), None))
        for customer_id, entry in folder.drain_entries():
            doc = {"customer_id": customer_id, "entry": entry.to_json()}
            out.append((self.names["loyalty"], customer_id.encode(), orjson.dumps(doc), None))
        touched, merged = folder.drain_changes()
        # update(), not |=: ``set |= dict.keys()`` binds a new set, and the due indexes would then report
        # their changes (a hand-out, a tick) into the old one, never written.
        stage.changed.update(touched)
        stage.changed.update(merged)
        views = self.names["customer-views"]
        as_of = as_of_of(folder)
        # Identity's position folded up to: it orders this partition's records about an id against other
        # partitions' (a card against the merge of its customer by the survivor's partition).
        position = log_position(part.last) if part.last >= (0, 0) else 0
        # Their cards go out with handle()'s render_cards(), as of now: a card held back says what it said
        # here, so its as_of and position order it against other partitions' merge and erasure records.
        stage.unrendered.update(dict.fromkeys(touched, (as_of, position)))
        for customer_id in outcome.erased:
            stage.unrendered.pop(customer_id, None)  # an erased view stays, empty: it must get no card
        stamp = as_of.isoformat(timespec="milliseconds").replace("+00:00", "Z")
        for alias, survivor in sorted(merged.items()):
            # The merging event's own position where this partition folded it (an alias of the merged id,
            # re-pointed along, has none of its own: the partition's).
            at = outcome.merged_at.get(alias)
            out.append((views, *merged_record(alias, stamp, position if at is None else log_position(at), survivor)))
        for customer_id in outcome.erased:
            out.append((views, *erased_record(customer_id, stamp, position)))
            key, value, headers = erasure_record(customer_id, as_of)
            out.append((self.names["customer-events"], key, value, headers))
        for record in outcome.dropped:
            stage.raw.pop(record.position, None)  # a re-send of a folded event: nothing to publish
        return handed

    def render_cards(self, stage: PartitionStage, out: list[Outgoing]) -> None:
        """Add the card of every customer the partition changed since its cards last went out to ``out``."""
        folder = stage.part.folder
        views = self.names["customer-views"]
        for customer_id, (as_of, position) in sorted(stage.unrendered.items()):
            stamp = as_of.isoformat(timespec="milliseconds").replace("+00:00", "Z")
            view = folder.views.get(customer_id)
            if view is None:
                continue  # merged away or handed over to its survivor's partition since: no card of its own
            card = render(view, as_of, folder.config.segment, folder.rules)
            # The keyed hashes of its identifiers, so a lookup by phone or card finds the customer.
            keys = {kind: sorted(found) for kind, found in view.keys.items()}
            out.append((views, *card_record(customer_id, stamp, position, card, keys)))
        stage.unrendered.clear()


def register_profile(app: faust.App, settings: Settings) -> None:
    """Run the profile stage as a task of ``app``."""
    add_stage(app, settings, ProfileLoop(settings))
