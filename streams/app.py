"""The Faust application: one app, agents registered by concept.

Faust is at-least-once in practice (see its issue tracker), so every agent's
output is idempotent downstream: events keep their producer-chosen
``event_id``, and projections upsert by it.
"""

from __future__ import annotations

import asyncio
import gc

import faust

from connectors.topics import STATE_MAX_RECORD_BYTES, ensure_topics_before_serving
from touchpoint.kafka_security import faust_options
from touchpoint.settings import Settings


def create_app(settings: Settings) -> faust.App:
    """The Faust app with the agents of the settings' stages registered (every one by default).

    Its id (consumer group, internal topic prefix) is the topic prefix, so
    two deployments (or two test runs) on one cluster never share state.
    """
    datadir = settings.home / "faust"
    datadir.mkdir(parents=True, exist_ok=True)  # Faust makes only the last level
    app = faust.App(
        settings.topic_prefix,
        # streams.transport: aiokafka reading only committed records.
        broker=";".join(f"touchpoint://{server}" for server in settings.kafka_bootstrap.split(",")),
        store="memory://",
        # Faust makes its data directory even with the memory store; keep it with the stack's files.
        datadir=str(datadir / "{conf.name}-data"),
        web_enabled=False,
        topic_replication_factor=settings.topic_replication_factor,
        topic_partitions=settings.topic_partitions,
        producer_acks=-1,
        consumer_auto_offset_reset="earliest",
        # A worker killed without leaving its group holds its partitions until the
        # session times out: 10 s instead of Faust's 60 s bounds the pause after a crash.
        broker_session_timeout=10.0,
        broker_heartbeat_interval=2.0,
        # Faust's default (no linger) sends one produce request per record: a profile of the
        # worker showed a quarter of its time writing those to the socket. 5 ms batches them.
        producer_linger=0.005,
        producer_max_batch_size=256 * 1024,
        # A merged customer's view travels between partitions of ``resolved`` in one record.
        producer_max_request_size=STATE_MAX_RECORD_BYTES,
        consumer_max_fetch_size=STATE_MAX_RECORD_BYTES,
        **faust_options(settings),
    )
    from streams.identity import register_identity
    from streams.ingest import register_ingest
    from streams.profile import register_profile

    registers = {"ingest": register_ingest, "identity": register_identity, "profile": register_profile}
    for stage in settings.stages:
        registers[stage](app, settings)
    return app


BATCH_SIZE = 1000
"""Most messages an agent takes at once."""
BATCH_WITHIN_S = 0.05
"""How long an agent waits to fill a batch before it takes what came."""
STATE_FLUSH_S = 1.0
"""At most this often a stage writes its state table; a restart replays at most this much of its input."""

Outgoing = (tuple[str, bytes | None, bytes | None, list[tuple[str, bytes]] | None]
            | tuple[str, bytes | None, bytes | None, list[tuple[str, bytes]] | None, int])
"""(topic, key, value, headers[, partition]) of one record an agent emits (no partition: by key)."""


async def send_batch(app: faust.App, records: list[Outgoing]) -> None:
    """Send a batch of records and wait until Kafka acknowledged all of them.

    Agents emit through the app's producer rather than ``Topic.send``: per
    record, Faust's channel machinery cost about as much as the rest of the
    agent (a bare forwarding agent went from 2.0k to 3.9k records/s here).
    Waiting before the next batch keeps the guarantee: the source offsets are
    committed only after the batch's output is acknowledged.
    """
    producer = app.producer
    futures = [await producer.send(record[0], record[1], record[2], partition=record[4] if len(record) > 4 else None,
                                   timestamp=None, headers=record[3])
               for record in records]
    if futures:
        await asyncio.gather(*futures)


GC_THRESHOLDS = (50_000, 20, 100)
"""The worker's garbage-collection thresholds (young, middle, old generation), see :func:`run_worker`."""


def run_worker(settings: Settings, loglevel: str = "info") -> None:
    """Run a Faust worker in the foreground until it is stopped."""
    from faust.worker import Worker

    from touchpoint.telemetry import configure_metrics, configure_tracing

    configure_tracing(settings, "touchpoint-worker")
    configure_metrics(settings, "touchpoint-worker")
    ensure_topics_before_serving(settings, "worker")  # Faust would idle on a topic made after it subscribed
    # A stage holds every customer's state in objects; Python's default collection thresholds (700, 10, 10)
    # walked them again and again (a profile put 17 % of identity's samples in the Avro decode, which costs
    # 9 µs an event in isolation: collections are charged to the allocation that set them off). Rarer young
    # collections: identity alone
    # 0.18-0.19 -> 0.16 CPU-ms an event, the profile alone 0.29-0.30 -> 0.23-0.25 (bench.pipeline's
    # stage runs, 60,000 and 30,000 events). Reference counting still frees all but cycles at once.
    gc.set_threshold(*GC_THRESHOLDS)
    app = create_app(settings)
    Worker(app, loglevel=loglevel).execute_from_commandline()
