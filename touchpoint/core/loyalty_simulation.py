"""Loyalty simulation on history: what proposed rules would have issued, next to the current ones.

Marketing wants to know what a campaign or a new threshold costs before it
is switched on. :func:`simulate` folds the same history twice through the
whole pure core (identity included, so points land on the same people the
workers would credit), once under the current rules and once under the
proposed ones, and compares the ledgers:

* per rule (the ``rule_id`` of earn entries: ``base``, ``fuel_and_shop``,
  ``campaign``, stacked rules joined with ``+``): purchases scored, points
  issued and customers earning, under each rule set;
* in total: points issued (earn), reversed (refunds), expired, and the net;
* customers affected: whose net points differ, how many of them may be
  told (marketing consent granted on at least one channel, any opt-out
  honoured whichever channel it came through), and the biggest movers
  (largest absolute difference, ties by customer id), each with the
  channels they may be contacted on.

Expiries are counted as of the latest event time of the history, so both
runs are judged at the same instant. Deterministic: same inputs, same report.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from touchpoint.core.fold import FoldConfig, Folder
from touchpoint.core.instants import iso_ms
from touchpoint.core.loyalty import LoyaltyRules, pending_expiries
from touchpoint.core.profile import contactable

__all__ = ["format_report", "simulate"]


def _ledger_report(folder: Folder, as_of_ms: int) -> tuple[dict[str, dict[str, int]], dict[str, int], dict[str, int]]:
    """(per rule id: purchases, points, customers), totals by kind, net points per customer."""
    per_rule: dict[str, dict[str, Any]] = {}
    totals = {"earned": 0, "reversed": 0, "expired": 0}
    net: dict[str, int] = {}
    for customer_id, view in folder.views.items():
        entries = [*view.loyalty.entries.values(), *pending_expiries(view.loyalty, as_of_ms)]
        for entry in entries:
            if entry.kind == "earn":
                rule = per_rule.setdefault(entry.rule_id, {"purchases": 0, "points": 0, "customers": set()})
                rule["purchases"] += 1
                rule["points"] += entry.points
                rule["customers"].add(customer_id)
                totals["earned"] += entry.points
            elif entry.kind == "reversal":
                totals["reversed"] -= entry.points
            else:
                totals["expired"] -= entry.points
        if entries:
            net[customer_id] = sum(entry.points for entry in entries)
    rules = {rule_id: {"purchases": r["purchases"], "points": r["points"], "customers": len(r["customers"])}
             for rule_id, r in per_rule.items()}
    totals["net"] = totals["earned"] - totals["reversed"] - totals["expired"]
    return rules, totals, net


def simulate(
    lines: Callable[[], Iterable[str | bytes]],
    current: LoyaltyRules,
    proposed: LoyaltyRules,
    *,
    secret: bytes,
    config: FoldConfig | None = None,
    movers: int = 10,
) -> dict[str, Any]:
    """Score one history under two rule sets and compare them.

    :param lines: returns the JSON-lines events (called once per rule set).
    :param current: the rules in force.
    :param proposed: the rules to try.
    :param secret: the identifier key.
    :param config: the fold's knobs (identity, segments); its rules file is ignored.
    :param movers: how many biggest movers to list.
    :returns: ``{"events", "as_of", "rules": {rule_id: {"current": …, "proposed": …}},
        "totals": {"current": …, "proposed": …}, "customers_affected", "biggest_movers": […]}``.
    """
    reports = []
    as_of_ms = 0
    events = 0
    for rules in (current, proposed):
        folder = Folder(config, secret=secret, rules=rules)
        read = list(lines())
        folder.history = lambda positions, read=read, folder=folder: [  # guardrails in event time
            folder.event_of_line(read[p]) for p in positions]
        events = 0
        for position, line in enumerate(read):
            if line and not line.isspace():
                folder.position = position
                folder.add_json(line)
                events += 1
        as_of_ms = folder.latest_ms or 0
        reports.append(_ledger_report(folder, as_of_ms))
    (cur_rules, cur_totals, cur_net), (new_rules, new_totals, new_net) = reports
    views = folder.views  # the proposed run's: consent does not depend on the rules
    empty = {"purchases": 0, "points": 0, "customers": 0}
    by_rule = {rule_id: {"current": cur_rules.get(rule_id, empty), "proposed": new_rules.get(rule_id, empty)}
               for rule_id in sorted(cur_rules.keys() | new_rules.keys())}
    deltas = [(new_net.get(c, 0) - cur_net.get(c, 0), c) for c in cur_net.keys() | new_net.keys()]
    moved = sorted((d for d in deltas if d[0]), key=lambda d: (-abs(d[0]), d[1]))
    return {
        "events": events,
        "as_of": iso_ms(as_of_ms),
        "rules": by_rule,
        "totals": {"current": cur_totals, "proposed": new_totals},
        "customers_affected": len(moved),
        "customers_affected_contactable": sum(1 for _, c in moved if any(contactable(views[c]).values())),
        "biggest_movers": [{"customer_id": c, "current": cur_net.get(c, 0), "proposed": new_net.get(c, 0),
                            "difference": d, "contactable": contactable(views[c])} for d, c in moved[:movers]],
    }


def format_report(report: dict[str, Any]) -> str:
    """The report as a table a person reads."""
    def cell(cur: int, new: int) -> str:
        return f"{cur} -> {new}"

    out = [f"{report['events']} events, expiries as of {report['as_of']}; each cell: current -> proposed", "",
           f"{'rule (earn entries)':<28}{'purchases':>20}{'points':>24}{'customers':>18}"]
    for rule_id, both in report["rules"].items():
        cur, new = both["current"], both["proposed"]
        out.append(f"{rule_id:<28}{cell(cur['purchases'], new['purchases']):>20}"
                   f"{cell(cur['points'], new['points']):>24}{cell(cur['customers'], new['customers']):>18}")
    out.append("")
    cur, new = report["totals"]["current"], report["totals"]["proposed"]
    for kind in ("earned", "reversed", "expired", "net"):
        change = new[kind] - cur[kind]
        pct = f" ({change / cur[kind] * 100:+.1f} %)" if cur[kind] else ""
        out.append(f"points {kind:<9}{cur[kind]:>12} -> {new[kind]:<12}{change:+}{pct}")
    out.append("")
    out.append(f"customers affected: {report['customers_affected']}, of whom "
               f"{report['customers_affected_contactable']} may be contacted")
    for mover in report["biggest_movers"]:
        channels = ", ".join(ch for ch, ok in mover["contactable"].items() if ok) or "nobody may contact them"
        out.append(f"  {mover['customer_id']}  {mover['current']:>8} -> {mover['proposed']:<8} {mover['difference']:+}"
                   f"  ({channels})")
    return "\n".join(out)
