"""The Faust application: the worker's lifecycle, logging and signals, with a task per stage.

Each stage (:mod:`streams.ingest`, :mod:`streams.identity`, :mod:`streams.profile`) is a batch loop
(:mod:`streams.batch`) started as a task of the app. Delivery is at-least-once, so every stage's output is
idempotent downstream: events keep their producer-chosen ``event_id``, and projections upsert by it.
"""

from __future__ import annotations

import gc

import faust

from connectors.platform.topics import ensure_topics_before_serving
from streams.identity import register_identity
from streams.ingest import register_ingest
from streams.profile import register_profile
from touchpoint.kafka_security import faust_options
from touchpoint.settings import Settings


def create_app(settings: Settings) -> faust.App:
    """The Faust app with a task for each of the settings' stages (every one by default).

    Its id (consumer group, internal topic prefix) is the topic prefix, so
    two deployments (or two test runs) on one cluster never share state.
    """
    datadir = settings.home / "faust"
    datadir.mkdir(parents=True, exist_ok=True)  # Faust makes only the last level
    app = faust.App(
        settings.topic_prefix,
        # The stages consume and produce with their own clients (streams.batch); Faust's own are idle.
        broker=";".join(f"kafka://{server}" for server in settings.kafka_bootstrap.split(",")),
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
        **faust_options(settings),
    )
    registers = {"ingest": register_ingest, "identity": register_identity, "profile": register_profile}
    for stage in settings.stages:
        registers[stage](app, settings)
    return app


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
