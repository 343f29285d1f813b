"""The topics Touchpoint owns, created with explicit configs.

Keys: channel event topics are keyed by a keyed hash of the event's
strongest identifier (:func:`connectors.producer.partition_key`), so one
person's events from one channel stay in order; ``accepted`` has a single
partition (identity is decided in one order); customer-level topics are
keyed by customer id, so all of one customer's events reach one worker in
order.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

from touchpoint.errors import StackError
from touchpoint.kafka_security import describe_connection, kafka_python_options
from touchpoint.settings import Settings

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


def topic_specs(settings: Settings) -> list[TopicSpec]:
    """Every topic of the backbone with its configs."""
    keep_forever = {"retention.ms": "-1", "cleanup.policy": "delete"}
    state_configs = {"cleanup.policy": "compact", "retention.ms": "-1", "segment.ms": "3600000",
                     "max.message.bytes": str(STATE_MAX_RECORD_BYTES)}
    specs = [TopicSpec(event_topic(settings, ch), settings.topic_partitions, keep_forever) for ch in CHANNELS]
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


def ensure_topics(settings: Settings, specs: list[TopicSpec] | None = None) -> list[str]:
    """Create the missing topics; returns the names created (existing ones are left as they are)."""
    specs = topic_specs(settings) if specs is None else specs
    try:
        admin = KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap, client_id="touchpoint-topics",
                                 request_timeout_ms=10000, **kafka_python_options(settings))
    except (KafkaError, OSError) as exc:
        raise StackError(f"kafka: cannot reach {describe_connection(settings)} to create topics: {exc}") from exc
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
