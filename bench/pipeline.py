"""The backbone end to end on the local stack: worker throughput and event-to-row latency.

Starts a Faust worker and the projection writers (as `touchpoint worker` and
`touchpoint project` would run) on a fresh topic prefix and a fresh
database, publishes N generated events with the producer library at a
steady rate, and waits until every accepted event is a row in PostgreSQL.
Prints: events/s sustained through the whole pipeline, the latency from
Kafka's acknowledgement of an event to its ``interactions`` row (the card in
``customers`` is written by the same agent batch), p50/p99, and the worker's
peak RSS, with the machine's size.

    python -m bench.pipeline --customers 2000 --days 120 --rate 3000
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime

import psycopg
from psycopg import sql

from bench.machine import machine_line
from connectors.producer import Delivered, EventProducer
from connectors.topics import ensure_topics
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--customers", type=int, default=2000)
    parser.add_argument("--days", type=int, default=120)
    parser.add_argument("--rate", type=int, default=3000, help="events/s offered")
    parser.add_argument("--batch", type=int, default=200)
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
    worker, writer = spawn(settings, "worker"), spawn(settings, "project")
    acked: dict[str, float] = {}
    try:
        time.sleep(8)  # let the worker join its group; not part of the measurement
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
        rss = peak_rss_mib(worker.pid)
    finally:
        for proc in (worker, writer):
            proc.terminate()
            proc.wait(timeout=30)
        with psycopg.connect(base.pg_conninfo("postgres"), autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(settings.pg_database)))
    span = done - started
    print(f"published {len(acked)} in {published - started:.1f}s; all reflected in PostgreSQL after {span:.1f}s: "
          f"{len(rows_at) / span:,.0f} events/s end to end; {cards} customer cards")
    print(f"event-to-row latency (ack -> interactions row): p50 {percentile(latencies, 0.5) * 1000:.0f} ms, "
          f"p99 {percentile(latencies, 0.99) * 1000:.0f} ms, max {max(latencies) * 1000:.0f} ms")
    print(f"worker peak RSS {rss:.0f} MiB; topic prefix {settings.topic_prefix}")


if __name__ == "__main__":
    main()
