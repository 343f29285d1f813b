"""The Faust application: one app, agents registered by concept.

Faust is at-least-once in practice (see its issue tracker), so every agent's
output is idempotent downstream: events keep their producer-chosen
``event_id``, and projections upsert by it.
"""

from __future__ import annotations

import faust

from touchpoint.settings import Settings


def create_app(settings: Settings) -> faust.App:
    """The Faust app with every agent registered.

    Its id (consumer group, internal topic prefix) is the topic prefix, so
    two deployments (or two test runs) on one cluster never share state.
    """
    app = faust.App(
        settings.topic_prefix,
        # streams.transport: aiokafka reading only committed records.
        broker=";".join(f"touchpoint://{server}" for server in settings.kafka_bootstrap.split(",")),
        store="memory://",
        web_enabled=False,
        topic_replication_factor=settings.topic_replication_factor,
        topic_partitions=settings.topic_partitions,
        producer_acks=-1,
        consumer_auto_offset_reset="earliest",
    )
    from streams.ingest import register_ingest

    register_ingest(app, settings)
    return app


def run_worker(settings: Settings, loglevel: str = "info") -> None:
    """Run a Faust worker in the foreground until it is stopped."""
    from faust.worker import Worker

    app = create_app(settings)
    Worker(app, loglevel=loglevel).execute_from_commandline()
