"""Throughput of the producer library against the local stack's real broker.

Publishes N good generated events (contract check, Avro serialisation,
idempotent acks=all sends, per-event delivery confirmation) in batches to a
fresh topic prefix and prints events/s with the machine's size.

    python -m bench.producer --events 100000 --batch 1000
"""

from __future__ import annotations

import argparse
import itertools
import time
import uuid
from datetime import UTC, datetime

from bench.machine import machine_line
from connectors.intake.producer import Delivered, EventProducer
from connectors.platform.topics import ensure_topics
from touchpoint.generate import generate
from touchpoint.settings import load_settings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=1000)
    args = parser.parse_args()

    settings = load_settings().model_copy(update={"topic_prefix": f"bench-{uuid.uuid4().hex[:8]}"})
    ensure_topics(settings)
    good = (e for e in generate(customers=max(100, args.events // 60), days=365, seed=11) if
            e["event_id"].startswith("ev-"))
    events = list(itertools.islice(good, args.events))
    print(machine_line())
    with EventProducer(settings) as producer:
        producer.publish(events[:10], datetime.now(UTC))  # connect, register the schema
        started = time.perf_counter()
        delivered = 0
        for i in range(0, len(events), args.batch):
            results = producer.publish(events[i:i + args.batch], datetime.now(UTC))
            delivered += sum(isinstance(r, Delivered) for r in results)
        seconds = time.perf_counter() - started
    print(f"producer library: {delivered} events in {seconds:.1f}s = {delivered / seconds:,.0f} events/s "
          f"(batches of {args.batch}, acks=all, idempotent, delivery confirmed per event)")


if __name__ == "__main__":
    main()
