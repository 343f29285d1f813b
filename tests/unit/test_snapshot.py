"""A stage's state table: records written per batch rebuild exactly the Folder that wrote them."""

from __future__ import annotations

import json
import pickle
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from touchpoint.core.fold import Folder
from touchpoint.core.instants import epoch_ms
from touchpoint.core.profile import render
from touchpoint.core.snapshot import (
    CHECKPOINT_KEY,
    FORMAT,
    SnapshotError,
    checkpoint_record,
    customer_records,
    restore,
    track_changes,
)
from touchpoint.generate import generate

SECRET = b"test-secret"


def worker_folder() -> tuple[Folder, set[str]]:
    """A Folder configured as the workers' (both halves here), with its change tracking."""
    folder = Folder(secret=SECRET, keep_decisions=False, log_clock_check=False)
    return folder, track_changes(folder)


def batches(customers: int, days: int, seed: int, size: int) -> list[list[str]]:
    """The generated population as JSON lines in batches, a tick line after every batch."""
    events = list(generate(customers=customers, days=days, seed=seed))
    out = []
    for start in range(0, len(events), size):
        batch = events[start:start + size]
        # The generator's bad events include some dated years ahead: the clock follows the good ones.
        last = max(e["occurred_at"] for e in batch if str(e["event_id"]).startswith("ev-"))
        tick = datetime.fromisoformat(last.replace("Z", "+00:00")) + timedelta(hours=6)
        out.append([*map(json.dumps, batch), json.dumps({"tick": tick.isoformat()})])
    return out


def feed(folder: Folder, lines: list[str]) -> None:
    for line in lines:
        if line.startswith('{"tick"'):
            folder.add_tick(line)
        else:
            folder.add_json(line)


def flush(folder: Folder, changed: set[str], table: dict[str, bytes | None], next_offset: int) -> None:
    """What the worker writes after a batch: the changed customers' records and the checkpoint."""
    touched, merged = folder.drain_changes()
    folder.drain_entries()
    folder.drain_alerts()
    table.update(customer_records(folder, sorted(touched | set(merged) | changed)))
    changed.clear()
    table[CHECKPOINT_KEY] = checkpoint_record(folder, next_offset)


def live(table: dict[str, bytes | None]) -> dict[str, bytes]:
    """The table as a compacted topic leaves it: the latest value per key, tombstones gone."""
    return {key: value for key, value in table.items() if value is not None}


def snapshot_of(folder: Folder) -> dict[str, Any]:
    """Everything a restore must reproduce, in comparable form."""
    state = folder.state
    as_of = datetime.fromtimestamp(0, UTC) + timedelta(milliseconds=folder.latest_ms or 0)
    return {
        "cards": {cid: render(view, as_of, folder.config.segment, folder.rules, entries=None)
                  for cid, view in folder.views.items()},
        "owner": state.owner,
        "keys": state.keys,
        "alias": state.alias,
        "aliases": state.aliases,
        "seq": list(state.seq.items()),
        "refused": state.refused,
        "alert_due": folder._alert_due.items(),
        "expiry_due": folder._expiry_due.items(),
        "clock": (folder.clock_ms, folder.latest_ms),
    }


def test_records_written_per_batch_restore_the_folder_and_it_folds_on_the_same() -> None:
    parts = batches(customers=120, days=90, seed=5, size=200)
    assert len(parts) > 6
    whole, changed = worker_folder()
    table: dict[str, bytes | None] = {}
    cut = len(parts) // 2
    for n, lines in enumerate(parts[:cut]):
        feed(whole, lines)
        flush(whole, changed, table, next_offset=n + 1)
    # Quiet weeks: ticks alone move due times, alert episodes and expiries.
    offset = cut
    for days in (1, 2, 4, 7, 10):
        offset += 1
        whole.tick((whole.clock_ms or 0) + days * 86_400_000)
        flush(whole, changed, table, next_offset=offset)
    assert whole.state.alias, "the population merges customers (the hard case for a per-customer table)"
    assert any(value is None for value in table.values()), "a merged-away customer's record is a tombstone"

    restored, restored_changed = worker_folder()
    checkpoint = restore(restored, live(table))
    assert checkpoint.next_offset == offset
    assert snapshot_of(restored) == snapshot_of(whole)

    # Both fold on through months of events and ticks: the same entries, alerts and state.
    for lines in parts[cut:]:
        feed(whole, lines)
        feed(restored, lines)
        assert restored.drain_entries() == whole.drain_entries()
        assert [a for a, _ in restored.drain_alerts()] == [a for a, _ in whole.drain_alerts()]
        assert restored.drain_changes() == whole.drain_changes()
    final = epoch_ms(datetime.fromtimestamp(0, UTC)) + (whole.latest_ms or 0) + 200 * 86_400_000
    whole.tick(final)
    restored.tick(final)
    assert [a for a, _ in restored.drain_alerts()] == [a for a, _ in whole.drain_alerts()]
    assert snapshot_of(restored) == snapshot_of(whole)
    assert restored_changed, "the restored folder tracks changes for its own next flush"


def test_a_record_signed_with_another_key_is_refused() -> None:
    folder, changed = worker_folder()
    feed(folder, batches(customers=5, days=10, seed=1, size=100)[0])
    table: dict[str, bytes | None] = {}
    flush(folder, changed, table, next_offset=1)
    forged = dict(live(table))
    customer_id = next(key for key in forged if key != CHECKPOINT_KEY)
    doc = pickle.loads(forged[customer_id][32:])
    forged[customer_id] = b"\0" * 32 + pickle.dumps(doc)
    with pytest.raises(SnapshotError, match="bad signature"):
        restore(worker_folder()[0], forged)


def test_a_table_without_checkpoint_or_of_another_format_is_refused() -> None:
    folder, changed = worker_folder()
    feed(folder, batches(customers=5, days=10, seed=1, size=100)[0])
    table: dict[str, bytes | None] = {}
    flush(folder, changed, table, next_offset=1)
    without = {k: v for k, v in live(table).items() if k != CHECKPOINT_KEY}
    with pytest.raises(SnapshotError, match="no checkpoint"):
        restore(worker_folder()[0], without)

    import hashlib
    import hmac
    payload = pickle.dumps({"format": FORMAT + 1, "next_offset": 1, "clock_ms": None, "latest_ms": None})
    other = {**live(table), CHECKPOINT_KEY: hmac.new(SECRET, payload, hashlib.sha256).digest() + payload}
    with pytest.raises(SnapshotError, match=f"format {FORMAT + 1}"):
        restore(worker_folder()[0], other)


def test_a_missing_record_is_detected() -> None:
    folder, changed = worker_folder()
    table: dict[str, bytes | None] = {}
    for n, lines in enumerate(batches(customers=30, days=30, seed=2, size=200)[:3]):
        feed(folder, lines)
        flush(folder, changed, table, next_offset=n + 1)
    records = live(table)
    first = next(key for key, value in records.items()
                 if key != CHECKPOINT_KEY and pickle.loads(value[32:])["seq"] == 0)
    del records[first]  # the first customer minted: the positions after it now have a gap
    with pytest.raises(SnapshotError, match="records are missing"):
        restore(worker_folder()[0], records)


def test_a_restored_folder_resolves_contested_components_again_as_the_uninterrupted_one() -> None:
    # A backfill channel file by channel file: late events in contested components, which the Folder
    # resolves again from its history. The table keeps what that needs (each customer's event positions,
    # latest event and refused keys), so a Folder restored half-way decides as the uninterrupted one.
    docs = sorted((e for e in generate(customers=300, days=365, seed=7) if e["event_id"].startswith("ev-")),
                  key=lambda e: (e["occurred_at"], e["event_id"]))
    lines = [json.dumps(e) for channel in ("branch", "phone", "web", "email", "sms") for e in docs
             if e["channel"] == channel]
    whole, changed = worker_folder()
    whole.history = lambda positions: [whole.event_of_line(lines[p]) for p in positions]
    table: dict[str, bytes | None] = {}
    cut = len(lines) * 3 // 5  # into the web file: customers of the branch and phone files are known
    for position, line in enumerate(lines[:cut]):
        whole.position = position
        whole.add_json(line)
        if position % 500 == 499:
            flush(whole, changed, table, next_offset=position + 1)
    flush(whole, changed, table, next_offset=cut)
    restored, _ = worker_folder()
    restored.history = lambda positions: [restored.event_of_line(lines[p]) for p in positions]
    assert restore(restored, live(table)).next_offset == cut
    assert snapshot_of(restored) == snapshot_of(whole)

    def refusers(folder: Folder) -> dict[str, set[str]]:  # by live id (the Folder keeps ids of their time)
        return {key: {folder.state.canonical(c) for c in ids} for key, ids in folder._refusers.items()}

    assert (restored._positions, restored._latest_at, restored._refused_keys, refusers(restored)) == \
        (whole._positions, whole._latest_at, whole._refused_keys, refusers(whole))
    refolds = whole.refolds
    for position in range(cut, len(lines)):
        for folder in (whole, restored):
            folder.position = position
            folder.add_json(lines[position])
        assert restored.drain_entries() == whole.drain_entries()
    assert whole.refolds > refolds, "the rest of the backfill resolves a component again"
    assert restored.refolds == whole.refolds - refolds
    assert snapshot_of(restored) == snapshot_of(whole)
