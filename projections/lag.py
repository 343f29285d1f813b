"""How far each stage of the pipeline is behind the log, in records.

Stages: ``ingest`` (channel topics), ``identity`` (``touchpoint.accepted``),
``profile`` (``touchpoint.resolved``), each by its consumer group's committed
offsets (``Settings.stage_group``), and every projection (its stored offsets);
all against the topics' end offsets. All zero means every event
published so far is reflected in PostgreSQL (or dead-lettered with a reason).
"""

from __future__ import annotations

import psycopg
from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition

from connectors.platform.topics import CHANNELS, event_topic
from projections.catalog import PROJECTION_TOPICS
from projections.writer import stored_offsets
from touchpoint.kafka_security import kafka_python_options
from touchpoint.settings import Settings


def pipeline_lag(settings: Settings) -> dict[str, int]:
    """Records not yet processed, per stage."""
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, group_id=None,
                             enable_auto_commit=False, client_id="touchpoint-lag", **kafka_python_options(settings))
    admin = KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap, client_id="touchpoint-lag",
                             **kafka_python_options(settings))
    try:
        def partitions(topics: list[str]) -> list[TopicPartition]:
            return [TopicPartition(t, p) for t in topics for p in sorted(consumer.partitions_for_topic(t) or ())]

        def group_lag(stage: str, topics: list[str]) -> int:
            tps = partitions(topics)
            ends = consumer.end_offsets(tps)
            group = settings.stage_group(stage)
            committed = admin.list_group_offsets({group: tps}).get(group, {})
            return sum(max(0, ends[tp] - max(0, committed[tp].offset if tp in committed else 0)) for tp in tps)

        lag = {
            "ingest": group_lag("ingest", [event_topic(settings, ch) for ch in CHANNELS]),
            "identity": group_lag("identity", [settings.topic("accepted")]),
            "profile": group_lag("profile", [settings.topic("resolved")]),
        }
        with psycopg.connect(settings.pg_conninfo()) as conn:
            for name, topic_names in PROJECTION_TOPICS.items():
                stored = stored_offsets(conn, name)
                tps = partitions([settings.topic(t) for t in topic_names])
                ends = consumer.end_offsets(tps)
                lag[f"projection {name}"] = sum(
                    max(0, ends[tp] - stored.get((tp.topic, tp.partition), 0)) for tp in tps)
        return lag
    finally:
        admin.close()
        consumer.close()
