"""A stage's changelog-backed state table on Kafka: one partition of a compacted topic.

``<prefix>.identity-state`` (one partition, like identity's ordered input) and
``<prefix>.profile-state`` (one partition per partition of the customer-keyed
stream ``resolved``) are compacted topics keyed by customer id whose latest
value per key is that customer's state record
(:mod:`touchpoint.core.snapshot`), plus one checkpoint record saying up to
which offset of the stage's input partition the table reflects. A stage writes
the records of the customers a batch changed, and the checkpoint, **in one
Kafka transaction** on its own partition, so a reader (``read_committed``)
sees the table as of a batch boundary and never half of one; a restarted
worker reads it back instead of re-folding the whole log.

Why not a Faust ``Table``: its changelog writes are not atomic with each
other nor ordered with the stage's output and offset commits (at-least-once),
so a crash could leave a table that is half a batch ahead of what was
published. Here the table is written only after the batch's output was
acknowledged, and a restart skips the offsets the table already holds.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from connectors.platform.topics import STATE_MAX_RECORD_BYTES
from streams.batch import Received
from touchpoint.kafka_security import aiokafka_options
from touchpoint.settings import Settings

log = logging.getLogger(__name__)

class StateTable:
    """Reads the table back on start and writes batches of records transactionally."""

    def __init__(self, settings: Settings, name: str, partition: int = 0) -> None:
        self.settings = settings
        self.topic = settings.topic(name)
        self.partition = partition
        self._producer: AIOKafkaProducer | None = None

    async def load(self) -> dict[str, bytes]:
        """The latest committed value of every key, tombstones dropped."""
        tp = TopicPartition(self.topic, self.partition)
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
                    if message.offset >= end:
                        break  # a transaction committed since: reading part of it would mix two snapshots
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
                    futures.append(await producer.send(self.topic, value, key=key.encode(), partition=self.partition))
        finally:
            for future in futures:  # a failed transaction fails them all; its own error says why
                future.add_done_callback(lambda f: f.cancelled() or f.exception())

    async def claim(self) -> None:
        """Become the table's only writer: starting the transactional producer fences any earlier one."""
        await self.close()
        await self._started()

    async def _started(self) -> AIOKafkaProducer:
        if self._producer is None:
            # One transactional id per table partition: a restarted (or second) worker fences the old one,
            # whose unfinished transaction is aborted and never read.
            producer = AIOKafkaProducer(bootstrap_servers=self.settings.kafka_bootstrap,
                                        transactional_id=f"{self.topic}.{self.partition}",
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


async def committed_offset(settings: Settings, stage: str, topic: str, partition: int) -> int:
    """A stage's committed offset of one input partition (0: none yet)."""
    tp = TopicPartition(topic, partition)
    probe = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, group_id=settings.stage_group(stage),
                             enable_auto_commit=False, **aiokafka_options(settings))
    await probe.start()
    try:
        return await probe.committed(tp) or 0
    finally:
        await probe.stop()


async def read_range(settings: Settings, topic: str, partition: int, start: int, end: int,
                     max_fetch_bytes: int = STATE_MAX_RECORD_BYTES) -> AsyncIterator[Received]:
    """The committed messages of one partition from ``start`` up to (not including) ``end``, in order."""
    if end <= start:
        return
    tp = TopicPartition(topic, partition)
    reader = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, group_id=None, enable_auto_commit=False,
                              isolation_level="read_committed", max_partition_fetch_bytes=max_fetch_bytes,
                              **aiokafka_options(settings))
    await reader.start()
    try:
        reader.assign([tp])
        reader.seek(tp, start)
        while await reader.position(tp) < end:
            batch = await reader.getmany(tp, timeout_ms=1000, max_records=5000)
            for message in batch.get(tp, []):
                if message.offset >= end:
                    return
                yield Received(message.topic, message.partition, message.offset, message.key, message.value,
                               list(message.headers) or None, message.timestamp / 1000)
    finally:
        await reader.stop()
