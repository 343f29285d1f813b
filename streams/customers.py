"""The customers agent: identity resolution and the customer views, in one ordered place.

Input is ``touchpoint.accepted``: every event the ingest agent accepted, on a
single partition, so identity decisions (mints, links, merges, refusals) are
taken in one order that every replay repeats; two workers can never mint two
ids for one person. The agent runs exactly the pure core that ``touchpoint
fold`` runs (:class:`~touchpoint.core.fold.Folder`), so the fold of this
topic is the oracle of what the worker must produce.

Output, per batch:

* ``touchpoint.identity``: every identity decision, as JSON, keyed by customer id;
* ``touchpoint.customer-events``: the event's original Avro bytes keyed by
  its customer id (so one customer's events stay in order on one partition);
* ``touchpoint.customer-views``: the rendered card of every customer the
  batch changed (compacted, keyed by customer id) with the keyed hashes of
  its identifiers (for lookups; never clear values), and for a customer
  merged away a record naming its survivor;
* ``touchpoint.loyalty``: every loyalty ledger entry issued (earn, reversal,
  expiry) as JSON ``{"customer_id", "entry"}``, keyed by the customer it was
  issued to; the entry id is derived from the log, so a re-emission after a
  crash is the same entry and the ledger projection keeps one row;
* ``touchpoint.alerts.dormancy`` / ``touchpoint.alerts.churn``: alert
  transitions (Avro ``touchpoint.alerts.Alert``), keyed by customer id, with
  the customer's segment, value and contactability;
* ``touchpoint.dlq``: events the core refuses once history is known (an
  invalid identifier, a refund of an unknown purchase or above it), with the
  reason and source position.

Ticks. The clock (``touchpoint clock``) writes ``{"tick": …}`` records with
the header ``touchpoint-record: tick`` into the same ordered topic; the agent
hands them to ``Folder.tick`` (expiries, alert decisions), so a replay of the
topic decides exactly the same alerts at the same places.

Erasures. ``touchpoint privacy erase`` writes ``{"erase": customer id}``
records with the header ``touchpoint-record: erase`` there too
(:mod:`connectors.privacy`); the agent hands them to ``Folder.erase`` and
publishes, for the erased id and each alias, an ``{"erased": true}`` card on
``customer-views`` and an erase record on ``customer-events``, so the
projections drop the person's rows, live and on every rebuild.

State: a changelog-backed table keyed by customer id (``touchpoint.customer-state``,
:mod:`streams.state`). After a batch's output is acknowledged, and at most
every ``STATE_FLUSH_S``, the agent writes the state record of every customer
changed since the last write (tombstones for the merged away) and a
checkpoint (the next offset of ``accepted``) in one Kafka transaction. On
start it claims the table (fencing any earlier writer), reads it back
(identity index, views, ledgers, alert episodes, due times) and replays
``accepted`` from the checkpoint up to its group's committed offset through
the same Folder. A table it cannot use (missing, another format, a bad
signature) is reported and the state rebuilt from the whole log, which stays
the source of truth.

The agent knows the offset its state expects next. A message below it is a
re-delivery (Faust is at-least-once) and is skipped: its output went out
before the state moved past it. A message above it means the partition was
another worker's meanwhile (two workers, a rebalance) or our table write was
fenced: the agent recovers as on start before folding it. So two workers can
share the partitions and either can die. The one ordered partition bounds
throughput to one core (measured in bench/pipeline).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import faust
from opentelemetry import trace
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError, ProducerFenced

from connectors.alerts import AlertSerde, alert_topic
from connectors.clock import TICK_VALUE, is_control
from connectors.privacy import erased_id, erasure_record, is_erasure
from connectors.registry import RegistryClient
from connectors.serde import EventSerde
from streams.app import Outgoing, send_batch
from streams.ingest import dlq_headers
from streams.state import StateTable
from touchpoint.core.fold import Folder, FoldConfig, tick_of
from touchpoint.core.profile import render
from touchpoint.core.snapshot import CHECKPOINT_KEY, SnapshotError, checkpoint_record, customer_records, restore, \
    track_changes
from touchpoint.kafka_security import aiokafka_options
from touchpoint.settings import Settings
from touchpoint.telemetry import context_from_headers, count_events, kafka_headers, tracer
from touchpoint.telemetry_attrs import MESSAGING_OFFSET, MESSAGING_TOPIC

log = logging.getLogger(__name__)

BATCH_SIZE = 1000
BATCH_WITHIN_S = 0.05
_TRACER = tracer(__name__)
STATE_FLUSH_S = 1.0
"""At most this often the state table is written; a restart replays at most this much of the log."""


def as_of_of(folder: Folder) -> datetime:
    """The log's clock: the latest event time folded so far."""
    return datetime.fromtimestamp(0, UTC) + timedelta(milliseconds=folder.latest_ms or 0)


class CustomerStage:
    """The Folder and how the agent feeds, persists and recovers it."""

    def __init__(self, settings: Settings, serde: EventSerde) -> None:
        self.settings = settings
        self.serde = serde
        self.folder, self.changed = self._new_folder()
        #: The next offset of ``accepted`` the in-memory state expects: a message below it is folded
        #: already (a re-delivery), a message above it means another worker folded the ones between
        #: (the partition moved and came back), so the state must be recovered first.
        self.position = 0
        self._flushed_at = 0.0
        #: Ids erased since the last publish (the erased customer first, then its aliases).
        self.erased: list[str] = []

    def _new_folder(self) -> tuple[Folder, set[str]]:
        folder = Folder(FoldConfig(region=self.settings.phone_region, loyalty_rules=self.settings.loyalty_rules),
                        secret=self.settings.identifier_key.get_secret_value().encode(), keep_decisions=False,
                        log_clock_check=False)
        return folder, track_changes(folder)

    def add_message(self, value: bytes, headers: Any) -> tuple[str | None, list[Any], str | None]:
        """Fold one message of the accepted topic: a tick, an erasure, or an event as :meth:`add`.

        A tick or an erasure answers ``(None, [], None)``; an unreadable one (never written by
        our clock or ``touchpoint privacy``) answers its rejection reason, for the dead-letter topic.
        """
        if is_erasure(headers):
            customer_id = erased_id(value)
            if customer_id is None:
                return None, [], 'not an erasure: expected {"erase": "<customer id>"}'
            erased = self.folder.erase(customer_id)
            self.erased += erased
            self.changed.update(erased)
            return None, [], None
        if is_tick(headers):
            at = None
            try:
                at = tick_of(json.loads(value))
            except ValueError:
                pass
            if at is None:
                return None, [], 'not a tick: expected {"tick": "<ISO-8601 instant with zone>"}'
            self.folder.tick(at)
            return None, [], None
        return self.add(value)

    def add(self, raw: bytes) -> tuple[str | None, list[Any], str | None]:
        """Fold one accepted message: (customer id, decisions, rejection reason)."""
        event = self.serde.deserialize(raw)  # accepted upstream: it decodes and honours the contract
        rejected_before = len(self.folder.rejected)
        decisions = self.folder.add(event)
        reason = None
        if len(self.folder.rejected) > rejected_before:
            reason = self.folder.rejected[-1]["reason"]
            del self.folder.rejected[rejected_before:]  # the DLQ holds them; don't keep them twice
        return self.folder.last_customer_id, decisions, reason

    def drain_changes(self) -> tuple[set[str], dict[str, str]]:
        """:meth:`Folder.drain_changes`, remembering the customers for the next state write."""
        touched, merged = self.folder.drain_changes()
        self.changed |= touched
        self.changed |= merged.keys()
        return touched, merged

    async def recover(self, topic: str, table: StateTable, up_to: int | None = None) -> int:
        """Load the state table, then replay ``topic`` from its checkpoint up to ``up_to``.

        ``up_to`` is the offset of the message at hand (everything before it was folded
        and published, by this worker or another); on start, None: the group's committed
        offset. Starts from an empty Folder: the old state may hold messages not yet
        committed that another worker will fold. Returns the events replayed from the log.
        """
        self.folder, self.changed = self._new_folder()
        tp = TopicPartition(topic, 0)
        probe = AIOKafkaConsumer(bootstrap_servers=self.settings.kafka_bootstrap,
                                 group_id=self.settings.topic_prefix, enable_auto_commit=False,
                                 **aiokafka_options(self.settings))
        await probe.start()
        try:
            committed = await probe.committed(tp) or 0
        finally:
            await probe.stop()
        await asyncio.to_thread(table.ensure_topic)
        await table.claim()  # fences a previous owner: it can no longer write behind our back
        records = await table.load()
        start = 0
        if records:
            try:
                start = restore(self.folder, records).next_offset
            except SnapshotError as exc:
                log.warning("customer state table unusable, rebuilding from the log", extra={"reason": str(exc)})
                self.folder, self.changed = self._new_folder()
                start = 0
        restored = len(self.folder.views)
        replayed = 0
        target = committed if up_to is None else up_to
        if target > start:
            reader = AIOKafkaConsumer(bootstrap_servers=self.settings.kafka_bootstrap, group_id=None,
                                      enable_auto_commit=False, isolation_level="read_committed",
                                      **aiokafka_options(self.settings))
            await reader.start()
            try:
                reader.assign([tp])
                reader.seek(tp, start)
                while await reader.position(tp) < target:
                    batch = await reader.getmany(tp, timeout_ms=1000, max_records=5000)
                    for message in batch.get(tp, []):
                        if message.offset >= target:
                            break
                        self.add_message(message.value, message.headers)
                        replayed += 1
            finally:
                await reader.stop()
        self.drain_changes()  # what the replay changed goes into the next state write
        self.folder.drain_entries()  # already published by the run that folded them first
        self.folder.drain_alerts()
        self.erased.clear()
        self.position = max(target, start)
        log.info("customer state rebuilt: restored=%d customers from the state table at offset %d, "
                 "replayed=%d events of the log up to offset %d, %d customers",
                 restored, start, replayed, max(target, start), len(self.folder.views))
        return replayed

    async def persist(self, table: StateTable, force: bool = False) -> bool:
        """Write the changed customers and the checkpoint, at most every ``STATE_FLUSH_S`` unless ``force``.

        The table is a cache of the log: a failed write is logged and retried with the next batch
        (the changes stay pending). Fenced by a newer owner of the partition, this worker's state
        is stale: the next message recovers it.
        """
        now = time.monotonic()
        if not force and now - self._flushed_at < STATE_FLUSH_S:
            return False
        records = customer_records(self.folder, sorted(self.changed))
        try:
            await table.write(records, (CHECKPOINT_KEY, checkpoint_record(self.folder, self.position)))
        except ProducerFenced:
            log.warning("customer state table claimed by another worker; recovering before the next message")
            self.position = -1
            await table.close()
            return False
        except KafkaError as exc:
            log.warning("customer state table write failed, retried with the next batch: %s", exc)
            await table.close()
            return False
        self.changed.clear()
        self._flushed_at = now
        return True


def is_tick(headers: Any) -> bool:
    """Whether a message's headers mark it as the clock's tick (a list of pairs or a mapping)."""
    return is_control(headers, TICK_VALUE)


def register_customers(app: faust.App, settings: Settings) -> None:
    """Register the customers agent on ``app``."""
    raw = {"key_serializer": "raw", "value_serializer": "raw"}
    accepted = app.topic(settings.topic("accepted"), key_type=bytes, value_type=bytes, **raw)
    registry = RegistryClient(settings.registry_url)
    stage = CustomerStage(settings, EventSerde(registry))
    alert_serde = AlertSerde(registry)
    segment = stage.folder.config.segment

    names = {name: settings.topic(name)
             for name in ("identity", "customer-events", "customer-views", "loyalty", "dlq")}

    @app.agent(accepted, name="customers")
    async def customers(stream: faust.StreamT[bytes]) -> None:
        table = StateTable(settings)
        topic = accepted.get_topic_name()
        await stage.recover(topic, table)
        try:
            async for events in stream.take_events(BATCH_SIZE, within=BATCH_WITHIN_S):
                out: list[Outgoing] = []
                for event in events:
                    message = event.message
                    if message.offset > stage.position:
                        # Not the message our state expects: the partition was another worker's meanwhile
                        # (or our table write was fenced). Publish what this batch folded, then recover.
                        await publish(out)
                        out = []
                        await stage.recover(topic, table, up_to=message.offset)
                    if message.offset < stage.position:
                        continue  # folded already, and its output published then
                    fold_message(message, out)
                    stage.position = message.offset + 1
                await publish(out)
                await stage.persist(table)
        finally:
            await table.close()

    def fold_message(message: Any, out: list[Outgoing]) -> None:
        """Fold one message of ``accepted`` and add its own output (decisions, keyed event, DLQ) to ``out``."""
        with _TRACER.start_as_current_span(
                "customers", context=context_from_headers(message.headers), kind=trace.SpanKind.CONSUMER,
                attributes={MESSAGING_TOPIC: message.topic, MESSAGING_OFFSET: message.offset}):
            customer_id, decisions, reason = stage.add_message(message.value, message.headers)
            trace_headers = kafka_headers() or None
        if customer_id is not None:  # identity took it (a refund the profile refuses keeps its decisions)
            key = customer_id.encode()
            out += [(names["identity"], key, json.dumps(d.to_json()).encode(), None) for d in decisions]
        if reason is not None:
            out.append((names["dlq"], message.key, message.value,
                        dlq_headers(reason, message.topic, message.partition, message.offset)))
            count_events("customers", "dead_lettered", 1)
            return
        if customer_id is None:  # a tick: its expiries and alerts are drained in publish()
            return
        count_events("customers", "folded", 1)
        out.append((names["customer-events"], customer_id.encode(), message.value, trace_headers))

    async def publish(out: list[Outgoing]) -> None:
        """Send ``out`` with everything the folded messages caused: alerts, ledger entries, cards."""
        for alert, context in stage.folder.drain_alerts():
            doc = {**alert.to_json(), **context}
            out.append((alert_topic(settings, alert.kind), alert.customer_id.encode(),
                        alert_serde.serialize(doc), None))
        for customer_id, entry in stage.folder.drain_entries():
            doc = {"customer_id": customer_id, "entry": entry.to_json()}
            out.append((names["loyalty"], customer_id.encode(), json.dumps(doc).encode(), None))
        touched, merged = stage.drain_changes()
        as_of = as_of_of(stage.folder)
        stamp = as_of.isoformat(timespec="milliseconds").replace("+00:00", "Z")
        for customer_id in sorted(touched):
            card = render(stage.folder.views[customer_id], as_of, segment, stage.folder.rules)
            # The keyed hashes of its identifiers, so a lookup by phone or card finds the customer.
            keys = {kind: sorted(found) for kind, found in stage.folder.state.keys.get(customer_id, {}).items()}
            doc = {"customer_id": customer_id, "as_of": stamp, "view": card, "keys": keys}
            out.append((names["customer-views"], customer_id.encode(), json.dumps(doc).encode(), None))
        for alias, survivor in sorted(merged.items()):
            doc = {"customer_id": alias, "as_of": stamp, "merged_into": survivor}
            out.append((names["customer-views"], alias.encode(), json.dumps(doc).encode(), None))
        for customer_id in stage.erased:
            doc = {"customer_id": customer_id, "as_of": stamp, "erased": True}
            out.append((names["customer-views"], customer_id.encode(), json.dumps(doc).encode(), None))
            key, value, headers = erasure_record(customer_id, as_of)
            out.append((names["customer-events"], key, value, headers))
        stage.erased.clear()
        # Acknowledged before the batch counts as done: a crash now re-delivers, never loses.
        await send_batch(app, out)
