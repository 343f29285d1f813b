"""Benchmark of loyalty: rule scoring (purchases/s) and the ledger in PostgreSQL (entries/s).

Generates a population with ``touchpoint.generate``, validates its purchase,
refund and campaign events against the contract
(``validate_event(doc, None)``; the deliberately bad ones are skipped) and
attributes each to its customer by the generator's own population (customer
number, card, mobile, email: identity resolution is not what is measured).
None of this preparation is timed. Then:

1. **Scoring.** The events are folded in event order into one
   :class:`~touchpoint.core.loyalty.LoyaltyState` per customer with the
   shipped rules (``default_rules()``): ``on_purchase`` for purchases,
   ``on_refund`` for refunds (routed to the customer holding the refunded
   transaction) and ``on_campaign`` for invitations (so the campaign rule
   sees them; they are counted in the time, and are few). Printed as
   purchases/s, wall and CPU. The bare ``score(purchase_facts(ms, payload),
   version, invitations)`` is timed on its own over the same purchases (the
   version and the invitations each saw at its time collected beforehand),
   and its points are checked against the earn entries.
2. **Ledger.** In a fresh database ``touchpoint_bench_<id>`` of the local
   stack's PostgreSQL (created, migrated with ``projections.migrate``, and
   dropped at the end), the ledger entries of step 1 are written through
   ``LedgerProjection.write`` inside ``projections.writer.write_batch``, as
   records of topic ``bench-loyalty`` partition 0 with increasing offsets,
   ``--batch`` per transaction. Printed as entries/s. The same batches are
   then written again (a replay: every row must be a no-op) and the row
   count before and after is printed; the exit status is 1 if they differ.
   PostgreSQL must be up (``touchpoint stack up``); ``--no-db`` skips step 2.

CPU time is printed next to wall time because on a shared machine the wall
clock also measures the neighbours. ``--tiny`` is a smoke run of a few
seconds for CI.

    python -m bench.loyalty --customers 3000
    python -m bench.loyalty --tiny
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any

from bench.machine import machine_line
from touchpoint.contract.models import ContractViolation, validate_event
from touchpoint.core.instants import epoch_ms
from touchpoint.core.loyalty import (
    Invitation,
    LedgerEntry,
    LoyaltyRules,
    LoyaltyState,
    RuleVersion,
    default_rules,
    invitations_before,
    on_campaign,
    on_purchase,
    on_refund,
    purchase_facts,
    score,
)
from touchpoint.generate import generate, population

TOPIC = "bench-loyalty"

# One prepared event: (kind, customer id, event id, epoch ms, payload).
Op = tuple[str, str, str, int, Any]


def _timed(fn: Callable[[], object]) -> tuple[float, float, object]:
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - wall, time.process_time() - cpu, out


def _phone(value: str) -> str:
    digits = value.replace(" ", "")
    return "+44" + digits[1:] if digits.startswith("0") else digits


def _prepare(customers: int, days: int, seed: int) -> tuple[list[Op], int]:
    """The loyalty events of a generated population, validated and attributed; and the bad ones skipped."""
    people = population(customers, days, seed)
    owner: dict[tuple[str, str], str] = {}
    for i, number in enumerate(people.customer_no):
        owner[("customer_no", number)] = number
        for kind, values in (("card", people.card), ("phone", people.mobile), ("email", people.email)):
            value = values[i]
            if value is not None:
                owner.setdefault((kind, value), number)  # a family email: its first member

    def customer_of(identifiers: dict[str, str]) -> str:
        for kind in ("customer_no", "card", "phone", "email"):
            value = identifiers.get(kind)
            if value is None:
                continue
            value = _phone(value) if kind == "phone" else value.lower() if kind == "email" else value
            if (who := owner.get((kind, value))) is not None:
                return who
        return "unattributed:" + json.dumps(identifiers, sort_keys=True)

    ops: list[Op] = []
    bad = 0
    for doc in generate(customers, days, seed):
        if doc.get("type") not in ("purchase", "refund", "campaign"):
            continue
        try:
            event = validate_event(doc, None)
        except ContractViolation:
            bad += 1
            continue
        ops.append((event.type, customer_of(doc["identifiers"]), event.event_id, epoch_ms(event.occurred_at),
                    event.payload))
    return ops, bad


def _fold(ops: list[Op], rules: LoyaltyRules) -> tuple[dict[str, LoyaltyState], list[tuple[str, LedgerEntry]], int]:
    """The timed loop: every op into its customer's state; the entries issued, and refunds not applied."""
    states: dict[str, LoyaltyState] = {}
    holder: dict[str, str] = {}  # transaction id -> customer id
    entries: list[tuple[str, LedgerEntry]] = []
    rejected = 0
    for kind, customer, event_id, ms, payload in ops:
        if kind == "purchase":
            state = states.get(customer)
            if state is None:
                state = states[customer] = LoyaltyState()
            holder.setdefault(payload.transaction_id, customer)
            for entry in on_purchase(state, event_id, ms, payload, rules):
                entries.append((customer, entry))
        elif kind == "refund":
            who = holder.get(payload.transaction_id)
            if who is None:
                rejected += 1
                continue
            try:
                for entry in on_refund(states[who], event_id, ms, payload):
                    entries.append((who, entry))
            except ValueError:  # RefundRejected: a currency the purchase was not in
                rejected += 1
        else:
            state = states.get(customer)
            if state is None:
                state = states[customer] = LoyaltyState()
            for entry in on_campaign(state, event_id, ms, payload, rules):
                entries.append((customer, entry))
    return states, entries, rejected


def _score_inputs(ops: list[Op], rules: LoyaltyRules) -> list[tuple[int, Any, RuleVersion, tuple[Invitation, ...]]]:
    """Per purchase, what ``score`` is given: its time, payload, version and the invitations held then."""
    invitations: dict[str, LoyaltyState] = {}
    seen: set[str] = set()
    out = []
    for kind, customer, event_id, ms, payload in ops:
        if kind == "campaign":
            state = invitations.get(customer)
            if state is None:
                state = invitations[customer] = LoyaltyState()
            on_campaign(state, event_id, ms, payload, rules)
        elif kind == "purchase" and payload.transaction_id not in seen:
            seen.add(payload.transaction_id)
            state = invitations.get(customer)
            out.append((ms, payload, rules.version_at(ms),
                        tuple(invitations_before(state, ms, event_id)) if state else ()))
    return out


def _scoring(ops: list[Op]) -> list[tuple[str, LedgerEntry]]:
    rules = default_rules()
    purchases = sum(1 for op in ops if op[0] == "purchase")
    refunds = sum(1 for op in ops if op[0] == "refund")
    campaigns = len(ops) - purchases - refunds
    gc.collect()
    wall, cpu, out = _timed(lambda: _fold(ops, rules))
    states, entries, rejected = out  # type: ignore[misc]
    earned = [e for _, e in entries if e.kind == "earn"]
    reversals = sum(1 for _, e in entries if e.kind == "reversal")
    print(f"scoring: {purchases} purchases, {refunds} refunds, {campaigns} campaign events "
          f"into {len(states)} customers in {wall:.2f}s wall {cpu:.2f}s cpu: "
          f"{purchases / wall:,.0f} purchases/s ({purchases / cpu:,.0f} purchases/s cpu)")
    print(f"  {len(earned)} earn + {reversals} reversal entries, {sum(e.points for _, e in entries):,} points "
          f"net ({sum(1 for e in earned if e.multiplier > 1)} multiplied), "
          f"{(wall / purchases * 1e6) if purchases else 0:.1f} us/purchase incl. refunds and campaigns")
    print(f"  {rejected} refunds of unknown transactions not applied (the generator's deliberately bad ones)")

    inputs = _score_inputs(ops, rules)

    def bare() -> int:
        return sum(score(purchase_facts(ms, payload), version, invs).points for ms, payload, version, invs in inputs)

    wall, cpu, points = _timed(bare)
    n = len(inputs)
    print(f"score() alone: {n} purchases in {wall:.2f}s wall {cpu:.2f}s cpu: "
          f"{n / wall:,.0f} purchases/s ({n / cpu:,.0f} purchases/s cpu), {wall / n * 1e6:.1f} us/purchase")
    if points != sum(e.points for e in earned):
        print(f"  MISMATCH: score() gave {points} points, the earn entries {sum(e.points for e in earned)}")
    return entries


def _ledger(entries: list[tuple[str, LedgerEntry]], batch: int) -> int:
    import psycopg
    from psycopg import sql

    from projections.loyalty import LedgerProjection
    from projections.migrate import migrate
    from projections.writer import Record, write_batch
    from touchpoint.settings import load_settings

    settings = load_settings()
    database = f"touchpoint_bench_{uuid.uuid4().hex[:10]}"
    admin = settings.pg_conninfo("postgres")
    records = [
        Record(TOPIC, 0, offset, customer.encode(),
               json.dumps({"customer_id": customer, "entry": entry.to_json()}).encode())
        for offset, (customer, entry) in enumerate(entries)
    ]
    batches = [records[i:i + batch] for i in range(0, len(records), batch)]
    try:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
    except psycopg.OperationalError as exc:
        print(f"ledger: PostgreSQL at {settings.pg_host}:{settings.pg_port} is not reachable "
              f"(touchpoint stack up?): {exc}", file=sys.stderr)
        return 2
    try:
        scoped = settings.model_copy(update={"pg_database": database})
        conninfo = scoped.pg_conninfo()
        migrate(scoped, conninfo)
        projection = LedgerProjection(scoped)
        with psycopg.connect(conninfo) as conn:

            def write_all() -> None:
                for chunk in batches:
                    write_batch(conn, projection, chunk)

            def rows() -> int:
                with conn.transaction():
                    return conn.execute("SELECT count(*) FROM loyalty_ledger").fetchone()[0]  # type: ignore[index]

            wall, cpu, _ = _timed(write_all)
            n = len(records)
            print(f"ledger: {n} entries in {len(batches)} batches of {batch} into {database} in {wall:.2f}s wall "
                  f"{cpu:.2f}s cpu (client): {n / wall:,.0f} entries/s")
            before = rows()
            wall, cpu, _ = _timed(write_all)
            after = rows()
            print(f"  replay of the same batches in {wall:.2f}s wall {cpu:.2f}s cpu: {n / wall:,.0f} entries/s")
            print(f"replay: {before} rows before, {after} after")
            if before != after or before != n:
                print(f"  FAILED: expected {n} rows before and after the replay", file=sys.stderr)
                return 1
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database)))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.loyalty", description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=3_000)
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--batch", type=int, default=1000, help="ledger entries per transaction")
    parser.add_argument("--tiny", action="store_true", help="a smoke run: 200 customers x 60 days, batches of 200")
    parser.add_argument("--no-db", action="store_true", help="scoring only, no PostgreSQL")
    args = parser.parse_args(argv)
    if args.tiny:
        args.customers, args.days, args.batch = 200, 60, 200
    if args.batch < 1:
        parser.error("--batch must be at least 1")
    print(machine_line())

    began = time.perf_counter()
    ops, bad = _prepare(args.customers, args.days, args.seed)
    print(f"prepared {len(ops)} loyalty events ({args.customers} customers x {args.days} days, seed {args.seed}; "
          f"{bad} invalid skipped) in {time.perf_counter() - began:.1f}s; load average {os.getloadavg()[0]:.2f}")
    entries = _scoring(ops)
    if args.no_db:
        return 0
    return _ledger(entries, args.batch)


if __name__ == "__main__":
    raise SystemExit(main())
