"""What arrival order costs: a generated population folded in event-time order and channel file by file.

A backfill imports each system's export one after another (branch, phone,
web, e-mail, SMS files), so the log sees a whole channel's history before
the next one's. The result must not depend on it (DESIGN: event time, not
arrival order). This folds the same good events twice with the offline core
(``touchpoint fold``'s Folder): once sorted by event time, once channel by
channel (each channel's events in event-time order), both rendered as of the
end of the history, and prints how far apart they are: the points balance in
total and per customer, the customer ids found in only one of them, the
segments and active alerts that differ, and each fold's CPU per event; then
the same without the events that carry a contested identifier (one seen with
two customer numbers: a family e-mail, a shop landline): there no component is
ever resolved again, so the two CPU figures apart are what resolving contested
components again in event-time order costs a backfill.

    python -m bench.backfill                       # 2,000 customers over a year
    python -m bench.backfill --customers 500 --json
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections import defaultdict
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from bench.machine import machine_line
from touchpoint.core.fold import fold
from touchpoint.generate import generate

SECRET = b"bench-backfill"
CHANNEL_FILES = ("branch", "phone", "web", "email", "sms")


def population(customers: int, days: int, seed: int) -> list[dict[str, Any]]:
    """The generator's good events (its deliberately bad ones carry other event id prefixes)."""
    return [e for e in generate(customers, days, seed=seed) if e["event_id"].startswith("ev-")]


def contested(events: Iterable[dict[str, Any]]) -> set[tuple[str, str]]:
    """The (kind, value) identifiers seen with more than one customer number."""
    numbers: dict[tuple[str, str], set[str]] = defaultdict(set)
    for event in events:
        identifiers = event["identifiers"]
        number = identifiers.get("customer_no")
        if number is not None:
            for kind, value in identifiers.items():
                if kind != "customer_no":
                    numbers[kind, value].add(number)
    return {identifier for identifier, seen in numbers.items() if len(seen) > 1}


def without_contested(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The events that carry no contested identifier."""
    shared = contested(events)
    return [e for e in events if not any((kind, value) in shared for kind, value in e["identifiers"].items())]


def by_event_time(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(events, key=lambda e: (e["occurred_at"], e["event_id"]))


def channel_by_channel(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    ordered = by_event_time(events)
    return [e for channel in CHANNEL_FILES for e in ordered if e.get("channel") == channel]


def folded(events: Iterable[dict[str, Any]], as_of: datetime) -> tuple[dict[str, dict[str, Any]], float]:
    """Customer id -> card, and the CPU seconds the fold took."""
    lines = [orjson.dumps(e) for e in events]
    began = time.process_time()
    doc = fold(lines, as_of=as_of, secret=SECRET, now_for_validation=as_of)
    return {c["customer_id"]: c for c in doc["customers"]}, time.process_time() - began


def compare(reference: dict[str, dict[str, Any]], other: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """How far ``other`` is from ``reference``."""
    def balance(cards: dict[str, dict[str, Any]]) -> int:
        return sum(card["loyalty"]["balance"] for card in cards.values())

    def active(card: dict[str, Any]) -> list[str]:
        return sorted(a["kind"] for a in card.get("alerts", []) if a.get("state") != "resolved")

    both = reference.keys() & other.keys()
    return {
        "balance_reference": balance(reference),
        "balance_other": balance(other),
        "balance_difference": balance(other) - balance(reference),
        "customers_reference": len(reference),
        "customers_other": len(other),
        "ids_only_in_one": len(reference.keys() ^ other.keys()),
        "balances_differing": sum(reference[c]["loyalty"]["balance"] != other[c]["loyalty"]["balance"] for c in both),
        "identifiers_differing": sum(reference[c]["identifiers"] != other[c]["identifiers"] for c in both),
        "segments_differing": sum(reference[c]["value_segment"] != other[c]["value_segment"] for c in both),
        "active_alerts_differing": sum(active(reference[c]) != active(other[c]) for c in both),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.backfill", description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=2000)
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    args = parser.parse_args(argv)

    events = population(args.customers, args.days, args.seed)
    out: dict[str, Any] = {"events": len(events)}
    lines = []
    for label, prefix, chosen in (("all events", "", events),
                                  ("without contested identifiers", "uncontested_", without_contested(events))):
        # One instant for both orders: the day after the last event, so dormancy and churn are judged alike.
        latest = max(datetime.fromisoformat(e["occurred_at"].replace("Z", "+00:00")) for e in chosen)
        as_of = (latest + timedelta(days=1)).astimezone(UTC)
        reference, reference_s = folded(by_event_time(chosen), as_of)
        other, other_s = folded(channel_by_channel(chosen), as_of)
        figures = {"events": len(chosen), **compare(reference, other),
                   "fold_us_per_event_event_time": reference_s / len(chosen) * 1e6,
                   "fold_us_per_event_by_channel": other_s / len(chosen) * 1e6}
        out.update({prefix + name: value for name, value in figures.items()})
        lines += [
            f"{label}: {figures['events']:,} events folded as of {as_of.isoformat(timespec='seconds')}",
            f"  event-time order: {figures['customers_reference']:,} customers, balance "
            f"{figures['balance_reference']:,} points; fold {figures['fold_us_per_event_event_time']:.1f} µs of CPU "
            f"an event",
            f"  channel by channel ({', '.join(CHANNEL_FILES)}): {figures['customers_other']:,} customers, balance "
            f"{figures['balance_other']:,} points; fold {figures['fold_us_per_event_by_channel']:.1f} µs of CPU "
            f"an event",
            f"  difference: {figures['balance_difference']:+,} points; {figures['ids_only_in_one']} customer ids in "
            f"only one; of the customers in both, {figures['balances_differing']} balances, "
            f"{figures['identifiers_differing']} identifier sets, {figures['segments_differing']} segments and "
            f"{figures['active_alerts_differing']} active alert sets differ",
        ]
    out["contested_identifiers"] = len(contested(events))
    if args.json:
        print(json.dumps(out, sort_keys=True))
        return 0
    print(machine_line() + f"; load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"{len(events):,} events of {args.customers:,} generated customers over {args.days} days (seed {args.seed}); "
          f"{out['contested_identifiers']} identifiers contested between customer numbers")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
