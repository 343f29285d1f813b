"""How the worker's stages take and emit batches: a plain loop over confluent-kafka, run as a task of the Faust app.

Faust's per-message stream path (conductor, channels, an Event and an ack per
message) costs ~150 µs an event here before a stage does any work, even
through ``take_events``; a loop over confluent-kafka's
``consume(num_messages=…)`` with one produce flush per batch forwards an
event for ~28 µs (both measured side by side on a 2-core machine). So each
stage is such a loop, started as a task of the Faust app, which stays the
application: worker lifecycle, logging, signals.

One turn of a stage's loop:

1. take up to ``Settings.stage_batch_size`` messages, waiting at most
   :data:`BATCH_WITHIN_S` for the first (:func:`~connectors.platform.batches.take`; on the stage's own
   thread: librdkafka waits without the GIL, and the event loop keeps
   serving);
2. the stage turns them into the records to emit (:meth:`Stage.handle`); a stage told that the batch
   was full (a backlog) may hold some back to a later batch (the profile coalesces a customer's
   cards), so after a full batch an empty take still calls it, with nothing, to let them out;
3. every record is produced, then one flush waits until Kafka acknowledged
   all of them;
4. the batch's next offsets are committed, once (past transaction markers too: :func:`to_commit`);
5. the stage writes its state if due (:meth:`Stage.after_batch`; less often
   in a backlog).

A crash anywhere before 4 re-delivers the batch: the stages drop what they
fed already (identity and profile by position) and everything they emit is
idempotent downstream. A failed delivery or a broken client starts the loop
over with new clients from the committed offsets, and the stage recovers its
state first (:meth:`Stage.start`).

A stage with an ``assigned(partitions, whole=True)`` method is told its
consumer's assignment whenever it changes, to make the partitions ready
before their first messages (the profile loads their tables).

Each stage consumes in its own group (:meth:`Settings.stage_group`), so a
stage's consumers rebalance among themselves, and ``touchpoint lag`` reads how
far each stage got from its group's committed offsets.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any, NamedTuple, Protocol

import faust
from confluent_kafka import Consumer, KafkaException, Message, Producer, TopicPartition

from connectors.platform.batches import take
from connectors.platform.topics import STATE_MAX_RECORD_BYTES
from touchpoint.kafka_security import confluent_options
from touchpoint.settings import Settings

log = logging.getLogger(__name__)

BATCH_WITHIN_S = 0.05
"""How long a stage waits for a first message before it looks at its state table again."""
STATE_FLUSH_S = 2.0
"""At most this often a stage that keeps up with its input writes its state table.

Each write pickles every customer changed since the last, and the loop waits for it: the shorter the
interval, the shorter the pause an event may meet (p99 event-to-row at half bench.pipeline's rate: 2 s
293-355 ms, 5 s 760 ms).
"""
STATE_FLUSH_BACKLOG_S = 5.0
"""At most this often a stage working through a backlog (its last batch was full) writes its state table.

There nobody waits on one event, and fewer writes pickle each customer fewer times (the profile's state
writes were 16 % of its CPU at 2 s). A restart replays at most this long's worth of input.
"""

Outgoing = (tuple[str, bytes | None, bytes | None, list[tuple[str, bytes]] | None]
            | tuple[str, bytes | None, bytes | None, list[tuple[str, bytes]] | None, int])
"""(topic, key, value, headers[, partition]) of one record a stage emits (no partition: by key)."""


class Received(NamedTuple):
    """One consumed message, in the form every stage (and a replay of a partition) reads."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]] | None
    timestamp: float
    """Seconds since the epoch (the record's timestamp)."""


def received(message: Message) -> Received:
    # A message without error() has its topic, partition and offset; headers come as (name, bytes) pairs.
    return Received(message.topic(), message.partition(), message.offset(),  # type: ignore[arg-type]
                    message.key(), message.value(), message.headers(),  # type: ignore[arg-type]
                    message.timestamp()[1] / 1000)


class Stage(Protocol):
    """What a stage's loop calls: recover, turn a batch into records, write state."""

    name: str
    """``ingest``, ``identity`` or ``profile``: its consumer group and its log lines."""
    topics: list[str]

    async def start(self) -> None:
        """Before the first batch of a (new) consumer: recover the state to what was published."""

    async def handle(self, batch: list[Received], emit: Callable[[list[Outgoing]], None],
                     backlog: bool) -> list[Outgoing]:
        """The records a batch makes, in the order they must be emitted.

        ``emit`` hands records to the producer at once, for a batch that makes many (a recovery's replay);
        the loop waits for those and the returned ones together. ``backlog``: the batch was full, more is
        waiting; the stage may then hold records back, as long as it emits them before it writes the
        state that covers them, and in the next call told ``backlog=False`` (an empty ``batch`` after a
        full one).
        """

    async def after_batch(self, backlog: bool) -> None:
        """After a batch's output was acknowledged and its offsets committed (and when a wait found nothing).

        :param backlog: the batch was full: more is waiting (state is written every
            :data:`STATE_FLUSH_BACKLOG_S` then, not every :data:`STATE_FLUSH_S`).
        """

    async def close(self) -> None:
        """The stage's own clients, when the worker stops."""


class DeliveryFailed(Exception):
    """Kafka did not acknowledge every record of a batch."""


class Emitter:
    """A producer that emits a batch and waits once for all of it."""

    def __init__(self, settings: Settings, stage: str) -> None:
        self._failures: list[str] = []
        self._producer = Producer({
            "bootstrap.servers": settings.kafka_bootstrap,
            "client.id": f"touchpoint-{stage}",
            "acks": "all",
            "enable.idempotence": True,
            # Java's (and aiokafka's) partitioner: a key lands where every other client of the topic puts it.
            "partitioner": "murmur2_random",
            "linger.ms": 5,
            "compression.type": "lz4",
            "message.max.bytes": STATE_MAX_RECORD_BYTES,
            "queue.buffering.max.messages": 500_000,
            "delivery.report.only.error": True,  # a callback per failure, none per record
            "on_delivery": self._delivered,
            **confluent_options(settings),
        })

    def _delivered(self, error: Any, message: Message) -> None:
        if error is not None:
            self._failures.append(f"{message.topic()}: {error}")

    def produce(self, records: list[Outgoing]) -> None:
        """Hand every record to the client (no wait for Kafka)."""
        produce = self._producer.produce
        for record in records:
            partition = record[4] if len(record) > 4 else -1
            while True:
                try:
                    produce(record[0], record[2], record[1], partition=partition,
                            headers=record[3])  # type: ignore[arg-type]  # (name, bytes) pairs
                    break
                except BufferError:  # the client's queue is full: let it send some
                    self._producer.poll(0.05)

    def wait(self, timeout_s: float = 60.0) -> None:
        """Block until Kafka acknowledged everything produced (call it off the event loop).

        :raises DeliveryFailed: a record was refused or not acknowledged in time.
        """
        left = self._producer.flush(timeout_s)
        failures, self._failures = self._failures, []
        if left or failures:
            raise DeliveryFailed(f"{left} record(s) unacknowledged after {timeout_s:.0f} s; "
                                 f"refused: {'; '.join(failures[:3]) or 'none'}")


def stage_consumer(settings: Settings, stage: str, topics: list[str]) -> Consumer:
    """A consumer in the stage's group, reading only committed records (our producers write transactions)."""
    consumer = Consumer({
        "bootstrap.servers": settings.kafka_bootstrap,
        "group.id": settings.stage_group(stage),
        "client.id": f"touchpoint-{stage}",
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "isolation.level": "read_committed",
        # A worker killed without leaving its group holds its partitions until the session times out:
        # 10 s instead of the default 45 s bounds the pause after a crash.
        "session.timeout.ms": 10_000,
        "heartbeat.interval.ms": 2_000,
        # A merged customer's view travels between partitions of ``resolved`` in one record.
        "max.partition.fetch.bytes": STATE_MAX_RECORD_BYTES,
        **confluent_options(settings),
    })
    consumer.subscribe(topics)
    return consumer


def to_commit(consumer: Consumer, batch: list[Received], committed: dict[tuple[str, int], int]
              ) -> list[TopicPartition]:
    """What to commit now: past each partition's last message of the batch, and past transaction markers.

    A transactional producer (``touchpoint ingest``) ends each transaction with a commit marker that takes
    an offset and is never delivered: committing only past the last message leaves a lag of one for good
    (KAFKA-6607). The consumer's position steps over markers it has read, so it is committed too, also
    after a take that found nothing. ``committed``: what this consumer committed so far (nothing again).
    """
    ends = {(tp.topic, tp.partition): tp.offset for tp in next_offsets(batch)}
    for tp in consumer.position(consumer.assignment()):
        if tp.offset >= 0:  # a partition not read yet has no position
            ends[tp.topic, tp.partition] = max(ends.get((tp.topic, tp.partition), 0), tp.offset)
    return [TopicPartition(topic, partition, offset) for (topic, partition), offset in ends.items()
            if committed.get((topic, partition)) != offset]


def next_offsets(batch: list[Received]) -> list[TopicPartition]:
    """What to commit after a batch: per partition, the offset after its last message."""
    ends: dict[tuple[str, int], int] = {}
    for message in batch:
        ends[message.topic, message.partition] = message.offset + 1
    return [TopicPartition(topic, partition, offset) for (topic, partition), offset in ends.items()]


async def run_stage(settings: Settings, stage: Stage) -> None:
    """Run a stage's loop until cancelled; a broken batch starts it over from the committed offsets."""
    loop = asyncio.get_running_loop()
    # One thread per stage for every blocking client call: they never overlap, so closing the consumer
    # waits for a consume in flight instead of pulling the client from under it.
    thread = ThreadPoolExecutor(1, thread_name_prefix=f"touchpoint-{stage.name}")
    batch_size = settings.stage_batch_size
    backoff = 0.5
    try:
        while True:
            consumer = stage_consumer(settings, stage.name, stage.topics)
            emitter = Emitter(settings, stage.name)
            try:
                await stage.start()
                assignment: set[int] = set()
                committed: dict[tuple[str, int], int] = {}  # by this consumer, so far
                held = False  # the last handle() was told backlog: it may hold records for a later call
                while True:
                    messages = await loop.run_in_executor(thread, take, consumer, batch_size, BATCH_WITHIN_S)
                    batch = []
                    for message in messages:
                        if message.error() is None:
                            batch.append(received(message))
                        else:  # not a record: the client's news (a topic missing, a broker away)
                            log.warning("%s: consumer reports %s", stage.name, message.error())
                    backlog = len(messages) >= batch_size
                    if batch or held:
                        emitter.produce(await stage.handle(batch, emitter.produce, backlog))
                        await loop.run_in_executor(thread, emitter.wait)
                    held = backlog
                    offsets = await loop.run_in_executor(thread, to_commit, consumer, batch, committed)
                    if offsets:
                        try:
                            await loop.run_in_executor(thread, partial(consumer.commit, offsets=offsets,
                                                                       asynchronous=False))
                            committed.update(((tp.topic, tp.partition), tp.offset) for tp in offsets)
                        except KafkaException as exc:
                            # A rebalance took the partitions meanwhile: their new owner gets the batch again
                            # and drops what was fed already; the output went out either way.
                            log.warning("%s: offsets not committed (%s); the batch will be re-delivered",
                                        stage.name, exc.args[0])
                    if (assigned := getattr(stage, "assigned", None)) is not None:
                        now = {tp.partition for tp in consumer.assignment()}
                        if now != assignment:  # prepare new partitions before their first message
                            await assigned(now, whole=True)
                        assignment = now
                    await stage.after_batch(backlog)
                    backoff = 0.5
            except (DeliveryFailed, KafkaException) as exc:
                log.warning("%s: %s; starting over from the committed offsets in %.1f s", stage.name, exc, backoff)
            except Exception:  # a defect must not leave the worker running without its stage
                log.exception("%s: batch failed; starting over from the committed offsets in %.1f s",
                              stage.name, backoff)
            finally:
                await loop.run_in_executor(thread, consumer.close)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 15.0)
    finally:
        await stage.close()
        thread.shutdown(wait=False)


def add_stage(app: faust.App, settings: Settings, stage: Stage) -> None:
    """Run ``stage``'s loop as a task of ``app``: started with the worker, cancelled when it stops."""

    async def stage_loop() -> None:
        await run_stage(settings, stage)

    stage_loop.__name__ = stage_loop.__qualname__ = f"{stage.name}_stage"
    app.task(stage_loop)
