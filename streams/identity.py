"""The identity stage: who every accepted event belongs to, decided in one ordered place.

Input is ``touchpoint.accepted``: every event the ingest stage accepted, on a
single partition, so identity decisions (mints, links, merges, refusals) are
taken in one order that every replay repeats; two workers can never mint two
ids for one person. The stage runs identity's half of the pure core
(:class:`~touchpoint.core.partitions.IdentityLog` over
:meth:`Folder.identify <touchpoint.core.fold.Folder.identify>`), the same code
``touchpoint fold`` runs.

Output, per batch:

* ``touchpoint.identity``: every identity decision, as JSON, keyed by customer id;
* ``touchpoint.resolved``: the customer-keyed stream the profile stage
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
On start the stage claims the table (fencing any earlier writer), reads it
back and replays ``accepted`` from the checkpoint up to its group's committed
offset (output of that stretch went out before the offsets were committed). A
table it cannot use is reported and identity rebuilt from the whole log.

A message below the offset the state expects is a re-delivery and is skipped;
one above it means the partition was another worker's meanwhile (or our table
write was fenced): the stage recovers first. Records identity re-sends after a
crash carry the positions they had, and the profile drops them.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any

import faust
import orjson
from aiokafka.errors import KafkaError, ProducerFenced
from opentelemetry import trace

from connectors.platform.control import TICK_VALUE, erased_id, is_control, is_erasure
from connectors.platform.registry import RegistryClient
from connectors.platform.serde import EventSerde
from streams import resolved
from streams.batch import STATE_FLUSH_BACKLOG_S, STATE_FLUSH_S, Outgoing, Received, add_stage
from streams.history import LogHistory
from streams.ingest import dlq_headers, who_of
from streams.state import StateTable, committed_offset, read_range
from touchpoint.core.fold import FoldConfig, Folder, Rejected, tick_of
from touchpoint.core.identity import Decision, Linked, LinkRefused, Merged, Minted, Refolded
from touchpoint.core.partitions import IdentityLog, Record, Resolved
from touchpoint.core.snapshot import CHECKPOINT_KEY, SnapshotError, checkpoint_record, customer_records, restore
from touchpoint.settings import Settings
from touchpoint.telemetry import context_from_headers, count_events, kafka_headers, tracer, tracing_installed
from touchpoint.telemetry_attrs import MESSAGING_OFFSET, MESSAGING_TOPIC

log = logging.getLogger(__name__)

_TRACER = tracer(__name__)


def stage_folder(settings: Settings) -> Folder:
    """The Folder both stages run (each uses its half), configured from the settings."""
    return Folder(FoldConfig(region=settings.phone_region, loyalty_rules=settings.loyalty_rules,
                             refund_hold_days=settings.refund_hold_days),
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
        elif isinstance(decision, Refolded):
            changed.update(decision.before, decision.after)
    return changed


class IdentityStage:
    """The identity Folder and how the stage feeds, persists and recovers it."""

    def __init__(self, settings: Settings, serde: EventSerde) -> None:
        self.settings = settings
        self.serde = serde
        #: ``accepted`` read again by offset: guardrails decide in event time (see streams.history).
        self.history = LogHistory(settings, settings.topic("accepted"), serde)
        self.log = self._new_log()
        self.changed: set[str] = set()
        #: The next offset of ``accepted`` the state expects (below: a re-delivery; above: recover first).
        self.position = 0
        self._flushed_at = 0.0
        #: The position of the last write (None: not recovered yet, so there is nothing of ours to write).
        self._written: int | None = None

    def _new_log(self) -> IdentityLog:
        folder = stage_folder(self.settings)
        folder.history = self.history
        return IdentityLog(folder, self.settings.topic_partitions)

    def raw_of(self, record: Resolved, value: bytes | None) -> bytes | None:
        """The bytes of a resolved event: the message's own, or for an event of a component folded again,
        those read again from the log."""
        return value if record.origin < 0 else self.history.raw[record.origin]

    def feed(self, offset: int, value: bytes | None, headers: Any) -> Fed:
        """One message of ``accepted``: a tick, an erasure or an event."""
        if value is None:  # nothing of ours writes one; a poison message must not stop the stage
            return Fed(reason="a message without a value: expected an event, a tick or an erasure")
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
        self.history.keep(offset, value)
        who = who_of(headers)
        try:
            if who is not None:
                customer_id, decisions, records = self.log.who(offset, who)
            else:  # accepted before ingest wrote the header: decode the event
                customer_id, decisions, records = self.log.event(offset, self.serde.read_checked(value))
        except Rejected as exc:
            return Fed(reason=str(exc))
        self.changed |= changed_by(decisions)
        self.changed.add(customer_id)  # its events' positions (the history a late event reads again)
        return Fed(customer_id, decisions, records)

    async def recover(self, topic: str, table: StateTable, up_to: int | None = None) -> int:
        """Load the state table, then replay ``topic`` from its checkpoint up to ``up_to`` (None: committed)."""
        self.log = self._new_log()
        self.changed = set()
        folder = self.log.folder
        target = await committed_offset(self.settings, "identity", topic, 0) if up_to is None else up_to
        await table.claim()  # fences a previous owner: it can no longer write behind our back
        records = await table.load()
        start = 0
        if records:
            try:
                start = restore(folder, records).next_offset
            except SnapshotError as exc:
                log.warning("identity state table unusable, rebuilding from the log", extra={"reason": str(exc)})
                self.log = self._new_log()
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

    async def persist(self, table: StateTable, backlog: bool) -> None:
        """Write the changed customers and the checkpoint, at most every ``STATE_FLUSH_S`` (in a backlog less often)."""
        now = time.monotonic()
        if now - self._flushed_at < (STATE_FLUSH_BACKLOG_S if backlog else STATE_FLUSH_S):
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


class IdentityLoop:
    """The identity stage's batches (:class:`streams.batch.Stage`): feed, emit, persist, recover."""

    name = "identity"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.topic = settings.topic("accepted")
        self.topics = [self.topic]
        self.state = IdentityStage(settings, EventSerde(RegistryClient(settings.registry_url)))
        self.table = StateTable(settings, "identity-state")
        self.secret = settings.identifier_key.get_secret_value().encode()
        self.names = {name: settings.topic(name) for name in ("identity", "resolved", "dlq")}
        self.resolved = self.dead_lettered = 0  # events so far, counted into the metrics per batch

    async def start(self) -> None:
        await self.state.recover(self.topic, self.table)

    async def handle(self, batch: list[Received], emit: Callable[[list[Outgoing]], None],
                     backlog: bool) -> list[Outgoing]:
        out: list[Outgoing] = []
        state = self.state
        feed = self.feed_traced if tracing_installed() else self.feed_message
        resolved_before = self.resolved
        dead_before = self.dead_lettered
        for message in batch:
            if message.offset > state.position:
                # Not the message our state expects: the partition was another worker's meanwhile
                # (or our table write was fenced). Recover up to it; what this batch fed before stays in ``out``.
                await state.recover(self.topic, self.table, up_to=message.offset)
            if message.offset < state.position:
                continue  # fed already, and its output published then
            feed(message, out)
            state.position = message.offset + 1
        count_events("identity", "resolved", self.resolved - resolved_before)
        count_events("identity", "dead_lettered", self.dead_lettered - dead_before)
        return out

    async def after_batch(self, backlog: bool) -> None:
        await self.state.persist(self.table, backlog)

    async def close(self) -> None:
        await self.table.close()
        self.state.history.close()

    def feed_traced(self, message: Received, out: list[Outgoing]) -> None:
        """:meth:`feed_message` in a span continuing the event's trace; its context goes on with the records."""
        with _TRACER.start_as_current_span(
                "identity", context=context_from_headers(message.headers), kind=trace.SpanKind.CONSUMER,
                attributes={MESSAGING_TOPIC: message.topic, MESSAGING_OFFSET: message.offset}):
            self.feed_message(message, out, kafka_headers())

    def feed_message(self, message: Received, out: list[Outgoing],
                     trace_headers: list[tuple[str, bytes]] | None = None) -> None:
        names = self.names
        fed = self.state.feed(message.offset, message.value, message.headers)
        if fed.reason is not None:
            out.append((names["dlq"], message.key, message.value,
                        dlq_headers(fed.reason, message.topic, message.partition, message.offset)))
            self.dead_lettered += 1
            return
        if fed.customer_id is not None:
            self.resolved += 1
            key = fed.customer_id.encode()
            for decision in fed.decisions:
                out.append((names["identity"], key, orjson.dumps(decision.to_json()), None))
        for partition, record in fed.records:
            raw = self.state.raw_of(record, message.value) if isinstance(record, Resolved) else None
            key, value, headers = resolved.encode(record, raw, self.secret)
            out.append((names["resolved"], key, value, [*headers, *trace_headers] if trace_headers else headers,
                        partition))


def register_identity(app: faust.App, settings: Settings) -> None:
    """Run the identity stage as a task of ``app``."""
    add_stage(app, settings, IdentityLoop(settings))
