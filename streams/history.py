"""Identity's history: events of ``touchpoint.accepted`` read again by offset.

Guardrails decide in event time (:mod:`touchpoint.core.fold`): when a late
event reaches a component of customers the guardrails kept apart, identity
resolves that component's events again in event-time order, which needs them
again. The log is the store: the Folder keeps each customer's offsets, and
this reads those messages back: the latest from memory (the stage hands it
each message it reads, :meth:`LogHistory.keep`, up to :data:`KEPT_BYTES`),
older ones with a consumer of its own (no group offsets, committed records
only), a run of nearby offsets in one fetch, ~4 ms a run on a busy worker.
It blocks the stage while it reads; only late events in contested components
need it, and the Folder reads a component's identifiers once (it keeps them).

:attr:`raw` keeps the bytes of the messages of the last read: the identity
stage forwards them to ``resolved`` unchanged, as it does its own input.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Sequence

from confluent_kafka import Consumer, TopicPartition

from connectors.platform.serde import EventSerde
from touchpoint.contract.models import Event
from touchpoint.kafka_security import confluent_options
from touchpoint.settings import Settings

_GAP = 1_000  # offsets apart that one fetch still spans (reading past a few messages beats a new fetch)
_TIMEOUT_S = 30.0
KEPT_BYTES = 64 << 20
"""The bytes of the latest messages kept in memory: a component that becomes contested is mostly made of
recent events (bench.pipeline at 50,000 events: the events read again lay a median of 8,300 offsets back,
at most 37,000)."""


class LogHistory:
    """Reads messages of partition 0 of ``topic`` again, by offset, as events."""

    def __init__(self, settings: Settings, topic: str, serde: EventSerde) -> None:
        self.topic = topic
        self.serde = serde
        self.raw: dict[int, bytes] = {}
        self._kept: dict[int, bytes] = {}
        self._kept_order: deque[int] = deque()
        self._kept_bytes = 0
        self._consumer = Consumer({
            "bootstrap.servers": settings.kafka_bootstrap,
            # Never subscribes or commits: the group only names the client to the broker.
            "group.id": f"{settings.stage_group('identity')}-history",
            "client.id": "touchpoint-identity-history",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
            # A read wants what is there now: no broker-side wait for more bytes.
            "fetch.wait.max.ms": 5,
            **confluent_options(settings),
        })

    def __call__(self, offsets: Sequence[int]) -> list[Event]:
        """The events at ``offsets`` (in that order); their bytes in :attr:`raw`.

        :raises LookupError: an offset is not in the log (deleted, or not written).
        """
        kept = self._kept
        found = {offset: kept[offset] for offset in offsets if offset in kept}
        missing = sorted({offset for offset in offsets if offset not in found})
        if missing:
            found.update(self._read(missing))
        self.raw = found
        return [self.serde.read_checked(found[offset]) for offset in offsets]

    def keep(self, offset: int, value: bytes) -> None:
        """Remember the message at ``offset`` (the stage read it): the latest :data:`KEPT_BYTES` are kept."""
        if offset in self._kept:
            return
        self._kept[offset] = value
        self._kept_order.append(offset)
        self._kept_bytes += len(value)
        while self._kept_bytes > KEPT_BYTES:
            self._kept_bytes -= len(self._kept.pop(self._kept_order.popleft()))

    def _read(self, wanted: list[int]) -> dict[int, bytes]:
        found: dict[int, bytes] = {}
        runs: list[list[int]] = []
        for offset in wanted:
            if runs and offset - runs[-1][-1] <= _GAP:
                runs[-1].append(offset)
            else:
                runs.append([offset])
        for run in runs:
            needed = set(run)
            self._consumer.assign([TopicPartition(self.topic, 0, run[0])])
            # Short waits: transaction markers take offsets too, so a run holds fewer messages than it spans
            # and a wait for that many would sit out its whole timeout.
            deadline = time.monotonic() + _TIMEOUT_S
            while needed:
                messages = self._consumer.consume(num_messages=1000, timeout=0.005)
                if not messages:
                    if time.monotonic() > deadline:
                        raise LookupError(f"offsets {sorted(needed)[:5]} of {self.topic} not read in "
                                          f"{_TIMEOUT_S:.0f} s")
                    continue
                deadline = time.monotonic() + _TIMEOUT_S
                for message in messages:
                    if message.error() is not None:
                        raise LookupError(f"reading {self.topic} again: {message.error()}")
                    at = message.offset()
                    assert at is not None  # a message read from a partition has one
                    if at in needed:
                        value = message.value()
                        assert value is not None  # identity fed it: an event has a value
                        found[at] = value
                        needed.discard(at)
                if needed and (messages[-1].offset() or 0) >= run[-1]:
                    raise LookupError(f"offsets {sorted(needed)[:5]} of {self.topic} are not in the log")
        return found

    def close(self) -> None:
        self._consumer.close()
