"""Faults on the real stack: the pipeline still ends equal to the fold of its log (tests/e2e/oracle.py).

* two workers share the partitions; the first is killed with SIGKILL
  mid-stream (a rebalance hands its partitions over, the ordered stage's
  state follows through the state table), then runs again beside the other;
* duplicate delivery: events published two and three times (a retried batch,
  a late replay of everything); the cards equal the fold of the log with the
  repeated event ids left out, and every event is one interaction row;
* a worker killed with SIGKILL while it works through a backlog of full
  batches (the profile holds cards back until its next state write): the
  restarted worker replays what came after its last state write and the read
  model still equals the fold.

Each test has its own topics and database, so the partitions are theirs alone.
"""

from __future__ import annotations

import os
import re
import signal
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from kafka import KafkaConsumer, TopicPartition

from connectors.intake.producer import Delivered, EventProducer
from connectors.operations.clock import publish_tick
from tests.e2e.oracle import assert_equals_oracle, committed, drained, end_offset, oracle
from tests.e2e.test_pipeline import wait_until
from tests.fix_stack import scoped, spawn_touchpoint, stop_process
from touchpoint.core.profile import render
from touchpoint.generate import generate
from touchpoint.settings import Settings

pytestmark = pytest.mark.integration


@pytest.fixture
def isolated(settings: Settings, request: pytest.FixtureRequest) -> Iterator[Settings]:
    """Settings with a topic prefix and a database of this test's own."""
    name = request.node.name.removeprefix("test_")[:20].replace("_", "-")
    with scoped(settings, f"{settings.pg_database}_{name.replace('-', '_')}",
                topic_prefix=f"{settings.topic_prefix}-{name}") as own:
        yield own


def population(seed: int) -> list[dict[str, Any]]:
    return [e for e in generate(customers=150, days=60, seed=seed) if e["event_id"].startswith("ev-")]


def latest(events: list[dict[str, Any]]) -> datetime:
    return max(datetime.fromisoformat(str(e["occurred_at"]).replace("Z", "+00:00")) for e in events)


def publish(settings: Settings, events: list[dict[str, Any]]) -> None:
    with EventProducer(settings) as producer:
        assert all(isinstance(r, Delivered) for r in producer.publish(events, datetime.now(UTC)))


def rebuilds(log: Path) -> int:
    """How many times a worker (re)built a stage's state (identity's, or a profile partition's) on taking it."""
    return log.read_text(errors="replace").count("state rebuilt")


def ready(log: Path) -> bool:
    """Whether a worker joined the group and got its partitions (it may hold no identity partition)."""
    return "[^Worker]: Ready" in log.read_text(errors="replace")


def test_two_workers_one_killed_then_both_again(isolated: Settings, tmp_path: Path) -> None:
    settings = isolated
    events = population(seed=33)
    third = len(events) // 3
    parts = [events[:third], events[third:2 * third], events[2 * third:]]
    logs = {name: tmp_path / f"{name}.log" for name in ("a-1", "b", "a-2")}
    a = spawn_touchpoint(settings, "worker", log=logs["a-1"])
    writer = spawn_touchpoint(settings, "project", log=tmp_path / "project.log")
    b = None
    try:
        publish(settings, parts[0])
        publish_tick(settings, latest(parts[0]) + timedelta(days=1))
        wait_until(lambda: committed(settings) >= third + 1, 90, "the first worker to fold the first third", (a,))
        b = spawn_touchpoint(settings, "worker", log=logs["b"])  # a rebalance: the partitions are shared now
        wait_until(lambda: ready(logs["b"]), 90, "the second worker to start", (a, b))
        publish(settings, parts[1][: third // 2])
        os.kill(a.pid, signal.SIGKILL)  # mid-stream, without leaving the group
        a.wait()
        publish(settings, parts[1][third // 2:])
        publish_tick(settings, latest(parts[1]) + timedelta(days=1))
        # The survivor gets the dead worker's partitions once its session times out (10 s).
        wait_until(lambda: committed(settings) >= end_offset(settings, settings.topic("accepted"))[0], 120,
                   "the surviving worker to fold the second third", (b,))
        a = spawn_touchpoint(settings, "worker", log=logs["a-2"])  # both running again
        wait_until(lambda: ready(logs["a-2"]), 90, "the first worker to come back", (a, b))
        publish(settings, parts[2])
        publish_tick(settings, latest(events) + timedelta(days=120))
        wait_until(lambda: drained(settings), 180, "both workers and the projection to catch up", (a, b, writer))
    finally:
        for proc in (a, b, writer):
            if proc is not None:
                stop_process(proc)
    counts = assert_equals_oracle(settings)
    print(f"rebuilds per worker run: { {name: rebuilds(log) for name, log in logs.items()} }; {counts}")


def test_every_event_published_twice_counts_once(isolated: Settings, tmp_path: Path) -> None:
    settings = isolated
    events = population(seed=34)
    half = len(events) // 2
    worker = spawn_touchpoint(settings, "worker", log=tmp_path / "worker.log")
    writer = spawn_touchpoint(settings, "project", log=tmp_path / "project.log")
    try:
        publish(settings, events[:half])
        publish(settings, events[:half])  # a producer retrying a whole batch
        publish(settings, events[half:])
        wait_until(lambda: committed(settings) >= len(events) + half, 120, "the worker to fold everything",
                   (worker,))
        publish(settings, events)  # and a replay of everything, much later
        publish_tick(settings, latest(events) + timedelta(days=120))
        wait_until(lambda: drained(settings), 180, "the worker and the projection to catch up", (worker, writer))
    finally:
        stop_process(worker)
        stop_process(writer)
    counts = assert_equals_oracle(settings)

    # Stronger than the oracle of the log (which holds most events two or three times): the fold
    # of that log with every repeated event id left out.
    once = oracle(settings, once=True)
    with psycopg.connect(settings.pg_conninfo()) as conn:
        cards = {cid: (view, as_of) for cid, view, as_of in conn.execute(
            "SELECT customer_id, view, as_of FROM customers")}
        interactions = conn.execute("SELECT count(*) FROM interactions").fetchone()[0]
    assert set(cards) == set(once.views)
    for customer_id, (card, as_of) in cards.items():
        assert card == render(once.views[customer_id], as_of, once.config.segment, once.rules), customer_id
    assert interactions == len(events), "every event is one interaction row (keyed by event id)"
    print(f"{len(events)} events published 2-3 times; {counts}")


def profile_committed(settings: Settings) -> int:
    """The profile stage's committed offsets on ``resolved``, summed over its partitions."""
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, group_id=settings.stage_group("profile"),
                             enable_auto_commit=False)
    try:
        topic = settings.topic("resolved")
        return sum(consumer.committed(TopicPartition(topic, p)) or 0 for p in range(settings.topic_partitions))
    finally:
        consumer.close()


def test_a_worker_killed_in_a_backlog_while_cards_are_held(isolated: Settings, tmp_path: Path) -> None:
    settings = isolated
    events = population(seed=35)
    # Batches of 10: the published population is a backlog of full batches, through which the profile
    # renders cards only when its state write is due (every 5 s). (Later events and the tick touch most
    # customers again, so this checks the restart in a backlog, not the hold on its own.)
    small_batches = {"TOUCHPOINT_STAGE_BATCH_SIZE": "10"}
    logs = {name: tmp_path / f"{name}.log" for name in ("worker-1", "worker-2")}
    publish(settings, events)
    worker = spawn_touchpoint(settings, "worker", log=logs["worker-1"], env=small_batches)
    writer = spawn_touchpoint(settings, "project", log=tmp_path / "project.log")
    try:
        wait_until(lambda: profile_committed(settings) >= 100, 90, "the profile to fold a first part", (worker,))
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait()
        worker = spawn_touchpoint(settings, "worker", log=logs["worker-2"], env=small_batches)
        wait_until(lambda: drained(settings), 180, "the restarted worker and the projection to catch up",
                   (worker, writer))
        publish_tick(settings, latest(events) + timedelta(days=120))  # after the history: many fall dormant
        wait_until(lambda: drained(settings), 120, "the tick to be folded",
                   (worker, writer))
    finally:
        stop_process(worker)
        stop_process(writer)
    counts = assert_equals_oracle(settings)
    replayed = [int(n) for n in re.findall(r"profile state rebuilt: .* replayed=(\d+) records",
                                           logs["worker-2"].read_text(errors="replace"))]
    # What the killed worker folded after its last state write, its held cards among it, came again.
    assert sum(replayed) > 0, replayed
    print(f"replayed after the kill per partition: {replayed}; {counts}")
