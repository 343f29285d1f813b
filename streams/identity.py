"""The identity agent: who every accepted event belongs to, decided in one ordered place.

Input is ``touchpoint.accepted``: every event the ingest agent accepted, on a
single partition, so identity decisions (mints, links, merges, refusals) are
taken in one order that every replay repeats; two workers can never mint two
ids for one person. The agent runs identity's half of the pure core
(:class:`~touchpoint.core.partitions.IdentityLog` over
:meth:`Folder.identify <touchpoint.core.fold.Folder.identify>`), the same code
``touchpoint fold`` runs.

Output, per batch:

* ``touchpoint.identity``: every identity decision, as JSON, keyed by customer id;
* ``touchpoint.resolved``: the customer-keyed stream the profile agent
  (:mod:`streams.profile`) folds: each event keyed by its customer (in the
  partition :func:`~touchpoint.core.partitions.partition_of` gives), a
  hand-out to the partition of every customer an event merged away, every tick
  to every partition, every erasure to the erased customer's partition
  (records: :mod:`streams.resolved`);
* ``touchpoint.dlq``: events identity refuses (an invalid identifier), with
  the reason and source position, and control records that do not read.

Ticks (``touchpoint clock``) and erasures (``touchpoint privacy erase``) ride
in the same ordered topic, marked by the header ``touchpoint-record``.

State: ``touchpoint.identity-state`` (:mod:`streams.state`), keyed by customer
id: identifier keys, aliases, mint positions, refusals, erasures, plus a
checkpoint (the next offset of ``accepted``), written in one Kafka transaction
after a batch's output is acknowledged and at most every ``STATE_FLUSH_S``.
On start the agent claims the table (fencing any earlier writer), reads it
back and replays ``accepted`` from the checkpoint up to its group's committed
offset (output of that stretch went out before the offsets were committed). A
table it cannot use is reported and identity rebuilt from the whole log.

A message below the offset the state expects is a re-delivery and is skipped;
one above it means the partition was another worker's meanwhile (or our table
write was fenced): the agent recovers first. Records identity re-sends after a
crash carry the positions they had, and the profile drops them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

import faust
from aiokafka.errors import KafkaError, ProducerFenced
from opentelemetry import trace

from connectors.clock import TICK_VALUE, is_control
from connectors.privacy import erased_id, is_erasure
from connectors.registry import RegistryClient
from connectors.serde import EventSerde
from streams import resolved
from streams.batch import BATCH_SIZE, BATCH_WITHIN_S, STATE_FLUSH_S, Outgoing, send_batch
from streams.ingest import dlq_headers
from streams.state import StateTable, committed_offset, read_range
from touchpoint.core.fold import Folder, FoldConfig, Rejected, tick_of
from touchpoint.core.identity import Decision, LinkRefused, Linked, Merged, Minted
from touchpoint.core.partitions import IdentityLog, Record
from touchpoint.core.snapshot import CHECKPOINT_KEY, SnapshotError, checkpoint_record, customer_records, restore
from touchpoint.settings import Settings
from touchpoint.telemetry import context_from_headers, count_events, kafka_headers, tracer
from touchpoint.telemetry_attrs import MESSAGING_OFFSET, MESSAGING_TOPIC

log = logging.getLogger(__name__)

_TRACER = tracer(__name__)


def stage_folder(settings: Settings) -> Folder:
    """The Folder both stages run (each uses its half), configured from the settings."""
    return Folder(FoldConfig(region=settings.phone_region, loyalty_rules=settings.loyalty_rules),
                  secret=settings.identifier_key.get_secret_value().encode(), keep_decisions=False,
                  log_clock_check=False)


def is_tick(headers: Any) -> bool:
    """Whether a message's headers mark it as the clock's tick (a list of pairs or a mapping)."""
    return is_control(headers, TICK_VALUE)


class Fed:
    """What one message of ``accepted`` caused: decisions, records for the partitions, or a rejection."""

    __slots__ = ("customer_id", "decisions", "records", "reason")

    def __init__(self, customer_id: str | None = None, decisions: tuple[Decision, ...] = (),
                 records: list[tuple[int, Record]] | None = None, reason: str | None = None) -> None:
        self.customer_id = customer_id
        self.decisions = decisions
        self.records = records or []
        self.reason = reason


def changed_by(decisions: tuple[Decision, ...]) -> set[str]:
    """The customers whose identity record a batch of decisions changes."""
    changed: set[str] = set()
    for decision in decisions:
        if isinstance(decision, Merged):
            changed.update((decision.survivor, decision.merged))
        elif isinstance(decision, (Minted, Linked, LinkRefused)):
            changed.add(decision.customer_id)
    return changed


class IdentityStage:
    """The identity Folder and how the agent feeds, persists and recovers it."""

    def __init__(self, settings: Settings, serde: EventSerde) -> None:
        self.settings = settings
        self.serde = serde
        self.log = IdentityLog(stage_folder(settings), settings.topic_partitions)
        self.changed: set[str] = set()
        #: The next offset of ``accepted`` the state expects (below: a re-delivery; above: recover first).
        self.position = 0
        self._flushed_at = 0.0
        #: The position of the last write (None: not recovered yet, so there is nothing of ours to write).
        self._written: int | None = None

    def feed(self, offset: int, value: bytes, headers: Any) -> Fed:
        """One message of ``accepted``: a tick, an erasure or an event."""
        if is_erasure(headers):
            customer_id = erased_id(value)
            if customer_id is None:
                return Fed(reason='not an erasure: expected {"erase": "<customer id>"}')
            ids, records = self.log.erase(offset, customer_id)
            self.changed.update(ids)
            return Fed(records=records)
        if is_tick(headers):
            at = None
            try:
                at = tick_of(json.loads(value))
            except ValueError:
                pass
            if at is None:
                return Fed(reason='not a tick: expected {"tick": "<ISO-8601 instant with zone>"}')
            return Fed(records=self.log.tick(offset, at))
        event = self.serde.read_checked(value)  # accepted upstream: it decodes and honours the contract
        try:
            customer_id, decisions, records = self.log.event(offset, event)
        except Rejected as exc:
            return Fed(reason=str(exc))
        self.changed |= changed_by(decisions)
        return Fed(customer_id, decisions, records)

    async def recover(self, topic: str, table: StateTable, up_to: int | None = None) -> int:
        """Load the state table, then replay ``topic`` from its checkpoint up to ``up_to`` (None: committed)."""
        self.log = IdentityLog(stage_folder(self.settings), self.settings.topic_partitions)
        self.changed = set()
        folder = self.log.folder
        target = await committed_offset(self.settings, topic, 0) if up_to is None else up_to
        await asyncio.to_thread(table.ensure_topic)
        await table.claim()  # fences a previous owner: it can no longer write behind our back
        records = await table.load()
        start = 0
        if records:
            try:
                start = restore(folder, records).next_offset
            except SnapshotError as exc:
                log.warning("identity state table unusable, rebuilding from the log", extra={"reason": str(exc)})
                self.log = IdentityLog(stage_folder(self.settings), self.settings.topic_partitions)
                start = 0
        restored = len(self.log.folder.state.seq)
        replayed = 0
        async for message in read_range(self.settings, topic, 0, start, target):
            self.feed(message.offset, message.value, message.headers)  # published by the run that fed it first
            replayed += 1
        self.position = max(target, start)
        self._written = start
        log.info("identity state rebuilt: restored=%d ids from the state table at offset %d, "
                 "replayed=%d messages of the log up to offset %d", restored, start, replayed, self.position)
        return replayed

    async def persist(self, table: StateTable) -> None:
        """Write the changed customers and the checkpoint, at most every ``STATE_FLUSH_S``."""
        now = time.monotonic()
        if now - self._flushed_at < STATE_FLUSH_S:
            return
        if self.position < 0 or self._written is None or (not self.changed and self.position == self._written):
            return  # not recovered (or fenced): nothing of ours to write; or nothing new
        records = customer_records(self.log.folder, sorted(self.changed))
        try:
            await table.write(records, (CHECKPOINT_KEY, checkpoint_record(self.log.folder, self.position)))
        except ProducerFenced:
            log.warning("identity state table claimed by another worker; recovering before the next message")
            self.position = -1
            await table.close()
            return
        except KafkaError as exc:
            log.warning("identity state table write failed, retried with the next batch: %s", exc)
            await table.close()
            return
        self.changed.clear()
        self._flushed_at = now
        self._written = self.position


def register_identity(app: faust.App, settings: Settings) -> None:
    """Register the identity agent on ``app``."""
    raw = {"key_serializer": "raw", "value_serializer": "raw"}
    accepted = app.topic(settings.topic("accepted"), key_type=bytes, value_type=bytes, **raw)
    stage = IdentityStage(settings, EventSerde(RegistryClient(settings.registry_url)))
    secret = settings.identifier_key.get_secret_value().encode()
    names = {name: settings.topic(name) for name in ("identity", "resolved", "dlq")}

    table = StateTable(settings, "identity-state")
    # The agent's batches and the quiet-time flush never interleave: a write reads what feeding changes.
    lock = asyncio.Lock()

    @app.agent(accepted, name="identity")
    async def identity(stream: faust.StreamT[bytes]) -> None:
        topic = accepted.get_topic_name()
        async with lock:
            await stage.recover(topic, table)
        try:
            async for events in stream.take_events(BATCH_SIZE, within=BATCH_WITHIN_S):
                async with lock:
                    await feed_batch(topic, events)
        finally:
            await table.close()

    @app.timer(STATE_FLUSH_S)
    async def flush_identity_state() -> None:
        """Write what the last batches changed once the stream goes quiet (the agent writes after batches)."""
        async with lock:
            await stage.persist(table)

    async def feed_batch(topic: str, events: list[Any]) -> None:
        out: list[Outgoing] = []
        for event in events:
            message = event.message
            if message.offset > stage.position:
                # Not the message our state expects: the partition was another worker's meanwhile
                # (or our table write was fenced). Publish what this batch fed, then recover.
                await send_batch(app, out)
                out = []
                await stage.recover(topic, table, up_to=message.offset)
            if message.offset < stage.position:
                continue  # fed already, and its output published then
            feed_message(message, out)
            stage.position = message.offset + 1
        # Acknowledged before the batch counts as done: a crash now re-delivers, never loses.
        await send_batch(app, out)
        await stage.persist(table)

    def feed_message(message: Any, out: list[Outgoing]) -> None:
        with _TRACER.start_as_current_span(
                "identity", context=context_from_headers(message.headers), kind=trace.SpanKind.CONSUMER,
                attributes={MESSAGING_TOPIC: message.topic, MESSAGING_OFFSET: message.offset}):
            fed = stage.feed(message.offset, message.value, message.headers)
            trace_headers = kafka_headers()
        if fed.reason is not None:
            out.append((names["dlq"], message.key, message.value,
                        dlq_headers(fed.reason, message.topic, message.partition, message.offset)))
            count_events("identity", "dead_lettered", 1)
            return
        if fed.customer_id is not None:
            count_events("identity", "resolved", 1)
            key = fed.customer_id.encode()
            out += [(names["identity"], key, json.dumps(d.to_json()).encode(), None) for d in fed.decisions]
        for partition, record in fed.records:
            key, value, headers = resolved.encode(record, message.value, secret)
            out.append((names["resolved"], key, value, [*headers, *trace_headers], partition))
