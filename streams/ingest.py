"""The ingest agent: events from every channel topic, checked, then routed.

A valid event goes on to ``touchpoint.customer-events``; an invalid one goes
to ``touchpoint.dlq`` with its original bytes and headers holding the
reason and its source topic, partition and offset. Nothing is dropped and
nothing bad stops the agent.

Until identity resolution exists, an accepted event is keyed by its
strongest identifier (kind:value), so one person's events stay in order per
partition.
"""

from __future__ import annotations

import logging

import faust

from connectors.topics import CHANNELS, event_topic
from touchpoint.core.envelope import Accepted, check_json_event, strongest_identifier
from touchpoint.settings import Settings

log = logging.getLogger(__name__)


def dlq_headers(reason: str, topic: str, partition: int, offset: int) -> list[tuple[str, bytes]]:
    """Headers that say why and from where an event was dead-lettered."""
    return [
        ("touchpoint.dlq.reason", reason.encode()),
        ("touchpoint.dlq.topic", topic.encode()),
        ("touchpoint.dlq.partition", str(partition).encode()),
        ("touchpoint.dlq.offset", str(offset).encode()),
    ]


def register_ingest(app: faust.App, settings: Settings) -> None:
    """Register the ingest agent on ``app``."""
    sources = app.topic(*(event_topic(settings, ch) for ch in CHANNELS), key_type=bytes, value_type=bytes,
                        key_serializer="raw", value_serializer="raw")
    accepted_topic = app.topic(settings.topic("customer-events"), key_serializer="raw", value_serializer="raw")
    dlq_topic = app.topic(settings.topic("dlq"), key_serializer="raw", value_serializer="raw")

    @app.agent(sources, name="ingest")
    async def ingest(stream: faust.StreamT[bytes]) -> None:
        async for event in stream.events():
            message = event.message
            verdict = check_json_event(message.value)
            if isinstance(verdict, Accepted):
                kind, value = strongest_identifier(verdict.event["identifiers"])
                await accepted_topic.send(key=f"{kind}:{value}".encode(), value=message.value)
            else:
                log.info("dead-lettered", extra={"topic": message.topic, "partition": message.partition,
                                                 "offset": message.offset, "reason": verdict.reason})
                await dlq_topic.send(key=message.key, value=message.value,
                                     headers=dlq_headers(verdict.reason, message.topic, message.partition,
                                                         message.offset))
