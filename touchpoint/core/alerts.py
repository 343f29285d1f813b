"""Dormancy and churn alerts: conditions, episodes and a due-time index, as a pure core.

No Kafka, no database, no wall clock: every function takes the instant it
decides for (``now_ms``, epoch milliseconds of event time: a tick or an
event), so a replay of the same log decides the same alerts.

Inputs. :class:`AlertInputs` is a frozen snapshot of one customer built by
the caller from its view (interaction times, purchases, refunds, cases,
consent, value segment). Facts dated after ``now_ms`` are ignored, so an
evaluation depends on event time only, not on what happened to arrive first.

Dormancy (:func:`dormancy_threshold_ms`). Silent for *more than*
``max(factor x usual gap, floor of the segment)``; exactly the threshold is
not dormant yet. The usual gap is the median gap between the customer's
visits, where interactions closer than ``visit_gap_hours`` to the previous
one belong to the same visit (an email's sent/delivered/opened chain, a web
session's page views would otherwise make the usual gap a few minutes).
Fewer than ``dormancy_min_interactions`` visits: the floor alone. Severity
``medium``; ``high`` once silent for more than ``dormancy_high_factor`` x the
threshold.

Churn risk (:func:`churn_assessment`). A score summing the weights of the
signals that fire, each a :class:`Reason` with its evidence:

* ``cancel_request``: a cancel-request case the customer has been silent
  since, or one still open whose last action is recent;
* ``complaints``: at least ``complaint_count`` complaint cases whose last
  action is within ``complaint_window_days``;
* ``activity_drop``: purchase count or spend in the last ``recent_days``
  below ``drop_ratio`` x the customer's own average per ``recent_days`` over
  the trailing baseline before that;
* ``opted_out``: marketing consent withdrawn on every channel the customer
  has a marketing consent record for (at least ``opt_out_min_channels``);
* ``refunds``: refunds above ``refund_share`` of spend over the refund window.

Raised when the score reaches ``churn_threshold``; ``high`` from
``churn_high_score``.

Episodes (:func:`decide`). One :class:`AlertState` per customer and kind.
``raised`` once per episode, nothing while it stays open, ``escalated`` when
the severity rises, ``resolved`` when the condition ends: the dormant
customer interacts again after the silence, the churn score falls below the
threshold. Alert ids are ``customer/kind/episode number/episode start/state``
(``/severity`` for an escalation), so a replay gives the same ids and a
consumer can deduplicate on them. A dormancy episode starts at the instant
the silence crossed the threshold (not at the tick that noticed it), so ticks
split differently raise the same episode. Time never goes backwards for a
state: a ``now_ms`` earlier than the last decision is taken as that decision's.

Time. :func:`next_due_ms` is the next instant at which a decision could
change without a new event (the dormancy threshold, its escalation, a window
edge for a churn signal). The caller keeps it in a :class:`DueIndex` and, per
tick, decides only for the customers it pops; no scan of every customer.
"""

from __future__ import annotations

import heapq
from bisect import bisect_right
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from fractions import Fraction
from functools import lru_cache
from itertools import pairwise
from typing import Any, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, model_validator

from touchpoint.core.instants import iso_ms

__all__ = [
    "KINDS",
    "SEVERITIES",
    "Alert",
    "AlertConfig",
    "AlertInputs",
    "AlertState",
    "Case",
    "ChurnAssessment",
    "ChurnWeights",
    "Consent",
    "DormancyFloors",
    "DueIndex",
    "Interaction",
    "Kind",
    "Purchase",
    "Reason",
    "Refund",
    "Severity",
    "Transition",
    "churn_assessment",
    "decide",
    "dormancy_due_ms",
    "dormancy_threshold_ms",
    "next_due_ms",
    "retire",
]

Kind = Literal["dormancy", "churn"]
Transition = Literal["raised", "escalated", "resolved"]
Severity = Literal["medium", "high"]
KINDS: tuple[Kind, ...] = ("dormancy", "churn")
SEVERITIES: tuple[Severity, ...] = ("medium", "high")
"""Severities from lowest to highest; an episode escalates when it moves right."""

DAY_MS = 86_400_000
_HOUR_MS = 3_600_000


# -- configuration --------------------------------------------------------------------


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class DormancyFloors(_Frozen):
    """Shortest silence, in days, that makes a customer of each value segment dormant."""

    platinum: int = Field(30, ge=1)
    gold: int = Field(45, ge=1)
    iron: int = Field(60, ge=1)
    lead: int = Field(90, ge=1)


class ChurnWeights(_Frozen):
    """Score points each churn signal adds when it fires."""

    cancel_request: int = Field(60, ge=0)
    complaints: int = Field(30, ge=0)
    activity_drop: int = Field(30, ge=0)
    opted_out: int = Field(20, ge=0)
    refunds: int = Field(20, ge=0)


class AlertConfig(_Frozen):
    """Alert thresholds (the defaults are the documented ones).

    Dormancy:

    :param dormancy_factor: silent for more than this many usual gaps (3).
    :param dormancy_floors: and for more than the segment's floor in days
        (platinum 30, gold 45, iron 60, lead 90).
    :param dormancy_min_interactions: visits needed to use the usual gap at
        all; fewer and the floor alone applies (3).
    :param visit_gap_hours: an interaction less than this after the previous
        one is the same visit (12; 0 counts every distinct instant).
    :param dormancy_high_factor: severity ``high`` once silent for more than
        this many thresholds (2).

    Churn (windows are "less than N days before now"):

    :param churn_threshold: score from which churn risk is raised (50).
    :param churn_high_score: score from which it is ``high`` (80).
    :param weights: points per signal (cancel request 60, complaints 30,
        activity drop 30, opted out 20, refunds 20): a cancel request alone
        raises, two of the others together raise, opted out + refunds do not.
    :param cancel_request_category: the case category of a cancel request
        (``cancel_request``, as the generator emits).
    :param cancel_request_days: an open cancel request the customer has been
        active since still counts this long after its last action (90).
    :param complaint_category: the case category of a complaint (``complaint``).
    :param complaint_window_days: complaints counted over this window (30).
    :param complaint_count: complaints in the window that fire the signal (2).
    :param recent_days: the recent purchase window (90).
    :param trailing_days: the baseline is the rest of this window, before the
        recent one (365: 275 days of baseline).
    :param min_baseline_days: baseline history needed to compare at all (90).
    :param min_baseline_purchases: baseline purchases needed to compare (3).
    :param drop_ratio: fire when the recent count or spend is below this
        share of the baseline average per recent window (0.5).
    :param opt_out_purpose: the consent purpose that makes a customer
        contactable (``marketing``).
    :param opt_out_min_channels: channels with a consent record needed, all
        withdrawn, to fire (2: one withdrawal alone is not "every channel").
    :param refund_window_days: refunds and spend compared over this window (365).
    :param refund_share: fire when refunds exceed this share of spend (0.3).
    :param refund_min_count: and there are at least this many refunds (2).
    """

    dormancy_factor: float = Field(3.0, gt=0)
    dormancy_floors: DormancyFloors = DormancyFloors()
    dormancy_min_interactions: int = Field(3, ge=2)
    visit_gap_hours: int = Field(12, ge=0)
    dormancy_high_factor: float = Field(2.0, ge=1)

    churn_threshold: int = Field(50, ge=1)
    churn_high_score: int = Field(80, ge=1)
    weights: ChurnWeights = ChurnWeights()
    cancel_request_category: str = "cancel_request"
    cancel_request_days: int = Field(90, ge=1)
    complaint_category: str = "complaint"
    complaint_window_days: int = Field(30, ge=1)
    complaint_count: int = Field(2, ge=1)
    recent_days: int = Field(90, ge=1)
    trailing_days: int = Field(365, ge=2)
    min_baseline_days: int = Field(90, ge=1)
    min_baseline_purchases: int = Field(3, ge=1)
    drop_ratio: float = Field(0.5, gt=0, le=1)
    opt_out_purpose: str = "marketing"
    opt_out_min_channels: int = Field(2, ge=1)
    refund_window_days: int = Field(365, ge=1)
    refund_share: float = Field(0.3, ge=0)
    refund_min_count: int = Field(2, ge=1)

    @model_validator(mode="after")
    def _consistent(self) -> AlertConfig:
        if self.trailing_days <= self.recent_days:
            raise ValueError("trailing_days must be longer than recent_days")
        if self.churn_high_score < self.churn_threshold:
            raise ValueError("churn_high_score must be at least churn_threshold")
        return self


@lru_cache(maxsize=64)
def _exact(value: float) -> Fraction:
    # Through the shortest decimal repr, so 0.3 compares as 3/10, not as its binary neighbour.
    # Cached: the same few config values, parsed from text several times per customer decided.
    return Fraction(repr(value))


# -- inputs ---------------------------------------------------------------------------


class Interaction(NamedTuple):
    """One interaction of the customer on any channel."""

    ms: int
    event_id: str
    channel: str


class Purchase(NamedTuple):
    ms: int
    total_minor: int
    transaction_id: str


class Refund(NamedTuple):
    ms: int
    amount_minor: int
    refund_id: str
    transaction_id: str


class Case(NamedTuple):
    """A case as its latest action (``ms``, ``event_id`` and ``action`` are that action's)."""

    case_id: str
    category: str
    action: str
    ms: int
    event_id: str


class Consent(NamedTuple):
    """The latest consent for one ``(purpose, channel)``."""

    purpose: str
    channel: str
    granted: bool
    ms: int
    event_id: str


@dataclass(frozen=True, slots=True)
class AlertInputs:
    """What the alert conditions need of one customer, built from its view.

    The records are named tuples, so plain tuples in field order build them.

    :param customer_id: the customer.
    :param segment: value segment (platinum, gold, iron, lead) as of the
        instant decided for.
    :param interactions: interactions sorted by ``(ms, event_id)``; enough
        history for the usual gap (the view's newest 512 events do).
    :param purchases: every purchase (the activity baseline reaches a year back).
    :param refunds: every refund.
    :param cases: every case, as its latest action, with its category.
    :param consent: the latest consent per ``(purpose, channel)``.
    """

    customer_id: str
    segment: str
    interactions: tuple[Interaction, ...]
    purchases: tuple[Purchase, ...] = ()
    refunds: tuple[Refund, ...] = ()
    cases: tuple[Case, ...] = ()
    consent: tuple[Consent, ...] = ()

    def __post_init__(self) -> None:
        it = self.interactions
        if any(it[i] > it[i + 1] for i in range(len(it) - 1)):
            raise ValueError("interactions must be sorted by (ms, event_id)")


# -- outputs and state ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Reason:
    """Why an alert fired: a stable ``code``, a line for people, and the evidence (JSON values)."""

    code: str
    text: str
    evidence: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"code": self.code, "evidence": dict(self.evidence), "text": self.text}


@dataclass(frozen=True, slots=True)
class Alert:
    """One transition of an episode.

    :param at_ms: event time of this transition (the ``now`` it was decided for).
    :param since_ms: when the episode's condition began.
    :param raised_ms: when the episode was raised.
    :param severity: the episode's severity after this transition.
    """

    alert_id: str
    kind: Kind
    state: Transition
    customer_id: str
    at_ms: int
    since_ms: int
    raised_ms: int
    severity: Severity
    reasons: tuple[Reason, ...]

    def to_json(self) -> dict[str, Any]:
        """JSON values, times ISO-8601 UTC with milliseconds and ``Z``, keys sorted."""
        return {
            "alert_id": self.alert_id,
            "at": iso_ms(self.at_ms),
            "customer_id": self.customer_id,
            "kind": self.kind,
            "raised_at": iso_ms(self.raised_ms),
            "reasons": [r.to_json() for r in self.reasons],
            "severity": self.severity,
            "since": iso_ms(self.since_ms),
            "state": self.state,
        }


@dataclass(frozen=True, slots=True)
class AlertState:
    """One customer's episode state for one kind; ``AlertState("churn")`` is "never alerted".

    :param episodes: episodes raised so far (numbers the alert ids).
    :param open: an episode is open.
    :param since_ms: the open episode's start.
    :param raised_ms: when it was raised.
    :param severity: its highest severity so far.
    :param anchor_ms: dormancy: the last interaction before the silence; an
        interaction after it ends the episode.
    :param codes: churn: the reason codes at the last decision.
    :param checked_ms: the latest instant decided for (time never goes back).
    """

    kind: Kind
    episodes: int = 0
    open: bool = False
    since_ms: int | None = None
    raised_ms: int | None = None
    severity: Severity | None = None
    anchor_ms: int | None = None
    codes: tuple[str, ...] = ()
    checked_ms: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "anchor_ms": self.anchor_ms,
            "checked_ms": self.checked_ms,
            "codes": list(self.codes),
            "episodes": self.episodes,
            "kind": self.kind,
            "open": self.open,
            "raised_ms": self.raised_ms,
            "severity": self.severity,
            "since_ms": self.since_ms,
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> AlertState:
        if doc["kind"] not in KINDS or doc.get("severity") not in (None, *SEVERITIES):
            raise ValueError(f"not an alert state: {doc!r}")
        return cls(
            kind=doc["kind"],
            episodes=int(doc["episodes"]),
            open=bool(doc["open"]),
            since_ms=doc.get("since_ms"),
            raised_ms=doc.get("raised_ms"),
            severity=doc.get("severity"),
            anchor_ms=doc.get("anchor_ms"),
            codes=tuple(doc.get("codes", ())),
            checked_ms=doc.get("checked_ms"),
        )


# -- dormancy -------------------------------------------------------------------------


def _visible(inputs: AlertInputs, now_ms: int | None) -> tuple[Interaction, ...]:
    if now_ms is None:
        return inputs.interactions
    # Sorted by (ms, event_id): every interaction at now_ms sorts before (now_ms + 1,).
    end = bisect_right(inputs.interactions, (now_ms + 1,))
    return inputs.interactions[:end]


def _floor_ms(segment: str, config: AlertConfig) -> int:
    if segment not in DormancyFloors.model_fields:
        raise ValueError(f"unknown value segment {segment!r}")
    return int(getattr(config.dormancy_floors, segment)) * DAY_MS


def _usual_gap(interactions: tuple[Interaction, ...], config: AlertConfig) -> tuple[Fraction | None, int]:
    """The median gap between visits (None below the minimum visits) and the number of visits."""
    visit_gap = config.visit_gap_hours * _HOUR_MS
    gaps = sorted(b.ms - a.ms for a, b in pairwise(interactions) if b.ms - a.ms >= max(visit_gap, 1))
    visits = len(gaps) + 1 if interactions else 0
    if visits < config.dormancy_min_interactions:
        return None, visits
    mid = len(gaps) // 2
    median = Fraction(gaps[mid]) if len(gaps) % 2 else Fraction(gaps[mid - 1] + gaps[mid], 2)
    return median, visits


def dormancy_threshold_ms(inputs: AlertInputs, config: AlertConfig, now_ms: int | None = None) -> int:
    """The silence, in ms, beyond which the customer is dormant.

    :param now_ms: consider only interactions up to this instant (all if None).
    """
    usual, _ = _usual_gap(_visible(inputs, now_ms), config)
    floor = _floor_ms(inputs.segment, config)
    if usual is None:
        return floor
    return max(int(_exact(config.dormancy_factor) * usual), floor)


def dormancy_due_ms(inputs: AlertInputs, config: AlertConfig) -> int | None:
    """The first instant the customer is dormant if nothing else happens (None: no interaction yet)."""
    if not inputs.interactions:
        return None
    return inputs.interactions[-1].ms + dormancy_threshold_ms(inputs, config) + 1


@dataclass(frozen=True, slots=True)
class _Dormancy:
    dormant: bool
    last: Interaction | None
    threshold_ms: int
    start_ms: int | None  # first dormant instant
    high_ms: int | None  # first instant of severity high
    reason: Reason | None


def _days(ms: int) -> float:
    return round(ms / DAY_MS, 2)


def _dormancy(inputs: AlertInputs, now_ms: int, config: AlertConfig) -> _Dormancy:
    seen = _visible(inputs, now_ms)
    floor = _floor_ms(inputs.segment, config)
    if not seen:
        return _Dormancy(False, None, floor, None, None, None)
    usual, visits = _usual_gap(seen, config)
    threshold = floor if usual is None else max(int(_exact(config.dormancy_factor) * usual), floor)
    last = seen[-1]
    start = last.ms + threshold + 1
    high = last.ms + int(_exact(config.dormancy_high_factor) * threshold) + 1
    silent = now_ms - last.ms
    if silent <= threshold:  # exactly the threshold is not dormant yet
        return _Dormancy(False, last, threshold, start, high, None)
    basis = "segment floor" if usual is None or threshold == floor else f"{config.dormancy_factor:g} x usual gap"
    reason = Reason(
        "silent",
        f"no interaction for {silent // DAY_MS} days (dormant beyond {_days(threshold):g} days: {basis})",
        {
            "event_ids": [last.event_id],
            "last_channel": last.channel,
            "last_interaction": iso_ms(last.ms),
            "segment": inputs.segment,
            "silent_days": _days(silent),
            "threshold_days": _days(threshold),
            "usual_gap_days": None if usual is None else _days(int(usual)),
            "visits": visits,
        },
    )
    return _Dormancy(True, last, threshold, start, high, reason)


# -- churn ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ChurnAssessment:
    """The churn score at one instant and the signals that make it up."""

    score: int
    reasons: tuple[Reason, ...]

    @property
    def codes(self) -> tuple[str, ...]:
        return tuple(r.code for r in self.reasons)


def _cancel_request(
    inputs: AlertInputs, seen: tuple[Interaction, ...], now_ms: int, config: AlertConfig
) -> Reason | None:
    last_ms = seen[-1].ms if seen else None
    window = config.cancel_request_days * DAY_MS
    firing = []
    for case in sorted(inputs.cases, key=lambda c: (c.ms, c.case_id)):
        if case.category != config.cancel_request_category or case.ms > now_ms:
            continue
        silent_since = last_ms is None or last_ms <= case.ms
        # Saved = closed and active again; an open request still counts for a while even if active.
        if silent_since or (case.action != "closed" and now_ms - case.ms < window):
            firing.append(case)
    if not firing:
        return None
    latest = firing[-1]
    ago = (now_ms - latest.ms) // DAY_MS
    status = "open" if latest.action != "closed" else "closed, no activity since"
    return Reason(
        "cancel_request",
        f"cancel request {latest.case_id} {ago} days ago ({status})",
        {
            "case_ids": [c.case_id for c in firing],
            "event_ids": [c.event_id for c in firing],
            "last_action": latest.action,
            "last_action_at": iso_ms(latest.ms),
        },
    )


def _complaints(inputs: AlertInputs, now_ms: int, config: AlertConfig) -> Reason | None:
    window = config.complaint_window_days * DAY_MS
    recent = sorted(
        (c for c in inputs.cases if c.category == config.complaint_category and 0 <= now_ms - c.ms < window),
        key=lambda c: (c.ms, c.case_id),
    )
    if len(recent) < config.complaint_count:
        return None
    return Reason(
        "complaints",
        f"{len(recent)} complaints in the last {config.complaint_window_days} days",
        {
            "case_ids": [c.case_id for c in recent],
            "count": len(recent),
            "event_ids": [c.event_id for c in recent],
            "window_days": config.complaint_window_days,
        },
    )


@dataclass(frozen=True, slots=True)
class _Baseline:
    recent: list[Purchase]
    base: list[Purchase]
    length_ms: int  # baseline length
    growing: bool  # the baseline starts at the history start, so it lengthens with now


def _baseline(inputs: AlertInputs, seen: tuple[Interaction, ...], now_ms: int, config: AlertConfig) -> _Baseline | None:
    bought = [p for p in inputs.purchases if p.ms <= now_ms]
    starts = [p.ms for p in bought] + ([seen[0].ms] if seen else [])
    if not starts:
        return None
    recent_ms = config.recent_days * DAY_MS
    trailing_ms = config.trailing_days * DAY_MS
    history = min(starts)
    # Baseline: before the recent window, within the trailing one, not before the history starts.
    lo = max(now_ms - trailing_ms, history - 1)
    recent = [p for p in bought if now_ms - p.ms < recent_ms]
    base = [p for p in bought if recent_ms <= now_ms - p.ms < trailing_ms]
    return _Baseline(recent, base, now_ms - recent_ms - lo, lo == history - 1)


def _activity_drop(
    inputs: AlertInputs, seen: tuple[Interaction, ...], now_ms: int, config: AlertConfig
) -> Reason | None:
    b = _baseline(inputs, seen, now_ms, config)
    if b is None or b.length_ms < config.min_baseline_days * DAY_MS or len(b.base) < config.min_baseline_purchases:
        return None
    ratio = _exact(config.drop_ratio)
    recent_ms = config.recent_days * DAY_MS
    n_recent, n_base = len(b.recent), len(b.base)
    spend_recent = sum(p.total_minor for p in b.recent)
    spend_base = sum(p.total_minor for p in b.base)
    # Recent per window < ratio x baseline per window, cross-multiplied to stay in integers.
    fewer = n_recent * b.length_ms < ratio * n_base * recent_ms
    less = spend_recent * b.length_ms < ratio * spend_base * recent_ms
    if not (fewer or less):
        return None
    per_n = Fraction(n_base * recent_ms, b.length_ms)
    per_spend = Fraction(spend_base * recent_ms, b.length_ms)
    what = " and ".join(w for w, on in (("purchases", fewer), ("spend", less)) if on)
    last = max(b.recent or b.base)
    return Reason(
        "activity_drop",
        f"{what} in the last {config.recent_days} days below {config.drop_ratio:g} of the usual "
        f"({n_recent} purchases vs {float(per_n):.1f}, {spend_recent} vs {int(per_spend)} minor units)",
        {
            "baseline_purchases_per_window": round(float(per_n), 2),
            "baseline_spend_per_window_minor": int(per_spend),
            "baseline_days": _days(b.length_ms),
            "last_purchase_at": iso_ms(last.ms),
            "last_transaction_id": last.transaction_id,
            "purchases_dropped": fewer,
            "recent_purchases": n_recent,
            "recent_spend_minor": spend_recent,
            "spend_dropped": less,
            "window_days": config.recent_days,
        },
    )


def _opted_out(inputs: AlertInputs, now_ms: int, config: AlertConfig) -> Reason | None:
    records = sorted(
        (c for c in inputs.consent if c.purpose == config.opt_out_purpose and c.ms <= now_ms),
        key=lambda c: (c.channel, c.ms, c.event_id),
    )
    if len(records) < config.opt_out_min_channels or any(c.granted for c in records):
        return None
    latest = max(records, key=lambda c: (c.ms, c.event_id))
    return Reason(
        "opted_out",
        f"{config.opt_out_purpose} consent withdrawn on every channel ({', '.join(c.channel for c in records)})",
        {
            "channels": [c.channel for c in records],
            "event_ids": [c.event_id for c in records],
            "last_withdrawal_at": iso_ms(latest.ms),
        },
    )


def _refunds(inputs: AlertInputs, now_ms: int, config: AlertConfig) -> Reason | None:
    window = config.refund_window_days * DAY_MS
    refunds = sorted((r for r in inputs.refunds if 0 <= now_ms - r.ms < window), key=lambda r: (r.ms, r.refund_id))
    if len(refunds) < config.refund_min_count:
        return None
    spend = sum(p.total_minor for p in inputs.purchases if 0 <= now_ms - p.ms < window)
    refunded = sum(r.amount_minor for r in refunds)
    if refunded <= _exact(config.refund_share) * spend:  # exactly the share does not fire
        return None
    share = None if spend == 0 else round(refunded / spend, 4)
    return Reason(
        "refunds",
        f"{len(refunds)} refunds of {refunded} minor units against {spend} spent "
        f"in {config.refund_window_days} days (above {config.refund_share:g})",
        {
            "refund_ids": [r.refund_id for r in refunds],
            "refunded_minor": refunded,
            "share": share,
            "spend_minor": spend,
            "transaction_ids": sorted({r.transaction_id for r in refunds}),
        },
    )


def churn_assessment(inputs: AlertInputs, now_ms: int, config: AlertConfig) -> ChurnAssessment:
    """The churn score at ``now_ms`` with one reason per signal that fires, in a fixed order."""
    seen = _visible(inputs, now_ms)
    weights = config.weights
    signals = (
        (_cancel_request(inputs, seen, now_ms, config), weights.cancel_request),
        (_complaints(inputs, now_ms, config), weights.complaints),
        (_activity_drop(inputs, seen, now_ms, config), weights.activity_drop),
        (_opted_out(inputs, now_ms, config), weights.opted_out),
        (_refunds(inputs, now_ms, config), weights.refunds),
    )
    fired = [(reason, weight) for reason, weight in signals if reason is not None]
    return ChurnAssessment(sum(w for _, w in fired), tuple(r for r, _ in fired))


def _churn_severity(score: int, config: AlertConfig) -> Severity:
    return "high" if score >= config.churn_high_score else "medium"


# -- when to look again ---------------------------------------------------------------


def _ceil(x: Fraction) -> int:
    return -((-x.numerator) // x.denominator)


def next_due_ms(inputs: AlertInputs, now_ms: int, config: AlertConfig) -> int | None:
    """The next instant after ``now_ms`` at which a decision may change with no new event.

    Decisions are constant on ``[now_ms, next_due_ms)`` for these inputs: the
    result is the earliest of the dormancy start and escalation, every window
    edge a purchase, refund or case crosses, the instant the activity baseline
    becomes long enough or stops lengthening, the instant a lengthening
    baseline stops a drop from firing, and the time of any fact dated after
    ``now_ms``. Early extra instants are harmless (a decision that changes
    nothing emits nothing). None: nothing will change by itself.
    """
    candidates: list[int] = []
    d = _dormancy(inputs, now_ms, config)
    if d.start_ms is not None and d.high_ms is not None:
        candidates += [d.start_ms, d.high_ms]
    recent_ms = config.recent_days * DAY_MS
    trailing_ms = config.trailing_days * DAY_MS
    refund_ms = config.refund_window_days * DAY_MS
    for p in inputs.purchases:
        candidates += [p.ms, p.ms + recent_ms, p.ms + trailing_ms, p.ms + refund_ms]
    for r in inputs.refunds:
        candidates += [r.ms, r.ms + refund_ms]
    for c in inputs.cases:
        candidates += [c.ms, c.ms + config.complaint_window_days * DAY_MS, c.ms + config.cancel_request_days * DAY_MS]
    candidates += [c.ms for c in inputs.consent]
    ahead = bisect_right(inputs.interactions, (now_ms + 1,))
    if ahead < len(inputs.interactions):
        candidates.append(inputs.interactions[ahead].ms)  # the first interaction not visible yet
    seen = _visible(inputs, now_ms)
    b = _baseline(inputs, seen, now_ms, config)
    if b is not None and b.growing:
        # The baseline starts at the history start: it lengthens with now until it spans the trailing window.
        history = now_ms - recent_ms - b.length_ms + 1
        candidates += [history + recent_ms + config.min_baseline_days * DAY_MS - 1, history + trailing_ms - 1]
        ratio = _exact(config.drop_ratio)
        base_at = history - 1 + recent_ms  # now = base_at + length
        for recent, base in (
            (len(b.recent), len(b.base)),
            (sum(p.total_minor for p in b.recent), sum(p.total_minor for p in b.base)),
        ):
            if recent > 0:  # recent * length < ratio * base * window stops holding at this length
                candidates.append(base_at + _ceil(ratio * base * recent_ms / recent))
    later = [t for t in candidates if t > now_ms]
    return min(later) if later else None


# -- episodes -------------------------------------------------------------------------


def _rank(severity: Severity | None) -> int:
    return -1 if severity is None else SEVERITIES.index(severity)


def _alert(customer_id: str, state: AlertState, transition: Transition, at_ms: int, reasons: Iterable[Reason]) -> Alert:
    assert state.since_ms is not None and state.raised_ms is not None and state.severity is not None
    alert_id = f"{customer_id}/{state.kind}/{state.episodes}/{state.since_ms}/{transition}"
    if transition == "escalated":
        alert_id += f"/{state.severity}"  # an episode may escalate more than once
    return Alert(
        alert_id=alert_id,
        kind=state.kind,
        state=transition,
        customer_id=customer_id,
        at_ms=at_ms,
        since_ms=state.since_ms,
        raised_ms=state.raised_ms,
        severity=state.severity,
        reasons=tuple(reasons),
    )


def _closed(state: AlertState, now: int) -> AlertState:
    return AlertState(kind=state.kind, episodes=state.episodes, checked_ms=now)


def _decide_dormancy(
    state: AlertState, inputs: AlertInputs, now: int, config: AlertConfig
) -> tuple[AlertState, list[Alert]]:
    d = _dormancy(inputs, now, config)
    alerts: list[Alert] = []
    if state.open:
        assert state.anchor_ms is not None
        if d.last is not None and d.last.ms > state.anchor_ms:
            back = d.last
            evidence = {"channel": back.channel, "event_ids": [back.event_id], "returned_at": iso_ms(back.ms)}
            if state.raised_ms is not None and back.ms < state.raised_ms:
                # The event arrived after the tick that raised the episode, but happened before it.
                reason = Reason("corrected", f"a late event: back on {back.channel} after "
                                f"{(back.ms - state.anchor_ms) // DAY_MS} days, before the alert was raised", evidence)
            else:
                days = (back.ms - state.anchor_ms) // DAY_MS
                reason = Reason("returned", f"back on {back.channel} after {days} days", evidence)
            alerts.append(_alert(inputs.customer_id, state, "resolved", now, [reason]))
            state = _closed(state, now)
        else:
            # The episode is about this silence: its start stays, the severity may only rise.
            severity: Severity = "high" if d.high_ms is not None and now >= d.high_ms else "medium"
            if _rank(severity) > _rank(state.severity):
                state = replace(state, severity=severity, checked_ms=now)
                reasons = [d.reason] if d.reason is not None else []
                alerts.append(_alert(inputs.customer_id, state, "escalated", now, reasons))
                return state, alerts
            return replace(state, checked_ms=now), alerts
    if d.dormant:
        # A return and a new silence already past the threshold can both be seen in one late decision.
        assert d.last is not None and d.start_ms is not None and d.high_ms is not None and d.reason is not None
        severity = "high" if now >= d.high_ms else "medium"
        state = AlertState(
            kind="dormancy",
            episodes=state.episodes + 1,
            open=True,
            since_ms=d.start_ms,
            raised_ms=now,
            severity=severity,
            anchor_ms=d.last.ms,
            checked_ms=now,
        )
        alerts.append(_alert(inputs.customer_id, state, "raised", now, [d.reason]))
        return state, alerts
    return _closed(state, now), alerts


def _decide_churn(
    state: AlertState, inputs: AlertInputs, now: int, config: AlertConfig
) -> tuple[AlertState, list[Alert]]:
    a = churn_assessment(inputs, now, config)
    if a.score < config.churn_threshold:
        if not state.open:
            return _closed(state, now), []
        cleared = [c for c in state.codes if c not in a.codes]
        reason = Reason(
            "below_threshold",
            f"churn score {a.score} below {config.churn_threshold}"
            + (f" ({', '.join(cleared)} no longer apply)" if cleared else ""),
            {"cleared": cleared, "remaining": list(a.codes), "score": a.score, "threshold": config.churn_threshold},
        )
        alert = _alert(inputs.customer_id, state, "resolved", now, [reason, *a.reasons])
        return _closed(state, now), [alert]
    severity = _churn_severity(a.score, config)
    score = Reason("score", f"churn score {a.score} (threshold {config.churn_threshold})", {"score": a.score})
    if not state.open:
        state = AlertState(
            kind="churn",
            episodes=state.episodes + 1,
            open=True,
            since_ms=now,
            raised_ms=now,
            severity=severity,
            codes=a.codes,
            checked_ms=now,
        )
        return state, [_alert(inputs.customer_id, state, "raised", now, [score, *a.reasons])]
    if _rank(severity) > _rank(state.severity):
        state = replace(state, severity=severity, codes=a.codes, checked_ms=now)
        return state, [_alert(inputs.customer_id, state, "escalated", now, [score, *a.reasons])]
    return replace(state, codes=a.codes, checked_ms=now), []


def decide(state: AlertState, inputs: AlertInputs, now_ms: int, config: AlertConfig) -> tuple[AlertState, list[Alert]]:
    """Decide one customer's episode of ``state.kind`` at ``now_ms``.

    :param state: the episode state for this customer and kind
        (``AlertState(kind)`` the first time).
    :param inputs: the customer as of ``now_ms`` (later facts are ignored).
    :param now_ms: event time decided for: a tick, or the time of the event
        just folded. Taken as ``state.checked_ms`` if earlier.
    :param config: thresholds.
    :returns: the new state and the alerts to publish, in order (a late
        decision may resolve a dormancy episode and raise the next one).
    """
    now = now_ms if state.checked_ms is None else max(now_ms, state.checked_ms)
    if state.kind == "dormancy":
        return _decide_dormancy(state, inputs, now, config)
    return _decide_churn(state, inputs, now, config)


def retire(state: AlertState, customer_id: str, now_ms: int, into: str) -> tuple[AlertState, list[Alert]]:
    """Close the open episode of a customer merged into ``into`` (its alerts are keyed by its old id).

    The survivor's own episode is then decided from the merged view by
    :func:`decide` as usual.
    """
    now = now_ms if state.checked_ms is None else max(now_ms, state.checked_ms)
    if not state.open:
        return _closed(state, now), []
    reason = Reason("merged", f"merged into {into}", {"into": into})
    return _closed(state, now), [_alert(customer_id, state, "resolved", now, [reason])]


def close_erased(state: AlertState, customer_id: str, now_ms: int) -> tuple[AlertState, list[Alert]]:
    """Close the open episode of a customer erased on request: nobody is left to win back."""
    now = now_ms if state.checked_ms is None else max(now_ms, state.checked_ms)
    if not state.open:
        return _closed(state, now), []
    erased = Reason("erased", "the customer was erased on request", {})
    return _closed(state, now), [_alert(customer_id, state, "resolved", now, [erased])]


# -- due-time index -------------------------------------------------------------------


class DueIndex:
    """Customers by the next instant they need a decision: a heap with lazy invalidation.

    :meth:`set` pushes a new entry and remembers it as the customer's only
    live one; stale entries are skipped when they surface and the heap is
    rebuilt when they outnumber the live ones. A tick costs
    ``O(k log n)`` for the ``k`` customers due, never a scan of all ``n``.
    Order is by due time, then customer id, so it is deterministic.
    """

    __slots__ = ("_due", "_heap")

    def __init__(self) -> None:
        self._heap: list[tuple[int, str]] = []
        self._due: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._due)

    def __contains__(self, customer_id: object) -> bool:
        return customer_id in self._due

    def due_of(self, customer_id: str) -> int | None:
        return self._due.get(customer_id)

    def set(self, customer_id: str, due_ms: int | None) -> None:
        """Make ``due_ms`` the customer's due time (None: not due at all), replacing any earlier one."""
        if due_ms is None:
            self.discard(customer_id)
            return
        if self._due.get(customer_id) == due_ms:
            return
        self._due[customer_id] = due_ms
        heapq.heappush(self._heap, (due_ms, customer_id))
        if len(self._heap) > 2 * len(self._due) + 64:
            self._heap = [(due, cid) for cid, due in self._due.items()]
            heapq.heapify(self._heap)

    def discard(self, customer_id: str) -> None:
        self._due.pop(customer_id, None)

    def peek(self) -> int | None:
        """The earliest live due time."""
        heap = self._heap
        while heap and self._due.get(heap[0][1]) != heap[0][0]:
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def pop_due(self, now_ms: int) -> list[str]:
        """Remove and return the customers due at or before ``now_ms``, by (due time, customer id)."""
        heap = self._heap
        due = self._due
        out: list[str] = []
        while heap and heap[0][0] <= now_ms:
            due_ms, customer_id = heapq.heappop(heap)
            if due.get(customer_id) == due_ms:
                del due[customer_id]
                out.append(customer_id)
        return out

    def items(self) -> list[tuple[str, int]]:
        """Live ``(customer_id, due_ms)`` pairs sorted by customer id (to persist the index)."""
        return sorted(self._due.items())
