"""Alerts for people: one human line per alert, and a tail of the alert topics (``touchpoint alerts tail``).

The records and their serdes: :mod:`connectors.platform.alert_wire` (customers: dormancy, churn) and
:mod:`connectors.platform.access_wire` (lookup keys: access).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Generator, Mapping, Sequence
from decimal import Decimal
from typing import Any

from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaError

from connectors.operations.access import access_topic
from connectors.platform.access_wire import AccessAlertSerde
from connectors.platform.alert_wire import KINDS, AlertSerde, alert_topic
from touchpoint.errors import SerializationError, StackError
from touchpoint.kafka_security import kafka_python_options
from touchpoint.settings import Settings


def format_alert(doc: Mapping[str, Any]) -> str:
    """One human line, e.g.
    ``2026-01-05T10:00:00.000Z RAISED    churn    high   cus_ab12 (gold, 1234.56) contactable: email,sms
    — cancel_request: cancel request 2 days ago; complaints: 2 complaints in 30 days``.
    """
    value = Decimal(doc["value_minor"]).scaleb(-2)
    channels = ",".join(sorted(ch for ch, ok in doc["contactable"].items() if ok)) or "none"
    line = (f"{doc['at']} {doc['state'].upper():<9} {doc['kind']:<8} {doc['severity']:<6} {doc['customer_id']} "
            f"({doc['segment']}, {value:.2f}) contactable: {channels}")
    if doc["reasons"]:
        line += " — " + "; ".join(f"{r['code']}: {r['text']}" for r in doc["reasons"])
    return line


def format_access_alert(doc: Mapping[str, Any]) -> str:
    """One human line, e.g. ``2026-01-05T10:05:00.000Z ACCESS    unusual_volume  desk-7 (agent) 412 lookups
    2026-01-05T10:00:00.000Z..2026-01-05T10:05:00.000Z — 412 lookups of 398 customers in 300 s, usually 6.2``."""
    return (f"{doc['at']} ACCESS    {doc['reason']:<15} {doc['key_name']} ({doc['role']}) {doc['lookups']} lookups "
            f"{doc['window_start']}..{doc['window_end']} — {doc['text']}")


def tail_alerts(settings: Settings, serde: AlertSerde | AccessAlertSerde, kinds: Sequence[str] = KINDS, *,
                from_beginning: bool = False, timeout_s: float | None = None,
                poll_ms: int = 500) -> Generator[dict[str, Any]]:
    """Alerts as they arrive on the topics of ``kinds``, decoded; stops after ``timeout_s`` (None: never).

    No consumer group: every partition is assigned and read from the end (or the
    beginning), nothing is committed, so a tail never disturbs anyone. Only committed
    records are read. A message that does not decode is reported on stderr and skipped.

    :raises StackError: Kafka is unreachable or a topic does not exist.
    """
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    try:
        consumer = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, group_id=None, enable_auto_commit=False,
                                 isolation_level="read_committed", client_id="touchpoint-alerts-tail",
                                 **kafka_python_options(settings))
    except (KafkaError, OSError) as exc:
        raise StackError(f"alerts: cannot reach Kafka at {settings.kafka_bootstrap}: {exc}") from exc
    try:
        partitions: list[TopicPartition] = []
        for kind in kinds:
            topic = access_topic(settings) if kind == "access" else alert_topic(settings, kind)
            ids = consumer.partitions_for_topic(topic)
            if not ids:
                raise StackError(f"alerts: topic {topic} does not exist (run `touchpoint topics`)")
            partitions += [TopicPartition(topic, p) for p in sorted(ids)]
        consumer.assign(partitions)
        if from_beginning:
            consumer.seek_to_beginning(*partitions)
        else:
            consumer.seek_to_end(*partitions)
            for tp in partitions:
                consumer.position(tp)  # resolve "the end" now, not at the first poll: nothing in between is lost
        while deadline is None or (left := deadline - time.monotonic()) > 0:
            wait_ms = poll_ms if deadline is None else max(1, min(poll_ms, int(left * 1000)))
            for tp, messages in consumer.poll(timeout_ms=wait_ms).items():
                for message in messages:
                    try:
                        yield serde.deserialize(message.value)
                    except SerializationError as exc:
                        print(f"touchpoint: skipped {tp.topic}/{tp.partition}@{message.offset}: {exc}",
                              file=sys.stderr)
    finally:
        consumer.close()
