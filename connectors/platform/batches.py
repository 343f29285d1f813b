"""How Touchpoint's confluent-kafka consumers take a batch: the stages' loops and the projection writers."""

from __future__ import annotations

from confluent_kafka import Consumer, Message


def take(consumer: Consumer, most: int, wait_s: float) -> list[Message]:
    """Up to ``most`` messages: wait at most ``wait_s`` for the first, then take what has already arrived.

    librdkafka's ``consume(n, timeout)`` waits until it has ``n`` messages or the timeout passed, so on a
    quiet topic every message would wait out the whole timeout; under a backlog the client has
    prefetched plenty and the second call fills the batch at once.
    """
    first = consumer.consume(1, wait_s)
    if not first:
        return first
    return first + consumer.consume(most - 1, 0)
