"""Benchmark of dormancy/churn alerts: evaluation cost per tick, and tick-to-topic delay.

Two figures (issue 7), each printed with the machine's size:

1. **Evaluation cost per tick** (pure core, in process). A worker-mode
   :class:`~touchpoint.core.fold.Folder` is loaded with N synthetic customers
   (a few web visits and purchases each, spread over 2025, each customer with
   a rhythm of its own and a silence at the end from none to eight months;
   every event checked by :func:`~touchpoint.contract.models.validate_event`
   and folded with ``Folder.add``). Then the real ``Folder.tick`` path is
   timed twice:

   a. the first tick after loading, at which *every* customer is due (each
      was touched since the last tick): seconds, customers/s, us/customer,
      alerts raised, peak RSS and RSS growth over the tick;
   b. a tick a day later (``--later-days``), at which only the customers
      whose due time (dormancy threshold, a window edge) has come are popped
      from the due-time index: the same figures, to show it costs a fraction.

   The Folder's resident size per customer and the per-customer tick cost are
   printed so 1M customers can be extrapolated from a smaller run
   (``--customers 1000000`` runs it fully: about 4M events, several GiB).

2. **Tick to alert on its topic** (real stack: Kafka, registry, a Faust
   worker as ``touchpoint worker`` runs it, on a fresh topic prefix). A small
   population (``--e2e-customers``, default 200) is published with history in
   2024 via :class:`~connectors.intake.producer.EventProducer`; once the worker has
   committed the whole ``accepted`` topic, a tick months later (``publish_tick``)
   makes them dormant, and the wall time from the publish to the first and the
   last alert received by a consumer assigned to both alert topics is taken.
   Further rounds alternate: some customers come back (events, then a tick two
   days later: their episodes resolve), then a tick ~100 days later makes them
   dormant again. The expected number of alerts per tick comes from folding
   the same events and ticks offline (the oracle), so "last" is known, not
   guessed. Prints every round and p50/max. The worker is stopped with SIGINT
   and the bench topics are deleted (``--keep-topics`` keeps them).

    python -m bench.alerts --customers 100000          # both parts (default 100k customers)
    python -m bench.alerts --customers 1000000 --no-e2e  # the 1M figure itself
    python -m bench.alerts --e2e-only                  # only the end-to-end delay
    python -m bench.alerts --no-e2e                    # only the evaluation cost
    python -m bench.alerts --tiny                      # CI smoke run, a few seconds (2k customers, 20 e2e, 2 rounds)
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import resource
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.machine import machine_line
from touchpoint.contract.models import validate_event
from touchpoint.core.fold import Folder
from touchpoint.core.instants import epoch_ms, iso_ms

SECRET = b"bench-alerts-identifier-key"
DAY_MS = 86_400_000
_HOUR_MS = 3_600_000
_REPO = Path(__file__).resolve().parent.parent


# -- synthetic customers --------------------------------------------------------------


def customer_events(i: int, rng: random.Random, per_customer: int, start_ms: int, end_ms: int,
                    tag: str = "b") -> list[dict[str, Any]]:
    """``per_customer`` events of customer ``i`` (web visits and purchases alternating), oldest first.

    The customer has a rhythm (a gap of 3-40 days between visits, jittered)
    and stops ``0-240`` days before ``end_ms``; everything stays within
    ``[start_ms, end_ms]``.
    """
    gap = rng.uniform(3, 40) * DAY_MS
    silence = rng.uniform(0, 240) * DAY_MS
    last = end_ms - silence
    span = last - start_ms
    if (per_customer - 1) * gap > span:
        gap = span / max(1, per_customer - 1)
    customer_no = f"C{i:09d}"
    events = []
    for j in range(per_customer):
        ms = int(last - (per_customer - 1 - j) * gap + rng.uniform(-6, 6) * _HOUR_MS)
        ms = min(max(ms, start_ms), end_ms)
        event_id = f"{tag}-{i}-{j}"
        if j % 2 == 0:
            events.append({
                "event_id": event_id, "type": "web", "channel": "web", "occurred_at": iso_ms(ms),
                "identifiers": {"customer_no": customer_no},
                "payload": {"session_id": f"S{tag}-{i}-{j}", "action": "page_view", "page": "/rewards"},
            })
        else:
            amount = 500 + int(rng.random() * 9500)
            events.append({
                "event_id": event_id, "type": "purchase", "channel": "branch", "occurred_at": iso_ms(ms),
                "identifiers": {"customer_no": customer_no},
                "payload": {"transaction_id": f"T{tag}-{i}-{j}", "location_id": "FS-0001",
                            "lines": [{"sku": "FUEL-DSL", "category": "fuel", "quantity": 20,
                                       "amount_minor": amount}],
                            "total_minor": amount, "currency": "GBP"},
            })
    events.sort(key=lambda e: e["occurred_at"])
    return events


def population(customers: int, per_customer: int, start: datetime, end: datetime, seed: int,
               tag: str = "b") -> Iterator[dict[str, Any]]:
    """Every customer's events, customer after customer (deterministic for a seed)."""
    rng = random.Random(seed)
    start_ms, end_ms = epoch_ms(start), epoch_ms(end)
    for i in range(customers):
        yield from customer_events(i, rng, per_customer, start_ms, end_ms, tag)


# -- memory ---------------------------------------------------------------------------


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_mib() -> float:
    """Current resident size (from /proc/self/statm; the peak where there is none)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1024 / 1024
    except OSError:
        return peak_rss_mib()


# -- part 1: evaluation cost per tick ---------------------------------------------------


def _due_by(folder: Folder, ms: int) -> int:
    """How many customers the alert index will pop at ``ms`` (a scan; outside every timing)."""
    return sum(1 for due in folder._alert_due._due.values() if due <= ms)


def _timed_tick(folder: Folder, ms: int, label: str) -> float:
    due = _due_by(folder, ms)
    expiring = sum(1 for d in folder._expiry_due._due.values() if d <= ms)
    rss_before, peak_before = rss_mib(), peak_rss_mib()
    gc_before = [s["collections"] for s in gc.get_stats()]
    wall, cpu = time.perf_counter(), time.process_time()
    folder.tick(ms)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    gc_runs = [s["collections"] - b for s, b in zip(gc.get_stats(), gc_before, strict=True)]
    alerts = folder.drain_alerts()
    folder.drain_entries()
    folder.drain_changes()
    by = Counter(f"{a.kind} {a.state}" for a, _ in alerts)
    per = cpu / due * 1e6 if due else 0.0
    print(f"tick {label} at {iso_ms(ms)}: {due:,} customers due of {len(folder.views):,} "
          f"({expiring:,} with points expiring)")
    print(f"  {wall:.2f}s wall, {cpu:.2f}s cpu; {due / wall if wall else 0:,.0f} customers/s wall; "
          f"{per:.1f} us/customer cpu; gc collections (gen0/1/2) {'/'.join(map(str, gc_runs))}")
    print(f"  {len(alerts):,} alert transitions: "
          + (", ".join(f"{n:,} {k}" for k, n in sorted(by.items())) or "none"))
    print(f"  RSS {rss_before:,.0f} -> {rss_mib():,.0f} MiB (growth {rss_mib() - rss_before:+,.0f} MiB); "
          f"peak RSS {peak_before:,.0f} -> {peak_rss_mib():,.0f} MiB")
    return cpu


def bench_tick(customers: int, per_customer: int, later_days: float, seed: int) -> None:
    start, end = datetime(2025, 1, 1, tzinfo=UTC), datetime(2026, 1, 1, tzinfo=UTC)
    print(f"== alert evaluation per tick: {customers:,} customers x {per_customer} events "
          f"(web visits and purchases, {iso_ms(epoch_ms(start))[:10]} .. {iso_ms(epoch_ms(end))[:10]})")
    base = rss_mib()
    folder = Folder(secret=SECRET, keep_decisions=False, log_clock_check=False)  # worker mode
    gc.disable()  # loading only, as the fold does; the ticks below run with the collector on, as in the worker
    began, cpu0 = time.perf_counter(), time.process_time()
    events = rejected = 0
    for doc in population(customers, per_customer, start, end, seed):
        folder.add(validate_event(doc, None))
        events += 1
        if events % 20_000 == 0:  # as the worker drains per batch
            folder.drain_entries()
            folder.drain_changes()
            rejected += len(folder.rejected)
            folder.rejected.clear()
    folder.drain_entries()
    folder.drain_changes()
    rejected += len(folder.rejected)
    load_wall, load_cpu = time.perf_counter() - began, time.process_time() - cpu0
    gc.enable()
    gc.collect()
    loaded = rss_mib()
    print(f"loaded {events:,} events ({rejected} rejected) into {len(folder.views):,} customers in "
          f"{load_wall:.1f}s wall, {load_cpu:.1f}s cpu ({events / load_wall:,.0f} events/s, validation included)")
    print(f"  RSS {base:,.0f} -> {loaded:,.0f} MiB: {(loaded - base) * 1024 / max(1, len(folder.views)):.2f} KiB "
          f"per customer held (views, identity state, due indexes)")
    first = epoch_ms(end)
    cpu_a = _timed_tick(folder, first, "a (first after loading: everyone touched)")
    cpu_b = _timed_tick(folder, first + int(later_days * DAY_MS), f"b ({later_days:g} day later: only those due)")
    n = len(folder.views)
    per_a = cpu_a / n
    print(f"  tick b costs {cpu_b / cpu_a * 100 if cpu_a else 0:.2f}% of tick a; "
          f"for 1,000,000 customers tick a would take about {per_a * 1e6:.0f}s cpu "
          f"(linear in the customers due), the Folder about "
          f"{(loaded - base) / max(1, n) * 1e6 / 1024:.1f} GiB")
    print(f"  peak RSS of the process {peak_rss_mib():,.0f} MiB; load average {os.getloadavg()[0]:.2f}")


# -- part 2: tick to alert on its topic -------------------------------------------------


def _spawn_worker(settings: Any, log: Path) -> subprocess.Popen[bytes]:
    """``python -m touchpoint worker`` on these settings (as tests/fix_stack.spawn_touchpoint does)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOUCHPOINT_")}
    env.update({
        "TOUCHPOINT_HOME": str(settings.home),
        "TOUCHPOINT_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "TOUCHPOINT_TOPIC_PREFIX": settings.topic_prefix,
        "TOUCHPOINT_PG_PORT": str(settings.pg_port),
        "TOUCHPOINT_PG_DATABASE": settings.pg_database,
        "TOUCHPOINT_REGISTRY_URL": settings.registry_url,
    })
    with log.open("wb") as out:
        return subprocess.Popen([sys.executable, "-m", "touchpoint", "worker"], env=env, stdout=out,  # noqa: S603
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=_REPO)


def _stop(proc: subprocess.Popen[bytes]) -> int:
    if proc.poll() is not None:
        return proc.returncode
    proc.send_signal(signal.SIGINT)
    try:
        return proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


def _wait(check: Callable[[], bool], timeout: float, what: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        if proc.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"the worker exited ({proc.returncode}) while waiting for {what}:\n{tail}")
        time.sleep(0.05)
    raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what}")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def bench_e2e(customers: int, per_customer: int, rounds: int, keep_topics: bool) -> None:
    from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition

    from connectors.intake.producer import Delivered, EventProducer
    from connectors.operations.clock import publish_tick
    from connectors.platform.alert_wire import AlertSerde, alert_topic
    from connectors.platform.registry import RegistryClient
    from connectors.platform.topics import ensure_topics
    from touchpoint.settings import load_settings

    settings = load_settings(topic_prefix=f"bench-{uuid.uuid4().hex[:8]}")
    print(f"== tick to alert on its topic: {customers} customers x {per_customer} events (history in 2024), "
          f"{rounds} ticks, topic prefix {settings.topic_prefix}")
    ensure_topics(settings)
    accepted = TopicPartition(settings.topic("accepted"), 0)
    # The expected alerts of each tick: the same events and ticks folded offline.
    oracle = Folder(secret=SECRET, keep_decisions=False, log_clock_check=False)
    offsets = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, group_id=settings.stage_group("identity"),
                            enable_auto_commit=False)
    alerts = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, isolation_level="read_committed",
                           enable_auto_commit=False, fetch_max_wait_ms=10)
    partitions = [TopicPartition(alert_topic(settings, kind), p) for kind in ("dormancy", "churn")
                  for p in sorted(alerts.partitions_for_topic(alert_topic(settings, kind)) or ())]
    alerts.assign(partitions)
    registry = RegistryClient(settings.registry_url)
    serde = AlertSerde(registry)
    tmp = Path(tempfile.mkdtemp(prefix="bench-alerts-"))
    log = tmp / "worker.log"
    worker = _spawn_worker(settings, log)
    firsts: list[float] = []
    lasts: list[float] = []
    since_ack: list[float] = []
    try:
        _wait(lambda: "identity state rebuilt" in log.read_text(errors="replace"), 120,
              "the worker to join and rebuild its state", worker, log)

        in_log = 0  # records the worker must have folded: events (once ingest forwarded them) and ticks

        def caught_up() -> bool:
            end = offsets.end_offsets([accepted])[accepted]
            return end >= in_log and (offsets.committed(accepted) or 0) >= end

        start, end = datetime(2024, 1, 1, tzinfo=UTC), datetime(2024, 5, 1, tzinfo=UTC)
        history = list(population(customers, per_customer, start, end, seed=7, tag=f"e{settings.topic_prefix}"))
        for doc in history:
            oracle.add(validate_event(doc, None))
        oracle.drain_alerts()
        clock = epoch_ms(end) + 120 * DAY_MS  # four months after the last event: everyone is dormant
        rng = random.Random(11)
        with EventProducer(settings) as producer:
            results = producer.publish(history, datetime.now(UTC))
            delivered = sum(isinstance(r, Delivered) for r in results)
            print(f"published {delivered}/{len(history)} events")
            in_log += delivered
            for n in range(rounds):
                comeback: list[dict[str, Any]] = []
                if n % 2 == 1:  # some customers come back just after the last tick; the next tick resolves them
                    back = rng.sample(range(customers), max(1, customers // 3))
                    for i in back:
                        ms = clock + DAY_MS // 2 + rng.randrange(DAY_MS // 2)
                        comeback.append({
                            "event_id": f"e{settings.topic_prefix}-back-{n}-{i}", "type": "web", "channel": "web",
                            "occurred_at": iso_ms(ms), "identifiers": {"customer_no": f"C{i:09d}"},
                            "payload": {"session_id": f"Sback-{n}-{i}", "action": "page_view", "page": "/"}})
                    results = producer.publish(comeback, datetime.fromtimestamp((clock + 2 * DAY_MS) / 1000, UTC))
                    assert all(isinstance(r, Delivered) for r in results), results[:3]
                    in_log += len(results)
                    for doc in comeback:
                        oracle.add(validate_event(doc, None))
                    clock += 2 * DAY_MS
                    why = f"{len(comeback)} came back"
                else:
                    clock += 0 if n == 0 else 100 * DAY_MS
                    why = "everyone silent for months" if n == 0 else "100 days of silence"
                oracle.tick(clock)
                expected = oracle.drain_alerts()
                _wait(caught_up, 120, "the worker to commit the whole accepted topic", worker, log)
                alerts.seek_to_end(*partitions)
                for tp in partitions:
                    alerts.position(tp)  # resolve the end now, before the tick
                sent = time.time()
                publish_tick(settings, datetime.fromtimestamp(clock / 1000, UTC))
                acked = time.time()
                in_log += 1
                got: list[tuple[float, dict[str, Any]]] = []
                deadline = acked + 60
                while len(got) < len(expected) and time.time() < deadline:
                    for records in alerts.poll(timeout_ms=100).values():
                        now = time.time()
                        got += [(now, serde.deserialize(r.value)) for r in records]
                    if worker.poll() is not None:
                        raise RuntimeError(f"the worker exited ({worker.returncode})")
                states = Counter(f"{a['kind']} {a['state']}" for _, a in got)
                same = {a["alert_id"].split("/", 1)[1] for _, a in got} == \
                    {a.alert_id.split("/", 1)[1] for a, _ in expected}
                line = (f"tick {n + 1} at {iso_ms(clock)[:10]} ({why}): {len(got)}/{len(expected)} alerts "
                        f"({', '.join(f'{c} {k}' for k, c in sorted(states.items())) or 'none'}); "
                        f"tick acked in {(acked - sent) * 1000:.0f} ms")
                if got:
                    first, last = got[0][0] - sent, got[-1][0] - sent
                    firsts.append(first)
                    lasts.append(last)
                    line += (f"; first alert after {first * 1000:.0f} ms, last after {last * 1000:.0f} ms "
                             f"({(first - (acked - sent)) * 1000:.0f} / {(last - (acked - sent)) * 1000:.0f} ms "
                             f"after the ack)")
                    since_ack.append(last - (acked - sent))
                if not same:
                    line += " [alerts differ from the offline fold's]"
                print(line)
    finally:
        code = _stop(worker)
        offsets.close()
        alerts.close()
        registry.close()
        if not keep_topics:
            admin = KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
            try:
                ours = (settings.topic_prefix + ".", settings.topic_prefix + "-")  # ours and Faust's own
                admin.delete_topics([t for t in admin.list_topics() if t.startswith(ours)])
            finally:
                admin.close()
    if firsts:
        print(f"tick publish -> alert received: first p50 {percentile(firsts, 0.5) * 1000:.0f} ms, "
              f"max {max(firsts) * 1000:.0f} ms; last p50 {percentile(lasts, 0.5) * 1000:.0f} ms, "
              f"max {max(lasts) * 1000:.0f} ms (over {len(firsts)} ticks with alerts; publish_tick connects a "
              f"new producer each call); from the tick's ack to the last alert p50 "
              f"{percentile(since_ack, 0.5) * 1000:.0f} ms, max {max(since_ack) * 1000:.0f} ms")
    print(f"worker stopped with SIGINT (exit {code}); its log {log}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.alerts", description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=100_000, help="customers in the Folder (part 1)")
    parser.add_argument("--events-per-customer", type=int, default=4)
    parser.add_argument("--later-days", type=float, default=1.0, help="tick b this long after tick a")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--e2e-customers", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=6, help="ticks measured end to end")
    parser.add_argument("--e2e-only", action="store_true", help="only the end-to-end delay (part 2)")
    parser.add_argument("--no-e2e", action="store_true", help="only the evaluation cost (part 1)")
    parser.add_argument("--keep-topics", action="store_true", help="keep the bench's topics")
    parser.add_argument("--tiny", action="store_true", help="CI smoke run: 2k customers, 20 e2e customers, 2 ticks")
    args = parser.parse_args(argv)
    if args.tiny:
        args.customers, args.e2e_customers, args.rounds = 2_000, 20, 2
    print(machine_line())
    if not args.e2e_only:
        bench_tick(args.customers, args.events_per_customer, args.later_days, args.seed)
    if not args.no_e2e:
        bench_e2e(args.e2e_customers, args.events_per_customer, args.rounds, args.keep_topics)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
