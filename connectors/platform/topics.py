"""The topics Touchpoint owns, created with explicit configs.

Retention: the channel topics keep records for ``channel_retention_days``
(default 7): a channel system publishing with its own Kafka client may put
clear identifiers there, which ingest seals on the way to ``accepted``
(DESIGN.md §6). Every other topic keeps its records for good (or compacts).

Keys: channel event topics are keyed by a keyed hash of the event's
strongest identifier (:func:`connectors.intake.producer.partition_key`), so one
person's events from one channel stay in order; ``accepted`` has a single
partition (identity is decided in one order); customer-level topics are
keyed by customer id, so all of one customer's events reach one worker in
order.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

from touchpoint.errors import StackError
from touchpoint.kafka_security import describe_connection, kafka_python_options
from touchpoint.settings import Settings

log = logging.getLogger(__name__)

CHANNELS = ("branch", "phone", "email", "web", "sms")


@dataclass(frozen=True)
class TopicSpec:
    """A topic and the configs it is created with."""

    name: str
    partitions: int
    configs: dict[str, str] = field(default_factory=dict)


STATE_MAX_RECORD_BYTES = 8 * 1024 * 1024
"""A customer with a long ledger makes a large state record; Kafka's default cap is 1 MiB."""


def event_topic(settings: Settings, channel: str) -> str:
    """The raw events topic of one channel."""
    return settings.topic(f"events.{channel}")


def channel_configs(settings: Settings) -> dict[str, str]:
    """A channel topic's configs: a short retention, as a channel system may write clear identifiers there.

    Ingest seals them before anything goes on (``accepted`` and what follows keep everything for good),
    so a channel topic is only a buffer in front of ingest. Kafka deletes whole closed segments: rolling
    one a day (Kafka's default is a week) keeps a record of a topic that is written to at most about a
    day past its retention.
    """
    retention_ms = int(settings.channel_retention_days * 86_400_000)
    return {"cleanup.policy": "delete", "retention.ms": str(retention_ms),
            "segment.ms": str(min(retention_ms, 86_400_000))}


def topic_specs(settings: Settings) -> list[TopicSpec]:
    """Every topic of the backbone with its configs."""
    keep_forever = {"retention.ms": "-1", "cleanup.policy": "delete"}
    state_configs = {"cleanup.policy": "compact", "retention.ms": "-1", "segment.ms": "3600000",
                     "max.message.bytes": str(STATE_MAX_RECORD_BYTES)}
    specs = [TopicSpec(event_topic(settings, ch), settings.topic_partitions, channel_configs(settings))
             for ch in CHANNELS]
    specs += [
        TopicSpec(settings.topic("dlq"), settings.topic_partitions, keep_forever),
        # One partition: identity is decided in one order that every replay repeats.
        TopicSpec(settings.topic("accepted"), 1, keep_forever),
        # Latest card per customer: compacted, so a new reader gets every customer once.
        TopicSpec(settings.topic("customer-views"), settings.topic_partitions,
                  {"cleanup.policy": "compact", "retention.ms": "-1"}),
        TopicSpec(settings.topic("customer-events"), settings.topic_partitions, keep_forever),
        # Identity decisions are the log of who-is-who: never deleted.
        TopicSpec(settings.topic("identity"), settings.topic_partitions, keep_forever),
        # Loyalty ledger entries, keyed by customer id: money, never deleted.
        TopicSpec(settings.topic("loyalty"), settings.topic_partitions, keep_forever),
        TopicSpec(settings.topic("alerts.dormancy"), settings.topic_partitions, keep_forever),
        TopicSpec(settings.topic("alerts.churn"), settings.topic_partitions, keep_forever),
        # Lookup keys reading far more than usual, or blocked at their ceiling (connectors.operations.access).
        TopicSpec(settings.topic("alerts.access"), 1, keep_forever),
        # The customer-keyed stream from identity to the profile (streams.identity, streams.profile):
        # resolved events, hand-outs and hand-ins of merged views, ticks, erasures. A profile rebuild replays it.
        TopicSpec(settings.topic("resolved"), settings.topic_partitions,
                  {**keep_forever, "max.message.bytes": str(STATE_MAX_RECORD_BYTES)}),
        # The stages' state tables (streams.state): the latest record per customer (compacted; segments
        # roll hourly, as compaction skips the open one). Identity's has one partition like its input.
        TopicSpec(settings.topic("identity-state"), 1, state_configs),
        TopicSpec(settings.topic("profile-state"), settings.topic_partitions, state_configs),
    ]
    return specs


def _admin(settings: Settings) -> KafkaAdminClient:
    try:
        return KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap, client_id="touchpoint-topics",
                                request_timeout_ms=10000, **kafka_python_options(settings))
    except (KafkaError, OSError) as exc:
        raise StackError(f"kafka: cannot reach {describe_connection(settings)}: {exc}") from exc


def ensure_topics(settings: Settings, specs: list[TopicSpec] | None = None) -> list[str]:
    """Create the missing topics; returns the names created (existing ones are left as they are)."""
    specs = topic_specs(settings) if specs is None else specs
    admin = _admin(settings)
    try:
        existing = set(admin.list_topics())
        missing = [s for s in specs if s.name not in existing]
        created = []
        for spec in missing:
            try:
                admin.create_topics([NewTopic(spec.name, spec.partitions, settings.topic_replication_factor,
                                              topic_configs=spec.configs)])
                created.append(spec.name)
            except TopicAlreadyExistsError:
                pass  # Another process created it between our list and create.
        return created
    finally:
        admin.close()


def ensure_topics_before_serving(settings: Settings, service: str, backoff_max_s: float = 10.0) -> list[str]:
    """Create the missing topics before ``service`` consumes, waiting (logged) while Kafka cannot be reached.

    A worker or projection writer subscribed to a topic that does not exist yet sits idle looking
    healthy (Faust logs "Ignoring missing topic" once and never picks it up), so each service makes
    the topics itself, with their configs, as ``touchpoint topics`` does. Returns the names created.
    """
    backoff = 0.5
    while True:
        try:
            created = ensure_topics(settings)
        except (StackError, KafkaError) as exc:
            log.warning("%s: waiting for Kafka to create its topics (retry in %.1f s): %s", service, backoff, exc)
            time.sleep(backoff)
            backoff = min(backoff * 2, backoff_max_s)
            continue
        if created:
            log.info("%s: created %d missing topic(s): %s", service, len(created), ", ".join(created))
        return created


def missing_topics(settings: Settings) -> list[str]:
    """The topics of :func:`topic_specs` that do not exist (a readiness check).

    :raises StackError: Kafka cannot be reached.
    """
    admin = _admin(settings)
    try:
        existing = set(admin.list_topics())
    finally:
        admin.close()
    return [spec.name for spec in topic_specs(settings) if spec.name not in existing]
