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

Scored with a value model (:class:`Alive`: BG/NBD's P(alive)), a P(alive)
below ``at_risk_p_alive`` makes a new, active or won-back customer at risk,
and below ``lost_p_alive`` any customer lost.

A stage changes only on a purchase day, when one of those counts runs out,
or when P(alive) falls to a threshold (a closed form), so
:func:`transitions` checks just those days.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Callable, Iterable, Mapping
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
    at_risk_p_alive: float = 0.5  # with a value model: P(alive) below this is at risk at least
    lost_p_alive: float = 0.1  # and below this, lost

    def __post_init__(self) -> None:
        if not 0 < self.active_days <= self.dormant_days <= self.lost_days:
            raise ValueError("stage rules: 0 < active_days <= dormant_days <= lost_days")
        if self.new_days < 1 or self.won_back_days < 1:
            raise ValueError("stage rules: new_days and won_back_days are at least 1")
        if not 0 <= self.lost_p_alive <= self.at_risk_p_alive <= 1:
            raise ValueError("stage rules: 0 <= lost_p_alive <= at_risk_p_alive <= 1")


@dataclass(frozen=True)
class Alive:
    """BG/NBD's P(alive) for the stages (the value model's parameters; time in days, ``unit_days`` a model unit)."""

    r: float
    alpha: float
    a: float
    b: float
    unit_days: int

    def p(self, x: int, t_x_days: int, T_days: int) -> float:
        """P(alive) with ``x`` repeat purchase days, the last ``t_x_days`` and now ``T_days`` after the first."""
        if x == 0:
            return 1.0
        t_x, T = t_x_days / self.unit_days, T_days / self.unit_days
        growth = float(((self.alpha + T) / (self.alpha + t_x)) ** (self.r + x))
        return 1.0 / (1.0 + self.a / (self.b + x - 1) * growth)

    def days_below(self, x: int, t_x_days: int, threshold: float) -> float | None:
        """How many days after the first purchase P(alive) falls to ``threshold`` if nothing is bought after the
        last (None: never, as without repeats)."""
        if x == 0 or threshold <= 0:
            return None
        if threshold >= 1:
            return float(t_x_days)
        ratio = (1 / threshold - 1) * (self.b + x - 1) / self.a  # ((alpha + T) / (alpha + t_x)) ** (r + x) then
        if ratio <= 1:
            return float(t_x_days)
        t_x = t_x_days / self.unit_days
        return float(((self.alpha + t_x) * ratio ** (1 / (self.r + x)) - self.alpha) * self.unit_days)


@dataclass(frozen=True)
class Transition:
    """A change of stage on ``day``, with why."""

    day: date
    before: str | None
    after: str
    why: str

    def to_json(self) -> dict[str, str | None]:
        return {"at": self.day.isoformat(), "from": self.before, "to": self.after, "why": self.why}


def stage_on(days: list[date], day: date, rules: StageRules, alive: Alive | None = None) -> tuple[str | None, str]:
    """The stage on ``day`` given the sorted, distinct purchase ``days``, and why; with ``alive``, a P(alive) below
    the rules' thresholds makes a customer lost, or at risk at least."""
    stage, why = _judged(days, _comebacks(days, rules), day, rules, alive)
    return stage, why()


def _comebacks(days: list[date], rules: StageRules) -> list[tuple[date, int]]:
    """The purchase days that ended a gap of ``lost_days`` or more, with the gap."""
    return [(days[i], gap) for i in range(1, len(days)) if (gap := (days[i] - days[i - 1]).days) >= rules.lost_days]


def _judged(days: list[date], comebacks: list[tuple[date, int]], day: date, rules: StageRules,
            alive: Alive | None) -> tuple[str | None, Callable[[], str]]:
    """:func:`stage_on` with the reason left to be written (most days checked change nothing)."""
    upto = bisect_right(days, day)
    if not upto:
        return None, lambda: "no purchase yet"
    stage, why = _by_recency(days, comebacks, upto, day, rules)
    if alive is not None and stage != "lost":
        first, last = days[0], days[upto - 1]
        x, t_x, T = upto - 1, (last - first).days, (day - first).days
        p = alive.p(x, t_x, T)
        evidence = f"(x {x}, t_x {t_x} days, T {T} days)"
        if p < rules.lost_p_alive:
            return "lost", lambda: f"P(alive) {p:.3f} below {rules.lost_p_alive} {evidence}"
        if p < rules.at_risk_p_alive and stage in ("new", "active", "won_back"):
            return "at_risk", lambda: f"P(alive) {p:.3f} below {rules.at_risk_p_alive} {evidence}"
    return stage, why


def _by_recency(days: list[date], comebacks: list[tuple[date, int]], upto: int, day: date,
                rules: StageRules) -> tuple[str, Callable[[], str]]:
    first, last = days[0], days[upto - 1]
    quiet = (day - last).days
    if quiet >= rules.lost_days:
        return "lost", lambda: f"no purchase for {quiet} days (the last on {last}; lost from {rules.lost_days})"
    if quiet >= rules.dormant_days:
        return "dormant", lambda: (f"no purchase for {quiet} days (the last on {last}; dormant from "
                                   f"{rules.dormant_days})")
    if quiet >= rules.active_days:
        return "at_risk", lambda: (f"no purchase for {quiet} days (the last on {last}; at risk from "
                                   f"{rules.active_days})")
    if (day - first).days < rules.new_days:
        return "new", lambda: f"first purchase on {first}"
    latest = bisect_right(comebacks, (day, 1 << 30))  # the latest purchase on or before day that ended a long gap
    if latest and (day - comebacks[latest - 1][0]).days < rules.won_back_days:
        back, gap = comebacks[latest - 1]
        return "won_back", lambda: f"bought on {back} after {gap} days without a purchase"
    return "active", lambda: f"bought on {last}"


def transitions(purchase_days: Iterable[date], until: date, rules: StageRules,
                alive: Alive | None = None) -> list[Transition]:
    """Every change of stage from the first purchase day to ``until`` (included), in order."""
    days = sorted(set(d for d in purchase_days if d <= until))
    if not days:
        return []
    # The days a stage can change: each purchase day, the first's new_days, and after each purchase day the days a
    # quiet count runs out (or P(alive) falls to a threshold) before the next purchase resets them, and the end of
    # a won-back spell; checking only those makes a long history cost a few checks per purchase day.
    first = days[0]
    candidates = {*days, first + timedelta(days=rules.new_days)}
    quiet = (rules.active_days, rules.dormant_days, rules.lost_days)
    for x, (last, following) in enumerate(zip(days, [*days[1:], None], strict=True)):
        end = following if following is not None else until + timedelta(days=1)
        candidates |= {at for at in (last + timedelta(days=n) for n in quiet) if at < end}
        if x and (last - days[x - 1]).days >= rules.lost_days:
            candidates.add(last + timedelta(days=rules.won_back_days))
        if alive is not None:
            for threshold in (rules.at_risk_p_alive, rules.lost_p_alive):
                below = alive.days_below(x, (last - first).days, threshold)
                if below is not None:
                    at = first + timedelta(days=math.floor(below))
                    candidates |= {d for d in (at, at + timedelta(days=1)) if d < end}
    comebacks = _comebacks(days, rules)
    found: list[Transition] = []
    stage: str | None = None
    for day in sorted(candidates):
        if day > until:
            break
        now, why = _judged(days, comebacks, day, rules, alive)
        if now != stage:
            assert now is not None  # every candidate is on or after the first purchase day
            found.append(Transition(day, stage, now, why()))
            stage = now
    return found


def lifecycle(purchase_days: Iterable[date], until: date, rules: StageRules,
              alive: Alive | None = None) -> dict[str, object]:
    """A customer's stage on ``until``, since when, and the transitions that led there (for a card or the fold)."""
    found = transitions(purchase_days, until, rules, alive)
    return {"stage": found[-1].after if found else None, "since": found[-1].day.isoformat() if found else None,
            "rules_version": rules.version, "transitions": [t.to_json() for t in found]}
