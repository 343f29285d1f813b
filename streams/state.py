"""The customers stage's changelog-backed state table on Kafka (``<prefix>.customer-state``).

A compacted topic keyed by customer id whose latest value per key is that
customer's state record (:mod:`touchpoint.core.snapshot`), plus one
checkpoint record saying up to which offset of ``touchpoint.accepted`` the
table reflects. The customers agent writes the records of the customers a
batch changed, and the checkpoint, **in one Kafka transaction**, so a reader
(``read_committed``) sees the table as of a batch boundary and never half of
one; a restarted worker reads it back instead of re-folding the whole log.

Why not a Faust ``Table``: its changelog writes are not atomic with each
other nor ordered with the agent's output and offset commits (at-least-once),
so a crash could leave a table that is half a batch ahead of what was
published. Here the table is written only after the batch's output was
acknowledged, and a restart skips the offsets the table already holds.
"""

from __future__ import annotations

import logging

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from connectors.topics import STATE_MAX_RECORD_BYTES, ensure_topics, topic_specs
from touchpoint.kafka_security import aiokafka_options
from touchpoint.settings import Settings

log = logging.getLogger(__name__)

class StateTable:
    """Reads the table back on start and writes batches of records transactionally."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.topic = settings.topic("customer-state")
        self._producer: AIOKafkaProducer | None = None

    def ensure_topic(self) -> None:
        """Create the topic if missing (blocking: call it off the event loop)."""
        ensure_topics(self.settings, [spec for spec in topic_specs(self.settings) if spec.name == self.topic])

    async def load(self) -> dict[str, bytes]:
        """The latest committed value of every key, tombstones dropped."""
        tp = TopicPartition(self.topic, 0)
        reader = AIOKafkaConsumer(bootstrap_servers=self.settings.kafka_bootstrap, group_id=None,
                                  enable_auto_commit=False, isolation_level="read_committed",
                                  max_partition_fetch_bytes=STATE_MAX_RECORD_BYTES, **aiokafka_options(self.settings))
        await reader.start()
        table: dict[str, bytes] = {}
        try:
            reader.assign([tp])
            await reader.seek_to_beginning(tp)
            end = (await reader.end_offsets([tp]))[tp]  # the last stable offset: committed writes only
            while await reader.position(tp) < end:
                batch = await reader.getmany(tp, timeout_ms=1000, max_records=5000)
                for message in batch.get(tp, []):
                    key = message.key.decode()
                    if message.value is None:
                        table.pop(key, None)
                    else:
                        table[key] = message.value
        finally:
            await reader.stop()
        return table

    async def write(self, records: dict[str, bytes | None], checkpoint: tuple[str, bytes]) -> None:
        """Write ``records`` (None: a tombstone) and the checkpoint as one transaction."""
        producer = await self._started()
        futures = []
        try:
            async with producer.transaction():
                for key, value in [*records.items(), checkpoint]:
                    futures.append(await producer.send(self.topic, value, key=key.encode(), partition=0))
        finally:
            for future in futures:  # a failed transaction fails them all; its own error says why
                future.add_done_callback(lambda f: f.cancelled() or f.exception())

    async def claim(self) -> None:
        """Become the table's only writer: starting the transactional producer fences any earlier one."""
        await self.close()
        await self._started()

    async def _started(self) -> AIOKafkaProducer:
        if self._producer is None:
            # One transactional id per deployment: a restarted (or second) worker fences the old one,
            # whose unfinished transaction is aborted and never read.
            producer = AIOKafkaProducer(bootstrap_servers=self.settings.kafka_bootstrap,
                                        transactional_id=f"{self.settings.topic_prefix}.customer-state",
                                        enable_idempotence=True, acks="all",
                                        max_request_size=STATE_MAX_RECORD_BYTES, linger_ms=5,
                                        **aiokafka_options(self.settings))
            await producer.start()
            self._producer = producer
        return self._producer

    async def close(self) -> None:
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None
