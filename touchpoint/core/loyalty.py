"""Loyalty: rules as versioned data, a ledger of points that is exact by construction.

Pure core: no Kafka, no database, no wall clock. Times are epoch
milliseconds passed in by the caller (the event time of what is being
folded, or the ``as_of`` of a rendering).

Rules as data
-------------
:class:`LoyaltyRules` holds :class:`RuleVersion` s, each in force from its
``effective_from`` instant (inclusive) until the next one. A purchase is
scored with the version in force at its *event time*
(:meth:`LoyaltyRules.version_at`), so a replay next year gives the same
points. A purchase before the first version is an error
(:class:`NoRulesInForce`), never scored under a version that was not in
force: the shipped file starts in 2000 so that any real history is covered,
and a proposed file that does not reach back far enough fails loudly in the
simulator instead of silently inventing points.

A version holds the base (``floor(total_minor / minor_per_point)`` points,
100 by default: one point per whole currency unit), a list of
:class:`MultiplierRule` s, tier thresholds, the tier window
(``tier_window_months``, 12), the expiry period (``expiry_months``, 24) and
the window given to a campaign invitation that carries none
(``campaign_window_days``, 14: the generator's campaigns run 14 days).

Rule types are a registry (:data:`RULE_TYPES`). A type is a params model
and one function ``(facts, rule, context) -> Hit | None``, registered with
:func:`rule_type`; adding a type changes nothing in the engine. Built in:

* ``basket_threshold`` -- ``total_minor >= threshold_minor`` (5000: 50.00);
* ``categories_together`` -- at least one line of each listed category
  (fuel and shop: one visit for both);
* ``campaign_invited`` -- the customer holds an ``invited`` campaign whose
  window ``[starts_at, ends_at)`` contains the purchase time. The multiplier
  is the one the invitation carries when it carries one (the letter promised
  it to the customer), otherwise the rule's (3); ``max_multiplier`` caps what
  an invitation may promise, ``use_invitation_multiplier: false`` ignores it.
  Of several open invitations the highest multiplier wins. Only ``invited``
  counts: ``started``/``ended`` describe the campaign, not the customer;
* ``category_spend`` -- the lines of the listed categories and/or SKUs add
  up to ``min_amount_minor`` (1: any such line). It multiplies the whole
  basket like the others ("double points when you buy 40.00 of fuel").

Multipliers do not stack: of the rules that fire, the non-stacking one with
the highest multiplier applies (ties: the first in the file), and every
firing rule marked ``stacks: true`` multiplies on top. Points are
``base * multiplier``; multipliers are whole numbers so points stay exact.

Ledger
------
Balance is the sum of :class:`LedgerEntry` points, never a counter. Entry
ids are ``{source_event_id}:{transaction_id}:{kind}``: deterministic and,
on purpose, independent of the *outcome* of scoring. A rule id in the key
would let two runs that scored a purchase differently (a replay that saw a
late campaign invitation) insert two earn rows for one purchase past a
database unique constraint; with this key the second write is a no-op and a
point can never be doubled. The rules applied are recorded in the entry
(``rule_id``, ``rule_version``, ``multiplier``, ``reason``).

* ``earn``: one per purchase (also when it earns 0 points: it explains why),
  source = the purchase event.
* ``reversal``: one per refund (also 0 points, explained), source = the
  refund event. After refunds totalling R of a purchase of total T that
  earned P points, exactly ``floor(P * min(R, T) / T)`` points have been
  reversed in total, so a full refund in any number of parts reverses
  exactly P. The reversal is based on the points the purchase actually
  earned (its lot), whatever version is in force at the refund: a rules
  change never turns a refund into a gain or a loss.
* ``adjustment``: the difference a late invitation or a merge makes to a
  purchase's points (see Order below), at the purchase's time, with the new
  multiplier and the reason.
* ``expiry``: one per purchase lot, source = the purchase event, at the
  earn time plus ``expiry_months`` of the version it was earned under
  (a rules change does not shorten the life of points already earned). It
  takes what is left of the lot (earned minus reversed). There are no
  redemptions yet, so each lot expires on its own and the oldest lots expire
  first; when spending arrives it must consume the oldest lots first too.

Refund after expiry: a lot's points are gone once expired, so the refund
reverses nothing more (a 0-point reversal entry says so). This holds both
when the refund's event time is past the lot's expiry (on_refund
materialises that lot's expiry first) and when a late refund arrives after
the expiry was materialised (the reversal is capped by what is left of the
lot). Either way the lot nets to zero, and no refund can push a balance
below zero: every lot keeps ``earned - reversed - expired >= 0``.

Refunds are checked, never guessed: a refund of a transaction this ledger
does not hold raises :class:`UnknownPurchase` (it may belong to a customer
not merged yet, or arrive before its purchase: the caller parks or
dead-letters it), a currency different from the purchase's raises
:class:`RefundRejected`. Refunds above the purchase total are accepted but
reverse at most P. A redelivered refund (same ``refund_id``) adds nothing;
a redelivered purchase (same ``transaction_id``, whatever its event id)
adds nothing.

Tiers: ``earned_12m`` as of an instant T is, over the purchase lots with
``T - tier_window_months < earned at <= T``, the points earned minus the
points reversed by refunds dated ``<= T``. Refunds reduce it (a bought and
returned basket must not buy a tier); expiry does not (expiry is the passage
of time, not an unearning). The tier is the highest threshold of the
version in force at T that ``earned_12m`` reaches.

State and merges
----------------
:class:`LoyaltyState` is mutable and slotted, written only by the
functions here (as :mod:`touchpoint.core.profile`): entries by id, purchase
lots by transaction id, refund ids, campaign invitations by campaign id.
:func:`merge` folds one customer's state into another's for an identity
merge: entries are a union by id, lots by transaction id, refunds by refund
id, invitations are a union by event id; where two copies of
one fact differ a total order picks one, so merges are commutative,
associative and idempotent. Out of the model: one transaction scored under
two different purchase event ids in two customers (identity attributes an
event to one customer, and a resend to the same customer is caught by its
transaction id).

Order. The points do not depend on the order events arrive in, only on
their event times and on who turned out to be one person: a purchase is
scored with, per campaign, the latest invitation of its customer before it
in event time (``(time, event id)``). When that set changes after a purchase
was scored -- an invitation arrives after purchases it precedes, or a merge
brings another customer's invitations -- :func:`rescore` scores the
purchases again and issues an ``adjustment`` entry (id
``{cause_event_id}:{transaction_id}:adjustment``) for each difference, net of
what the purchase's refunds reverse of it; entries already issued are never
rewritten. Bound: a purchase whose points expired keeps them.

:func:`summary` renders ``{"balance", "tier", "earned_12m", "entry_count",
"entries"}`` as of an instant, including the expiries due by then computed
without touching the state (tier null before the first rules version); :func:`score` is the scoring on its own, for
the simulator.
"""

from __future__ import annotations

import bisect
import calendar
import functools
import heapq
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields
from datetime import UTC, datetime, timedelta
from importlib import resources
from pathlib import Path
from typing import Any, Literal, NamedTuple, TypeVar, cast

import yaml
from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeInt,
    PositiveInt,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from touchpoint.contract.models import CampaignPayload, PurchasePayload, RefundPayload
from touchpoint.core.instants import DAY_MS, epoch_ms, iso_ms
from touchpoint.core.pickled import restore_slots
from touchpoint.errors import ConfigError, TouchpointError

__all__ = [
    "BasketThresholdParams",
    "CampaignInvitedParams",
    "CategoriesTogetherParams",
    "CategorySpendParams",
    "Hit",
    "Invitation",
    "LedgerEntry",
    "Lot",
    "LoyaltyError",
    "LoyaltyRules",
    "LoyaltyState",
    "MultiplierRule",
    "NoRulesInForce",
    "PurchaseFacts",
    "RULES_FILE",
    "RULE_TYPES",
    "RefundRejected",
    "RuleType",
    "RuleVersion",
    "Score",
    "ScoringContext",
    "Tier",
    "UnknownPurchase",
    "add_months",
    "balance",
    "default_rules",
    "earned_12m",
    "expire",
    "load_rules",
    "merge",
    "invitations_before",
    "on_campaign",
    "on_purchase",
    "on_refund",
    "parse_rules",
    "pending_expiries",
    "rescore",
    "purchase_facts",
    "rule_type",
    "score",
    "summary",
    "tier_at",
]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)
RULES_FILE = "loyalty_rules.yaml"


# -- errors -------------------------------------------------------------------


class LoyaltyError(TouchpointError):
    """Root of the loyalty core's errors."""


class NoRulesInForce(LoyaltyError, ValueError):
    """An instant before the first rule version's ``effective_from``."""


class RefundRejected(LoyaltyError, ValueError):
    """A refund the ledger cannot apply; ``reason`` says why (a dead-letter reason)."""

    def __init__(self, refund_id: str, transaction_id: str, reason: str) -> None:
        super().__init__(f"refund {refund_id} of transaction {transaction_id}: {reason}")
        self.refund_id = refund_id
        self.transaction_id = transaction_id
        self.reason = reason


class UnknownPurchase(RefundRejected):
    """The refunded transaction is not in this customer's ledger."""


# -- rules as data ----------------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def _at(sub_loc: tuple[str | int, ...], message: str) -> PydanticCustomError:
    """An error whose line is that of ``sub_loc`` below the failing model (see :func:`parse_rules`)."""
    return PydanticCustomError("loyalty_rules", "{detail}", {"detail": message, "sub_loc": sub_loc})


def _message(msg: str) -> str:
    return msg.removeprefix("Value error, ")


def _dotted(loc: Iterable[str | int]) -> str:
    return ".".join(f"[{part}]" if isinstance(part, int) else part for part in loc).replace(".[", "[")


class Tier(_Strict):
    """A tier reached from ``min_points`` earned over the tier window."""

    name: str = Field(min_length=1)
    min_points: NonNegativeInt


class BasketThresholdParams(_Strict):
    """``basket_threshold``: the purchase total reaches ``threshold_minor``."""

    threshold_minor: NonNegativeInt = 5000


class CategoriesTogetherParams(_Strict):
    """``categories_together``: at least one line of each of ``categories``."""

    categories: tuple[str, ...] = Field(default=("fuel", "shop"), min_length=1)


class CampaignInvitedParams(_Strict):
    """``campaign_invited``: an invitation whose window contains the purchase time."""

    use_invitation_multiplier: bool = True
    max_multiplier: PositiveInt | None = None


class CategorySpendParams(_Strict):
    """``category_spend``: lines of ``categories`` or ``skus`` adding up to ``min_amount_minor``."""

    categories: tuple[str, ...] = ()
    skus: tuple[str, ...] = ()
    min_amount_minor: PositiveInt = 1

    @model_validator(mode="after")
    def _something(self) -> CategorySpendParams:
        if not self.categories and not self.skus:
            raise ValueError("give at least one of categories or skus")
        return self


class MultiplierRule(_Strict):
    """One rule of a version: when its type fires, the purchase's base is multiplied.

    :param id: unique in its version; named by the earn entries it applies to.
    :param type: a key of :data:`RULE_TYPES`.
    :param multiplier: a whole number >= 1.
    :param stacks: multiply on top of the highest non-stacking rule instead
        of competing with it.
    :param label: the reason shown to people; the type's own when absent.
    :param params: the type's parameters (validated by its params model).
    """

    id: str = Field(pattern=r"^[A-Za-z0-9_.\-]+$")  # no '+': applied ids are joined with it
    type: str
    multiplier: PositiveInt
    stacks: bool = False
    label: str | None = None
    params: Any = Field(default_factory=dict, validate_default=True)

    @field_validator("type")
    @classmethod
    def _known_type(cls, value: str) -> str:
        if value not in RULE_TYPES:
            raise ValueError(f"unknown rule type {value!r}; known types: {', '.join(sorted(RULE_TYPES))}")
        return value

    @field_validator("params")
    @classmethod
    def _typed_params(cls, value: Any, info: ValidationInfo) -> Any:
        typ = info.data.get("type")
        if typ is None:
            return value  # the type's own error is reported
        model = RULE_TYPES[typ].params
        if isinstance(value, model):
            return value
        try:
            return model.model_validate(value)
        except ValidationError as exc:
            errors = exc.errors()
            if len(errors) == 1:
                detail = _message(errors[0]["msg"])
            else:
                detail = "; ".join(f"{_dotted(e['loc']) or 'params'}: {_message(e['msg'])}" for e in errors)
            raise _at(tuple(errors[0]["loc"]), f"{typ} params: {detail}") from None


class RuleVersion(_Strict):
    """The rules in force from ``effective_from`` until the next version."""

    version: str = Field(min_length=1)
    effective_from: AwareDatetime
    minor_per_point: PositiveInt = 100
    rules: tuple[MultiplierRule, ...] = ()
    tiers: tuple[Tier, ...] = (Tier(name="member", min_points=0),)
    tier_window_months: PositiveInt = 12
    expiry_months: PositiveInt = 24
    campaign_window_days: PositiveInt = 14

    @model_validator(mode="after")
    def _consistent(self) -> RuleVersion:
        seen: set[str] = set()
        for i, rule in enumerate(self.rules):
            if rule.id in seen:
                raise _at(("rules", i, "id"), f"rule id {rule.id!r} is used twice")
            seen.add(rule.id)
        if not self.tiers:
            raise _at(("tiers",), "at least one tier is needed")
        if self.tiers[0].min_points != 0:
            raise _at(("tiers", 0, "min_points"), "the first tier must start at 0 points")
        names: set[str] = set()
        for i, tier in enumerate(self.tiers):
            if tier.name in names:
                raise _at(("tiers", i, "name"), f"tier {tier.name!r} is named twice")
            names.add(tier.name)
            if i and tier.min_points <= self.tiers[i - 1].min_points:
                raise _at(("tiers", i, "min_points"), "tier thresholds must increase")
        return self

    @property
    def effective_ms(self) -> int:
        """``effective_from`` in epoch milliseconds."""
        return epoch_ms(self.effective_from)


class LoyaltyRules(_Strict):
    """Every rule version, in increasing ``effective_from``."""

    versions: tuple[RuleVersion, ...]
    _starts: tuple[int, ...] = PrivateAttr(default=())

    @model_validator(mode="after")
    def _ordered(self) -> LoyaltyRules:
        # Checked here, not with min_length: pydantic would also report a list whose items failed as empty.
        if not self.versions:
            raise _at(("versions",), "at least one version is needed")
        names: set[str] = set()
        for i, version in enumerate(self.versions):
            if version.version in names:
                raise _at(("versions", i, "version"), f"version {version.version!r} is named twice")
            names.add(version.version)
            if i and version.effective_from <= self.versions[i - 1].effective_from:
                raise _at(("versions", i, "effective_from"), "versions must be in increasing effective_from")
        self._starts = tuple(v.effective_ms for v in self.versions)
        return self

    def version_at(self, ms: int) -> RuleVersion:
        """The version in force at ``ms`` (from its ``effective_from``, inclusive).

        :raises NoRulesInForce: ``ms`` is before the first version.
        """
        # Straight from the private dict: pydantic's attribute lookup of a private attribute
        # cost more than the bisect, once per purchase.
        i = bisect.bisect_right(cast(dict[str, Any], self.__pydantic_private__)["_starts"], ms) - 1
        if i < 0:
            raise NoRulesInForce(
                f"no loyalty rules in force at {iso_ms(ms)}: the first version "
                f"{self.versions[0].version!r} is effective from {iso_ms(self._starts[0])}"
            )
        return self.versions[i]

    def version_named(self, name: str) -> RuleVersion:
        """The version called ``name``; KeyError when there is none."""
        for version in self.versions:
            if version.version == name:
                return version
        raise KeyError(name)


# -- rule types ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PurchaseFacts:
    """What scoring needs of a purchase. ``lines`` are ``(sku, category, quantity, amount_minor)``."""

    ms: int
    total_minor: int
    lines: tuple[tuple[str, str, int, int], ...] = ()
    transaction_id: str = ""

    @property
    def categories(self) -> frozenset[str]:
        """Categories with at least one line."""
        return frozenset({line[1] for line in self.lines})


def purchase_facts(ms: int, payload: PurchasePayload) -> PurchaseFacts:
    """The facts of a validated purchase payload at event time ``ms``."""
    return PurchaseFacts(
        ms,
        payload.total_minor,
        tuple([(line.sku, line.category, line.quantity, line.amount_minor) for line in payload.lines]),
        payload.transaction_id,
    )


@dataclass(frozen=True, slots=True)
class Invitation:
    """An ``invited`` campaign event; ``None`` bounds are resolved by :meth:`window`."""

    campaign_id: str
    event_id: str
    ms: int
    starts_ms: int | None = None
    ends_ms: int | None = None
    multiplier: int | None = None

    def window(self, default_days: int) -> tuple[int, int]:
        """``[start, end)``: from ``starts_at`` (or the invitation time) to ``ends_at`` (or ``default_days`` later)."""
        start = self.ms if self.starts_ms is None else self.starts_ms
        end = start + default_days * DAY_MS if self.ends_ms is None else self.ends_ms
        return start, end


@dataclass(frozen=True, slots=True)
class ScoringContext:
    """What a rule may look at besides the purchase: its version and the customer's invitations."""

    version: RuleVersion
    invitations: tuple[Invitation, ...] = ()


@dataclass(frozen=True, slots=True)
class Hit:
    """A rule fired. ``multiplier`` overrides the rule's (an invitation's own, say)."""

    reason: str
    multiplier: int | None = None


RuleFn = Callable[[PurchaseFacts, MultiplierRule, ScoringContext], Hit | None]
_F = TypeVar("_F", bound=RuleFn)


@dataclass(frozen=True, slots=True)
class RuleType:
    """A registered rule type: its params model and its function."""

    name: str
    params: type[BaseModel]
    fn: RuleFn


RULE_TYPES: dict[str, RuleType] = {}
"""Rule types by name. Register with :func:`rule_type`."""


def rule_type(name: str, params: type[BaseModel]) -> Callable[[_F], _F]:
    """Register ``fn(facts, rule, context) -> Hit | None`` as rule type ``name``.

    ``rule.params`` is an instance of ``params``. The function must be pure
    and deterministic: it is all the engine knows of the type.
    """

    def register(fn: _F) -> _F:
        if name in RULE_TYPES:
            raise ValueError(f"rule type {name!r} is already registered")
        RULE_TYPES[name] = RuleType(name, params, fn)
        return fn

    return register


def _money(minor: int) -> str:
    return f"{minor // 100}.{minor % 100:02d}"


# Hits are frozen: the built-in types that always say the same hand out one per parameter value
# (scoring runs once per purchase; building the reason text each time showed in the fold's profile).
_HITS: dict[tuple[str, Any], Hit] = {}


def _hit(kind: str, param: Any, reason: Callable[[], str]) -> Hit:
    hit = _HITS.get((kind, param))
    if hit is None:
        if len(_HITS) >= 4096:
            _HITS.clear()
        hit = _HITS[kind, param] = Hit(reason())
    return hit


@rule_type("basket_threshold", BasketThresholdParams)
def _basket_threshold(facts: PurchaseFacts, rule: MultiplierRule, ctx: ScoringContext) -> Hit | None:
    threshold = rule.params.threshold_minor
    if facts.total_minor >= threshold:
        return _hit("basket_threshold", threshold, lambda: f"basket of {_money(threshold)} or more")
    return None


@rule_type("categories_together", CategoriesTogetherParams)
def _categories_together(facts: PurchaseFacts, rule: MultiplierRule, ctx: ScoringContext) -> Hit | None:
    wanted: tuple[str, ...] = rule.params.categories
    if {line[1] for line in facts.lines}.issuperset(wanted):
        return _hit("categories_together", wanted, lambda: f"{' and '.join(wanted)} in one visit")
    return None


@rule_type("campaign_invited", CampaignInvitedParams)
def _campaign_invited(facts: PurchaseFacts, rule: MultiplierRule, ctx: ScoringContext) -> Hit | None:
    params: CampaignInvitedParams = rule.params
    best: tuple[int, str] | None = None
    for inv in ctx.invitations:
        start, end = inv.window(ctx.version.campaign_window_days)
        if not start <= facts.ms < end:
            continue
        m = rule.multiplier
        if params.use_invitation_multiplier and inv.multiplier is not None:
            m = inv.multiplier
        if params.max_multiplier is not None:
            m = min(m, params.max_multiplier)
        # Highest multiplier, then the smallest campaign id: no dependence on arrival order.
        if best is None or m > best[0] or (m == best[0] and inv.campaign_id < best[1]):
            best = (m, inv.campaign_id)
    if best is None:
        return None
    return Hit(f"invited to campaign {best[1]}", best[0])


@rule_type("category_spend", CategorySpendParams)
def _category_spend(facts: PurchaseFacts, rule: MultiplierRule, ctx: ScoringContext) -> Hit | None:
    params: CategorySpendParams = rule.params
    spent = sum(
        amount for sku, category, _, amount in facts.lines if category in params.categories or sku in params.skus
    )
    if spent and spent >= params.min_amount_minor:
        what = " or ".join((*params.categories, *params.skus))
        if params.min_amount_minor > 1:
            return Hit(f"{_money(params.min_amount_minor)} or more on {what}")
        return Hit(f"bought {what}")
    return None


# -- scoring ------------------------------------------------------------------


class Score(NamedTuple):
    """The outcome of scoring one purchase under one version."""

    points: int
    multiplier: int
    rule_ids: tuple[str, ...]
    """The rules applied: the highest non-stacking one, then the stacking ones; empty = base only."""
    reason: str


def score(facts: PurchaseFacts, version: RuleVersion, invitations: Iterable[Invitation] = ()) -> Score:
    """Score a purchase: base points times the applicable multiplier (see the module docstring).

    :param facts: the purchase (:func:`purchase_facts`).
    :param version: the rule version in force at ``facts.ms``.
    :param invitations: the customer's campaign invitations.
    """
    invited = tuple(invitations)
    if invited:
        ctx = ScoringContext(version, invited)
    else:  # most customers hold no invitation: one frozen context per version will do
        cached = _BARE_CONTEXTS.get(id(version))
        if cached is None or cached.version is not version:
            if len(_BARE_CONTEXTS) >= 64:
                _BARE_CONTEXTS.clear()
            cached = _BARE_CONTEXTS[id(version)] = ScoringContext(version)
        ctx = cached
    minor_per_point = version.minor_per_point
    base = facts.total_minor // minor_per_point
    best: tuple[int, str, str, bool] | None = None
    stacked: list[tuple[int, str, str, bool]] = []
    types = RULE_TYPES
    for rule in version.rules:
        hit = types[rule.type].fn(facts, rule, ctx)
        if hit is None:
            continue
        m = rule.multiplier if hit.multiplier is None else hit.multiplier
        applied = (m, rule.id, rule.label or hit.reason, rule.stacks)
        if rule.stacks:
            stacked.append(applied)
        elif best is None or applied[0] > best[0]:
            best = applied
    key = (minor_per_point, best, *stacked)
    outcome = _OUTCOMES.get(key)
    if outcome is None:
        outcome = _outcome(key)
    multiplier, rule_ids, reason = outcome
    return _new_tuple(Score, (base * multiplier, multiplier, rule_ids, reason))


_BARE_CONTEXTS: dict[int, ScoringContext] = {}  # id(version) -> its context without invitations
# (minor_per_point, best, *stacked) -> (multiplier, rule ids, reason): the same few combinations
# recur on every purchase.
_OUTCOMES: dict[tuple[Any, ...], tuple[int, tuple[str, ...], str]] = {}
_new_tuple = tuple.__new__


def _outcome(key: tuple[Any, ...]) -> tuple[int, tuple[str, ...], str]:
    minor_per_point, best, *stacked = key
    chosen = ([best] if best is not None else []) + stacked
    if not chosen:
        outcome: tuple[int, tuple[str, ...], str] = (1, (), f"×1: 1 point per {_money(minor_per_point)}")
    else:
        outcome = _combined(chosen)
    if len(_OUTCOMES) >= 4096:
        _OUTCOMES.clear()
    _OUTCOMES[key] = outcome
    return outcome


def _combined(chosen: list[tuple[int, str, str, bool]]) -> tuple[int, tuple[str, ...], str]:
    multiplier = 1
    for m, _, _, _ in chosen:
        multiplier *= m
    if len(chosen) == 1:
        reason = f"×{multiplier}: {chosen[0][2]}"
    else:
        parts = [f"{text} (×{m}{', stacks' if stacks else ''})" for m, _, text, stacks in chosen]
        reason = f"×{multiplier}: " + "; ".join(parts)
    return multiplier, tuple(rule_id for _, rule_id, _, _ in chosen), reason


# -- ledger -------------------------------------------------------------------

Kind = Literal["earn", "reversal", "expiry", "adjustment"]


@dataclass(frozen=True, order=True, slots=True, init=False)
class LedgerEntry:
    """One line of the ledger. ``points`` is signed; ``at_ms`` is when it took effect."""

    id: str
    kind: Kind
    points: int
    at_ms: int
    source_event_id: str
    transaction_id: str
    rule_version: str
    rule_id: str
    multiplier: int
    reason: str

    def __init__(self, id: str, kind: Kind, points: int, at_ms: int, source_event_id: str,  # noqa: A002
                 transaction_id: str, rule_version: str, rule_id: str, multiplier: int, reason: str) -> None:
        # The slots' own setters: a frozen dataclass's generated __init__ goes through
        # object.__setattr__ by name, twice as slow, and one entry is built per purchase.
        _ENTRY_SET(self, id, kind, points, at_ms, source_event_id, transaction_id, rule_version, rule_id,
                   multiplier, reason)

    def __reduce__(self) -> tuple[Any, ...]:
        # The ten values in __init__'s order pickle in C; a slotted dataclass's own __getstate__ is a Python
        # call per entry (a customer's state record, pickled at every state write, 14.9 -> 8.0 µs of entries).
        return LedgerEntry, (self.id, self.kind, self.points, self.at_ms, self.source_event_id, self.transaction_id,
                             self.rule_version, self.rule_id, self.multiplier, self.reason)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict, the time as ISO-8601 with milliseconds and ``Z``."""
        return {
            "id": self.id,
            "kind": self.kind,
            "points": self.points,
            "at": iso_ms(self.at_ms),
            "reason": self.reason,
            "source_event_id": self.source_event_id,
            "transaction_id": self.transaction_id,
            "rule_version": self.rule_version,
            "rule_id": self.rule_id,
            "multiplier": self.multiplier,
        }


def _entry_setter() -> Callable[..., None]:
    setters = tuple(LedgerEntry.__dict__[f.name].__set__ for f in fields(LedgerEntry))
    if len(setters) != 10:  # pragma: no cover - __init__ above names the ten fields
        raise TypeError("LedgerEntry's fields and its __init__ disagree")
    s0, s1, s2, s3, s4, s5, s6, s7, s8, s9 = setters

    def set_all(entry: LedgerEntry, *values: Any) -> None:
        v0, v1, v2, v3, v4, v5, v6, v7, v8, v9 = values
        s0(entry, v0)
        s1(entry, v1)
        s2(entry, v2)
        s3(entry, v3)
        s4(entry, v4)
        s5(entry, v5)
        s6(entry, v6)
        s7(entry, v7)
        s8(entry, v8)
        s9(entry, v9)

    return set_all


_ENTRY_SET = _entry_setter()


def _entry_id(source_event_id: str, transaction_id: str, kind: Kind, generation: str = "") -> str:
    """``{source}:{transaction}:{kind}``, plus ``@{generation}`` for a ledger folded again (see LoyaltyState)."""
    entry_id = f"{source_event_id}:{transaction_id}:{kind}"
    return f"{entry_id}@{generation}" if generation else entry_id


class Lot:
    """The points one purchase earned and what happened to them since. Mutable, like the state."""

    __slots__ = (
        "currency",
        "earn_id",
        "event_id",
        "expires_ms",
        "generation",
        "lines",
        "ms",
        "multiplier",
        "points",
        "refunded_minor",
        "refunds",
        "reversal_adjusted",
        "reversed_points",
        "rule_id",
        "rule_version",
        "total_minor",
        "transaction_id",
    )

    def __init__(
        self,
        event_id: str,
        ms: int,
        transaction_id: str,
        total_minor: int,
        currency: str,
        points: int,
        multiplier: int,
        rule_version: str,
        rule_id: str,
        expires_ms: int,
        lines: tuple[tuple[str, str, int, int], ...] = (),
        generation: str = "",
    ) -> None:
        self.event_id = event_id
        self.ms = ms
        self.transaction_id = transaction_id
        self.total_minor = total_minor
        self.currency = currency
        self.points = points
        self.multiplier = multiplier
        self.rule_version = rule_version
        self.rule_id = rule_id
        self.expires_ms = expires_ms
        # The basket, to score the purchase again when a late invitation arrives (None: a lot pickled before).
        self.lines: tuple[tuple[str, str, int, int], ...] | None = lines
        self.generation = generation  # of the ledger it was scored in (its expiry's id carries it)
        self.earn_id = _entry_id(event_id, transaction_id, "earn", generation)
        self.refunds: dict[str, tuple[int, int, str]] = {}  # refund_id -> (ms, amount_minor, entry id)
        self.refunded_minor = 0  # sum of refunds' amounts (derived from ``refunds``)
        self.reversed_points = 0  # points reversed so far, >= 0 (derived from the entries)
        self.reversal_adjusted = 0  # of which adjustments reversed (a refunded purchase scored again)

    def __setstate__(self, state: Any) -> None:
        # A lot pickled before re-scoring: no basket kept (it cannot be scored again), nothing adjusted.
        restore_slots(self, state, {"lines": lambda: None, "reversal_adjusted": int, "generation": str})

    def __reduce__(self) -> tuple[Any, ...]:
        # A tuple of the values in _LOT_PICKLED's order: pickled in C, without the slot names a default
        # pickle writes per lot.
        return _restored_lot, tuple([getattr(self, name) for name in _LOT_PICKLED])

    @property
    def expiry_id(self) -> str:
        """The id of this lot's expiry entry."""
        return _entry_id(self.event_id, self.transaction_id, "expiry", self.generation)

    def _key(self) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name in Lot.__slots__)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Lot) and self._key() == other._key()

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Lot({self.transaction_id!r}, points={self.points}, reversed={self.reversed_points})"

    def copy(self) -> Lot:
        """An independent copy (merges must not share mutable lots between states)."""
        lot = Lot.__new__(Lot)
        for name in Lot.__slots__:
            setattr(lot, name, getattr(self, name))
        lot.refunds = dict(self.refunds)
        return lot


_LOT_PICKLED = ("event_id", "ms", "transaction_id", "total_minor", "currency", "points", "multiplier",
                "rule_version", "rule_id", "expires_ms", "lines", "earn_id", "refunds", "refunded_minor",
                "reversed_points", "reversal_adjusted", "generation")
"""The order of a pickled lot's values. Append a new slot at the end: an older pickle's lot lacks only the last."""


def _restored_lot(*values: Any) -> Lot:
    """The lot :meth:`Lot.__reduce__` pickled; slots missing from an older pickle get their defaults."""
    lot = Lot.__new__(Lot)
    lot.__setstate__((None, dict(zip(_LOT_PICKLED, values, strict=False))))
    return lot


class LoyaltyState:
    """One customer's loyalty facts. Mutable; written only by this module's functions."""

    __slots__ = ("entries", "generation", "invitations", "lots", "refunds")

    def __init__(self) -> None:
        # Non-empty for a ledger folded again from its events (a component identity resolved again in
        # event-time order): every id it issues ends ``@<generation>``, so none meets an entry published
        # before (those are withdrawn by entries of their own).
        self.generation = ""
        self.entries: dict[str, LedgerEntry] = {}
        self.lots: dict[str, Lot] = {}  # transaction_id -> lot
        self.refunds: dict[str, str] = {}  # refund_id -> transaction_id
        # campaign_id -> its invitations in event-time order, (time, event id): a purchase is scored with the
        # latest one before it, whatever arrived first
        self.invitations: dict[str, tuple[Invitation, ...]] = {}

    def __setstate__(self, state: Any) -> None:
        restore_slots(self, state, {"generation": str})
        # Pickled before invitation histories: one (the latest) invitation per campaign.
        self.invitations = {campaign: (found,) if isinstance(found, Invitation) else found
                            for campaign, found in self.invitations.items()}

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, LoyaltyState)
            and self.entries == other.entries
            and self.lots == other.lots
            and self.refunds == other.refunds
            and self.invitations == other.invitations
        )

    __hash__ = None  # type: ignore[assignment]


def add_months(ms: int, months: int) -> int:
    """``ms`` moved by calendar ``months`` (UTC), the day clamped to the month's end (31 Jan + 1 = 28/29 Feb)."""
    # UTC has no DST: the time of day is kept, only the date moves. The date arithmetic is
    # cached per (day, months) (once per purchase it cost ~4 % of the fold).
    day, rem = divmod(ms, DAY_MS)
    moved = _MOVED_DAYS.get((day, months))
    if moved is None:
        moved = _add_months_days(day, months)
    return moved * DAY_MS + rem


_MOVED_DAYS: dict[tuple[int, int], int] = {}


def _add_months_days(day: int, months: int) -> int:
    """Days since the epoch ``day`` moved by calendar ``months`` (cached in :data:`_MOVED_DAYS`)."""
    instant = _EPOCH + timedelta(days=day)
    year, month0 = divmod(instant.month - 1 + months, 12)
    year += instant.year
    clamped = min(instant.day, calendar.monthrange(year, month0 + 1)[1])
    moved = epoch_ms(instant.replace(year=year, month=month0 + 1, day=clamped)) // DAY_MS
    if len(_MOVED_DAYS) >= 1 << 16:
        _MOVED_DAYS.clear()
    _MOVED_DAYS[day, months] = moved
    return moved


def balance(state: LoyaltyState) -> int:
    """The sum of the materialised entries (expiries not yet materialised are not in it)."""
    return sum(entry.points for entry in state.entries.values())


def on_purchase(
    state: LoyaltyState, event_id: str, ms: int, payload: PurchasePayload, rules: LoyaltyRules
) -> list[LedgerEntry]:
    """Score a purchase and record its earn entry and lot.

    :param event_id: the purchase event's id (the entry's source).
    :param ms: its event time.
    :returns: the new entries: one earn entry, or none for a transaction
        already in the ledger (a redelivery or a resend).
    :raises NoRulesInForce: ``ms`` is before the first rule version.
    """
    if payload.transaction_id in state.lots:
        return []
    version = rules.version_at(ms)
    facts = purchase_facts(ms, payload)
    result = score(facts, version, invitations_before(state, ms, event_id))
    rule_id = "+".join(result.rule_ids) or "base"
    lot = Lot(
        event_id,
        ms,
        payload.transaction_id,
        payload.total_minor,
        payload.currency,
        result.points,
        result.multiplier,
        version.version,
        rule_id,
        add_months(ms, version.expiry_months),
        facts.lines,
        state.generation,
    )
    entry = LedgerEntry(
        lot.earn_id,
        "earn",
        result.points,
        ms,
        event_id,
        payload.transaction_id,
        version.version,
        rule_id,
        result.multiplier,
        result.reason,
    )
    state.lots[payload.transaction_id] = lot
    state.entries[entry.id] = entry
    return [entry]


def on_campaign(
    state: LoyaltyState, event_id: str, ms: int, payload: CampaignPayload, rules: LoyaltyRules
) -> list[LedgerEntry]:
    """Record an ``invited`` campaign event; other actions change nothing.

    A purchase counts, per campaign, the latest invitation before it in event time (``(time, event id)``).
    An invitation that arrives after purchases it precedes (a late one) scores those purchases again
    (:func:`rescore`): where the points differ, an ``adjustment`` entry carries the difference, with its
    reason; the earn entry already published stays as it was. A purchase whose points expired keeps them.

    :returns: the adjustment entries (none for an invitation in time, or one already recorded).
    """
    if payload.action != "invited":
        return []
    invitation = Invitation(
        payload.campaign_id,
        event_id,
        ms,
        None if payload.starts_at is None else epoch_ms(payload.starts_at),
        None if payload.ends_at is None else epoch_ms(payload.ends_at),
        payload.multiplier,
    )
    if not _record_invitation(state.invitations, invitation):
        return []
    return rescore(state, rules, event_id, f"campaign {payload.campaign_id} invitation arrived after the purchase",
                   payload.campaign_id)


def rescore(state: LoyaltyState, rules: LoyaltyRules, cause_event_id: str, why: str,
            campaign_id: str | None = None) -> list[LedgerEntry]:
    """Score every purchase again with the invitations before it; an ``adjustment`` entry per changed one.

    Called when the invitations a purchase counts may have changed after it was scored: a late
    invitation, or a merge that brought another customer's invitations. An adjustment carries the
    difference in points, net of what the purchase's refunds reverse of it (so a refunded share is
    reversed from the new points, as if they had been earned at once); its id is
    ``{cause_event_id}:{transaction_id}:adjustment``. A purchase whose points expired keeps them.
    Only purchases inside the window of an invitation (of ``campaign_id``, if given) can change.
    """
    longest = max(version.campaign_window_days for version in rules.versions)
    windows = [invitation.window(longest) for campaign, history in state.invitations.items()
               if campaign_id is None or campaign == campaign_id for invitation in history]
    if not windows:
        return []
    out = []
    for lot in sorted(state.lots.values(), key=lambda lot: (lot.ms, lot.event_id)):
        if (lot.lines is not None and lot.expiry_id not in state.entries
                and any(start <= lot.ms < end for start, end in windows)):
            entry = _rescored(state, lot, rules, cause_event_id, why)
            if entry is not None:
                out.append(entry)
    return out


def invitations_before(state: LoyaltyState, ms: int, event_id: str) -> list[Invitation]:
    """Per campaign, the latest invitation before ``(ms, event_id)`` in event time: what a purchase then counts."""
    found = []
    at = (ms, event_id)
    for history in state.invitations.values():
        for invitation in reversed(history):
            if (invitation.ms, invitation.event_id) < at:
                found.append(invitation)
                break
    return found


def _record_invitation(invitations: dict[str, tuple[Invitation, ...]], invitation: Invitation) -> bool:
    """Add ``invitation`` to its campaign's history in event-time order; False: recorded already."""
    history = invitations.get(invitation.campaign_id, ())
    if any(known.event_id == invitation.event_id for known in history):
        return False
    invitations[invitation.campaign_id] = tuple(
        sorted((*history, invitation), key=lambda known: (known.ms, known.event_id)))
    return True


def _rescored(state: LoyaltyState, lot: Lot, rules: LoyaltyRules, cause_event_id: str, why: str) -> LedgerEntry | None:
    """Score ``lot``'s purchase again; the adjustment entry, or None when its points do not change."""
    version = rules.version_named(lot.rule_version)
    assert lot.lines is not None, "a lot without its basket is never scored again"
    facts = PurchaseFacts(lot.ms, lot.total_minor, lot.lines, lot.transaction_id)
    result = score(facts, version, invitations_before(state, lot.ms, lot.event_id))
    if result.points == lot.points:
        return None
    earned = result.points - lot.points
    # The refunds so far reverse floor(P * R / T) of the new points P, as they would have at once.
    target = result.points * min(lot.refunded_minor, lot.total_minor) // lot.total_minor if lot.total_minor else 0
    reversed_more = target - lot.reversed_points
    rule_id = "+".join(result.rule_ids) or "base"
    refunded = f", {reversed_more:+d} reversed with its refunds" if reversed_more else ""
    entry = LedgerEntry(
        _entry_id(cause_event_id, lot.transaction_id, "adjustment", state.generation),
        "adjustment",
        earned - reversed_more,
        lot.ms,
        cause_event_id,
        lot.transaction_id,
        version.version,
        rule_id,
        result.multiplier,
        f"{why}: {result.reason} ({result.points} points instead of {lot.points}{refunded})",
    )
    state.entries[entry.id] = entry
    lot.points, lot.multiplier, lot.rule_id = result.points, result.multiplier, rule_id
    lot.reversed_points = target
    lot.reversal_adjusted += reversed_more
    return entry


def _expired_points(state: LoyaltyState, lot: Lot) -> int:
    entry = state.entries.get(lot.expiry_id)
    return 0 if entry is None else -entry.points


def _expiry_entry(state: LoyaltyState, lot: Lot) -> LedgerEntry | None:
    """The expiry entry ``lot`` is due, or None (already materialised, or nothing left)."""
    if lot.expiry_id in state.entries:
        return None
    left = lot.points - lot.reversed_points
    if left <= 0:
        return None
    return LedgerEntry(
        lot.expiry_id,
        "expiry",
        -left,
        lot.expires_ms,
        lot.event_id,
        lot.transaction_id,
        lot.rule_version,
        lot.rule_id,
        lot.multiplier,
        f"expired: {left} points earned {iso_ms(lot.ms)[:10]} on transaction {lot.transaction_id}",
    )


def on_refund(state: LoyaltyState, event_id: str, ms: int, payload: RefundPayload) -> list[LedgerEntry]:
    """Reverse the points of a refunded share of a purchase.

    After refunds totalling R of a purchase of total T that earned P points,
    ``floor(P * min(R, T) / T)`` points are reversed in total, less any
    already expired (see the module docstring). Rules are not consulted:
    the reversal follows what the purchase actually earned.

    :param event_id: the refund event's id (the entry's source).
    :param ms: its event time.
    :returns: the new entries: the reversal (0 points when nothing is left to
        reverse), preceded by the lot's expiry when the refund comes after it;
        none for a refund id already applied.
    :raises UnknownPurchase: the transaction is not in this ledger.
    :raises RefundRejected: the refund's currency is not the purchase's.
    """
    refund_id = payload.refund_id
    if refund_id in state.refunds:
        return []
    tx = payload.transaction_id
    lot = state.lots.get(tx)
    if lot is None:
        raise UnknownPurchase(
            refund_id,
            tx,
            "no purchase with this transaction id in the customer's ledger (another customer's, "
            "not merged yet, or the purchase has not arrived)",
        )
    if payload.currency != lot.currency:
        raise RefundRejected(refund_id, tx, f"currency {payload.currency} but the purchase was in {lot.currency}")
    out: list[LedgerEntry] = []
    if ms >= lot.expires_ms:
        # The points had expired when the refund happened: expire them first, the refund finds nothing.
        expiry = _expiry_entry(state, lot)
        if expiry is not None:
            state.entries[expiry.id] = expiry
            out.append(expiry)
    refunded = lot.refunded_minor + payload.amount_minor
    target = lot.points * min(refunded, lot.total_minor) // lot.total_minor if lot.total_minor else 0
    left = lot.points - lot.reversed_points - _expired_points(state, lot)
    points = max(0, min(target - lot.reversed_points, left))
    if points < target - lot.reversed_points:
        reason = f"refund of {_money(payload.amount_minor)} after the points expired: nothing left to reverse"
    else:
        reason = (
            f"refund of {_money(payload.amount_minor)} ({_money(refunded)} of {_money(lot.total_minor)} refunded): "
            f"{lot.reversed_points + points} of {lot.points} points reversed"
        )
    entry = LedgerEntry(
        _entry_id(event_id, tx, "reversal", state.generation),
        "reversal",
        -points,
        ms,
        event_id,
        tx,
        lot.rule_version,
        lot.rule_id,
        lot.multiplier,
        reason,
    )
    state.entries[entry.id] = entry
    lot.refunds[refund_id] = (ms, payload.amount_minor, entry.id)
    lot.refunded_minor = refunded
    lot.reversed_points += points
    state.refunds[refund_id] = tx
    out.append(entry)
    return out


def pending_expiries(state: LoyaltyState, up_to_ms: int) -> list[LedgerEntry]:
    """The expiry entries due by ``up_to_ms`` and not materialised, oldest lot first. Reads only."""
    due = [lot for lot in state.lots.values() if lot.expires_ms <= up_to_ms]
    due.sort(key=lambda lot: (lot.ms, lot.event_id))
    return [entry for lot in due if (entry := _expiry_entry(state, lot)) is not None]


def expire(state: LoyaltyState, up_to_ms: int) -> list[LedgerEntry]:
    """Materialise the expiries due by ``up_to_ms``, oldest first; again for the same instant adds nothing.

    Each lot expires ``expiry_months`` (of the version it was earned under)
    after it was earned, taking what is left of it.
    """
    entries = pending_expiries(state, up_to_ms)
    for entry in entries:
        state.entries[entry.id] = entry
    return entries


def earned_12m(state: LoyaltyState, as_of_ms: int, window_months: int = 12) -> int:
    """Points earned in the tier window ending at ``as_of_ms``, net of refunds up to then.

    Lots earned in ``(as_of - window_months, as_of]``, each counting its
    points minus its reversals dated ``<= as_of``. Expiry does not count.
    """
    start = add_months(as_of_ms, -window_months)
    entries = state.entries
    total = 0
    for lot in state.lots.values():
        if start < lot.ms <= as_of_ms:
            total += lot.points
            for refund_ms, _, entry_id in lot.refunds.values():
                if refund_ms <= as_of_ms:
                    total += entries[entry_id].points
    return total


def tier_at(state: LoyaltyState, as_of_ms: int, rules: LoyaltyRules) -> tuple[str | None, int]:
    """``(tier name, earned_12m)`` as of ``as_of_ms`` under the version in force then; ``(None, 0)`` before the first
    version (no programme yet: a history backfilled from before it scored nothing then)."""
    try:
        version = rules.version_at(as_of_ms)
    except NoRulesInForce:
        return None, 0
    earned = earned_12m(state, as_of_ms, version.tier_window_months)
    name = version.tiers[0].name
    for tier in version.tiers:
        if earned >= tier.min_points:
            name = tier.name
    return name, earned


def summary(state: LoyaltyState, as_of_ms: int, rules: LoyaltyRules, recent: int = 20) -> dict[str, Any]:
    """The loyalty card as of ``as_of_ms``; reads the state, never writes it.

    :returns: ``{"balance", "tier", "earned_12m", "entry_count", "entries"}``:
        balance is the sum of every entry's points, including the expiries due
        by ``as_of_ms``; ``entries`` are the ``recent`` newest by ``(at, id)``,
        newest first, as :meth:`LedgerEntry.to_json`.
    """
    entries = [*state.entries.values(), *pending_expiries(state, as_of_ms)]
    tier, earned = tier_at(state, as_of_ms, rules)
    newest = heapq.nlargest(recent, entries, key=lambda entry: (entry.at_ms, entry.id))
    return {
        "balance": sum(entry.points for entry in entries),
        "tier": tier,
        "earned_12m": earned,
        "entry_count": len(entries),
        "entries": [entry.to_json() for entry in newest],
    }


def merge(into: LoyaltyState, other: LoyaltyState) -> None:
    """Fold ``other`` into ``into`` in place (an identity merge): no entry lost or doubled.

    Unions by id; where two copies of one fact differ a total order picks
    one, so the result does not depend on which side survives or on how
    often the merge is repeated. ``other`` is not modified.
    """
    entries = into.entries
    for entry_id, entry in other.entries.items():
        mine = entries.get(entry_id)
        if mine is None or entry < mine:
            entries[entry_id] = entry
    for tx, theirs in other.lots.items():
        mine_lot = into.lots.get(tx)
        if mine_lot is None:
            into.lots[tx] = theirs.copy()
            continue
        keep = theirs.copy() if (theirs.ms, theirs.event_id) < (mine_lot.ms, mine_lot.event_id) else mine_lot
        refunds = dict(mine_lot.refunds)
        for refund_id, fact in theirs.refunds.items():
            old = refunds.get(refund_id)
            if old is None or fact < old:
                refunds[refund_id] = fact
        keep.refunds = refunds
        into.lots[tx] = keep
    for refund_id, tx in other.refunds.items():
        old_tx = into.refunds.get(refund_id)
        into.refunds[refund_id] = tx if old_tx is None else min(tx, old_tx)
    for history in other.invitations.values():
        for invitation in history:
            _record_invitation(into.invitations, invitation)
    for lot in into.lots.values():  # derived counters follow the merged facts
        lot.refunded_minor = sum(amount for _, amount, _ in lot.refunds.values())
        lot.reversed_points = lot.reversal_adjusted - sum(entries[entry_id].points
                                                          for _, _, entry_id in lot.refunds.values())


# -- rules files --------------------------------------------------------------


def _line_of(node: yaml.Node, loc: tuple[str | int, ...]) -> int:
    """The 1-based line of the value at ``loc``, or of the deepest node found on the way."""
    for part in loc:
        child: yaml.Node | None = None
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode) and key.value == str(part):
                    child = value
                    break
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
            child = node.value[part]
        if child is None:
            break
        node = child
    return int(node.start_mark.line) + 1


def _duplicate_keys(node: yaml.Node, source: str) -> None:
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode):
                if key.value in seen:
                    raise ConfigError(f"{source}:{key.start_mark.line + 1}: key {key.value!r} given twice")
                seen.add(key.value)
            _duplicate_keys(value, source)
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            _duplicate_keys(item, source)


def parse_rules(text: str, source: str = "<rules>") -> LoyaltyRules:
    """Validate rules from YAML (or JSON, a subset of it) text.

    :param source: the file name used in messages.
    :raises ConfigError: naming ``source``, the line and the field of each problem.
    """
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{source}{where}: not valid YAML or JSON: {problem}") from exc
    if node is None:
        raise ConfigError(f"{source}: the loyalty rules file is empty")
    _duplicate_keys(node, source)
    try:
        return LoyaltyRules.model_validate(data)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            loc = tuple(error["loc"])
            sub_loc = (error.get("ctx") or {}).get("sub_loc")
            if sub_loc and error["type"] == "loyalty_rules":
                loc += tuple(sub_loc)
            where = f"{source}:{_line_of(node, loc)}: {_dotted(loc) or '(top level)'}"
            problems.append(f"{where}: {_message(error['msg'])}")
        raise ConfigError("invalid loyalty rules:\n  " + "\n  ".join(problems)) from exc


def load_rules(path: str | os.PathLike[str]) -> LoyaltyRules:
    """Read and validate a rules file (YAML or JSON).

    :raises ConfigError: the file cannot be read or is invalid; the message
        names the file and the line of each bad value.
    """
    source = os.fspath(path)
    try:
        text = Path(source).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{source}: cannot read the loyalty rules file: {exc}") from exc
    return parse_rules(text, source)


@functools.cache
def default_rules() -> LoyaltyRules:
    """The rules shipped next to this module (``loyalty_rules.yaml``)."""
    resource = resources.files(__package__ or "touchpoint.core") / RULES_FILE
    return parse_rules(resource.read_text(encoding="utf-8"), f"{__package__}/{RULES_FILE}")
