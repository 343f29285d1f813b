"""Faust's aiokafka transport, reading only committed records.

Faust reads ``read_committed`` only when the app itself runs with
``processing_guarantee="exactly_once"``, whose table recovery is known to
hang after restarts (faust-streaming #47, #136). Our own producers write in
Kafka transactions (the file import commits a batch and its checkpoint
atomically), so a worker must never see the records of a batch that was
aborted by a crash. This transport keeps Faust at-least-once and only flips
the consumer's isolation level, through the same switch Faust itself uses.

Registered under the ``faust.transports`` entry point as ``touchpoint``, so
the app's broker URL is ``touchpoint://host:port``.
"""

from __future__ import annotations

from typing import Any, ClassVar

from aiokafka import AIOKafkaConsumer
from faust.transport.drivers import aiokafka as faust_aiokafka


class ReadCommittedConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    """Creates the worker's aiokafka consumer with ``isolation_level="read_committed"``."""

    def _create_worker_consumer(self, transport: Any) -> AIOKafkaConsumer:
        consumer = self.consumer
        in_transaction = consumer.in_transaction
        # Faust's only switch for read_committed; restored at once so that
        # offset commits keep their at-least-once path.
        consumer.in_transaction = True
        try:
            return super()._create_worker_consumer(transport)
        finally:
            consumer.in_transaction = in_transaction


class ReadCommittedConsumer(faust_aiokafka.Consumer):
    def _new_consumer_thread(self) -> ReadCommittedConsumerThread:
        return ReadCommittedConsumerThread(self, loop=self.loop, beacon=self.beacon)


class Transport(faust_aiokafka.Transport):
    """aiokafka transport whose worker consumers read only committed records."""

    Consumer: ClassVar[type[ReadCommittedConsumer]] = ReadCommittedConsumer  # type: ignore[assignment]
