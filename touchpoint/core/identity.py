"""Identity resolution: which customer an event's identifiers belong to.

The event-sourcing split. :func:`resolve` is the *decide* step: pure, it reads
an :class:`IdentityState` and an event's normalised identifiers and returns a
:class:`Resolution` (the customer id and the decisions taken). :func:`apply`
is the *evolve* step: it folds one decision into the state **in place**. The
state is mutable on purpose: a fold of a million events cannot copy a map of
every identifier per event (that would be O(n²)); nothing but :func:`apply`
writes to it, and every decision is data (``to_json``) published on
``touchpoint.identity``, so the state can be rebuilt from the decisions or
from the log.

Rules (all derived from the log: no counters, no clocks, so a replay or a
redelivery decides the same)

* **Mint.** An event none of whose identifiers is known mints a customer
  ``"cus_" + sha256(key of its strongest identifier)[:16]`` and links the rest.
  The state remembers each customer's first event ``(time, event id)`` (and
  the mint order, which breaks ties for customers without one).
* **Event time.** An event earlier than the first event of the customer it
  resolves to makes it the customer's first: the customer takes the id that
  event's strongest identifier mints (a ``Minted`` and a ``Merged`` of the
  old id into it, or the old id merged back if it had that id once), so the
  ids are those an event-time-ordered log gives.
* **Link.** Every identifier on one event belongs to one customer: unknown
  identifiers are linked to the customer the event resolves to.
* **Merge.** When an event's identifiers are owned by two or more customers,
  they merge. The **survivor is the customer whose first event is earliest**; the
  others become aliases of it (path-compressed: an alias always points at the
  current survivor, also after merges of merges), so an old id still resolves.
* **Guardrails.** Per-kind limits per customer (:class:`IdentityConfig`).
  Identifiers are taken strongest first (``IDENTIFIER_KINDS``); the event is
  always attributed to the owner of its strongest identifier (or a new mint
  from it); a weaker identifier whose link or merge would push that customer
  past a limit is not linked and a :class:`LinkRefused` names the reason
  ("would give cus_x 2 customer_no (limit 1)"). So two people with different
  customer numbers never merge through a family e-mail or a shop's landline:
  the identifier stays with whoever had it first. A refusal is recorded once
  per (customer, key), not on every event that repeats it.
* **Shared identifiers** (``IdentityConfig.shared``, keys flagged by an
  operator) never link. An event that also carries unshared identifiers
  resolves through those and the shared one is refused ("marked shared"). An
  event carrying *only* shared identifiers is attributed to a pseudo-customer
  minted from its strongest shared key (``Minted(shared=True)``): the shop's
  landline becomes one "customer" that stands for the shop, never merged with
  anyone, so its calls are not lost and no person gets them.
* **Unmerge** = add the wrongly-joining key to ``shared`` and re-fold the log:
  the key then joins nothing and the customers it had merged stay apart.
* **Guardrails in event time.** Which customer keeps a contested identifier
  (a family e-mail between two customer numbers) depends on which came first.
  A caller that can read its log again (the fold's ``Folder``) resolves the
  events of such a component again in event-time order when a late event
  reaches it, and puts that component's state in place of the one arrival
  order built (:func:`replace_component`, a :class:`Refolded` decision).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, NamedTuple

from touchpoint.core.identifiers import IDENTIFIER_KINDS
from touchpoint.core.normalise import Identifier

__all__ = [
    "DEFAULT_LIMITS",
    "Decision",
    "IdentityConfig",
    "IdentityState",
    "LinkRefused",
    "Linked",
    "Merged",
    "Minted",
    "Refolded",
    "Resolution",
    "apply",
    "customer_id_for",
    "forget",
    "fresh_id",
    "note_first",
    "replace_component",
    "resolve",
]

DEFAULT_LIMITS: Mapping[str, int] = MappingProxyType(
    {"customer_no": 1, "card": 10, "email": 5, "phone": 5, "device": 20, "cookie": 200}
)
"""Default per-kind limit of identifiers one customer may hold."""

_NEVER = (1 << 62, "")  # the first event of a customer whose first event is not known (sorts last)


def note_first(state: IdentityState, customer_id: str, at: tuple[int, str]) -> None:
    """Record that ``customer_id`` (live) had an event at ``at`` = ``(ms, event id)``; keeps the earliest."""
    known = state.first.get(customer_id)
    if known is None or at < known:
        state.first[customer_id] = at


def customer_id_for(key: str) -> str:
    """The customer id minted from an identifier key: ``"cus_" + sha256(key)[:16]``."""
    return "cus_" + hashlib.sha256(key.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class IdentityConfig:
    """Guardrails of identity resolution.

    :param limits: kind -> most identifiers of that kind one customer may hold
        (at least 1); kinds not given keep :data:`DEFAULT_LIMITS`.
    :param priority: kinds strongest first (``IDENTIFIER_KINDS``).
    :param shared: identifier *keys* marked shared: they never link anyone.
    """

    limits: Mapping[str, int] = field(default_factory=lambda: DEFAULT_LIMITS)
    priority: tuple[str, ...] = IDENTIFIER_KINDS
    shared: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        merged = {**DEFAULT_LIMITS, **self.limits}
        for kind, limit in merged.items():
            if kind not in IDENTIFIER_KINDS:
                raise ValueError(f"unknown identifier kind {kind!r} in limits; known: {', '.join(IDENTIFIER_KINDS)}")
            if type(limit) is not int or limit < 1:
                raise ValueError(f"limit for {kind} must be an integer of at least 1, got {limit!r}")
        if sorted(self.priority) != sorted(IDENTIFIER_KINDS):
            raise ValueError(f"priority must order exactly the kinds {', '.join(IDENTIFIER_KINDS)}")
        object.__setattr__(self, "limits", MappingProxyType(merged))
        object.__setattr__(self, "shared", frozenset(self.shared))
        object.__setattr__(self, "rank", MappingProxyType({kind: i for i, kind in enumerate(self.priority)}))

    rank: Mapping[str, int] = field(init=False, repr=False, compare=False)
    """Kind -> position in ``priority`` (derived)."""


# -- decisions ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Minted:
    """A new customer id, minted from ``key`` (``shared``: a pseudo-customer of a shared key)."""

    event_id: str
    customer_id: str
    key: str
    kind: str
    shared: bool = False

    def to_json(self) -> dict[str, Any]:
        """The decision as a JSON object."""
        return {
            "decision": "minted",
            "event_id": self.event_id,
            "customer_id": self.customer_id,
            "key": self.key,
            "kind": self.kind,
            "shared": self.shared,
        }


@dataclass(frozen=True, slots=True)
class Linked:
    """``key`` now belongs to ``customer_id``."""

    event_id: str
    customer_id: str
    key: str
    kind: str

    def to_json(self) -> dict[str, Any]:
        """The decision as a JSON object."""
        return {
            "decision": "linked",
            "event_id": self.event_id,
            "customer_id": self.customer_id,
            "key": self.key,
            "kind": self.kind,
        }


@dataclass(frozen=True, slots=True)
class Merged:
    """``merged`` became an alias of ``survivor`` because the event carried ``via_key`` of it."""

    event_id: str
    survivor: str
    merged: str
    via_key: str
    reason: str

    def to_json(self) -> dict[str, Any]:
        """The decision as a JSON object."""
        return {
            "decision": "merged",
            "event_id": self.event_id,
            "survivor": self.survivor,
            "merged": self.merged,
            "via_key": self.via_key,
            "reason": self.reason,
        }


@dataclass(frozen=True, slots=True)
class LinkRefused:
    """``key`` was not linked to ``customer_id`` (``other_customer_id``: who holds it, if anyone)."""

    event_id: str
    customer_id: str
    key: str
    kind: str
    other_customer_id: str | None
    reason: str

    def to_json(self) -> dict[str, Any]:
        """The decision as a JSON object."""
        return {
            "decision": "link_refused",
            "event_id": self.event_id,
            "customer_id": self.customer_id,
            "key": self.key,
            "kind": self.kind,
            "other_customer_id": self.other_customer_id,
            "reason": self.reason,
        }


@dataclass(frozen=True, slots=True)
class Refolded:
    """A late event changed what the guardrails decide in a component: its events were resolved again in
    event-time order; ``before`` and ``after`` are the component's live customers on either side."""

    event_id: str
    before: tuple[str, ...]
    after: tuple[str, ...]
    reason: str

    def to_json(self) -> dict[str, Any]:
        """The decision as a JSON object."""
        return {
            "decision": "refolded",
            "event_id": self.event_id,
            "before": list(self.before),
            "after": list(self.after),
            "reason": self.reason,
        }


Decision = Minted | Linked | Merged | LinkRefused | Refolded


class Resolution(NamedTuple):
    """Where an event belongs: its customer, the decisions taken, the identifiers attributed to it.

    A named tuple rather than a frozen dataclass: one is built per event and
    tuple construction is several times cheaper.
    """

    customer_id: str
    decisions: tuple[Decision, ...]
    identifiers: tuple[Identifier, ...]


_new_tuple = tuple.__new__

# -- state --------------------------------------------------------------------


class IdentityState:
    """Who owns which identifier key. Mutable: only :func:`apply` writes to it.

    ``owner`` maps a key to the *current* customer (re-pointed on merges);
    ``keys`` holds each live customer's keys per kind (insertion-ordered
    dicts, so iteration never depends on hash seeds); ``alias`` maps every
    merged id straight to its survivor; ``aliases`` is the inverse; ``seq`` is
    the mint position of every id ever minted; ``refused`` the (customer, key)
    refusals already recorded; ``erased`` the customers erased on request
    (their ids are never minted again: a person who comes back is a new
    customer).
    """

    __slots__ = ("alias", "aliases", "erased", "first", "keys", "owner", "refused", "seq")

    def __init__(self) -> None:
        self.owner: dict[str, str] = {}
        self.keys: dict[str, dict[str, dict[str, None]]] = {}
        self.alias: dict[str, str] = {}
        self.aliases: dict[str, list[str]] = {}
        self.seq: dict[str, int] = {}
        # live customer -> (ms, event id) of its earliest event: who survives a merge, and which id it has
        self.first: dict[str, tuple[int, str]] = {}
        self.refused: set[tuple[str, str]] = set()
        self.erased: set[str] = set()

    def canonical(self, customer_id: str) -> str:
        """The live id ``customer_id`` resolves to (itself unless merged)."""
        return self.alias.get(customer_id, customer_id)

    def lookup(self, key: str) -> str | None:
        """The customer that owns ``key``, or None."""
        return self.owner.get(key)

    def count(self, customer_id: str, kind: str) -> int:
        """How many identifiers of ``kind`` the customer holds."""
        return len(self.keys.get(customer_id, {}).get(kind, ()))

    def customers(self) -> list[str]:
        """Live customer ids (not aliases), in mint order."""
        return sorted((c for c in self.seq if c not in self.alias), key=self.seq.__getitem__)


def fresh_id(state: IdentityState, key: str) -> str:
    """The id a customer anchored on ``key`` gets: :func:`customer_id_for`, unless it (or its survivor) was erased.

    Then ``key#1``, ``key#2``, ... until an id not erased: deterministic, so a replay mints the same ids.
    """
    cid, n = customer_id_for(key), 0
    while state.canonical(cid) in state.erased:
        n += 1
        cid = customer_id_for(f"{key}#{n}")
    return cid


def forget(state: IdentityState, customer_id: str) -> list[str]:
    """Erase a customer from identity: its keys link nobody any more and its id is never minted again.

    :returns: the ids erased, the live id first and then its aliases; [] when it was never minted.
    """
    cid = state.canonical(customer_id)
    if cid not in state.seq or cid in state.erased:
        return []
    state.first.pop(cid, None)
    for keys in state.keys.pop(cid, {}).values():
        for key in keys:
            if state.owner.get(key) == cid:
                del state.owner[key]
    state.refused = {(owner, key) for owner, key in state.refused if state.canonical(owner) != cid}
    state.erased.add(cid)
    return [cid, *state.aliases.get(cid, [])]


def _describe(kind: str) -> str:
    return kind.replace("_", " ")


def resolve(
    state: IdentityState, identifiers: Sequence[Identifier], event_id: str, config: IdentityConfig,
    at: tuple[int, str] | None = None,
) -> Resolution:
    """Decide which customer an event belongs to. Pure: ``state`` is not changed.

    :param state: the identity state before this event.
    :param identifiers: the event's normalised identifiers (at least one).
    :param event_id: the causing event, recorded on every decision.
    :param config: limits, priority and shared keys.
    :param at: the event's ``(time in ms, event id)``: an event earlier than the first event of the
        customer it resolves to gives the customer the id its own strongest identifier mints (the id the
        customer has when events arrive in event-time order); None: arrival order only.
    :returns: the customer id, the decisions to :func:`apply` in order, and the
        identifiers attributed to the customer (refused ones left out).
    """
    if not identifiers:
        raise ValueError("an event needs at least one identifier")
    owner = state.owner
    shared = config.shared
    # Fast path: every identifier known, one owner, nothing shared (most events).
    first = owner.get(identifiers[0].key)
    if first is not None:
        for ident in identifiers:
            if owner.get(ident.key) != first or ident.key in shared:
                break
        else:
            if at is not None and at < state.first.get(first, at):
                return _resolve(state, identifiers, event_id, config, at)  # an earlier event: a new id
            # tuple.__new__ directly: the named tuple's own __new__ is a Python function.
            attributed = identifiers if isinstance(identifiers, tuple) else tuple(identifiers)
            return _new_tuple(Resolution, (first, (), attributed))
    return _resolve(state, identifiers, event_id, config, at)


def _resolve(state: IdentityState, identifiers: Sequence[Identifier], event_id: str, config: IdentityConfig,
             at: tuple[int, str] | None) -> Resolution:
    owner = state.owner
    shared = config.shared
    rank = config.rank
    ordered: list[Identifier] = []
    seen: set[str] = set()
    for ident in sorted(identifiers, key=lambda i: rank[i.kind]):
        if ident.key not in seen:
            seen.add(ident.key)
            ordered.append(ident)
    live = [i for i in ordered if i.key not in shared]
    marked = [i for i in ordered if i.key in shared]

    if not live:  # only shared identifiers: the pseudo-customer of the strongest
        anchor = marked[0]
        cid = fresh_id(state, anchor.key)
        mint: tuple[Decision, ...] = ()
        if cid not in state.seq:
            mint = (Minted(event_id, cid, anchor.key, anchor.kind, shared=True),)
        return Resolution(state.canonical(cid), mint, tuple(ordered))

    limits = config.limits
    group: list[str] = []  # customers this event joins, in the order met
    counts: dict[str, int] = {}  # identifiers per kind of the group plus accepted new keys
    new: list[Identifier] = []
    accepted: list[Identifier] = []
    via: dict[str, str] = {}
    refusals: list[tuple[Identifier, str | None, str]] = []  # identifier, holder, reason
    for ident in live:
        holder = owner.get(ident.key)
        if holder is None:
            if counts.get(ident.kind, 0) + 1 > limits[ident.kind] and (group or new):
                refusals.append((ident, None, f"would give {{cid}} {counts.get(ident.kind, 0) + 1} "
                                 f"{ident.kind} (limit {limits[ident.kind]})"))
                continue
            new.append(ident)
            accepted.append(ident)
            counts[ident.kind] = counts.get(ident.kind, 0) + 1
        elif holder in group:
            accepted.append(ident)
        else:
            theirs = state.keys.get(holder, {})
            over = [
                (kind, counts.get(kind, 0) + len(keys))
                for kind, keys in theirs.items()
                if counts.get(kind, 0) + len(keys) > limits[kind]
            ]
            if over and (group or new):
                kind, total = min(over, key=lambda o: rank[o[0]])
                refusals.append((ident, holder, f"would give {{cid}} {total} {kind} (limit {limits[kind]})"))
                continue
            group.append(holder)
            via[holder] = ident.key
            accepted.append(ident)
            for kind, keys in theirs.items():
                counts[kind] = counts.get(kind, 0) + len(keys)

    decisions: list[Decision] = []
    if group:
        seq, firsts = state.seq, state.first
        earliest = [firsts.get(c, _NEVER) for c in group]

        def order(cid: str) -> tuple[tuple[int, str], int]:  # earliest first event, then mint position
            return firsts.get(cid, _NEVER), seq[cid]

        survivor = min(group, key=order)
        rightful = None if at is None or at >= min(earliest) else fresh_id(state, live[0].key)
        renamed = False
        if rightful is not None:
            holder = state.canonical(rightful)
            if rightful not in seq or (holder != rightful and holder in group):
                renamed = True  # a new id, or the id of an earlier first event that was merged away since
            elif holder == rightful and rightful in group:
                survivor = rightful
        if renamed:
            assert rightful is not None
            # This event is the customer's earliest: the id event-time order would have minted. The
            # customers so far are merged into it (their ids become aliases).
            anchor = live[0]
            decisions.append(Minted(event_id, rightful, anchor.key, anchor.kind))
            for other in sorted(group, key=order):
                reason = f"an earlier event of {other} arrived: the customer takes the id of its first event"
                decisions.append(Merged(event_id, rightful, other, via.get(other, anchor.key), reason))
            survivor = rightful
        for other in sorted(group, key=order):
            if not renamed and other != survivor:
                reason = f"one event carries identifiers of both {survivor} and {other}"
                decisions.append(Merged(event_id, survivor, other, via[other], reason))
    else:
        anchor = new[0]
        survivor = state.canonical(fresh_id(state, anchor.key))
        if survivor not in state.seq:
            decisions.append(Minted(event_id, survivor, anchor.key, anchor.kind))
            new = new[1:]
    for ident in new:
        decisions.append(Linked(event_id, survivor, ident.key, ident.kind))
    for ident in marked:
        if (survivor, ident.key) not in state.refused:
            holder = owner.get(ident.key)
            decisions.append(LinkRefused(event_id, survivor, ident.key, ident.kind, holder, "marked shared"))
    for ident, holder, reason in refusals:
        if (survivor, ident.key) not in state.refused:
            decisions.append(
                LinkRefused(event_id, survivor, ident.key, ident.kind, holder, reason.format(cid=survivor))
            )
    return Resolution(survivor, tuple(decisions), tuple(accepted))


def apply(state: IdentityState, decision: Decision) -> None:
    """Fold one decision into ``state`` in place (the evolve step)."""
    if isinstance(decision, Linked):
        cid = state.canonical(decision.customer_id)
        state.owner[decision.key] = cid
        state.keys.setdefault(cid, {}).setdefault(decision.kind, {})[decision.key] = None
    elif isinstance(decision, Merged):
        merged = state.canonical(decision.merged)
        if state.alias.get(decision.survivor) == merged:
            # The id merged away comes back as the survivor (its first event arrived late, see resolve).
            survivor = decision.survivor
            del state.alias[survivor]
            state.aliases[merged].remove(survivor)
        else:
            survivor = state.canonical(decision.survivor)
        if survivor == merged:
            return  # already one customer (a replayed decision)
        theirs, mine = state.first.pop(merged, None), state.first.get(survivor)
        if theirs is not None and (mine is None or theirs < mine):
            state.first[survivor] = theirs
        into = state.keys.setdefault(survivor, {})
        owner = state.owner
        for kind, keys in state.keys.pop(merged, {}).items():
            target = into.setdefault(kind, {})
            for key in keys:
                target[key] = None
                owner[key] = survivor
        moved = state.aliases.pop(merged, [])
        moved.append(merged)
        for alias in moved:
            state.alias[alias] = survivor
        state.aliases.setdefault(survivor, []).extend(moved)
    elif isinstance(decision, Minted):
        cid = decision.customer_id
        if cid not in state.seq:
            state.seq[cid] = len(state.seq)
        state.keys.setdefault(cid, {})
        if not decision.shared:
            state.owner[decision.key] = cid
            state.keys[cid].setdefault(decision.kind, {})[decision.key] = None
    elif isinstance(decision, LinkRefused):
        state.refused.add((state.canonical(decision.customer_id), decision.key))
    elif isinstance(decision, Refolded):
        pass  # a record of replace_component, which changed the state itself
    else:  # pragma: no cover - the union is closed
        raise TypeError(f"not an identity decision: {decision!r}")


def apply_all(state: IdentityState, decisions: Iterable[Decision]) -> None:
    """:func:`apply` each decision in order."""
    for decision in decisions:
        apply(state, decision)


def replace_component(state: IdentityState, before: Iterable[str], scratch: IdentityState,
                      moved_to: Mapping[str, str]) -> dict[str, str]:
    """Put a component resolved again (``scratch``, a state that holds only it) in place of its customers.

    :param before: the component's live customers in ``state`` (their keys, first events and refusals go).
    :param scratch: the component's events resolved in event-time order.
    :param moved_to: for a customer of ``before`` that is neither live nor an alias in ``scratch``, the
        customer of ``scratch`` its id now resolves to.
    :returns: every id of the component before (live ids and their aliases) that is not live any more,
        mapped to the live id it resolves to now.
    """
    before = list(before)
    old_ids = {c: [c, *state.aliases.get(c, [])] for c in before}
    gone = set(before)
    for cid in before:
        for keys in state.keys.pop(cid, {}).values():
            for key in keys:
                if state.owner.get(key) == cid:
                    del state.owner[key]
        state.first.pop(cid, None)
        state.aliases.pop(cid, None)
    state.refused = {(c, key) for c, key in state.refused if state.canonical(c) not in gone}
    live_after = [c for c in scratch.seq if c not in scratch.alias]
    for cid in live_after:
        if cid not in state.seq:
            state.seq[cid] = len(state.seq)
        state.keys[cid] = scratch.keys.get(cid, {})
        for keys in state.keys[cid].values():
            for key in keys:
                state.owner[key] = cid
        if cid in scratch.first:
            state.first[cid] = scratch.first[cid]
    state.refused |= scratch.refused

    def now_of(cid: str) -> str:
        if cid in scratch.seq:
            return scratch.canonical(cid)
        return scratch.canonical(moved_to[cid])

    resolved: dict[str, str] = {}
    for cid, ids in old_ids.items():
        target = now_of(cid)
        for old in ids:
            if old in scratch.seq and old not in scratch.alias:
                continue  # live again
            resolved[old] = target if old == cid or old not in scratch.seq else scratch.canonical(old)
    for alias, survivor in scratch.alias.items():
        if alias not in resolved:
            resolved[alias] = survivor
    for cid in live_after:
        state.alias.pop(cid, None)
    for alias, survivor in resolved.items():
        if alias not in state.seq:
            state.seq[alias] = len(state.seq)
        state.alias[alias] = survivor
    for cid in live_after:
        state.aliases.pop(cid, None)
    for alias, survivor in sorted(resolved.items(), key=lambda item: state.seq[item[0]]):
        state.aliases.setdefault(survivor, []).append(alias)
    return resolved
