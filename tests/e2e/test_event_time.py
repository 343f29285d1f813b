"""Event time on the real stack: events published out of event-time order end as the event-time fold.

Channel systems publish with their own delays. Here each event reaches ``accepted`` before the next
is published, in an order that is not event time: a campaign invitation after the purchases it
covers, a refund before the call that links its customer's e-mail to her card, a customer's later
web visit before her earlier branch visit. The read model must equal the fold of its own log (the
oracle, as in every end-to-end test) and, customer by customer, the fold of the same events sorted
by event time: the same ids and identifiers, the same points per purchase.

A backfill: a generated population's history imported with ``touchpoint ingest``, one channel's file
after another, ends as the fold of the same events in event time, identifiers contested between customer
numbers included (identity resolves their component again in event-time order when a late event reaches it).
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest

from bench.backfill import CHANNEL_FILES, by_event_time, contested, population
from connectors.intake.producer import Delivered, EventProducer
from tests.e2e.oracle import assert_equals_oracle, drained, end_offset, oracle
from tests.e2e.test_pipeline import wait_until
from tests.fix_stack import REPO, scoped, settings_env, spawn_touchpoint, stop_process
from touchpoint.core.profile import render
from touchpoint.settings import Settings

pytestmark = pytest.mark.integration

T0 = datetime(2025, 3, 3, 9, tzinfo=UTC)


@pytest.fixture
def own(settings: Settings) -> Iterator[Settings]:
    with scoped(settings, f"{settings.pg_database}_event_time", topic_prefix=f"{settings.topic_prefix}-event-time") \
            as narrowed:
        yield narrowed


def at(hours: float) -> str:
    return (T0 + timedelta(hours=hours)).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def purchase(event_id: str, ids: dict[str, str], hours: float, tx: str, total: int) -> dict[str, Any]:
    return {"event_id": event_id, "type": "purchase", "channel": "branch", "occurred_at": at(hours), "identifiers": ids,
            "payload": {"transaction_id": tx, "location_id": "FS-1", "total_minor": total, "currency": "GBP",
                        "lines": [{"sku": "SHOP-1", "category": "shop", "quantity": 1, "amount_minor": total}]}}


def out_of_order() -> list[dict[str, Any]]:
    """The events in the order they are published (see the module docstring)."""
    ann, ben_card, ben_mail = {"customer_no": "C-ANN"}, {"card": "4111111111111111"}, {"email": "ben@example.com"}
    cat_mail = {"email": "cat@example.com"}
    return [
        purchase("ann-p1", ann, 24, "T-ANN-1", 4000),
        purchase("ann-p2", ann, 48, "T-ANN-2", 3000),
        {"event_id": "ann-invite", "type": "campaign", "channel": "email", "occurred_at": at(0), "identifiers": ann,
         "payload": {"campaign_id": "CMP-SPRING", "action": "invited", "multiplier": 3, "starts_at": at(0),
                     "ends_at": at(24 * 10)}},
        purchase("ben-p1", ben_card, 0, "T-BEN-1", 8000),
        {"event_id": "ben-refund", "type": "refund", "channel": "branch", "occurred_at": at(48),
         "identifiers": ben_mail, "payload": {"refund_id": "R-BEN-1", "transaction_id": "T-BEN-1",
                                              "amount_minor": 8000, "currency": "GBP"}},
        {"event_id": "ben-call", "type": "call", "channel": "phone", "occurred_at": at(24),
         "identifiers": {**ben_card, **ben_mail}, "payload": {"call_id": "K-BEN", "direction": "inbound",
                                                               "phase": "started"}},
        {"event_id": "cat-web", "type": "web", "channel": "web", "occurred_at": at(120), "identifiers": cat_mail,
         "payload": {"session_id": "S-CAT", "action": "page_view"}},
        {"event_id": "cat-visit", "type": "branch_visit", "channel": "branch", "occurred_at": at(24),
         "identifiers": {"customer_no": "C-CAT", **cat_mail}, "payload": {"branch_id": "BR-1", "purpose": "enquiry"}},
    ]


@contextmanager
def folded_against_the_event_time_fold(own: Settings, tmp_path: Path) -> Iterator[tuple[Any, Any]]:
    """A worker and the projection writers for the body to publish to; then the read model is checked against
    the fold of its own log, and the caller compares it with the fold in event time (returned by ``oracle``)."""
    worker = spawn_touchpoint(own, "worker", log=tmp_path / "worker.log")
    writer = spawn_touchpoint(own, "project", log=tmp_path / "project.log")
    try:
        yield worker, writer
        time.sleep(1)
    finally:
        stop_process(worker)
        stop_process(writer)
    assert_equals_oracle(own, population_checks=False)


def test_events_published_out_of_event_time_order_end_as_the_event_time_fold(own: Settings, tmp_path: Path) -> None:
    with folded_against_the_event_time_fold(own, tmp_path) as (worker, writer):
        with EventProducer(own) as producer:
            for n, event in enumerate(out_of_order(), 1):
                assert all(isinstance(r, Delivered) for r in producer.publish([event], datetime.now(UTC)))
                # The next is published once this one is on ``accepted``: the arrival order is the one above.
                wait_until(lambda n=n: end_offset(own, own.topic("accepted"))[0] >= n, 60,
                           f"event {n} on accepted", (worker, writer))
        wait_until(lambda: drained(own), 90, "the pipeline to drain", (worker, writer))

    reference = oracle(own, in_event_time=True)
    with psycopg.connect(own.pg_conninfo()) as conn:
        cards = {cid: view for cid, view in conn.execute("SELECT customer_id, view FROM customers")}
        ledger = conn.execute("SELECT transaction_id, points FROM loyalty_ledger").fetchall()
    expected = {cid: render(view, T0, reference.config.segment) for cid, view in reference.views.items()}
    assert {cid: card["identifiers"] for cid, card in cards.items()} == \
        {cid: card["identifiers"] for cid, card in expected.items()}
    per_purchase: dict[str, int] = defaultdict(int)
    for tx, points in ledger:
        per_purchase[tx] += points
    expected_points: dict[str, int] = defaultdict(int)
    for view in reference.views.values():
        for entry in view.loyalty.entries.values():
            expected_points[entry.transaction_id] += entry.points
    assert dict(per_purchase) == dict(expected_points) == {"T-ANN-1": 120, "T-ANN-2": 90, "T-BEN-1": 0}
    assert all(card["held_refunds"] == [] for card in cards.values())


def test_a_backfill_channel_file_by_channel_file_ends_as_the_event_time_fold(own: Settings, tmp_path: Path) -> None:
    # Seed 16: two identifiers contested between customer numbers, and a late event that makes identity
    # resolve their component again in event-time order (guardrails in event time).
    events = by_event_time(population(40, 60, seed=16))
    assert contested(events)
    files = []
    for channel in CHANNEL_FILES:
        path = tmp_path / f"{channel}.jsonl"
        path.write_text("".join(orjson.dumps(e).decode() + "\n" for e in events if e["channel"] == channel))
        files.append(path)
    with folded_against_the_event_time_fold(own, tmp_path) as (worker, writer):
        sent = 0
        for n, path in enumerate(files, 1):
            imported = subprocess.run([sys.executable, "-m", "touchpoint", "ingest", str(path)],  # noqa: S603
                                      env=settings_env(own), cwd=REPO, capture_output=True, text=True, timeout=120,
                                      check=False)
            assert imported.returncode == 0, imported.stdout + imported.stderr
            sent += sum(1 for line in path.read_text().splitlines() if line)
            # The next file once this one is folded: the log holds a whole channel before the next. (drained()
            # also says the ingest stage got past the import's last transaction marker.)
            wait_until(lambda sent=sent: end_offset(own, own.topic("accepted"))[0] >= sent and drained(own), 90,
                       f"file {n} ({path.name}) to be folded", (worker, writer))

    assert oracle(own).refolds, "a late event made identity resolve a contested component again"
    reference = oracle(own, in_event_time=True)
    assert len(reference.views) > 20, "a population, not a handful"
    latest = max(datetime.fromisoformat(e["occurred_at"].replace("Z", "+00:00")) for e in events)
    expected = {cid: render(view, latest, reference.config.segment, reference.rules)
                for cid, view in reference.views.items()}
    with psycopg.connect(own.pg_conninfo()) as conn:
        cards = {cid: view for cid, view in conn.execute("SELECT customer_id, view FROM customers")}
    assert {cid: card["identifiers"] for cid, card in cards.items()} == \
        {cid: card["identifiers"] for cid, card in expected.items()}
    assert {cid: card["loyalty"]["balance"] for cid, card in cards.items()} == \
        {cid: card["loyalty"]["balance"] for cid, card in expected.items()}
