"""The backbone's throughput, stage by stage and end to end, from a pre-published backlog.

One command, one broker, one database server, figures side by side:

1. **Backlog.** ``--events`` generated events (default 200,000; the
   deliberately bad ones left out) are published once with the producer
   library onto the channel topics of a fresh topic prefix. Not timed
   against the pipeline: the publisher's cost is not in any figure below.
2. **Ceiling.** A bare aiokafka consumer reads the backlog, doing nothing.
3. **Each stage alone**, draining its own input on that prefix, one after
   another: ``touchpoint worker`` with only the ingest stage (channel topics
   -> ``accepted``), then only identity (``accepted`` -> ``resolved``), then
   only the profile (``resolved`` -> the projection topics), then
   ``touchpoint project`` (the projection topics -> PostgreSQL). Each figure
   runs from the stage's first output to its last (start-up is not in it):
   events (or records) per second, and the stage process's CPU-seconds per
   1,000 of them.
4. **The whole pipeline**: the backlog's bytes copied onto a second prefix,
   the workers as the demo runs them (one process per group of
   :data:`~touchpoint.settings.WORKER_PROCESSES`) and the projection writers
   draining it into a fresh database (interactions, cards, identifiers, ledger, alerts), from
   the first accepted event to the last stored projection offset. Its ratio
   to the ceiling.
5. **Latency at half that rate**: a third prefix, events offered steadily
   at half of (4)'s rate, Kafka's acknowledgement of each event to its
   ``interactions`` row, p50/p99.
6. **Memory**: the pipeline workers' peak RSS (summed), and the bytes of state the
   stages hold per customer (the state tables' latest records).
7. **The oracle**: the read model of (4) must equal the offline fold of its
   ``accepted`` log (the end-to-end tests' check); a fast wrong answer is no
   answer. The exit status is 1 when it differs.

``--json`` prints the figures as one JSON object instead of lines;
``--tiny`` is CI's smoke run (3,000 events). Run it on an otherwise idle
machine: the figures are printed with the machine's size and load.

    python -m bench.pipeline
    python -m bench.pipeline --events 50000 --json
    python -m bench.pipeline --tiny
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from kafka import KafkaConsumer, TopicPartition
from psycopg import sql

from bench.machine import machine_line
from bench.scratch import scratch
from bench.scratch import spawn as scratch_spawn
from connectors.intake.producer import Delivered, EventProducer
from connectors.platform.topics import CHANNELS, event_topic
from projections.catalog import PROJECTION_TOPICS
from projections.lag import pipeline_lag
from touchpoint.generate import generate
from touchpoint.settings import WORKER_PROCESSES, Settings

EVENTS_PER_CUSTOMER_DAY = 0.19
"""About how many good events ``generate`` makes per customer and day (to size the population)."""
DAYS = 120
POLL_S = 0.25
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


# --- processes -------------------------------------------------------------------------------------

def spawn(settings: Settings, verb: str, stages: str | None = None) -> subprocess.Popen[bytes]:
    """``touchpoint <verb>`` on these settings (a worker with only ``stages``, if given); its output discarded."""
    return scratch_spawn(settings, verb, Path(os.devnull),
                         None if stages is None else {"TOUCHPOINT_WORKER_STAGES": stages})


def spawn_workers(settings: Settings) -> list[subprocess.Popen[bytes]]:
    """The workers as the demo runs them: one process per group of stages."""
    return [spawn(settings, "worker", stages) for stages in WORKER_PROCESSES]


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
        fields = fh.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def peak_rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else math.nan


# --- Kafka and PostgreSQL probes ---------------------------------------------------------------------

class Offsets:
    """End offsets of topics, summed, through one long-lived consumer."""

    def __init__(self, settings: Settings) -> None:
        self.consumer = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, enable_auto_commit=False)

    def total(self, topics: list[str]) -> int:
        parts = [TopicPartition(t, p) for t in topics for p in sorted(self.consumer.partitions_for_topic(t) or ())]
        return sum(self.consumer.end_offsets(parts).values()) if parts else 0

    def partitions(self, topic: str) -> list[int]:
        return sorted(self.consumer.partitions_for_topic(topic) or ())

    def close(self) -> None:
        self.consumer.close()


def channel_topics(settings: Settings) -> list[str]:
    return [event_topic(settings, ch) for ch in CHANNELS]


def projection_topics(settings: Settings) -> list[str]:
    return [settings.topic(t) for topics in PROJECTION_TOPICS.values() for t in topics]


# --- the backlog ---------------------------------------------------------------------------------------

def backlog_events(n: int) -> list[dict[str, Any]]:
    """``n`` good generated events (fewer only if the population runs out), in event-time order."""
    customers = max(20, math.ceil(n / (EVENTS_PER_CUSTOMER_DAY * DAYS) * 1.1))
    good = (e for e in generate(customers, DAYS, seed=17) if e["event_id"].startswith("ev-"))
    return [e for _, e in zip(range(n), good, strict=False)]


def publish(settings: Settings, events: list[dict[str, Any]], rate: float | None = None,
            batch: int = 500) -> dict[str, float]:
    """Publish with the producer library (at ``rate`` events/s, if given); event id -> time acknowledged."""
    acked: dict[str, float] = {}
    started = time.time()
    with EventProducer(settings) as producer:
        for i in range(0, len(events), batch):
            chunk = events[i:i + batch]
            for result in producer.publish(chunk, datetime.now(UTC)):
                if isinstance(result, Delivered):
                    acked[result.event_id] = time.time()
            if rate:
                ahead = started + (i + len(chunk)) / rate - time.time()
                if ahead > 0:
                    time.sleep(ahead)
    return acked


async def _copy(source: Settings, target: Settings) -> int:
    """Copy the channel topics' records (key, value, headers, partition) from one prefix to another."""
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
    from aiokafka import TopicPartition as AioTP

    consumer = AIOKafkaConsumer(bootstrap_servers=source.kafka_bootstrap, enable_auto_commit=False, group_id=None)
    producer = AIOKafkaProducer(bootstrap_servers=target.kafka_bootstrap, acks="all", linger_ms=5,
                                max_batch_size=512 * 1024)
    await consumer.start()
    await producer.start()
    copied = 0
    try:
        probe = Offsets(source)
        parts = [AioTP(t, p) for t in channel_topics(source) for p in probe.partitions(t)]
        probe.close()
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        ends = await consumer.end_offsets(parts)
        todo = sum(ends.values())
        while copied < todo:
            for tp, messages in (await consumer.getmany(timeout_ms=1000, max_records=5000)).items():
                topic = tp.topic.replace(source.topic_prefix, target.topic_prefix, 1)
                futures = [await producer.send(topic, m.value, key=m.key, partition=tp.partition,
                                               headers=list(m.headers) or None) for m in messages]
                await asyncio.gather(*futures)
                copied += len(messages)
    finally:
        await consumer.stop()
        await producer.stop()
    return copied


async def _bare_consume(settings: Settings) -> tuple[int, float]:
    """Read every message of the channel topics once with a bare aiokafka consumer: (messages, seconds)."""
    from aiokafka import AIOKafkaConsumer
    from aiokafka import TopicPartition as AioTP

    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, enable_auto_commit=False,
                                group_id=None, auto_offset_reset="earliest")
    await consumer.start()
    try:
        probe = Offsets(settings)
        parts = [AioTP(t, p) for t in channel_topics(settings) for p in probe.partitions(t)]
        probe.close()
        consumer.assign(parts)
        todo = sum((await consumer.end_offsets(parts)).values())
        began, seen = time.perf_counter(), 0
        while seen < todo:
            batch = await consumer.getmany(timeout_ms=1000, max_records=10_000)
            seen += sum(len(messages) for messages in batch.values())
        return seen, time.perf_counter() - began
    finally:
        await consumer.stop()


# --- draining ---------------------------------------------------------------------------------------------

@dataclass
class Drained:
    """One run of processes draining their input: items, seconds and CPU-seconds from first to last output."""

    items: int
    seconds: float
    cpu_s: float

    @property
    def per_s(self) -> float:
        return self.items / self.seconds if self.seconds > 0 else math.nan

    @property
    def cpu_per_1000(self) -> float:
        return self.cpu_s / self.items * 1000 if self.items else math.nan


def drain(settings: Settings, procs: list[subprocess.Popen[bytes]], items: int, progress: Callable[[], int],
          lag_of: list[str], what: str, timeout_s: float) -> Drained:
    """Wait until the stages ``lag_of`` have no lag; time and CPU from the first change of ``progress`` to its last.

    ``progress`` is a count that grows with the stage's output (end offsets of its output topics, or
    the stored offsets of the projections); start-up before the first output is not measured.
    """
    deadline = time.monotonic() + timeout_s
    first = last = None
    cpu_first = cpu_last = 0.0
    seen = progress()
    while True:
        time.sleep(POLL_S)
        for proc in procs:
            if proc.poll() is not None:
                raise RuntimeError(f"{what}: a process exited with {proc.returncode}")
        now, count = time.monotonic(), progress()
        cpu = sum(cpu_seconds(p.pid) for p in procs)
        grew = count != seen
        if grew:
            seen = count
            if first is None:
                first, cpu_first = now, cpu
            last, cpu_last = now, cpu
        # Lag only once the output stopped growing: a lag probe opens its own Kafka and PostgreSQL clients,
        # and probing every poll took 0.06 of a core from the machine under test.
        if first is not None and not grew:
            lag = pipeline_lag(settings)
            if not any(lag[stage] for stage in lag_of):
                break
        if now > deadline:
            raise RuntimeError(f"{what}: not drained within {timeout_s:.0f} s (lag {pipeline_lag(settings)})")
    assert first is not None and last is not None
    # The first sample already holds one poll's worth of output: count its interval in.
    return Drained(items, last - first + POLL_S, cpu_last - cpu_first)


def stage_alone(settings: Settings, verb: str, stages: str | None, items: int, outputs: Callable[[], int],
                lag_of: list[str], what: str, timeout_s: float) -> Drained:
    proc = spawn(settings, verb, stages)
    try:
        return drain(settings, [proc], items, outputs, lag_of, what, timeout_s)
    finally:
        stop(proc)


def stored_total(settings: Settings) -> int:
    with psycopg.connect(settings.pg_conninfo()) as conn:
        (total,) = conn.execute("SELECT coalesce(sum(next_offset), 0) FROM projection_offsets").fetchone() or (0,)
    return int(total)


def state_bytes(settings: Settings) -> int:
    """Bytes of the stages' state tables' latest records (identity's and every profile partition's)."""
    from streams.state import StateTable

    async def load_all() -> int:
        total = 0
        tables = [StateTable(settings, "identity-state")]
        tables += [StateTable(settings, "profile-state", p) for p in range(settings.topic_partitions)]
        for table in tables:
            total += sum(len(k) + len(v) for k, v in (await table.load()).items())
        return total

    return asyncio.run(load_all())


# --- the run ------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.pipeline", description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000, help="events in the backlog")
    parser.add_argument("--half-seconds", type=float, default=30.0,
                        help="how long events are offered at half the pipeline's rate")
    parser.add_argument("--timeout", type=float, default=3600.0, help="the longest any one drain may take (s)")
    parser.add_argument("--tiny", action="store_true", help="a smoke run: 3,000 events")
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    args = parser.parse_args(argv)
    if args.tiny:
        args.events, args.half_seconds = 3000, 5.0

    out: dict[str, Any] = {}
    lines: list[str] = []

    def say(line: str) -> None:
        lines.append(line)
        if not args.json:
            print(line, flush=True)

    say(machine_line() + f"; load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    events = backlog_events(args.events)
    out["events"] = len(events)
    with scratch("stages") as stages:
        began = time.time()
        acked = publish(stages, events)
        say(f"backlog: {len(acked):,} events published in {time.time() - began:.1f}s "
            f"onto {stages.topic_prefix} (not part of any figure)")
        n = len(acked)
        out["events"] = n

        bare_n, bare_s = asyncio.run(_bare_consume(stages))
        out["ceiling_events_per_s"] = bare_n / bare_s
        say(f"ceiling: a bare aiokafka consumer read the {bare_n:,} messages in {bare_s:.2f}s = "
            f"{out['ceiling_events_per_s']:,.0f} events/s")

        offsets = Offsets(stages)
        try:
            accepted_and_dlq = lambda: offsets.total([stages.topic("accepted"), stages.topic("dlq")])  # noqa: E731
            ingest = stage_alone(stages, "worker", "ingest", n, accepted_and_dlq, ["ingest"], "ingest",
                                 args.timeout)
            resolved = lambda: offsets.total([stages.topic("resolved")])  # noqa: E731
            identity = stage_alone(stages, "worker", "identity", n, resolved, ["identity"], "identity", args.timeout)
            folded = lambda: offsets.total([stages.topic("customer-events")])  # noqa: E731
            profile = stage_alone(stages, "worker", "profile", n, folded, ["profile"], "profile", args.timeout)
            records = offsets.total(projection_topics(stages))
            projections = stage_alone(stages, "project", None, records, lambda: stored_total(stages),
                                      [f"projection {name}" for name in PROJECTION_TOPICS], "projections",
                                      args.timeout)
        finally:
            offsets.close()
        for name, figure, unit in (("ingest", ingest, "events"), ("identity", identity, "events"),
                                   ("profile", profile, "events"), ("projections", projections, "records")):
            out[f"{name}_{unit}_per_s"] = figure.per_s
            out[f"{name}_cpu_s_per_1000"] = figure.cpu_per_1000
            say(f"stage alone: {name:<11} {figure.items:>9,} {unit} in {figure.seconds:6.1f}s = "
                f"{figure.per_s:9,.0f} {unit}/s, {figure.cpu_per_1000:6.2f} CPU-s per 1,000")

        with scratch("pipeline") as pipeline:
            copied = asyncio.run(_copy(stages, pipeline))
            workers, writer = spawn_workers(pipeline), spawn(pipeline, "project")
            offsets = Offsets(pipeline)
            try:
                whole = drain(pipeline, [*workers, writer], n, lambda: stored_total(pipeline) + offsets.total(
                    [pipeline.topic("accepted"), pipeline.topic("dlq")]), list(pipeline_lag(pipeline)),
                    "pipeline", args.timeout)
                out["worker_rss_mib"] = sum(peak_rss_mib(worker.pid) for worker in workers)
            finally:
                offsets.close()
                for proc in (*workers, writer):
                    stop(proc)
            out["pipeline_events_per_s"] = whole.per_s
            out["pipeline_cpu_s_per_1000"] = whole.cpu_per_1000
            with psycopg.connect(pipeline.pg_conninfo()) as conn:
                counts = {table: conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table)))
                          .fetchone()[0] for table in ("interactions", "customers", "customer_identifiers",  # type: ignore[index]
                                                       "loyalty_ledger", "alerts")}
            say(f"pipeline: {copied:,} events drained into PostgreSQL in {whole.seconds:.1f}s = "
                f"{whole.per_s:,.0f} events/s, {whole.cpu_per_1000:.2f} CPU-s per 1,000 (workers + projections); "
                f"rows: {', '.join(f'{t} {c:,}' for t, c in counts.items())}")
            out["pipeline_to_ceiling"] = whole.per_s / out["ceiling_events_per_s"]
            say(f"pipeline / ceiling: {out['pipeline_to_ceiling']:.2%}")
            customers = max(1, counts["customers"])
            out["state_bytes_per_customer"] = state_bytes(pipeline) / customers
            say(f"memory: pipeline workers' peak RSS {out['worker_rss_mib']:.0f} MiB ({' + '.join(WORKER_PROCESSES)}); "
                f"state tables "
                f"{out['state_bytes_per_customer']:,.0f} bytes per customer ({customers:,} customers)")
            out["oracle_equal"], why = oracle_check(pipeline)
            say(f"oracle: the read model {'equals' if out['oracle_equal'] else 'DIFFERS from'} the fold of "
                f"accepted{'' if out['oracle_equal'] else ': ' + why}")

    half = max(1.0, out["pipeline_events_per_s"] / 2)
    with scratch("half") as steady:
        workers, writer = spawn_workers(steady), spawn(steady, "project")
        try:
            time.sleep(8)  # let the workers join their groups; not part of the measurement
            offered = events[:max(1, int(half * args.half_seconds))]
            acked = publish(steady, offered, rate=half, batch=max(1, min(500, int(half / 10))))
            deadline = time.time() + args.timeout
            with psycopg.connect(steady.pg_conninfo(), autocommit=True) as conn:
                while time.time() < deadline:
                    (rows,) = conn.execute("SELECT count(*) FROM interactions").fetchone() or (0,)
                    if rows >= len(acked):
                        break
                    time.sleep(0.5)
                rows_at = dict(conn.execute("SELECT event_id, extract(epoch FROM recorded_at) FROM interactions"))
        finally:
            for proc in (*workers, writer):
                stop(proc)
    latencies = [float(rows_at[e]) - t for e, t in acked.items() if e in rows_at]
    out["p50_ms_at_half"] = percentile(latencies, 0.5) * 1000
    out["p99_ms_at_half"] = percentile(latencies, 0.99) * 1000
    say(f"at half the pipeline's rate ({half:,.0f} events/s offered, {len(acked):,} events): event-to-row "
        f"p50 {out['p50_ms_at_half']:,.0f} ms, p99 {out['p99_ms_at_half']:,.0f} ms")
    out["load_average"] = os.getloadavg()[0]
    out["machine"] = lines[0]
    if args.json:
        print(json.dumps(out, sort_keys=True))
    return 0 if out["oracle_equal"] else 1


def oracle_check(settings: Settings) -> tuple[bool, str]:
    """Whether the read model equals the offline fold of ``accepted`` (and why not)."""
    from tests.e2e.oracle import assert_equals_oracle

    try:
        assert_equals_oracle(settings, population_checks=False)
    except AssertionError as exc:
        return False, "".join(traceback.format_exception_only(exc)).strip()[:2000]
    return True, ""


if __name__ == "__main__":
    sys.exit(main())
