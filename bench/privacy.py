"""Benchmark of privacy by design: the edge's pseudonymisation cost and the time an erasure takes.

1. **Pseudonymisation at the edge** (no Kafka): a generated population's
   events are checked against the contract as the producer library does
   (the baseline), then checked *and* pseudonymised exactly as
   :meth:`connectors.intake.producer.AsyncEventProducer.publish` does it: identifiers
   normalised, the batch's data keys fetched from (or made in) the
   PostgreSQL key store in one statement, every identifier sealed. Printed:
   µs per event added, first with the keys being made, then with them known.
2. **Erasure of a customer with ``--customer-events`` events** (default
   10,000): that person's events (plus ``--others`` other customers) go
   through a real worker and projection writers; then ``touchpoint privacy
   erase`` is timed, and the time until every stage has processed the
   erasure record (the worker forgot the person, the projections dropped
   their rows) is printed next to it.

Everything runs in a scratch topic prefix and database (``bench/scratch.py``).

    python -m bench.privacy
    python -m bench.privacy --tiny
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg

from bench.machine import machine_line
from bench.scratch import scratch, spawn
from connectors.intake.producer import Delivered, EventProducer, keys_to_seal, normalised, pseudonymised
from connectors.operations.privacy import erase
from connectors.platform.keystore import PostgresKeyStore
from projections.lag import pipeline_lag
from touchpoint.contract.models import ContractViolation, Event, validate_event
from touchpoint.core.normalise import normalise
from touchpoint.generate import generate
from touchpoint.settings import Settings
from touchpoint.stack.process import stop_child

BATCH = 500  # the gateway's and the demo's batch size


def _load() -> str:
    return "load " + " ".join(f"{x:.1f}" for x in os.getloadavg())


def _docs(customers: int, days: int) -> list[dict[str, Any]]:
    return [e for e in generate(customers, days, seed=11) if str(e["event_id"]).startswith("ev-")]


def _edge(settings: Settings, docs: list[dict[str, Any]], now: datetime) -> tuple[float, float, float]:
    """Seconds for: contract only; contract + pseudonyms, keys made; the same, keys known."""
    secret, region = settings.identifier_key.get_secret_value().encode(), settings.phone_region
    began = time.perf_counter()
    for doc in docs:
        try:
            validate_event(doc, now)
        except ContractViolation:
            pass
    plain = time.perf_counter() - began

    async def sealed() -> float:
        async with PostgresKeyStore(settings) as keystore:
            began = time.perf_counter()
            for first in range(0, len(docs), BATCH):
                checked: list[tuple[Event, Any]] = []
                for doc in docs[first:first + BATCH]:
                    try:
                        event = validate_event(doc, now)
                        checked.append((event, normalised(event, secret, region)))
                    except ContractViolation:
                        pass
                data_keys = await keystore.data_keys(keys_to_seal(checked), create=True)
                sealed: dict[str, str] = {}
                for event, identifiers in checked:
                    pseudonymised(event, identifiers, data_keys, sealed)
            return time.perf_counter() - began

    return plain, asyncio.run(sealed()), asyncio.run(sealed())


def _person(n: int, now: datetime) -> list[dict[str, Any]]:
    """``n`` events of one person over a year: web visits, calls, e-mails, now and then a purchase."""
    ids = {"customer_no": "C99000001", "email": "heavy.user@example.com", "phone": "07700 900999"}
    start = now - timedelta(days=365)
    events = []
    for i in range(n):
        at = (start + timedelta(seconds=i * 365 * 86400 // n)).isoformat(timespec="milliseconds")
        kind = i % 10
        if kind == 0:
            doc = {"type": "purchase", "channel": "branch", "payload": {
                "transaction_id": f"t-heavy-{i}", "location_id": "FS-1", "currency": "GBP", "total_minor": 2500,
                "lines": [{"sku": "fuel", "category": "fuel", "quantity": 1, "amount_minor": 2500}]}}
        elif kind == 1:
            doc = {"type": "call", "channel": "phone",
                   "payload": {"call_id": f"k-heavy-{i}", "direction": "inbound", "phase": "started"}}
        else:
            doc = {"type": "web", "channel": "web", "payload": {"session_id": f"s-heavy-{i}", "action": "page_view"}}
        events.append({"event_id": f"heavy-{i}", "occurred_at": at.replace("+00:00", "Z"), "identifiers": ids, **doc})
    return events


def _wait_drained(settings: Settings, timeout_s: float) -> float:
    began = time.perf_counter()
    while any(pipeline_lag(settings).values()):
        if time.perf_counter() - began > timeout_s:
            raise SystemExit(f"the pipeline did not catch up in {timeout_s:.0f} s: {pipeline_lag(settings)}")
        time.sleep(0.2)
    return time.perf_counter() - began


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.privacy", description=__doc__.split("\n\n")[0])
    parser.add_argument("--customers", type=int, default=2000, help="population for the edge figure")
    parser.add_argument("--days", type=int, default=60)
    parser.add_argument("--customer-events", type=int, default=10_000, help="events of the erased customer")
    parser.add_argument("--others", type=int, default=200, help="other customers in the erasure run")
    parser.add_argument("--tiny", action="store_true", help="a smoke run of a few seconds")
    args = parser.parse_args(argv)
    if args.tiny:
        args.customers, args.days, args.customer_events, args.others = 50, 20, 200, 10
    print(machine_line(), flush=True)
    now = datetime.now(UTC)
    with scratch("privacy") as settings:
        docs = _docs(args.customers, args.days)
        plain, made, known = _edge(settings, docs, now)
        n = len(docs)
        print(f"edge: {n} events; contract only {plain / n * 1e6:.0f} µs/event; with pseudonyms "
              f"{made / n * 1e6:.0f} µs/event while their keys are made (+{(made - plain) / n * 1e6:.0f}), "
              f"{known / n * 1e6:.0f} µs/event once known (+{(known - plain) / n * 1e6:.0f}); "
              f"batches of {BATCH}, one key-store statement each (two while new keys are made); {_load()}", flush=True)

        logs = Path(tempfile.mkdtemp(prefix="bench-privacy-"))
        procs = [spawn(settings, "worker", logs / "worker.log"), spawn(settings, "project", logs / "project.log")]
        try:
            heavy = _person(args.customer_events, now)
            others = [e for e in generate(args.others, 60, seed=12, start=now - timedelta(days=61))
                      if str(e["event_id"]).startswith("ev-")]
            with EventProducer(settings) as producer:
                results = producer.publish([*others, *heavy], now)
            delivered = sum(isinstance(r, Delivered) for r in results)
            folded_in = _wait_drained(settings, 1800)
            secret = settings.identifier_key.get_secret_value().encode()
            key = normalise("customer_no", "C99000001", secret=secret).key
            with psycopg.connect(settings.pg_conninfo()) as conn:
                customer_id, rows = conn.execute(
                    "SELECT i.customer_id, (SELECT count(*) FROM interactions WHERE customer_key = i.customer_id) "
                    "FROM customer_identifiers i WHERE i.key = %s", (key,)).fetchone() or (None, 0)
            if customer_id is None:
                raise SystemExit("the heavy customer was not projected")
            print(f"pipeline: {delivered} events delivered and projected in {folded_in:.1f}s; the customer to erase "
                  f"has {rows} interactions in the read model", flush=True)
            report = erase(settings, customer_id)
            settled = _wait_drained(settings, 600)
            print(f"erasure: {report}", flush=True)
            print(f"erasure of a customer with {rows} events: {report.seconds * 1000:.0f} ms for `touchpoint "
                  f"privacy erase` (keys destroyed, log record, read model purged), then {settled * 1000:.0f} ms "
                  f"until every stage had processed the erasure; {_load()}", flush=True)
        finally:
            for proc in procs:
                stop_child(proc)
            for log in logs.iterdir():
                log.unlink()
            logs.rmdir()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
