"""The clock: event-time ticks written into the log, so that time can pass without events.

Dormancy needs time to pass with nothing happening, yet the alert decisions
must not read a wall clock (a replay has to decide the same). So time enters
the log: the clock is an edge that reads the wall clock and writes the
instant as a *tick* into ``touchpoint.accepted``, the identity agent's single
ordered input (partition 0). A replay then meets the same ticks at the same
places between the same events.

Wire format (fixed; the identity agent relies on it):

* key ``b"clock"``;
* value the JSON bytes ``{"tick":"2026-01-05T10:00:00.000Z"}`` (ISO-8601 UTC,
  milliseconds, ``Z``);
* header ``touchpoint-record: tick``, which tells a tick from an Avro event
  without trying to decode it (:mod:`connectors.platform.control` builds and
  reads the record).

Sends are idempotent with ``acks=all``; a tick that cannot be delivered in a
running clock is logged and skipped (the next one carries a later instant, so
nothing is lost but a little resolution).
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import UTC, datetime

from kafka import KafkaProducer
from kafka.errors import KafkaError

from connectors.platform.control import TICK_PARTITION, tick_record
from touchpoint.core.instants import epoch_ms, iso_ms
from touchpoint.errors import PublishError
from touchpoint.kafka_security import kafka_python_options
from touchpoint.settings import Settings

log = logging.getLogger(__name__)

_SEND_TIMEOUT_S = 15.0


def tick_topic(settings: Settings) -> str:
    """Where ticks go: the identity agent's ordered input."""
    return settings.topic("accepted")


def _producer(settings: Settings) -> KafkaProducer:
    try:
        return KafkaProducer(bootstrap_servers=settings.kafka_bootstrap, client_id="touchpoint-clock",
                             acks="all", enable_idempotence=True, max_block_ms=10_000,
                             request_timeout_ms=10_000, **kafka_python_options(settings))
    except (KafkaError, OSError) as exc:
        raise PublishError(f"clock: cannot reach Kafka at {settings.kafka_bootstrap}: {exc}") from exc


def _send(producer: KafkaProducer, settings: Settings, at: datetime) -> int:
    key, value, headers = tick_record(at)
    try:
        metadata = producer.send(tick_topic(settings), value=value, key=key, headers=headers,
                                 partition=TICK_PARTITION).get(timeout=_SEND_TIMEOUT_S)
    except KafkaError as exc:
        raise PublishError(f"clock: Kafka at {settings.kafka_bootstrap} did not take the tick "
                           f"{value.decode()}: {exc}") from exc
    offset: int = metadata.offset
    return offset


def publish_tick(settings: Settings, at: datetime) -> int:
    """Publish one tick for instant ``at`` and wait for the acknowledgement.

    :returns: the tick's offset in ``accepted`` (partition 0).
    :raises PublishError: Kafka is unreachable or did not acknowledge in time.
    :raises ValueError: ``at`` has no time zone.
    """
    tick_record(at)  # refuse a naive instant before connecting
    producer = _producer(settings)
    try:
        offset = _send(producer, settings, at)
    finally:
        producer.close(timeout=5)
    log.info("tick", extra={"tick": iso_ms(epoch_ms(at)), "topic": tick_topic(settings), "offset": offset})
    return offset


def run_clock(settings: Settings, every_s: float, stop: threading.Event | None = None) -> int:
    """Publish a tick of the wall-clock instant now and every ``every_s`` seconds until ``stop`` is set.

    The schedule is fixed-rate (tick n is due ``n * every_s`` after the start), so slow sends
    do not make the clock drift; a tick that fails is logged and skipped.

    :returns: the number of ticks published.
    :raises PublishError: Kafka cannot be reached at start.
    """
    if every_s <= 0:
        raise ValueError(f"every_s must be positive, got {every_s}")
    stop = stop or threading.Event()
    producer = _producer(settings)
    published = 0
    start = time.monotonic()
    n = 0
    try:
        while not stop.is_set():
            now = datetime.now(UTC)  # the clock is an edge: the one place the wall clock enters the log
            try:
                offset = _send(producer, settings, now)
            except PublishError as exc:
                log.warning("tick not published; the next one will carry a later instant",
                            extra={"tick": iso_ms(epoch_ms(now)), "error": str(exc)})
            else:
                published += 1
                log.info("tick", extra={"tick": iso_ms(epoch_ms(now)), "topic": tick_topic(settings),
                                        "offset": offset})
            n += 1
            # Skip slots already missed (a long outage) rather than firing a burst of catch-up ticks.
            n = max(n, int((time.monotonic() - start) / every_s) + 1)
            stop.wait(max(0.0, start + n * every_s - time.monotonic()))
    finally:
        producer.close(timeout=5)
    return published
