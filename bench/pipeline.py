"""The backbone end to end on the local stack: worker throughput and event-to-row latency.

Starts a Faust worker and the projection writers (as `touchpoint worker` and
`touchpoint project` would run) on a fresh topic prefix and a fresh
database, publishes N generated events with the producer library at a
steady rate, and waits until every accepted event is a row in PostgreSQL.
Prints: events/s sustained through the whole pipeline, the latency from
Kafka's acknowledgement of an event to its ``interactions`` row (the card in
``customers`` is written by the same agent batch), p50/p99, and the worker's
peak RSS, with the machine's size. Then the ceiling, measured in the same
run on the same broker: the same messages read from the channel topics by a
bare aiokafka consumer doing nothing with them, and the pipeline's ratio to
it. ``--profile`` samples the worker with py-spy meanwhile and prints where
its time went (own time by function, and by the innermost Touchpoint frame
on the stack).

    python -m bench.pipeline --customers 2000 --days 120 --rate 3000 --profile
    python -m bench.pipeline --rate 3000 --workers 2
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from datetime import UTC, datetime

import psycopg
from psycopg import sql

from bench.machine import machine_line
from connectors.producer import Delivered, EventProducer
from connectors.topics import CHANNELS, ensure_topics, event_topic
from projections.migrate import migrate
from touchpoint.generate import generate
from touchpoint.settings import Settings, load_settings


def spawn(settings: Settings, verb: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "TOUCHPOINT_TOPIC_PREFIX": settings.topic_prefix,
           "TOUCHPOINT_PG_DATABASE": settings.pg_database, "TOUCHPOINT_LOG_LEVEL": "WARNING"}
    return subprocess.Popen([sys.executable, "-m", "touchpoint", verb], env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def peak_rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _bare_consume(settings: Settings, topics: list[str]) -> tuple[int, float]:
    """Read every message of ``topics`` once with a bare aiokafka consumer: (messages, seconds)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, enable_auto_commit=False,
                                group_id=None, auto_offset_reset="earliest")
    await consumer.start()
    try:
        parts = [TopicPartition(t, p) for t in topics for p in partitions(settings, t)]
        consumer.assign(parts)
        ends = await consumer.end_offsets(parts)
        todo = sum(ends.values())
        began, seen = time.perf_counter(), 0
        while seen < todo:
            batch = await consumer.getmany(timeout_ms=1000, max_records=10_000)
            seen += sum(len(messages) for messages in batch.values())
        return seen, time.perf_counter() - began
    finally:
        await consumer.stop()


def partitions(settings: Settings, topic: str) -> list[int]:
    """The partition numbers of ``topic`` (aiokafka's consumer only knows those it is assigned)."""
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap)
    try:
        return sorted(consumer.partitions_for_topic(topic) or ())
    finally:
        consumer.close()


_OURS = ("touchpoint/", "streams/", "connectors/", "projections/")


def _profile_report(raw: str, top: int = 12) -> list[str]:
    """Where the sampled time went, from py-spy's collapsed stacks (``frame;frame;... count``)."""
    own: Counter[str] = Counter()
    ours: Counter[str] = Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        total += int(count)
        own[frames[-1]] += int(count)
        mine = next((f for f in reversed(frames) if any(m in f for m in _OURS)), "(outside Touchpoint)")
        ours[mine] += int(count)
    lines = [f"worker profile: {total} samples; own time by function:"]
    lines += [f"  {n / total:6.1%}  {frame}" for frame, n in own.most_common(top)]
    lines.append("by the innermost Touchpoint frame (its callees' time included):")
    lines += [f"  {n / total:6.1%}  {frame}" for frame, n in ours.most_common(top)]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--customers", type=int, default=2000)
    parser.add_argument("--days", type=int, default=120)
    parser.add_argument("--rate", type=int, default=3000, help="events/s offered")
    parser.add_argument("--batch", type=int, default=200)
    parser.add_argument("--profile", action="store_true", help="sample the (first) worker with py-spy")
    parser.add_argument("--workers", type=int, default=1,
                        help="worker processes sharing the partitions (identity runs in one of them)")
    args = parser.parse_args()

    run = uuid.uuid4().hex[:8]
    base = load_settings()
    settings = base.model_copy(update={"topic_prefix": f"bench-{run}", "pg_database": f"bench_{run}"})
    with psycopg.connect(base.pg_conninfo("postgres"), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(settings.pg_database)))
    ensure_topics(settings)
    migrate(settings)
    events = [e for e in generate(args.customers, args.days, seed=17) if e["event_id"].startswith("ev-")]
    print(machine_line())
    print(f"{len(events)} events of {args.customers} customers over {args.days} days, offered at {args.rate}/s")
    workers = [spawn(settings, "worker") for _ in range(args.workers)]
    worker, writer = workers[0], spawn(settings, "project")
    acked: dict[str, float] = {}
    profiler = None
    profile_path = f"/tmp/bench-pipeline-{run}.txt"
    try:
        time.sleep(8)  # let the worker join its group; not part of the measurement
        if args.profile:
            py_spy = os.path.join(os.path.dirname(sys.executable), "py-spy")
            profiler = subprocess.Popen([py_spy, "record", "--pid", str(worker.pid), "--format", "raw",
                                         "--rate", "50", "--output", profile_path, "--nonblocking"],
                                        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)
        started = time.time()
        with EventProducer(settings) as producer:
            for i in range(0, len(events), args.batch):
                batch = events[i:i + args.batch]
                for result in producer.publish(batch, datetime.now(UTC)):
                    if isinstance(result, Delivered):
                        acked[result.event_id] = time.time()
                ahead = started + (i + len(batch)) / args.rate - time.time()
                if ahead > 0:
                    time.sleep(ahead)
        published = time.time()
        with psycopg.connect(settings.pg_conninfo(), autocommit=True) as conn:
            while True:
                (rows,) = conn.execute("SELECT count(*) FROM interactions").fetchone() or (0,)
                if rows >= len(acked) or time.time() - published > 600:
                    break
                time.sleep(0.5)
            done = conn.execute("SELECT max(recorded_at) FROM interactions").fetchone()[0].timestamp()  # type: ignore[index]
            rows_at = dict(conn.execute("SELECT event_id, extract(epoch FROM recorded_at) FROM interactions"))
            (cards,) = conn.execute("SELECT count(*) FROM customers").fetchone() or (0,)
        latencies = [float(rows_at[e]) - t for e, t in acked.items() if e in rows_at]
        rss = [peak_rss_mib(w.pid) for w in workers]
        if profiler is not None:
            profiler.send_signal(signal.SIGINT)  # py-spy writes its output when interrupted
            profiler.wait(timeout=60)
        channel_topics = [event_topic(settings, ch) for ch in CHANNELS]
        bare_n, bare_s = asyncio.run(_bare_consume(settings, channel_topics))
    finally:
        for proc in (*workers, writer):
            proc.terminate()
            proc.wait(timeout=30)
        with psycopg.connect(base.pg_conninfo("postgres"), autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(settings.pg_database)))
    span = done - started
    print(f"published {len(acked)} in {published - started:.1f}s; all reflected in PostgreSQL after {span:.1f}s: "
          f"{len(rows_at) / span:,.0f} events/s end to end; {cards} customer cards")
    print(f"event-to-row latency (ack -> interactions row): p50 {percentile(latencies, 0.5) * 1000:.0f} ms, "
          f"p99 {percentile(latencies, 0.99) * 1000:.0f} ms, max {max(latencies) * 1000:.0f} ms")
    print(f"{args.workers} worker(s), peak RSS {', '.join(f'{r:.0f}' for r in rss)} MiB; "
          f"topic prefix {settings.topic_prefix}")
    end_to_end = len(rows_at) / span
    ceiling = bare_n / bare_s
    print(f"ceiling: a bare aiokafka consumer read the same {bare_n} messages in {bare_s:.2f}s = {ceiling:,.0f} "
          f"events/s; the pipeline ran at {end_to_end / ceiling:.1%} of it")
    if profiler is not None and os.path.exists(profile_path):
        with open(profile_path, encoding="utf-8") as fh:
            print("\n".join(_profile_report(fh.read())))
        os.unlink(profile_path)


if __name__ == "__main__":
    main()
