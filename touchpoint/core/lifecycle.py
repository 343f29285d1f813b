"""Life-cycle stages: where a customer stands, and every change of stage with its reason.

A stage is a function of the customer's purchase days and the day it is
asked for, so the same history gives the same stages and transitions in any
arrival order, and "won back" (lost, then buying again) is known from the
history itself, which a stage field overwritten in place cannot say.

As of a day, with the customer's purchase days up to it (:class:`StageRules`
sets the day counts, versioned):

==========  ====================================================================
stage       when
==========  ====================================================================
(none)      no purchase yet
new         the first purchase day is less than ``new_days`` ago (and one is recent)
active      a purchase less than ``active_days`` ago
won_back    active, with a purchase less than ``won_back_days`` ago that came after
            ``lost_days`` or more without one
at_risk     the last purchase ``active_days`` or more ago
dormant     the last purchase ``dormant_days`` or more ago
lost        the last purchase ``lost_days`` or more ago
==========  ====================================================================

A stage changes only on a purchase day or when one of those counts runs
out, so :func:`transitions` checks just those days.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta


def spend_by_day(purchases: Mapping[str, tuple[int, int]], refunds: Mapping[str, tuple[int, int, str]],
                 until: date | None = None) -> dict[date, int]:
    """A customer's purchase days (UTC) with the spend of each (minor units), from a view's purchases
    (``id -> (ms, total)``) and refunds (``id -> (ms, amount, transaction id)``): a refund takes its amount off
    its purchase, a purchase refunded whole is none (one of no amount still counts); days after ``until`` left out.
    """
    refunded: dict[str, int] = {}
    for _, amount, transaction_id in refunds.values():
        refunded[transaction_id] = refunded.get(transaction_id, 0) + amount
    found: dict[date, int] = {}
    for transaction_id, (ms, total) in purchases.items():
        back = refunded.get(transaction_id, 0)
        day = datetime.fromtimestamp(ms / 1000, UTC).date()
        if (not back or back < total) and (until is None or day <= until):
            found[day] = found.get(day, 0) + total - back
    return found


@dataclass(frozen=True)
class StageRules:
    """The day counts the stages are judged by; ``version`` names them in every transition."""

    version: str = "stages-1"
    new_days: int = 90
    active_days: int = 90
    dormant_days: int = 180
    lost_days: int = 365
    won_back_days: int = 90

    def __post_init__(self) -> None:
        if not 0 < self.active_days <= self.dormant_days <= self.lost_days:
            raise ValueError("stage rules: 0 < active_days <= dormant_days <= lost_days")
        if self.new_days < 1 or self.won_back_days < 1:
            raise ValueError("stage rules: new_days and won_back_days are at least 1")


@dataclass(frozen=True)
class Transition:
    """A change of stage on ``day``, with why."""

    day: date
    before: str | None
    after: str
    why: str

    def to_json(self) -> dict[str, str | None]:
        return {"at": self.day.isoformat(), "from": self.before, "to": self.after, "why": self.why}


def stage_on(days: list[date], day: date, rules: StageRules) -> tuple[str | None, str]:
    """The stage on ``day`` given the sorted, distinct purchase ``days``, and why."""
    upto = bisect_right(days, day)
    if not upto:
        return None, "no purchase yet"
    first, last = days[0], days[upto - 1]
    quiet = (day - last).days
    if quiet >= rules.lost_days:
        return "lost", f"no purchase for {quiet} days (the last on {last}; lost from {rules.lost_days})"
    if quiet >= rules.dormant_days:
        return "dormant", f"no purchase for {quiet} days (the last on {last}; dormant from {rules.dormant_days})"
    if quiet >= rules.active_days:
        return "at_risk", f"no purchase for {quiet} days (the last on {last}; at risk from {rules.active_days})"
    if (day - first).days < rules.new_days:
        return "new", f"first purchase on {first}"
    for i in range(upto - 1, 0, -1):  # a recent purchase that ended a gap of lost_days or more
        if (day - days[i]).days >= rules.won_back_days:
            break
        gap = (days[i] - days[i - 1]).days
        if gap >= rules.lost_days:
            return "won_back", f"bought on {days[i]} after {gap} days without a purchase"
    return "active", f"bought on {last}"


def transitions(purchase_days: Iterable[date], until: date, rules: StageRules) -> list[Transition]:
    """Every change of stage from the first purchase day to ``until`` (included), in order."""
    days = sorted(set(d for d in purchase_days if d <= until))
    if not days:
        return []
    counts = (0, rules.new_days, rules.active_days, rules.dormant_days, rules.lost_days, rules.won_back_days)
    candidates = sorted({d + timedelta(days=n) for d in days for n in counts})
    found: list[Transition] = []
    stage: str | None = None
    for day in candidates:
        if day > until:
            break
        now, why = stage_on(days, day, rules)
        if now != stage:
            assert now is not None  # every candidate is on or after the first purchase day
            found.append(Transition(day, stage, now, why))
            stage = now
    return found


def lifecycle(purchase_days: Iterable[date], until: date, rules: StageRules) -> dict[str, object]:
    """A customer's stage on ``until``, since when, and the transitions that led there (for a card or the fold)."""
    found = transitions(purchase_days, until, rules)
    return {"stage": found[-1].after if found else None, "since": found[-1].day.isoformat() if found else None,
            "rules_version": rules.version, "transitions": [t.to_json() for t in found]}
