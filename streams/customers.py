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

State is event-sourced: on start the agent replays ``touchpoint.accepted``
from the beginning up to its group's committed offset through the same
Folder, then continues from there. Faust is at-least-once: events after the
committed offset may be seen again, and the Folder ignores an event id it
has already folded, so re-delivery changes nothing. The replay grows with
the log (snapshots are the next step); the one ordered partition bounds
throughput to one core (measured in bench/pipeline).
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import faust
from aiokafka import AIOKafkaConsumer, TopicPartition

from connectors.alerts import AlertSerde, alert_topic
from connectors.clock import TICK_HEADER, TICK_VALUE
from connectors.registry import RegistryClient
from connectors.serde import EventSerde
from streams.app import Outgoing, send_batch
from streams.ingest import dlq_headers
from touchpoint.core.fold import Folder, FoldConfig, tick_of
from touchpoint.core.profile import render
from touchpoint.settings import Settings

log = logging.getLogger(__name__)

BATCH_SIZE = 1000
BATCH_WITHIN_S = 0.05


def as_of_of(folder: Folder) -> datetime:
    """The log's clock: the latest event time folded so far."""
    return datetime.fromtimestamp(0, UTC) + timedelta(milliseconds=folder.latest_ms or 0)


class CustomerStage:
    """The Folder and how the agent feeds and rebuilds it."""

    def __init__(self, settings: Settings, serde: EventSerde) -> None:
        self.settings = settings
        self.serde = serde
        self.folder = self._new_folder()

    def _new_folder(self) -> Folder:
        return Folder(FoldConfig(region=self.settings.phone_region, loyalty_rules=self.settings.loyalty_rules),
                      secret=self.settings.identifier_key.get_secret_value().encode(), keep_decisions=False,
                      log_clock_check=False)

    def add_message(self, value: bytes, headers: Any) -> tuple[str | None, list[Any], str | None]:
        """Fold one message of the accepted topic: a tick, or an event as :meth:`add`.

        A tick answers ``(None, [], None)``; an unreadable tick (never written by our clock)
        answers its rejection reason, for the dead-letter topic.
        """
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

    async def rebuild(self, topic: str) -> int:
        """Replay ``topic`` up to the agent's committed offset; returns the events replayed.

        Starts from an empty Folder: after an agent restart in the same process the old
        state may hold events past the committed offset, which will be re-delivered.
        """
        self.folder = self._new_folder()
        tp = TopicPartition(topic, 0)
        probe = AIOKafkaConsumer(bootstrap_servers=self.settings.kafka_bootstrap,
                                 group_id=self.settings.topic_prefix, enable_auto_commit=False)
        await probe.start()
        try:
            committed = await probe.committed(tp) or 0
        finally:
            await probe.stop()
        if committed == 0:
            log.info("customer state rebuilt", extra={"replayed": 0, "up_to_offset": 0, "customers": 0})
            return 0
        reader = AIOKafkaConsumer(bootstrap_servers=self.settings.kafka_bootstrap, group_id=None,
                                  enable_auto_commit=False, isolation_level="read_committed")
        await reader.start()
        replayed = 0
        try:
            reader.assign([tp])
            await reader.seek_to_beginning(tp)
            while await reader.position(tp) < committed:
                batch = await reader.getmany(tp, timeout_ms=1000, max_records=5000)
                for message in batch.get(tp, []):
                    if message.offset >= committed:
                        break
                    self.add_message(message.value, message.headers)
                    replayed += 1
        finally:
            await reader.stop()
        self.folder.drain_changes()  # already published by the run that folded them first
        self.folder.drain_entries()
        self.folder.drain_alerts()
        log.info("customer state rebuilt", extra={"replayed": replayed, "up_to_offset": committed,
                                                  "customers": len(self.folder.views)})
        return replayed


def is_tick(headers: Any) -> bool:
    """Whether a message's headers mark it as the clock's tick (a list of pairs or a mapping)."""
    if not headers:
        return False
    pairs = headers.items() if isinstance(headers, dict) else headers
    return any(key == TICK_HEADER and value == TICK_VALUE for key, value in pairs)


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
        await stage.rebuild(accepted.get_topic_name())
        async for events in stream.take_events(BATCH_SIZE, within=BATCH_WITHIN_S):
            out: list[Outgoing] = []
            for event in events:
                message = event.message
                customer_id, decisions, reason = stage.add_message(message.value, message.headers)
                if reason is not None:
                    out.append((names["dlq"], message.key, message.value,
                                dlq_headers(reason, message.topic, message.partition, message.offset)))
                    continue
                if customer_id is None:  # a tick: its expiries and alerts are drained below
                    continue
                key = customer_id.encode()  # type: ignore[union-attr]
                out += [(names["identity"], key, json.dumps(d.to_json()).encode(), None) for d in decisions]
                out.append((names["customer-events"], key, message.value, None))
            for alert, context in stage.folder.drain_alerts():
                doc = {**alert.to_json(), **context}
                out.append((alert_topic(settings, alert.kind), alert.customer_id.encode(),
                            alert_serde.serialize(doc), None))
            for customer_id, entry in stage.folder.drain_entries():
                doc = {"customer_id": customer_id, "entry": entry.to_json()}
                out.append((names["loyalty"], customer_id.encode(), json.dumps(doc).encode(), None))
            touched, merged = stage.folder.drain_changes()
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
            # Acknowledged before the batch counts as done: a crash now re-delivers, never loses.
            await send_batch(app, out)
