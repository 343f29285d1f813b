"""Likely call reasons: why a customer may be calling, ranked, with evidence and an opening line.

Pure core: no Kafka, no database, no wall clock. Times are epoch
milliseconds of event time; the instant judged for (``now_ms``) is passed in.

Two halves.

* :class:`ReasonFacts` holds the few facts the reasons need, folded from
  events by :func:`evolve` and combined by :func:`merge_facts` (both **in
  place**, like the customer view, so it can live inside it). It does not
  depend on :class:`~touchpoint.core.profile.CustomerView`.
* :func:`likely_reasons` turns facts (plus open cases and active alerts the
  caller may hold elsewhere) into a ranked list of JSON-ready dicts.

Facts (what :func:`evolve` keeps, each kind a dict keyed by an id):

* ``cases`` (case id): first and latest action by ``(ms, event_id)`` and the
  category, from every ``case`` event;
* ``refunds`` (refund id): time, amount, currency, transaction, from ``refund``;
* ``ivr`` (call id): time and IVR reason, from ``call`` events carrying ``ivr_reason``;
* ``campaigns`` (campaign id): the first time and channel it reached the
  customer, from ``campaign`` ``invited``, e-mail delivered / opened /
  clicked / replied and SMS delivered / replied / opt_out carrying a
  ``campaign_id`` (an e-mail only *sent* may yet bounce);
* ``baskets`` (session id): time, from ``web`` ``basket_abandon``;
* ``bounces`` (message id): time and campaign id, from ``email`` ``bounced``;
* ``sms`` (message id): the first send and the first sign it arrived
  (delivered, replied, opt_out), from every ``sms`` event.

Order-insensitive. Every value is combined with a commutative, associative,
idempotent rule (earliest or latest by ``(ms, event_id)``, the event id
breaking ties), so replays, redeliveries and identity merges in any order
give equal facts. Bounded: each kind keeps its :data:`KEPT` newest keys
(:data:`CASES_KEPT` for cases) by the newest time in the value, ties by key;
the top-k of a union is itself commutative and associative. The one
approximation: a fact evicted and later touched again by an even older
event restarts from that event alone, which only concerns facts older than
the k newest of their kind.

Reasons (codes, see :data:`CODES`):

* ``cancel_request``: a case of ``cancel_category`` that is open, or whose
  latest action is within ``cancel_days``; or a call whose IVR reason is one
  of ``cancel_ivr_reasons`` within ``cancel_days``. Such a case is reported
  here, not as ``open_case``.
* ``open_case``: any other open case (latest action not ``closed``), at any
  age; its age is counted from its first action.
* ``payment_declined``: a call whose IVR reason is one of
  ``declined_ivr_reasons`` within ``declined_days``.
* ``refund_in_progress``: refunds within ``refund_days`` (the money may not
  have reached the customer yet).
* ``campaign_received``: a campaign that reached the customer within
  ``campaign_days``.
* ``basket_abandoned``: a web basket abandoned within ``basket_days``.
* ``email_bounced``: an e-mail that bounced within ``bounce_days``.
* ``sms_failed``: a text sent within ``sms_failed_days``, at least
  ``sms_grace_minutes`` before now, with no delivery, reply or opt-out seen
  by now (the contract has no "failed" action; silence is the failure).
* ``churn_alert`` / ``dormancy_alert``: an active alert of that kind
  (``raised`` or ``escalated``), at any age; age from its ``since``.

"Within N days" means strictly less than N days before ``now_ms``; facts
dated after ``now_ms`` are ignored (a case is judged by its latest known
action, and ignored only when its first action is after ``now_ms``).

Ranking rule. Each counted item scores its weight (:class:`ReasonWeights`;
open cases by category, alerts by severity) times a freshness that falls
linearly from 1 at age 0 to 1/2 at the end of the reason's window and stays
at 1/2 beyond it (only open cases and active alerts live that long)::

    score = weight * (1 - min(age, span) / (2 * span))

``span`` is the reason's window (``open_case_days`` and ``alert_days`` for
the two that have none). The arithmetic is on integer milli-points, so the
result is exact and the same on every machine. A code appears once, scored
by its best item (ties: newer, then smaller id); its evidence lists up to
``max_items`` items in that order. Codes are ranked by score, descending,
ties broken by code, and the first ``max_reasons`` are returned, ranked 1, 2...

Ages shown to people are whole days (``(now - ms) // 1 day``): "today",
"yesterday", "3 days ago".
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple

from pydantic import BaseModel, ConfigDict, Field

from touchpoint.contract.models import (
    CallEvent,
    CampaignEvent,
    CaseEvent,
    EmailEvent,
    Event,
    RefundEvent,
    SmsEvent,
    WebEvent,
)
from touchpoint.core.alerts import Alert
from touchpoint.core.instants import epoch_ms, iso_ms

__all__ = [
    "CASES_KEPT",
    "CODES",
    "DAY_MS",
    "KEPT",
    "BasketFact",
    "BounceFact",
    "CampaignFact",
    "CaseFact",
    "IvrFact",
    "OpenCase",
    "ReasonFacts",
    "ReasonWeights",
    "ReasonsConfig",
    "RefundFact",
    "SmsFact",
    "evolve",
    "likely_reasons",
    "merge_facts",
]

DAY_MS = 86_400_000
_MINUTE_MS = 60_000
KEPT = 8
"""Keys kept per kind of fact (the newest)."""
CASES_KEPT = 16
"""Cases kept (the most recently active): cases stay relevant longer than the rest."""
CODES = (
    "basket_abandoned",
    "campaign_received",
    "cancel_request",
    "churn_alert",
    "dormancy_alert",
    "email_bounced",
    "open_case",
    "payment_declined",
    "refund_in_progress",
    "sms_failed",
)


# -- configuration --------------------------------------------------------------------


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ReasonWeights(_Frozen):
    """Base weight of each reason (its score at age 0), before freshness.

    Defaults put what the customer is most likely to be upset or blocked by
    first: a cancel request, a declined payment, a complaint or fraud case,
    money on its way back; then what we sent them; then our own guesses.

    :param case_categories: open case weight by category (fraud 95,
        complaint 85); other categories weigh ``open_case`` (70).
    """

    cancel_request: int = Field(95, ge=0)
    payment_declined: int = Field(90, ge=0)
    open_case: int = Field(70, ge=0)
    case_categories: dict[str, int] = Field(default_factory=lambda: {"fraud": 95, "complaint": 85})
    refund_in_progress: int = Field(75, ge=0)
    campaign_received: int = Field(50, ge=0)
    email_bounced: int = Field(45, ge=0)
    sms_failed: int = Field(45, ge=0)
    basket_abandoned: int = Field(40, ge=0)
    churn_alert_high: int = Field(65, ge=0)
    churn_alert_medium: int = Field(50, ge=0)
    dormancy_alert_high: int = Field(35, ge=0)
    dormancy_alert_medium: int = Field(25, ge=0)


class ReasonsConfig(_Frozen):
    """Windows (days) and weights of the likely call reasons; defaults are the documented ones.

    :param cancel_days: a closed cancel request or a "cancel" IVR choice counts this long (14).
    :param cancel_category: case category of a cancel request (``cancel_request``).
    :param cancel_ivr_reasons: IVR reasons that mean "I want to cancel" (``cancel``).
    :param open_case_days: span of an open case's freshness; it never drops out (30).
    :param declined_days: a declined-payment IVR choice counts this long (7).
    :param declined_ivr_reasons: IVR reasons that mean a declined or failed
        payment (``payment_declined``).
    :param refund_days: a refund is "in progress" this long (14).
    :param campaign_days: a campaign "just received" this long (14: the generator's campaigns run 14 days).
    :param basket_days: an abandoned basket counts this long (3).
    :param bounce_days: a bounced e-mail counts this long (30).
    :param sms_failed_days: an undelivered text counts this long (30).
    :param sms_grace_minutes: a text not delivered this long after sending has failed (60).
    :param alert_days: span of an active alert's freshness; it never drops out (30).
    :param max_reasons: reasons returned (5).
    :param max_items: items listed in one reason's evidence (5).
    :param weights: base weights (:class:`ReasonWeights`).
    """

    cancel_days: int = Field(14, ge=1)
    cancel_category: str = "cancel_request"
    cancel_ivr_reasons: tuple[str, ...] = ("cancel",)
    open_case_days: int = Field(30, ge=1)
    declined_days: int = Field(7, ge=1)
    declined_ivr_reasons: tuple[str, ...] = ("payment_declined",)
    refund_days: int = Field(14, ge=1)
    campaign_days: int = Field(14, ge=1)
    basket_days: int = Field(3, ge=1)
    bounce_days: int = Field(30, ge=1)
    sms_failed_days: int = Field(30, ge=1)
    sms_grace_minutes: int = Field(60, ge=0)
    alert_days: int = Field(30, ge=1)
    max_reasons: int = Field(5, ge=1)
    max_items: int = Field(5, ge=1)
    weights: ReasonWeights = ReasonWeights()


# -- facts ----------------------------------------------------------------------------


class CaseFact(NamedTuple):
    """A case: its first and latest action by ``(ms, event_id)``, category of the latest."""

    first_ms: int
    first_event_id: str
    last_ms: int
    last_event_id: str
    action: str
    category: str


class RefundFact(NamedTuple):
    ms: int
    event_id: str
    amount_minor: int
    currency: str
    transaction_id: str


class IvrFact(NamedTuple):
    """What the caller chose in the IVR on one call."""

    ms: int
    event_id: str
    reason: str


class CampaignFact(NamedTuple):
    """When and how a campaign first reached the customer."""

    ms: int
    event_id: str
    channel: str


class BasketFact(NamedTuple):
    ms: int
    event_id: str


class BounceFact(NamedTuple):
    ms: int
    event_id: str
    campaign_id: str  # "" when the e-mail was not a campaign's


class SmsFact(NamedTuple):
    """One text: its first send and the first sign it arrived (delivered, replied, opt-out)."""

    sent_ms: int | None
    sent_event_id: str | None
    reached_ms: int | None
    reached_event_id: str | None


@dataclass(slots=True)
class ReasonFacts:
    """The facts of one customer that call reasons need. Mutable; only :func:`evolve` and :func:`merge_facts` write.

    Equality is by content (dicts compare regardless of insertion order).
    """

    cases: dict[str, CaseFact] = field(default_factory=dict)
    refunds: dict[str, RefundFact] = field(default_factory=dict)
    ivr: dict[str, IvrFact] = field(default_factory=dict)
    campaigns: dict[str, CampaignFact] = field(default_factory=dict)
    baskets: dict[str, BasketFact] = field(default_factory=dict)
    bounces: dict[str, BounceFact] = field(default_factory=dict)
    sms: dict[str, SmsFact] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """JSON values: per kind, ``key -> list of the fact's fields``, keys sorted."""
        return {name: {k: list(v) for k, v in sorted(getattr(self, name).items())} for name in _KINDS}

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> ReasonFacts:
        """The inverse of :meth:`to_json`; kinds missing from ``doc`` are empty."""
        facts = cls()
        for name, (fact_type, _, _) in _KINDS.items():
            target: dict[str, Any] = getattr(facts, name)
            for key, values in doc.get(name, {}).items():
                target[key] = fact_type(*values)
        return facts


def _case_merge(a: CaseFact, b: CaseFact) -> CaseFact:
    first = min((a.first_ms, a.first_event_id), (b.first_ms, b.first_event_id))
    last = max((a.last_ms, a.last_event_id, a.action, a.category), (b.last_ms, b.last_event_id, b.action, b.category))
    return CaseFact(first[0], first[1], last[0], last[1], last[2], last[3])


_Pair = tuple[int | None, str | None]


def _earliest(a: _Pair, b: _Pair) -> _Pair:
    # None (not seen yet) loses to any time; two times compare as (ms, event_id).
    if a[0] is None or b[0] is None:
        return b if a[0] is None else a
    return a if (a[0], a[1] or "") <= (b[0], b[1] or "") else b


def _sms_merge(a: SmsFact, b: SmsFact) -> SmsFact:
    return SmsFact(*_earliest((a.sent_ms, a.sent_event_id), (b.sent_ms, b.sent_event_id)),
                   *_earliest((a.reached_ms, a.reached_event_id), (b.reached_ms, b.reached_event_id)))


def _sms_newest(f: SmsFact) -> int:
    return max(ms for ms in (f.sent_ms, f.reached_ms) if ms is not None)


# kind -> (fact type, combine two values of one key, newest time of a value: what eviction keeps)
_KINDS: dict[str, tuple[Callable[..., Any], Callable[[Any, Any], Any], Callable[[Any], int]]] = {
    "cases": (CaseFact, _case_merge, lambda f: f.last_ms),
    "refunds": (RefundFact, max, lambda f: f.ms),
    "ivr": (IvrFact, max, lambda f: f.ms),
    "campaigns": (CampaignFact, min, lambda f: f.ms),  # the first time it reached them
    "baskets": (BasketFact, max, lambda f: f.ms),
    "bounces": (BounceFact, max, lambda f: f.ms),
    "sms": (SmsFact, _sms_merge, _sms_newest),
}


def _put(facts: ReasonFacts, kind: str, key: str, value: Any) -> None:
    target: dict[str, Any] = getattr(facts, kind)
    _, combine, newest = _KINDS[kind]
    old = target.get(key)
    target[key] = value if old is None else combine(old, value)
    limit = CASES_KEPT if kind == "cases" else KEPT
    if len(target) > limit:
        # Evict the oldest by (newest time, key): a total order, so the kept set is the top-k of the union.
        del target[min(target, key=lambda k: (newest(target[k]), k))]


_REACHED_EMAIL = frozenset({"delivered", "opened", "clicked", "replied"})
_REACHED_SMS = frozenset({"delivered", "replied", "opt_out"})


def evolve(facts: ReasonFacts, event: Event, ms: int | None = None) -> bool:
    """Fold one validated event into ``facts`` in place (idempotent, order-insensitive).

    :param facts: the customer's reason facts.
    :param event: a validated contract event (any type; irrelevant ones are ignored).
    :param ms: ``event.occurred_at`` in epoch milliseconds, if the caller has it.
    :returns: whether the event is one the reasons use.
    """
    if ms is None:
        ms = epoch_ms(event.occurred_at)
    eid = event.event_id
    match event:
        case CaseEvent(payload=p):
            _put(facts, "cases", p.case_id, CaseFact(ms, eid, ms, eid, p.action, p.category))
        case RefundEvent(payload=p):
            _put(facts, "refunds", p.refund_id, RefundFact(ms, eid, p.amount_minor, p.currency, p.transaction_id))
        case CallEvent(payload=p) if p.ivr_reason is not None:
            _put(facts, "ivr", p.call_id, IvrFact(ms, eid, p.ivr_reason))
        case CampaignEvent(payload=p) if p.action == "invited":
            _put(facts, "campaigns", p.campaign_id, CampaignFact(ms, eid, event.channel))
        case WebEvent(payload=p) if p.action == "basket_abandon":
            _put(facts, "baskets", p.session_id, BasketFact(ms, eid))
        case EmailEvent(payload=p):
            if p.action == "bounced":
                _put(facts, "bounces", p.message_id, BounceFact(ms, eid, p.campaign_id or ""))
            elif p.action in _REACHED_EMAIL and p.campaign_id is not None:
                _put(facts, "campaigns", p.campaign_id, CampaignFact(ms, eid, "email"))
            else:
                return False
        case SmsEvent(payload=p):
            if p.action == "sent":
                _put(facts, "sms", p.message_id, SmsFact(ms, eid, None, None))
            else:  # every other action is a sign the text arrived
                _put(facts, "sms", p.message_id, SmsFact(None, None, ms, eid))
                if p.action in _REACHED_SMS and p.campaign_id is not None:
                    _put(facts, "campaigns", p.campaign_id, CampaignFact(ms, eid, "sms"))
        case _:
            return False
    return True


def merge_facts(into: ReasonFacts, other: ReasonFacts) -> None:
    """Fold ``other`` into ``into`` in place (an identity merge): commutative, associative, idempotent."""
    for kind in _KINDS:
        for key, value in getattr(other, kind).items():
            _put(into, kind, key, value)


# -- inputs held elsewhere --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OpenCase:
    """An open case as the caller's read model holds it (overrides the cases in the facts).

    :param opened_ms: when it was opened (its age is counted from here).
    :param event_id: the event that opened it (evidence).
    """

    case_id: str
    category: str
    opened_ms: int
    event_id: str


# -- reasons --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Item:
    """One counted fact: its score, and what the agent is shown if it is the reason's best."""

    milli: int  # score in thousandths of a point, exact
    ms: int
    key: str
    text: str
    opening_line: str
    evidence: dict[str, Any]


def _milli(weight: int, age_ms: int, span_days: int) -> int:
    span = span_days * DAY_MS
    # weight * (1 - min(age, span) / (2 span)), in integers: exact, the same everywhere.
    return weight * 1000 * (2 * span - min(age_ms, span)) // (2 * span)


def _days(age_ms: int) -> int:
    return age_ms // DAY_MS


def _ago(age_ms: int) -> str:
    d = _days(age_ms)
    return "earlier today" if d == 0 else "yesterday" if d == 1 else f"{d} days ago"


def _ago_text(age_ms: int) -> str:
    d = _days(age_ms)
    return "today" if d == 0 else "yesterday" if d == 1 else f"{d} days ago"


def _money(amount_minor: int, currency: str) -> str:
    # Integer arithmetic: minor units of a large amount do not survive a float.
    units, cents = divmod(amount_minor, 100)
    return f"{units:,}.{cents:02d} {currency}"


_BY = {"email": "by e-mail", "sms": "by text message", "phone": "by phone", "branch": "in branch", "web": "online"}
_CASE_WORDS = {"complaint": "complaint", "fraud": "fraud report", "query": "query"}


def _case_words(category: str) -> str:
    return _CASE_WORDS.get(category, f"{category.replace('_', ' ')} case")


def _within(ms: int, now_ms: int, days: int) -> bool:
    return ms <= now_ms and now_ms - ms < days * DAY_MS


def _open_cases(facts: ReasonFacts, now_ms: int) -> list[OpenCase]:
    return [
        OpenCase(case_id, f.category, f.first_ms, f.first_event_id)
        for case_id, f in facts.cases.items()
        if f.action != "closed" and f.first_ms <= now_ms
    ]


def _case_items(opened: Iterable[OpenCase], now_ms: int, config: ReasonsConfig) -> dict[str, list[_Item]]:
    w = config.weights
    out: dict[str, list[_Item]] = {"open_case": [], "cancel_request": []}
    for c in opened:
        if c.opened_ms > now_ms:
            continue
        age = now_ms - c.opened_ms
        evidence = {
            "case_id": c.case_id,
            "category": c.category,
            "opened_at": iso_ms(c.opened_ms),
            "age_days": _days(age),
            "event_ids": [c.event_id],
        }
        if c.category == config.cancel_category:
            out["cancel_request"].append(_Item(
                _milli(w.cancel_request, age, config.cancel_days), c.opened_ms, c.case_id,
                f"Open cancel request {c.case_id}, opened {_ago_text(age)}",
                f"I can see you asked us to cancel {_ago(age)} — is that why you're calling?",
                {**evidence, "source": "case", "open": True},
            ))
            continue
        weight = w.case_categories.get(c.category, w.open_case)
        out["open_case"].append(_Item(
            _milli(weight, age, config.open_case_days), c.opened_ms, c.case_id,
            f"Open {_case_words(c.category)} {c.case_id}, opened {_ago_text(age)}",
            f"I can see you have an open {_case_words(c.category)} from {_ago(age)} — is that why you're calling?",
            evidence,
        ))
    return out


def _closed_cancel_items(facts: ReasonFacts, now_ms: int, config: ReasonsConfig) -> list[_Item]:
    items = []
    for case_id, f in facts.cases.items():
        if f.category != config.cancel_category or f.action != "closed":
            continue
        if not _within(f.last_ms, now_ms, config.cancel_days):
            continue
        age = now_ms - f.last_ms
        items.append(_Item(
            _milli(config.weights.cancel_request, age, config.cancel_days), f.last_ms, case_id,
            f"Cancel request {case_id} closed {_ago_text(age)}",
            f"I can see your cancel request was dealt with {_ago(age)} — is that why you're calling?",
            {"case_id": case_id, "category": f.category, "closed_at": iso_ms(f.last_ms), "age_days": _days(age),
             "event_ids": [f.last_event_id], "source": "case", "open": False},
        ))
    return items


def _ivr_items(facts: ReasonFacts, now_ms: int, config: ReasonsConfig) -> dict[str, list[_Item]]:
    w = config.weights
    out: dict[str, list[_Item]] = {"payment_declined": [], "cancel_request": []}
    for call_id, f in facts.ivr.items():
        age = now_ms - f.ms
        evidence = {"call_id": call_id, "ivr_reason": f.reason, "at": iso_ms(f.ms), "age_days": _days(age),
                    "event_ids": [f.event_id]}
        if f.reason in config.declined_ivr_reasons and _within(f.ms, now_ms, config.declined_days):
            out["payment_declined"].append(_Item(
                _milli(w.payment_declined, age, config.declined_days), f.ms, call_id,
                f"Chose '{f.reason.replace('_', ' ')}' in the phone menu {_ago_text(age)} (call {call_id})",
                f"I can see you had trouble with a payment {_ago(age)} — shall we look at that first?",
                evidence,
            ))
        if f.reason in config.cancel_ivr_reasons and _within(f.ms, now_ms, config.cancel_days):
            out["cancel_request"].append(_Item(
                _milli(w.cancel_request, age, config.cancel_days), f.ms, call_id,
                f"Chose '{f.reason.replace('_', ' ')}' in the phone menu {_ago_text(age)} (call {call_id})",
                f"I can see you asked us to cancel {_ago(age)} — is that why you're calling?",
                {**evidence, "source": "ivr"},
            ))
    return out


def _refund_items(facts: ReasonFacts, now_ms: int, config: ReasonsConfig) -> list[_Item]:
    items = []
    for refund_id, f in facts.refunds.items():
        if not _within(f.ms, now_ms, config.refund_days):
            continue
        age = now_ms - f.ms
        amount = _money(f.amount_minor, f.currency)
        items.append(_Item(
            _milli(config.weights.refund_in_progress, age, config.refund_days), f.ms, refund_id,
            f"Refund {refund_id} of {amount} on transaction {f.transaction_id}, issued {_ago_text(age)}",
            f"I can see a refund of {amount} was issued {_ago(age)} — are you calling about that?",
            {"refund_id": refund_id, "transaction_id": f.transaction_id, "amount_minor": f.amount_minor,
             "currency": f.currency, "at": iso_ms(f.ms), "age_days": _days(age), "event_ids": [f.event_id]},
        ))
    return items


def _campaign_items(facts: ReasonFacts, now_ms: int, config: ReasonsConfig) -> list[_Item]:
    items = []
    for campaign_id, f in facts.campaigns.items():
        if not _within(f.ms, now_ms, config.campaign_days):
            continue
        age = now_ms - f.ms
        by = _BY.get(f.channel, f"by {f.channel}")
        items.append(_Item(
            _milli(config.weights.campaign_received, age, config.campaign_days), f.ms, campaign_id,
            f"Campaign {campaign_id} received {by} {_ago_text(age)}",
            f"I can see we sent you our offer {campaign_id} {by} {_ago(age)} — are you calling about that?",
            {"campaign_id": campaign_id, "channel": f.channel, "at": iso_ms(f.ms), "age_days": _days(age),
             "event_ids": [f.event_id]},
        ))
    return items


def _basket_items(facts: ReasonFacts, now_ms: int, config: ReasonsConfig) -> list[_Item]:
    items = []
    for session_id, f in facts.baskets.items():
        if not _within(f.ms, now_ms, config.basket_days):
            continue
        age = now_ms - f.ms
        items.append(_Item(
            _milli(config.weights.basket_abandoned, age, config.basket_days), f.ms, session_id,
            f"Left a basket on the website {_ago_text(age)} (session {session_id})",
            f"I can see you were shopping on our website {_ago(age)} — can I help you finish your order?",
            {"session_id": session_id, "at": iso_ms(f.ms), "age_days": _days(age), "event_ids": [f.event_id]},
        ))
    return items


def _bounce_items(facts: ReasonFacts, now_ms: int, config: ReasonsConfig) -> list[_Item]:
    items = []
    for message_id, f in facts.bounces.items():
        if not _within(f.ms, now_ms, config.bounce_days):
            continue
        age = now_ms - f.ms
        evidence: dict[str, Any] = {"message_id": message_id, "at": iso_ms(f.ms), "age_days": _days(age),
                                    "event_ids": [f.event_id]}
        if f.campaign_id:
            evidence["campaign_id"] = f.campaign_id
        items.append(_Item(
            _milli(config.weights.email_bounced, age, config.bounce_days), f.ms, message_id,
            f"E-mail {message_id} bounced {_ago_text(age)}",
            f"Our e-mail to you {_ago(age)} bounced — could I check your e-mail address?",
            evidence,
        ))
    return items


def _sms_items(facts: ReasonFacts, now_ms: int, config: ReasonsConfig) -> list[_Item]:
    items = []
    grace = config.sms_grace_minutes * _MINUTE_MS
    for message_id, f in facts.sms.items():
        if f.sent_ms is None or f.sent_event_id is None or not _within(f.sent_ms, now_ms, config.sms_failed_days):
            continue
        if now_ms - f.sent_ms < grace or (f.reached_ms is not None and f.reached_ms <= now_ms):
            continue  # still on its way, or it arrived
        age = now_ms - f.sent_ms
        items.append(_Item(
            _milli(config.weights.sms_failed, age, config.sms_failed_days), f.sent_ms, message_id,
            f"Text message {message_id} sent {_ago_text(age)} was not delivered",
            f"Our text message {_ago(age)} didn't reach you — could I check your mobile number?",
            {"message_id": message_id, "sent_at": iso_ms(f.sent_ms), "age_days": _days(age),
             "event_ids": [f.sent_event_id]},
        ))
    return items


def _alert_items(
    alerts: Iterable[Mapping[str, Any] | Alert], now_ms: int, config: ReasonsConfig
) -> dict[str, list[_Item]]:
    w = config.weights
    out: dict[str, list[_Item]] = {"churn_alert": [], "dormancy_alert": []}
    for alert in alerts:
        doc: Mapping[str, Any] = alert.to_json() if isinstance(alert, Alert) else alert
        kind, severity = doc.get("kind"), doc.get("severity")
        if kind not in ("churn", "dormancy") or doc.get("state") == "resolved":
            continue
        since_ms = epoch_ms(datetime.fromisoformat(doc["since"]))
        if since_ms > now_ms:
            continue
        age = now_ms - since_ms
        high = severity == "high"
        reasons = list(doc.get("reasons", ()))
        evidence = {
            "alert_id": doc.get("alert_id"),
            "severity": severity,
            "since": iso_ms(since_ms),
            "age_days": _days(age),
            "reason_codes": [r.get("code") for r in reasons],
        }
        if kind == "churn":
            why = "; ".join(str(r.get("text")) for r in reasons if r.get("code") != "score")
            out["churn_alert"].append(_Item(
                _milli(w.churn_alert_high if high else w.churn_alert_medium, age, config.alert_days),
                since_ms, str(doc.get("alert_id", "")),
                f"Churn risk ({severity}) since {_ago_text(age)}" + (f": {why}" if why else ""),
                "Thank you for calling — before anything else, is there anything we could be doing better for you?",
                evidence,
            ))
        else:
            out["dormancy_alert"].append(_Item(
                _milli(w.dormancy_alert_high if high else w.dormancy_alert_medium, age, config.alert_days),
                since_ms, str(doc.get("alert_id", "")),
                f"Dormant ({severity}) since {_ago_text(age)}",
                "It's good to hear from you again — how can I help today?",
                evidence,
            ))
    return out


def _best_first(item: _Item) -> tuple[int, int, str]:
    return (-item.milli, -item.ms, item.key)


_DEFAULT_CONFIG = ReasonsConfig()  # built once: a model's defaults are deep-copied per instance


def likely_reasons(
    facts: ReasonFacts,
    open_cases: Iterable[OpenCase] | None,
    active_alerts: Iterable[Mapping[str, Any] | Alert],
    now_ms: int,
    config: ReasonsConfig | None = None,
) -> list[dict[str, Any]]:
    """The customer's likely call reasons as of ``now_ms``, best first (see the module docstring).

    :param facts: the customer's reason facts.
    :param open_cases: the open cases from the read model; None derives them
        from ``facts.cases``. Closed cancel requests always come from the facts.
    :param active_alerts: active alerts, each an ``Alert`` or its
        ``Alert.to_json()`` dict; resolved ones are skipped.
    :param now_ms: the instant judged for (epoch ms; the call's time).
    :param config: windows and weights (defaults: :class:`ReasonsConfig`).
    :returns: up to ``max_reasons`` dicts ``{"rank", "code", "score", "text",
        "opening_line", "evidence"}``; ``score`` is in points (weight at age 0),
        ``evidence`` holds the best item's fields, ``count`` and ``items``
        (up to ``max_items``, each with event ids and age in days).
    """
    config = config or _DEFAULT_CONFIG
    cases = _case_items(_open_cases(facts, now_ms) if open_cases is None else open_cases, now_ms, config)
    ivr = _ivr_items(facts, now_ms, config)
    alerts = _alert_items(active_alerts, now_ms, config)
    by_code: dict[str, list[_Item]] = {
        "cancel_request": cases["cancel_request"] + _closed_cancel_items(facts, now_ms, config) + ivr["cancel_request"],
        "open_case": cases["open_case"],
        "payment_declined": ivr["payment_declined"],
        "refund_in_progress": _refund_items(facts, now_ms, config),
        "campaign_received": _campaign_items(facts, now_ms, config),
        "basket_abandoned": _basket_items(facts, now_ms, config),
        "email_bounced": _bounce_items(facts, now_ms, config),
        "sms_failed": _sms_items(facts, now_ms, config),
        **alerts,
    }
    ranked = []
    for code, items in by_code.items():
        if not items:
            continue
        items.sort(key=_best_first)
        ranked.append((code, items))
    ranked.sort(key=lambda pair: (-pair[1][0].milli, pair[0]))
    out = []
    for rank, (code, items) in enumerate(ranked[: config.max_reasons], start=1):
        best = items[0]
        text = best.text
        if len(items) > 1:
            text += f" (+{len(items) - 1} more)"
        evidence = {**best.evidence, "count": len(items), "items": [i.evidence for i in items[: config.max_items]]}
        if code == "refund_in_progress":
            evidence["total_minor_by_currency"] = _totals(items)
        out.append({
            "rank": rank,
            "code": code,
            "score": best.milli / 1000,
            "text": text,
            "opening_line": best.opening_line,
            "evidence": evidence,
        })
    return out


def _totals(items: Sequence[_Item]) -> dict[str, int]:
    totals: dict[str, int] = {}
    for item in items:
        cur = item.evidence["currency"]
        totals[cur] = totals.get(cur, 0) + item.evidence["amount_minor"]
    return dict(sorted(totals.items()))
