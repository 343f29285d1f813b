"""A generated population through the real broker and Faust worker equals the fold of its log.

The oracle is the pure core itself: the worker's input log
(``touchpoint.accepted``) folded offline with the same Folder must give
exactly the cards, aliases and loyalty ledger the projections wrote to
PostgreSQL and the alerts on the alert topics (ticks from the clock ride in
the same log), also when the worker is killed with SIGKILL mid-stream and
restarted (no point lost or doubled, no alert missing).
"""

from __future__ import annotations

import os
import re
import signal
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from kafka import KafkaConsumer, TopicPartition

from connectors.intake.producer import Delivered, EventProducer
from connectors.operations.clock import publish_tick
from tests.e2e.oracle import assert_equals_oracle, committed, drained, end_offset
from tests.e2e.test_pipeline import wait_until
from tests.fix_stack import scoped, spawn_touchpoint, stop_process
from touchpoint.core.snapshot import CHECKPOINT_KEY, unseal
from touchpoint.generate import generate
from touchpoint.settings import Settings

pytestmark = pytest.mark.integration


@pytest.fixture
def settings(settings: Settings) -> Iterator[Settings]:
    """Topics and a database of this test's own: the state tables' first writes must be this test's worker's."""
    with scoped(settings, f"{settings.pg_database}_customers", f"{settings.topic_prefix}-customers") as own:
        yield own


def identity_checkpoint(settings: Settings) -> int:
    """The offset of ``accepted`` the identity state table's latest committed checkpoint reflects (-1: none)."""
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, isolation_level="read_committed",
                             enable_auto_commit=False, consumer_timeout_ms=1000)
    try:
        tp = TopicPartition(settings.topic("identity-state"), 0)
        consumer.assign([tp])
        consumer.seek_to_beginning(tp)
        found = -1
        for message in consumer:
            if message.key == CHECKPOINT_KEY.encode() and message.value is not None:
                secret = settings.identifier_key.get_secret_value().encode()
                found = int(unseal(secret, CHECKPOINT_KEY, message.value)["next_offset"])
        return found
    finally:
        consumer.close()


def test_worker_equals_fold_of_its_log_across_a_kill(settings: Settings, tmp_path: Path) -> None:
    events = [e for e in generate(customers=150, days=60, seed=21) if e["event_id"].startswith("ev-")]
    half = len(events) // 2

    def latest(part: list[dict[str, object]]) -> datetime:
        return max(datetime.fromisoformat(str(e["occurred_at"]).replace("Z", "+00:00")) for e in part)
    mid_tick, final_tick = latest(events[:half]) + timedelta(days=1), latest(events) + timedelta(days=120)
    worker = spawn_touchpoint(settings, "worker", log=tmp_path / "worker-1.log")
    writer = spawn_touchpoint(settings, "project", log=tmp_path / "project.log")
    try:
        accepted_before = end_offset(settings, settings.topic("accepted"))[0]
        with EventProducer(settings) as producer:
            assert all(isinstance(r, Delivered) for r in producer.publish(events[:half], datetime.now(UTC)))
            publish_tick(settings, mid_tick)
            # The worker holds the first half in memory only; kill it without a chance to leave.
            wait_until(lambda: committed(settings) >= accepted_before + half + 1, 90, "the first half", (worker,))
            # ... and in its state table, so the restart exercises restoring it (not only the log): identity's
            # checkpoint past the first half (a first write after the first few batches is not enough: the
            # restart then replays most of the log).
            wait_until(lambda: identity_checkpoint(settings) >= accepted_before + half
                       and sum(end_offset(settings, settings.topic("profile-state")).values()) > 60, 30,
                       "the state table's write of the first half", (worker,))
            os.kill(worker.pid, signal.SIGKILL)
            worker.wait()
            killed_at = committed(settings)
            assert all(isinstance(r, Delivered) for r in producer.publish(events[half:], datetime.now(UTC)))
        publish_tick(settings, final_tick)  # months later: the lapsed become dormant
        worker = spawn_touchpoint(settings, "worker", log=tmp_path / "worker-2.log")
        wait_until(lambda: "identity state rebuilt" in (tmp_path / "worker-2.log").read_text(), 90,
                   "the restarted worker to rebuild its state", (worker,))
        rebuilt = re.search(r"restored=(\d+) .* replayed=(\d+) ", (tmp_path / "worker-2.log").read_text())
        assert rebuilt, "the restarted worker reports how it rebuilt its state"
        restored, replayed = map(int, rebuilt.groups())
        assert restored > 50 and replayed < half, f"the state table spared the restart most of the log: {rebuilt[0]}"

        wait_until(lambda: drained(settings, killed_at), 180, "the worker and the projection to catch up",
                   (worker, writer))
    finally:
        stop_process(worker)
        stop_process(writer)

    counts = assert_equals_oracle(settings)
    partitions = re.findall(r"profile state rebuilt: partition (\d+) restored=(\d+) ",
                            (tmp_path / "worker-2.log").read_text())
    assert sum(int(n) for _, n in partitions) > 50, f"the profile's partitions were restored too: {partitions}"
    print(f"killed at committed offset {killed_at}; {counts}; profile partitions restored {partitions}")
