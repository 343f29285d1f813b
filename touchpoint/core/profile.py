"""The unified customer view: facts folded from events, aggregates derived at read time.

Split. :func:`evolve` folds one event into a :class:`CustomerView` **in
place** and :func:`merge_views` folds one view into another in place (an
identity merge); :func:`render` derives the JSON card as of an instant. The
view is mutable on purpose (a fold of a million events cannot copy it per
event); only these functions write to it.

Order-insensitive by construction. The streaming version may see a merged
view arrive after later events of the survivor, events of one customer on two
partitions, redeliveries. So the view keeps *facts keyed by id* and every
combination is commutative and associative:

* purchases ``transaction_id -> (time, total)``, refunds ``refund_id ->
  (time, amount, transaction_id)``, case actions ``case_id -> latest``,
  consent ``(purpose, channel) -> latest``, where "latest" is the maximum of
  ``(occurred_at, event_id)`` (the event id breaks ties, so no arrival order
  leaks in);
* last contact per channel is a maximum; identifiers and aliases are sets;
* the timeline is the top :data:`TIMELINE` events by ``(occurred_at,
  event_id)``, counts per channel and per type are sums;
* RFM and the value segment are computed by :func:`render` from the
  purchases and refunds, for the ``as_of`` it is given;
* the loyalty ledger (:mod:`touchpoint.core.loyalty`) is entries keyed by
  id, merged as a union; the Folder scores purchases and refunds into it
  (scoring needs the rules and the log order, the view only holds it);
* call-reason facts (:mod:`touchpoint.core.reasons`) are bounded facts keyed by id.

Duplicates. At-least-once delivery redelivers an event close to the first
copy, so a view remembers the ids of its newest :data:`DEDUPE_WINDOW` events
(by ``(occurred_at, event_id)``, so the window too is order-insensitive) and
ignores an event it remembers. Keyed facts are idempotent anyway; only the
counts could be inflated, by a copy of an event older than the customer's 512
newest, which redelivery does not produce.

Person. A ``profile`` event sets any of ``name``, ``language`` and
``preferred_channel`` (:data:`PERSON_FIELDS`); each field keeps its latest
value. The name stays as the event carries it: sealed on the topics
(:func:`touchpoint.core.pseudonym.seal_text`), opened by whoever reads the
card with the data key; the timeline says only that a name was given.

Consent. A ``consent`` event sets ``(purpose, channel)``; an SMS ``opt_out``
withdraws marketing consent on ``sms`` and an e-mail ``unsubscribed`` on
``email``, as of that event.

Value segment (:class:`SegmentConfig`): *current value* is high when the
net spend over the window (purchases minus their refunds) reaches
``high_current_minor``; *potential value* is high when the customer buys
often (``frequency >= high_potential_frequency`` in the window) and recently
(``recency_days <= high_potential_recency_days``). ``platinum`` = high current
and high potential, ``gold`` = high current, low potential (spent a lot but
is slowing down), ``iron`` = low current, high potential (frequent small
baskets: the ones to grow), ``lead`` = low and low.

Left out for now: pruning purchases older than the window (the view keeps
them; a fold re-derives everything, a long-lived worker view should prune
before the window once ``as_of`` only moves forward).
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from touchpoint.contract.models import Event, RefundPayload
from touchpoint.core.alerts import (
    Alert,
    AlertInputs,
    AlertState,
    Case,
    Consent,
    Interaction,
    Purchase,
    Refund,
)
from touchpoint.core.instants import epoch_ms, iso_ms
from touchpoint.core.loyalty import LedgerEntry, LoyaltyRules, LoyaltyState, default_rules, summary
from touchpoint.core.loyalty import merge as merge_loyalty
from touchpoint.core.normalise import Identifier
from touchpoint.core.pickled import restore_slots
from touchpoint.core.reasons import ReasonFacts, likely_reasons, merge_facts
from touchpoint.core.reasons import evolve as evolve_reasons

__all__ = [
    "CARD_ENTRIES",
    "DEDUPE_WINDOW",
    "TIMELINE",
    "CustomerView",
    "SegmentConfig",
    "evolve",
    "merge_views",
    "note_identifiers",
    "render",
]

TIMELINE = 50
"""Interactions kept on the timeline (the newest by ``(occurred_at, event_id)``)."""
DEDUPE_WINDOW = 512
"""Newest event ids a view remembers to ignore redeliveries."""

_DAY_MS = 86_400_000


@dataclass(frozen=True)
class SegmentConfig:
    """RFM window and value-segment thresholds (see the module docstring).

    :param window_days: trailing window of frequency and monetary (365).
    :param high_current_minor: net spend in the window from which current
        value is high (100000 minor units: 1,000.00).
    :param high_potential_frequency: purchases in the window from which
        potential value may be high (12: monthly or more often).
    :param high_potential_recency_days: and the last purchase at most this
        many days before ``as_of`` (60).
    :param high_potential_clv_minor: where a value model scores the customer
        (``touchpoint fold --value-model``), potential value is high from this
        CLV instead (20000 minor units: 200.00 of margin over the model's
        horizon), and frequency and recency no longer decide it.
    """

    window_days: int = 365
    high_current_minor: int = 100_000
    high_potential_frequency: int = 12
    high_potential_recency_days: int = 60
    high_potential_clv_minor: int = 20_000

    def __post_init__(self) -> None:
        for name in ("window_days", "high_current_minor", "high_potential_frequency", "high_potential_recency_days",
                     "high_potential_clv_minor"):
            value = getattr(self, name)
            if type(value) is not int or value < 0:
                raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
        if self.window_days < 1:
            raise ValueError("window_days must be at least 1")


class CustomerView:
    """Everything known about one customer, as facts keyed by id. Mutable."""

    __slots__ = (
        "alerts",
        "aliases",
        "by_channel",
        "by_type",
        "cases",
        "consent",
        "customer_id",
        "held",
        "identifiers",
        "issued_to",
        "keys",
        "last_contact",
        "loyalty",
        "person",
        "pseudo",
        "purchases",
        "reasons",
        "refunds",
        "seen",
        "seen_heap",
        "timeline",
    )

    def __init__(self, customer_id: str, pseudo: bool = False) -> None:
        self.customer_id = customer_id
        self.pseudo = pseudo  # a shared identifier's pseudo-customer, not a person
        self.aliases: dict[str, None] = {}
        self.identifiers: dict[str, dict[str, None]] = {}
        # kind -> keyed hashes of the same identifiers: how a lookup by phone or card finds the card
        self.keys: dict[str, dict[str, None]] = {}
        # event_id -> (ms, channel, type, customer-initiated?): the newest events, for dedupe and dormancy
        self.seen: dict[str, tuple[int, str, str, bool]] = {}
        self.seen_heap: list[tuple[int, str]] = []  # (ms, event_id), min first
        # (ms, event_id, type, channel, detail), min first; detail: the payload's facts an agent reads
        # (timeline_detail), a tuple (entries pickled before it have none)
        self.timeline: list[tuple[Any, ...]] = []
        self.by_channel: dict[str, int] = {}
        self.by_type: dict[str, int] = {}
        self.last_contact: dict[str, int] = {}
        self.purchases: dict[str, tuple[int, int]] = {}
        self.refunds: dict[str, tuple[int, int, str]] = {}
        self.cases: dict[str, tuple[int, str, str, str]] = {}  # case_id -> (ms, event_id, action, category)
        self.consent: dict[tuple[str, str], tuple[int, str, bool]] = {}
        self.person: dict[str, tuple[int, str, str]] = {}  # profile field -> (ms, event_id, latest value)
        self.reasons = ReasonFacts()  # what likely call reasons are judged from
        self.loyalty = LoyaltyState()  # ledger, purchase lots, campaign invitations (the Folder scores)
        # entry id -> the customer it was issued to, for the entries a merge brought (the others were issued
        # to this customer): a view folded anew withdraws each entry from the customer that holds it
        self.issued_to: dict[str, str] = {}
        # kind -> (episode state, its latest transition); the Folder decides them on ticks
        self.alerts: dict[str, tuple[AlertState, Alert | None]] = {}
        # refund_id -> (ms, event_id, event, identifiers attributed, deadline ms, source): refunds of a
        # purchase the customer does not hold yet (the Folder folds them when it arrives)
        self.held: dict[str, tuple[int, str, Event, tuple[Identifier, ...], int, int]] = {}

    def __setstate__(self, state: Any) -> None:
        # a view pickled before held refunds or profile events (a hand-in on the log)
        restore_slots(self, state, {"held": dict, "person": dict, "issued_to": dict})


def _latest(facts: dict[Any, Any], key: Any, value: tuple[Any, ...]) -> None:
    old = facts.get(key)
    if old is None or value > old:
        facts[key] = value


def note_identifiers(view: CustomerView, identifiers: Iterable[Identifier]) -> None:
    """Add identifiers identity attributed to the customer (their display and key), nothing else."""
    idents, keys = view.identifiers, view.keys
    for ident in identifiers:
        displays = idents.get(ident.kind)
        if displays is None:
            idents[ident.kind] = {ident.display: None}
            keys[ident.kind] = {ident.key: None}
        else:
            displays[ident.display] = None
            keys[ident.kind][ident.key] = None


def evolve(
    view: CustomerView, event: Event, identifiers: Iterable[Identifier] = (), *, ms: int | None = None
) -> bool:
    """Fold one event into ``view`` in place.

    :param view: the customer's view.
    :param event: a validated event attributed to this customer.
    :param identifiers: its normalised identifiers attributed to the customer
        (identity leaves refused ones out).
    :param ms: ``event.occurred_at`` in epoch milliseconds, if the caller has it.
    :returns: False when the event was a duplicate and changed nothing.
    """
    event_id = event.event_id
    seen = view.seen
    if event_id in seen:
        return False
    if ms is None:
        ms = epoch_ms(event.occurred_at)
    channel = event.channel
    typ = event.type
    payload: Any = event.payload
    # _customer_initiated, inline: once per event.
    if typ == "email" or typ == "sms":
        active = payload.action not in _OUTBOUND
    elif typ == "call":
        active = payload.direction == "inbound"
    else:
        active = typ != "campaign"
    seen[event_id] = (ms, channel, typ, active)
    heap = view.seen_heap
    if len(heap) < DEDUPE_WINDOW:
        heapq.heappush(heap, (ms, event_id))
    else:
        del seen[heapq.heappushpop(heap, (ms, event_id))[1]]
    timeline = view.timeline
    if len(timeline) < TIMELINE:
        heapq.heappush(timeline, (ms, event_id, typ, channel, timeline_detail(typ, payload)))
    elif (ms, event_id) > timeline[0][:2]:
        heapq.heapreplace(timeline, (ms, event_id, typ, channel, timeline_detail(typ, payload)))
    by_channel = view.by_channel
    by_channel[channel] = by_channel.get(channel, 0) + 1
    by_type = view.by_type
    by_type[typ] = by_type.get(typ, 0) + 1
    last_contact = view.last_contact
    last = last_contact.get(channel)
    if last is None or ms > last:
        last_contact[channel] = ms
    idents, keys = view.identifiers, view.keys  # as note_identifiers, inline: once per event
    for ident in identifiers:
        displays = idents.get(ident.kind)
        if displays is None:
            idents[ident.kind] = {ident.display: None}
            keys[ident.kind] = {ident.key: None}
        else:
            displays[ident.display] = None
            keys[ident.kind][ident.key] = None

    if typ == "purchase":
        _latest(view.purchases, payload.transaction_id, (ms, payload.total_minor))
    elif typ == "refund":
        _latest(view.refunds, payload.refund_id, (ms, payload.amount_minor, payload.transaction_id))
    elif typ == "case":
        _latest(view.cases, payload.case_id, (ms, event_id, payload.action, payload.category))
    elif typ == "consent":
        _latest(view.consent, (payload.purpose, payload.channel), (ms, event_id, payload.granted))
    elif typ == "profile":
        for name in PERSON_FIELDS:
            value = getattr(payload, name)
            if value is not None:
                _latest(view.person, name, (ms, event_id, value))
    elif typ == "sms" and payload.action == "opt_out":
        _latest(view.consent, ("marketing", "sms"), (ms, event_id, False))
    elif typ == "email" and payload.action == "unsubscribed":
        _latest(view.consent, ("marketing", "email"), (ms, event_id, False))
    if typ not in _NO_REASONS:
        evolve_reasons(view.reasons, event, ms)
    return True


_NO_REASONS = frozenset({"purchase", "branch_visit", "consent", "profile"})  # types reasons.evolve ignores

PERSON_FIELDS = ("language", "name", "preferred_channel")
"""What a ``profile`` event may set, as the card's ``person`` shows it (null until an event sets it)."""

# What the timeline keeps of each type's payload, in this order (rendered as a dict by these names).
DETAIL_FIELDS: dict[str, tuple[str, ...]] = {
    "purchase": ("total_minor", "currency", "categories", "transaction_id"),
    "refund": ("amount_minor", "currency", "transaction_id"),
    "call": ("direction", "phase", "ivr_reason", "duration_s", "outcome"),
    "web": ("action", "page"),
    "email": ("action", "campaign_id"),
    "sms": ("action", "campaign_id"),
    "case": ("action", "category", "severity", "subject"),
    "consent": ("purpose", "channel", "granted"),
    "campaign": ("action", "campaign_id", "multiplier"),
    "branch_visit": ("purpose", "branch_id"),
    "profile": ("language", "preferred_channel", "name_given"),  # the name itself only in the card's person
}


def timeline_detail(typ: str, payload: Any) -> tuple[Any, ...]:
    """The facts of an event's payload the timeline keeps (:data:`DETAIL_FIELDS`): a tuple, small in the state."""
    if typ == "purchase":
        categories = tuple(sorted({line.category for line in payload.lines}))
        return payload.total_minor, payload.currency, categories, payload.transaction_id
    if typ == "profile":
        return payload.language, payload.preferred_channel, payload.name is not None
    return tuple(getattr(payload, name) for name in DETAIL_FIELDS.get(typ, ()))


def _timeline_entry(entry: tuple[Any, ...], points: dict[str, list[LedgerEntry]]) -> dict[str, Any]:
    """A timeline entry as the card shows it; a purchase with the points it earned and why (its earn and
    adjustments, ``points`` by transaction id), a refund with those it reversed (by its event id)."""
    ms, event_id, typ, channel = entry[:4]
    shown: dict[str, Any] = {"channel": channel, "event_id": event_id, "occurred_at": iso_ms(ms), "type": typ}
    if len(entry) > 4:
        detail = {name: value for name, value in zip(DETAIL_FIELDS.get(typ, ()), entry[4], strict=False)
                  if value is not None}
        if "categories" in detail:
            detail["categories"] = list(detail["categories"])
        caused = points.get(detail["transaction_id"] if typ == "purchase" else event_id)
        if caused:
            detail["points"] = sum(e.points for e in caused)
            detail["points_why"] = [e.reason for e in sorted(caused, key=lambda e: (e.at_ms, e.id))]
        shown["detail"] = detail
    return shown


_OUTBOUND = frozenset({"sent", "delivered", "bounced", "failed"})


def _customer_initiated(event: Event) -> bool:
    """Whether the customer did something (dormancy counts these): not our campaigns and sends."""
    typ = event.type
    if typ == "campaign":
        return False
    if typ == "email" or typ == "sms":
        return event.payload.action not in _OUTBOUND  # type: ignore[union-attr]
    if typ == "call":
        return event.payload.direction == "inbound"  # type: ignore[union-attr]
    return True


def merge_views(survivor: CustomerView, merged: CustomerView) -> None:
    """Fold ``merged`` into ``survivor`` in place (an identity merge); nothing is lost.

    Commutative and associative up to ``customer_id`` (the survivor's is kept,
    the merged id and its aliases become aliases).
    """
    survivor.aliases[merged.customer_id] = None
    survivor.aliases.update(merged.aliases)
    for refund_id, held in merged.held.items():
        known = survivor.held.get(refund_id)
        if known is None or held[:2] < known[:2]:
            survivor.held[refund_id] = held
    survivor.aliases.pop(survivor.customer_id, None)
    for kind, displays in merged.identifiers.items():
        survivor.identifiers.setdefault(kind, {}).update(displays)
    for kind, keys in merged.keys.items():
        survivor.keys.setdefault(kind, {}).update(keys)

    # Events both views counted (a redelivery resolved differently) are counted once.
    overlap = survivor.seen.keys() & merged.seen.keys()
    for name in ("by_channel", "by_type"):
        into: dict[str, int] = getattr(survivor, name)
        for k, n in getattr(merged, name).items():
            into[k] = into.get(k, 0) + n
    for event_id in overlap:
        _, channel, typ, _ = merged.seen[event_id]
        survivor.by_channel[channel] -= 1
        survivor.by_type[typ] -= 1
    seen = {**merged.seen, **survivor.seen}
    top = heapq.nlargest(DEDUPE_WINDOW, ((v[0], k) for k, v in seen.items()))
    survivor.seen = {k: seen[k] for _, k in top}
    survivor.seen_heap = sorted(top)
    timeline = {t[1]: t for t in merged.timeline}
    timeline.update((t[1], t) for t in survivor.timeline)
    survivor.timeline = sorted(heapq.nlargest(TIMELINE, timeline.values()))

    for channel, ms in merged.last_contact.items():
        last = survivor.last_contact.get(channel)
        if last is None or ms > last:
            survivor.last_contact[channel] = ms
    for name in ("purchases", "refunds", "cases", "consent", "person"):
        into_facts = getattr(survivor, name)
        for key, value in getattr(merged, name).items():
            _latest(into_facts, key, value)
    merge_facts(survivor.reasons, merged.reasons)
    mine = survivor.loyalty.entries
    for entry_id in merged.loyalty.entries:
        if entry_id not in mine:
            survivor.issued_to[entry_id] = merged.issued_to.get(entry_id, merged.customer_id)
    merge_loyalty(survivor.loyalty, merged.loyalty)


def _rfm(view: CustomerView, as_of_ms: int, config: SegmentConfig) -> tuple[int | None, int, int]:
    start = as_of_ms - config.window_days * _DAY_MS
    last: int | None = None
    frequency = 0
    totals: dict[str, int] = {}
    for tid, (ms, total) in view.purchases.items():
        if ms > as_of_ms:
            continue
        if last is None or ms > last:
            last = ms
        if ms > start:
            frequency += 1
            totals[tid] = total
    refunded: dict[str, int] = {}
    for ms, amount, tid in view.refunds.values():
        if tid in totals and ms <= as_of_ms:
            refunded[tid] = refunded.get(tid, 0) + amount
    monetary = sum(total - min(total, refunded.get(tid, 0)) for tid, total in totals.items())
    recency = None if last is None else (as_of_ms - last) // _DAY_MS
    return recency, frequency, monetary


def alert_inputs(view: CustomerView, now_ms: int, config: SegmentConfig) -> AlertInputs:
    """What the alert conditions need of this customer, as of ``now_ms``."""
    return AlertInputs(
        customer_id=view.customer_id,
        segment=segment_of(*_rfm(view, now_ms, config), config),
        interactions=tuple(sorted(Interaction(ms, event_id, channel)
                                  for event_id, (ms, channel, _, active) in view.seen.items() if active)),
        purchases=tuple(Purchase(ms, total, tid) for tid, (ms, total) in view.purchases.items()),
        refunds=tuple(Refund(ms, amount, rid, tid) for rid, (ms, amount, tid) in view.refunds.items()),
        cases=tuple(Case(cid, category, action, ms, event_id)
                    for cid, (ms, event_id, action, category) in view.cases.items()),
        consent=tuple(Consent(purpose, channel, granted, ms, event_id)
                      for (purpose, channel), (ms, event_id, granted) in view.consent.items()),
    )


def alert_context(view: CustomerView, now_ms: int, config: SegmentConfig) -> dict[str, Any]:
    """What an alert carries so a subscriber needs no second lookup: segment, value, contactability."""
    recency, frequency, monetary = _rfm(view, now_ms, config)
    return {
        "segment": segment_of(recency, frequency, monetary, config),
        "value_minor": monetary,
        "contactable": contactable(view),
    }


def contactable(view: CustomerView) -> dict[str, bool]:
    """Marketing consent per channel as the latest consent, opt-out or unsubscribe left it, whichever
    channel it arrived through (a call-centre opt-out of e-mail is honoured for e-mail)."""
    return {channel: granted for (purpose, channel), (_, _, granted) in sorted(view.consent.items())
            if purpose == "marketing"}


def segment_of(recency: int | None, frequency: int, monetary: int, config: SegmentConfig,
               clv: float | None = None) -> str:
    """``platinum`` / ``gold`` / ``iron`` / ``lead`` from RFM (see the module docstring); given a customer's
    CLV (in the currency's major unit, from a value model), potential value is that CLV's."""
    current = monetary >= config.high_current_minor
    if clv is not None:
        potential = round(clv * 100) >= config.high_potential_clv_minor
    else:
        potential = (
            recency is not None
            and frequency >= config.high_potential_frequency
            and recency <= config.high_potential_recency_days
        )
    if current:
        return "platinum" if potential else "gold"
    return "iron" if potential else "lead"


CARD_ENTRIES = 20
"""Ledger entries on a customer card (the newest); the whole ledger is in PostgreSQL."""


def _held_refund(refund_id: str, ms: int, event_id: str, event: Event) -> dict[str, Any]:
    """A refund held for its purchase, as the card lists it."""
    payload = cast(RefundPayload, event.payload)
    return {"amount_minor": payload.amount_minor, "at": iso_ms(ms), "currency": payload.currency,
            "event_id": event_id, "refund_id": refund_id, "transaction_id": payload.transaction_id}


def render(view: CustomerView, as_of: datetime, config: SegmentConfig | None = None,
           rules: LoyaltyRules | None = None, entries: int | None = CARD_ENTRIES) -> dict[str, Any]:
    """The customer card as JSON values (times ISO-8601 UTC with milliseconds and ``Z``).

    :param view: the customer's view.
    :param as_of: the instant RFM, the segment, the loyalty tier and due
        expiries are computed for.
    :param config: segment thresholds; defaults to :class:`SegmentConfig`.
    :param rules: loyalty rules (tiers); defaults to the shipped rules.
    :param entries: how many of the newest ledger entries the card lists (None: all).
    """
    config = config or SegmentConfig()
    as_of_ms = epoch_ms(as_of)
    alerts = [last.to_json() for _, (_, last) in sorted(view.alerts.items()) if last is not None]
    recency, frequency, monetary = _rfm(view, as_of_ms, config)
    consent: dict[str, dict[str, bool]] = {}
    for (purpose, channel), (_, _, granted) in sorted(view.consent.items()):
        consent.setdefault(purpose, {})[channel] = granted
    # The ledger entries of the timeline's purchases (earned and adjusted, by transaction) and refunds (reversed).
    shown_events = {entry[1] for entry in view.timeline}
    shown_purchases = {entry[4][3] for entry in view.timeline if entry[2] == "purchase" and len(entry) > 4}
    points: dict[str, list[LedgerEntry]] = {}
    for ledger in view.loyalty.entries.values():
        if ledger.kind == "reversal" and ledger.source_event_id in shown_events:
            points.setdefault(ledger.source_event_id, []).append(ledger)
        elif ledger.kind in ("earn", "adjustment") and ledger.transaction_id in shown_purchases:
            points.setdefault(ledger.transaction_id, []).append(ledger)
    # Keys in sorted order at every level, so the card reads the same however it is dumped.
    return {
        "alerts": alerts,
        "aliases": sorted(view.aliases),
        "consent": consent,
        "counts": {
            "by_channel": dict(sorted((k, n) for k, n in view.by_channel.items() if n)),
            "by_type": dict(sorted((k, n) for k, n in view.by_type.items() if n)),
            "total": sum(view.by_channel.values()),
        },
        "customer_id": view.customer_id,
        "held_refunds": [_held_refund(refund_id, *held[:3]) for refund_id, held in sorted(view.held.items())],
        "identifiers": {kind: sorted(displays) for kind, displays in sorted(view.identifiers.items())},
        "last_contact": {channel: iso_ms(ms) for channel, ms in sorted(view.last_contact.items())},
        "likely_reasons": likely_reasons(view.reasons, None, [a for a in alerts if a["state"] != "resolved"],
                                         as_of_ms),
        "loyalty": summary(view.loyalty, as_of_ms, rules or default_rules(),
                           len(view.loyalty.entries) + len(view.loyalty.lots) if entries is None else entries),
        "open_cases": sorted(cid for cid, (_, _, action, _) in view.cases.items() if action != "closed"),
        "person": {name: view.person[name][2] if name in view.person else None for name in PERSON_FIELDS},
        "pseudo": view.pseudo,
        "rfm": {"frequency": frequency, "monetary_minor": monetary, "recency_days": recency},
        "timeline": [_timeline_entry(entry, points) for entry in sorted(view.timeline)],
        "value_segment": segment_of(recency, frequency, monetary, config),
    }
