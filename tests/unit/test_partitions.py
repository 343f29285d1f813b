"""The fold split as the workers run it (identity in order, views in partitions) equals one Folder.

A small simulated broker: identity's records queue per partition, partitions
are fed in a random interleaving (a view handed in may arrive long after the
event that needs it), identity re-sends a stretch of its records as after a
crash, and a partition is snapshot and restored mid-way. Whatever happens, the
union of the partitions' views renders exactly the one Folder's cards, with
the same ledger entries, alert transitions and rejections.
"""

from __future__ import annotations

import json
import random
from collections import deque
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.unit.test_fold import _IDS, SECRET, event, log_lines
from touchpoint.contract.models import ContractViolation, validate_event
from touchpoint.core.fold import Folder, Rejected, tick_of
from touchpoint.core.partitions import (
    IdentityLog,
    ProfilePartition,
    Record,
    Reset,
    Resolved,
    partition_of,
)
from touchpoint.core.profile import render
from touchpoint.core.snapshot import partition_from_records, partition_records
from touchpoint.generate import generate


def folder() -> Folder:
    return Folder(secret=SECRET, keep_decisions=False, log_clock_check=False)


def reading(log: dict[int, str]) -> Any:
    """A Folder's history over the ordered log (offset -> line): guardrails in event time."""
    return lambda offsets: [validate_event(json.loads(log[offset]), None) for offset in offsets]


def one_folder(lines: list[str]) -> Folder:
    whole = folder()
    whole.history = reading(dict(enumerate(lines)))
    for offset, line in enumerate(lines):
        doc = json.loads(line)
        at = tick_of(doc)
        if at is not None:
            whole.tick(at)
        else:
            whole.position = offset
            whole.add(validate_event(doc, None))
    return whole


class Broker:
    """Identity's records and the partitions' hand-ins, queued per partition; delivery order is up to ``rng``."""

    def __init__(self, partitions: int, rng: random.Random, local: bool = False) -> None:
        """:param local: hand views in straight to their partition too (as one process does), not only via the log."""
        self.rng = rng
        self.local = local
        self.identity = IdentityLog(folder(), partitions)
        self.log: dict[int, str] = {}  # the ordered log identity reads, and reads again (its history)
        self.identity.folder.history = reading(self.log)
        self.partitions = [ProfilePartition(folder(), p, partitions) for p in range(partitions)]
        self.logs: list[list[Record]] = [[] for _ in range(partitions)]  # everything ever written, per partition
        self.read = [0] * partitions
        self.sent: list[tuple[int, Record]] = []  # identity's records, in order (to re-send a stretch)
        self.rejected: list[str] = []
        self.alerts: list[Any] = []
        self.entries: list[Any] = []

    def write(self, partition: int, record: Record) -> None:
        self.logs[partition].append(record)

    def publish(self, lines: list[str], start: int = 0) -> None:
        """Identity folds ``lines`` (the ordered log from offset ``start``) and writes its records."""
        for offset, line in enumerate(lines, start=start):
            self.log[offset] = line
            doc = json.loads(line)
            at = tick_of(doc)
            if at is not None:
                records = self.identity.tick(offset, at)
            else:
                event = validate_event(doc, None)
                try:
                    _, _, records = self.identity.event(offset, event)
                except Rejected:
                    self.rejected.append(event.event_id)
                    continue
            for partition, record in records:
                self.sent.append((partition, record))
                self.write(partition, record)
            if self.rng.random() < 0.3:
                self.deliver(self.rng.randrange(8))

    def resend(self, start: int) -> None:
        """Identity restarted: the records from ``start`` on are written again."""
        for partition, record in self.sent[start:]:
            self.write(partition, record)

    def deliver(self, steps: int | None = None) -> None:
        """Feed records to partitions, a random partition at a time (all of them when ``steps`` is None)."""
        while steps is None or steps > 0:
            waiting = [p for p in range(len(self.logs)) if self.read[p] < len(self.logs[p])]
            if not waiting:
                return
            p = self.rng.choice(waiting)
            offset = self.read[p]
            self.read[p] += 1
            part = self.partitions[p]
            part.feed(offset, self.logs[p][offset])
            self.collect(part)
            if steps is not None:
                steps -= 1

    def collect(self, part: ProfilePartition) -> None:
        outcome = part.drain()
        self.rejected += [record.event.event_id for record, _ in outcome.rejected]
        self.alerts += [alert.alert_id for alert, _ in part.folder.drain_alerts()]
        self.entries += [entry.id for _, entry in part.folder.drain_entries()]
        for target, hand_in in outcome.hand_ins:
            self.write(target, hand_in)
            if self.local:
                self.partitions[target].receive(hand_in)
                self.collect(self.partitions[target])

    def restart(self, p: int) -> None:
        """Partition ``p`` crashes: a new one restores its last snapshot and replays from its offset."""
        old = self.partitions[p]
        records = partition_records(old, list(old.folder.views), list(old.arrived))
        table = {key: value for key, value in records.items() if value is not None}  # as the table reads back
        new = partition_from_records(folder(), p, len(self.partitions), table)
        self.partitions[p] = new
        replay_from = new.fed
        for offset in range(replay_from, self.read[p]):
            new.feed(offset, self.logs[p][offset])
            self.collect(new)


def views_of(partitions: list[ProfilePartition]) -> dict[str, Any]:
    """Every partition's views in one map; each customer lives in exactly one partition."""
    views: dict[str, Any] = {}
    for partition in partitions:
        for customer_id, view in partition.folder.views.items():
            assert customer_id not in views, f"{customer_id} in two partitions"
            views[customer_id] = view
    return views


def assert_same(broker: Broker, whole: Folder) -> None:
    views = views_of(broker.partitions)
    assert set(views) == set(whole.views)
    latest = max(part.folder.latest_ms or 0 for part in broker.partitions)
    assert whole.latest_ms is None or latest == whole.latest_ms
    as_of = datetime.fromtimestamp(0, UTC) + timedelta(milliseconds=whole.latest_ms or 0)
    for customer_id, view in views.items():
        assert render(view, as_of, whole.config.segment, whole.rules, entries=None) == render(
            whole.views[customer_id], as_of, whole.config.segment, whole.rules, entries=None), customer_id
        assert view.keys == whole.views[customer_id].keys
    assert sorted(broker.rejected) == sorted(r["event_id"] for r in whole.rejected)
    assert set(broker.alerts) == {alert.alert_id for alert, _ in whole.drain_alerts()}
    assert set(broker.entries) == {entry.id for _, entry in whole.drain_entries()}
    for part in broker.partitions:
        assert not part.held and not part.arrived, "every hold resolved, every view handed in taken over"


def population(seed: int) -> list[str]:
    """A generated population as the ordered log holds it: the events the contract accepts, and ticks."""
    lines = []
    for doc in generate(customers=60, days=90, seed=seed):
        try:
            if tick_of(doc) is None:
                validate_event(doc, None)
        except ContractViolation:
            continue
        lines.append(json.dumps(doc))
    return lines


@pytest.mark.parametrize("local", [False, True], ids=["through the log", "handed in locally too"])
@pytest.mark.parametrize("partitions", [1, 2, 5])
@pytest.mark.parametrize("seed", [1, 2])
def test_a_generated_population_in_partitions_equals_one_fold(partitions: int, seed: int, local: bool) -> None:
    lines = population(seed)
    broker = Broker(partitions, random.Random(seed), local)
    broker.publish(lines)
    broker.deliver()
    whole = one_folder(lines)
    assert any(r.merged for p in range(partitions) for r in broker.logs[p] if isinstance(r, Resolved)), \
        "the population merges customers"
    assert_same(broker, whole)


def by_channel(seed: int, customers: int) -> list[str]:
    """A generated population as a backfill writes it, one channel's file after another: late events in
    components the guardrails kept apart, which identity resolves again in event-time order."""
    docs = [doc for doc in generate(customers=customers, days=365, seed=seed) if doc["event_id"].startswith("ev-")]
    docs.sort(key=lambda doc: (doc["occurred_at"], doc["event_id"]))
    return [json.dumps(doc) for channel in ("branch", "phone", "web", "email", "sms") for doc in docs
            if doc["channel"] == channel]


@pytest.mark.parametrize("local", [False, True], ids=["through the log", "handed in locally too"])
@pytest.mark.parametrize("partitions", [1, 3])
def test_a_backfill_channel_by_channel_in_partitions_equals_one_fold(partitions: int, local: bool) -> None:
    lines = by_channel(7, 300)
    broker = Broker(partitions, random.Random(partitions), local)
    broker.publish(lines)
    broker.deliver()
    whole = one_folder(lines)
    assert whole.refolds, "the backfill resolves a component again"
    assert any(isinstance(r, Reset) for p in range(partitions) for r in broker.logs[p])
    assert_same(broker, whole)


@pytest.mark.parametrize("local", [False, True], ids=["through the log", "handed in locally too"])
def test_resent_records_and_a_restarted_partition_change_nothing(local: bool) -> None:
    lines = population(3)
    broker = Broker(3, random.Random(3), local)
    broker.publish(lines[: len(lines) // 2])
    broker.deliver(200)
    broker.restart(1)
    broker.resend(len(broker.sent) // 3)  # identity crashed after sending, before it could commit
    broker.publish(lines[len(lines) // 2:], start=len(lines) // 2)
    broker.deliver(300)
    broker.restart(0)
    broker.restart(2)
    broker.deliver()
    assert_same(broker, one_folder(lines))


def test_an_event_waits_for_the_view_it_merges() -> None:
    lines = [event("e1", {"customer_no": "A"}), event("e2", {"email": "b@example.com"}, minutes=1),
             event("e3", {"customer_no": "A", "email": "b@example.com"}, minutes=2)]
    survivor, merged = (validate_event(json.loads(lines[0]), None), validate_event(json.loads(lines[1]), None))
    partitions = 64
    identity = IdentityLog(folder(), partitions)
    parts = {p: ProfilePartition(folder(), p, partitions) for p in range(partitions)}
    sent: list[tuple[int, Record]] = []
    for offset, e in enumerate([survivor, merged, validate_event(json.loads(lines[2]), None)]):
        sent += identity.event(offset, e)[2]
    a, b = sent[0][1].customer_id, sent[1][1].customer_id  # type: ignore[union-attr]
    pa, pb = partition_of(a, partitions), partition_of(b, partitions)
    assert pa != pb, "the two customers live in different partitions (pick other ids if not)"
    queues: dict[int, deque[Record]] = {pa: deque(), pb: deque()}
    for p, record in sent:
        queues[p].append(record)
    for offset in range(len(queues[pa])):  # the survivor's partition first: it must hold e3
        parts[pa].feed(offset, queues[pa][offset])
    assert len(parts[pa].held) == 1 and parts[pa].next_offset == 1
    for offset, record in enumerate(queues[pb]):
        parts[pb].feed(offset, record)
    [(target, hand_in)] = parts[pb].drain().hand_ins
    assert target == pa and b not in parts[pb].folder.views
    parts[pa].feed(len(queues[pa]), hand_in)
    assert not parts[pa].held and parts[pa].next_offset == 3
    assert set(parts[pa].folder.views) == {a} and b in parts[pa].folder.views[a].aliases
    # The merge is stamped with the position of e3, the event that merged b (identity's offset 2).
    assert parts[pa].drain().merged_at == {b: (2, 1)}


def test_a_view_handed_in_locally_releases_the_hold_and_its_copy_in_the_log_changes_nothing() -> None:
    lines = [event("e1", {"customer_no": "A"}), event("e2", {"email": "b@example.com"}, minutes=1),
             event("e3", {"customer_no": "A", "email": "b@example.com"}, "purchase", minutes=2)]
    partitions = 64
    identity = IdentityLog(folder(), partitions)
    sent = [sent for offset, line in enumerate(lines)
            for sent in identity.event(offset, validate_event(json.loads(line), None))[2]]
    pa, pb = sent[0][0], sent[1][0]
    assert pa != pb
    parts = {p: ProfilePartition(folder(), p, partitions) for p in (pa, pb)}
    queues: dict[int, list[Record]] = {pa: [], pb: []}
    for p, record in sent:
        queues[p].append(record)
    for offset, record in enumerate(queues[pa]):
        parts[pa].feed(offset, record)
    assert len(parts[pa].held) == 1
    for offset, record in enumerate(queues[pb]):
        parts[pb].feed(offset, record)
    [(_, hand_in)] = parts[pb].drain().hand_ins
    parts[pa].receive(hand_in)  # straight from the other partition: no offset in pa's log
    assert not parts[pa].held and parts[pa].next_offset == len(queues[pa])
    folded = parts[pa].drain()
    assert [r.event.event_id for r in folded.followed] == ["e1", "e3"]
    entries = parts[pa].folder.drain_entries()
    card = render(parts[pa].folder.views[sent[0][1].customer_id], datetime(2026, 1, 1, tzinfo=UTC),  # type: ignore[union-attr]
                  parts[pa].folder.config.segment, parts[pa].folder.rules, entries=None)
    parts[pa].feed(len(queues[pa]), hand_in)  # its copy arrives through the log: a re-send now
    assert not parts[pa].arrived and parts[pa].next_offset == len(queues[pa]) + 1
    assert parts[pa].drain().followed == [] and parts[pa].folder.drain_entries() == []
    assert render(parts[pa].folder.views[sent[0][1].customer_id], datetime(2026, 1, 1, tzinfo=UTC),  # type: ignore[union-attr]
                  parts[pa].folder.config.segment, parts[pa].folder.rules, entries=None) == card
    assert entries, "the purchase earned points once"


_LINE = st.one_of(
    st.tuples(_IDS, st.sampled_from(["web", "purchase", "refund", "call"]), st.integers(0, 90 * 1440)),
    st.sampled_from(['{"tick": "2025-04-01T00:00:00Z"}', '{"tick": "2025-06-15T00:00:00Z"}']),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(log=st.lists(_LINE, max_size=40), partitions=st.integers(1, 4), seed=st.integers(0, 2**16),
       local=st.booleans())
def test_any_log_in_any_partitioning_and_order_equals_one_fold(log: list[object], partitions: int,
                                                               seed: int, local: bool) -> None:
    lines = log_lines(log)
    broker = Broker(partitions, random.Random(seed), local)
    broker.publish(lines)
    broker.deliver()
    assert_same(broker, one_folder(lines))
