"""The offline fold: JSON-lines events through identity and profile, to one JSON document.

``touchpoint fold`` and the tests call :func:`fold_to_json`; the workers run
the same pure pieces (:func:`~touchpoint.core.normalise.normalise`,
:func:`~touchpoint.core.identity.resolve` / ``apply``,
:func:`~touchpoint.core.profile.evolve` / ``merge_views``) one event at a
time, which is what :class:`Folder` does in a loop.

Per event, in log order:

1. **validate** against the contract (the same checks as
   :func:`~touchpoint.contract.models.validate_event`; the JSON text is
   validated directly by pydantic, which is several times faster than
   ``json.loads`` plus dict validation; first by the stricter
   :mod:`touchpoint.contract.fast` check, and what it refuses by the
   contract's own model, so exactly what the contract accepts is accepted;
   a failure is re-checked by ``validate_event`` so the reason is the
   contract's own wording);
2. **event time**: when the caller gives ``now_for_validation`` (or
   ``as_of``) events more than 24h after it are rejected, as on ingest. With
   neither, a historic file is judged by its own clock, never the wall clock:
   an event more than ``max_ahead_days`` after the latest event accepted
   before it is rejected (a producer with a wrong clock);
3. **normalise** every identifier; one invalid identifier rejects the event;
4. **resolve** identity and **apply** its decisions (:meth:`Folder.identify`,
   identity's half: what the identity agent runs). Then the profile's half
   (:meth:`Folder.follow`, what the profile agent runs, per partition): the
   views of merged customers are merged into the survivor's (open alert
   episodes of a merged customer are resolved, ``merged``; ledgers merge as
   a union), and what needs history is checked: a refund must name a
   purchase of that customer, and the refunds of a purchase may not total
   more than it, in the purchase's currency. A refund refused here keeps its
   identity decisions and identifiers (identity judged those) and changes
   nothing else;
5. **evolve** the customer's view, and **score** loyalty: a purchase earns,
   a refund reverses, a campaign invitation is remembered
   (:mod:`touchpoint.core.loyalty`). A purchase dated before every rules
   version earns nothing and is listed in ``loyalty_unscored``.

Ticks. Time passing without events is in the log too: a line (or, on the
topic, a record) ``{"tick": "<ISO-8601>"}`` from the clock moves the log's
clock there. At a tick, points due to expire are expired, and the customers
whose alert decision is due (any event since the last tick, or a dormancy or
churn window edge, from a due-time index: no scan of all customers) are
decided by :mod:`touchpoint.core.alerts`. The clock never goes backwards.
``fold(as_of=T)`` applies a final tick at T. Alerts and expiries therefore
depend only on the log, so a replay raises the same alerts.

A rejected event is listed with its reason. The result is
``{"customers": [...], "identity_decisions": [...], "loyalty_unscored": [...],
"rejected": [...]}``,
customers sorted by id and rendered ``as_of`` (default: the latest event time
accepted), each card with its life-cycle stage and, given a value model, its
value (:meth:`Folder.rendered`); :func:`fold_to_json` writes it with sorted keys and no white space,
so two folds of one file are byte-identical.
"""

from __future__ import annotations

import gc
import json
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, Self, cast

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from touchpoint.contract.fast import validate_json as validate_fast
from touchpoint.contract.models import ContractViolation, Event, validate_event
from touchpoint.core.alerts import KINDS as ALERT_KINDS
from touchpoint.core.alerts import (
    Alert,
    AlertConfig,
    AlertState,
    DueIndex,
    close_erased,
    decide,
    next_due_ms,
    retire,
)
from touchpoint.core.identifiers import IDENTIFIER_KINDS
from touchpoint.core.identity import (
    DEFAULT_LIMITS,
    Decision,
    IdentityConfig,
    IdentityState,
    Linked,
    Merged,
    Minted,
    Refolded,
    apply,
    forget,
    note_first,
    replace_component,
    resolve,
)
from touchpoint.core.instants import any_zone_ms, epoch_ms
from touchpoint.core.lifecycle import StageRules, lifecycle, spend_by_day
from touchpoint.core.loyalty import (
    LedgerEntry,
    LoyaltyRules,
    LoyaltyState,
    NoRulesInForce,
    UnknownPurchase,
    default_rules,
    expire,
    load_rules,
    on_campaign,
    on_purchase,
    on_refund,
    rescore,
)
from touchpoint.core.normalise import Identifier, InvalidIdentifier, normalise
from touchpoint.core.profile import (
    CustomerView,
    SegmentConfig,
    alert_context,
    alert_inputs,
    evolve,
    merge_views,
    note_identifiers,
    render,
    segment_of,
)
from touchpoint.errors import ConfigError
from touchpoint.jsontext import printable

if TYPE_CHECKING:
    from touchpoint.core.value import ValueModel

__all__ = ["FoldConfig", "Folder", "Handover", "Refold", "Rejected", "Step", "fold", "fold_to_json"]

_DAY_MS = 86_400_000
_LOYALTY_TYPES = frozenset({"purchase", "refund", "campaign"})
_CACHE_SIZE = 1 << 19


class FoldConfig(BaseModel):
    """Knobs of the fold, loadable from a JSON file (:meth:`load`).

    :param limits: per-kind identifier limits per customer (defaults in
        :data:`~touchpoint.core.identity.DEFAULT_LIMITS`; kinds not given keep
        theirs).
    :param shared: identifier keys (``"phone:3f…"``, as identity decisions
        print them) marked shared: they link nobody.
    :param shared_identifiers: the same by clear value, kind -> values; they
        are normalised and keyed with the fold's secret.
    :param segment: RFM window and value-segment thresholds.
    :param region: default region of national phone numbers.
    :param max_ahead_days: without a ``now``, how far after the latest
        accepted event an event may be.
    :param alerts: dormancy and churn thresholds.
    :param loyalty_rules: a loyalty rules file (YAML or JSON, see
        :func:`~touchpoint.core.loyalty.load_rules`); default the shipped rules.
    :param value_model: a value model file (``touchpoint value fit --out``): the
        rendered customers carry their ``value`` scored with it.
    :param stages: the day counts of the life-cycle stages
        (:mod:`touchpoint.core.lifecycle`).
    :param refund_hold_days: how long a refund of a purchase its customer does
        not hold waits for it (in log time, from the later of its event time and
        the log's clock when it arrived) before it is rejected.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    limits: dict[str, int] = Field(default_factory=lambda: dict(DEFAULT_LIMITS))
    shared: frozenset[str] = frozenset()
    shared_identifiers: dict[str, list[str]] = Field(default_factory=dict)
    segment: SegmentConfig = Field(default_factory=SegmentConfig)
    region: str = "GB"
    max_ahead_days: int = Field(default=30, ge=1)
    loyalty_rules: Path | None = None
    value_model: Path | None = None
    stages: StageRules = Field(default_factory=StageRules)
    alerts: AlertConfig = Field(default_factory=AlertConfig)
    refund_hold_days: int = Field(default=30, ge=0)

    @field_validator("limits")
    @classmethod
    def _limits(cls, value: dict[str, int]) -> dict[str, int]:
        IdentityConfig(limits=value)  # raises ValueError with the reason
        return {**DEFAULT_LIMITS, **value}

    @field_validator("shared_identifiers")
    @classmethod
    def _kinds(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        for kind in value:
            if kind not in IDENTIFIER_KINDS:
                raise ValueError(f"unknown identifier kind {kind!r}; known: {', '.join(IDENTIFIER_KINDS)}")
        return value

    @classmethod
    def load(cls, path: str | Path) -> Self:
        """Read a config from a JSON file.

        :raises ConfigError: the file cannot be read, is not JSON, or does not
            fit (each problem named with its field).
        """
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read fold config {path}: {exc.strerror or exc}") from exc
        try:
            return cls.model_validate_json(text)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(map(str, err['loc'])) or '(config)'}: {err['msg'].removeprefix('Value error, ')}"
                for err in exc.errors(include_url=False)
            )
            raise ConfigError(f"fold config {path} is invalid: {problems}") from exc

    def identity_config(self, secret: bytes) -> IdentityConfig:
        """The identity guardrails, clear shared identifiers keyed with ``secret``."""
        shared = set(self.shared)
        for kind, values in self.shared_identifiers.items():
            for value in values:
                try:
                    shared.add(normalise(kind, value, region=self.region, secret=secret).key)
                except InvalidIdentifier as exc:
                    raise ConfigError(f"shared_identifiers: {exc}") from exc
        return IdentityConfig(limits=self.limits, shared=frozenset(shared))


def tick_of(doc: object) -> int | None:
    """The instant (epoch ms) of a tick record ``{"tick": "<ISO-8601>"}``, or None if it is not one."""
    if not isinstance(doc, dict) or list(doc) != ["tick"] or not isinstance(doc["tick"], str):
        return None
    try:
        at = datetime.fromisoformat(doc["tick"].replace("Z", "+00:00"))
    except ValueError:
        return None
    return None if at.tzinfo is None else epoch_ms(at)


class Handover(NamedTuple):
    """A customer's view and due times, moving to the Folder of the customer it merged into."""

    view: CustomerView
    alert_due_ms: int | None
    expiry_due_ms: int | None


class Who(NamedTuple):
    """What identity reads of an event: its id, its time in epoch ms, and its identifiers (kind -> value)."""

    event_id: str
    ms: int
    identifiers: Mapping[str, str]


def _named(decisions: Iterable[Decision]) -> set[str]:
    """The customer ids identity decisions name."""
    named: set[str] = set()
    for decision in decisions:
        if isinstance(decision, Merged):
            named.update((decision.survivor, decision.merged))
        elif not isinstance(decision, Refolded):
            named.add(decision.customer_id)
    return named


def _earliest(*times: int | None) -> int | None:
    """The earliest of the times given (None: not due at all)."""
    return min((t for t in times if t is not None), default=None)


def _next_held(view: CustomerView) -> int | None:
    """The earliest deadline of the view's held refunds (None: it holds none)."""
    return min((held[4] for held in view.held.values()), default=None)


class Rejected(Exception):
    """An event the fold cannot take (internal: becomes a ``rejected`` entry)."""


class Step(NamedTuple):
    """One event of a component resolved again in event-time order, with what identity decided for it."""

    position: int
    event: Event
    customer_id: str
    decisions: tuple[Decision, ...]
    attributed: tuple[Identifier, ...]
    ms: int
    aliases: tuple[str, ...] = ()  # ids not live any more that resolve to the customer this step mints


class Refold(NamedTuple):
    """A component to fold again: its live customers before, its events in event-time order, and the ids
    that are not live any more with the live id each resolves to now."""

    before: tuple[str, ...]
    steps: list[Step]
    resolved: dict[str, str]
    cause: str


class Folder:
    """Folds events one by one into identity state and customer views (mutable).

    :param config: the fold's knobs.
    :param secret: the identifier key (the ``identifier_key`` setting).
    :param now: judge event times against this instant (ingest's rule); None:
        against the log's own clock (see the module docstring).
    """

    def __init__(self, config: FoldConfig | None = None, *, secret: bytes, now: datetime | None = None,
                 keep_decisions: bool = True, log_clock_check: bool = True,
                 rules: LoyaltyRules | None = None) -> None:
        self.config = config = config or FoldConfig()
        if rules is None:
            rules = load_rules(config.loyalty_rules) if config.loyalty_rules else default_rules()
        self.rules = rules
        #: Scores each customer's ``value`` when the fold renders (None: no value model given).
        self.value_model: ValueModel | None = None
        if config.value_model is not None:
            from touchpoint.core.value import ValueModel  # numpy and scipy load only for a fold that scores value

            try:
                self.value_model = ValueModel.load(config.value_model)
            except ValueError as exc:
                raise ConfigError(str(exc)) from exc
        # A long-running worker publishes decisions and ledger entries as they happen
        # instead of keeping them all.
        self.keep_decisions = keep_decisions
        #: Worker mode: ledger entries issued since the last drain_entries(), with their customer.
        self.new_entries: list[tuple[str, LedgerEntry]] = []
        #: Purchases accepted but not scored (no loyalty rules in force at their time).
        self.unscored: list[dict[str, str]] = []
        #: Worker mode: alert transitions since the last drain_alerts(), each with its context.
        self.new_alerts: list[tuple[Alert, dict[str, Any]]] = []
        #: Worker mode: held refunds folded since the last drain_held() (customer, event), and held refunds
        #: rejected (customer, event, reason, source the caller gave with it).
        self.released: list[tuple[str, Event]] = []
        self.held_rejected: list[tuple[str, Event, str, int]] = []
        #: Refunds held so far (a count: the parallel fold notes which lines held one).
        self.holds = 0
        #: The log's clock as ticks set it (None before the first tick).
        self.clock_ms: int | None = None
        # Who needs a decision at the next tick (alerts), who has points expiring (loyalty).
        self._alert_due = DueIndex()
        self._expiry_due = DueIndex()
        # Since the last drain_changes(): customers whose view changed, and customers merged away.
        self.touched: set[str] = set()
        self.merged_into: dict[str, str] = {}
        # survivor -> the aliases in merged_into that point at it (a merge of a merge re-points them
        # without scanning merged_into, which a fold never drains).
        self._merged_by: dict[str, list[str]] = {}
        #: The customer identity attributed the last added event to (None when identity rejected it;
        #: the log's clock moved otherwise, even if the profile then rejected a refund).
        self.last_customer_id: str | None = None
        self.secret = secret
        self.identity = config.identity_config(secret)
        self.state = IdentityState()
        self.views: dict[str, CustomerView] = {}
        self.decisions: list[Decision] = []
        self.rejected: list[dict[str, str]] = []
        self.now = now
        self.latest_ms: int | None = None
        self._context = {"now": now, "pseudonymised": False}
        # Offline only: a file has no arrival clock. The workers' input was already judged
        # against its arrival time by the ingest agent, and a quiet month is no error there.
        self._ahead_ms = config.max_ahead_days * _DAY_MS if log_clock_check else None
        #: Lines read so far (a rejected line without an event id is named by its number).
        self.lines = 0
        #: The event time (epoch ms) of the last event that reached the clock check (None: none did).
        self.last_event_ms: int | None = None
        # (kind, clear value) -> Identifier: values recur on most events. Bounded unless told otherwise.
        self._normalised: dict[tuple[str, str], Identifier] = {}
        self.cache_limit: int | None = _CACHE_SIZE
        #: Guardrails in event time: reads the events at the given positions again (None: the guardrails
        #: decide in arrival order). :attr:`position` is the position of the event being added.
        self.history: Callable[[Sequence[int]], Sequence[Event]] | None = None
        self.position = -1
        #: Components folded again in event-time order so far.
        self.refolds = 0
        # With a history: per live customer the positions of its events and its latest (ms, event id);
        # the keys its events carried that the guardrails did not give it, and who was refused each key.
        self._positions: dict[str, list[int]] = {}
        self._latest_at: dict[str, tuple[int, str]] = {}
        self._refused_keys: dict[str, set[str]] = {}
        self._refusers: dict[str, set[str]] = {}
        # Customers that were refused a key or hold a key someone was refused: only theirs have a component
        # beyond themselves (marks are never taken back; a stale one costs a look, not a wrong answer).
        self._marked: set[str] = set()
        self._refold: Refold | None = None
        # Alert episodes of ids taken out by reset_view, for their views folded anew.
        self._kept_alerts: dict[str, dict[str, Any]] = {}
        # key -> the earliest (ms, event id) of an event it was attributed on: a late event whose one
        # identifier was attributed before it in event time resolves to its owner deciding nothing.
        self._linked_at: dict[str, tuple[int, str]] = {}
        # position -> (event id, ms, identifiers) of events resolved again once (read and parsed once).
        self._who_at: dict[int, tuple[str, int, tuple[Identifier, ...]]] = {}

    # -- input ----------------------------------------------------------------

    def add_json(self, line: str | bytes) -> list[Decision]:
        """Validate one JSON-lines event and :meth:`add` it; a failure is recorded as rejected."""
        self.lines += 1
        try:
            # The contract's rules as pydantic-core constraints (stricter, never looser); what it
            # refuses, the contract judges below, with its own wording.
            event = validate_fast(line, self._context)
        except ValidationError:
            try:
                event = Event.model_validate_json(line, context=self._context)
            except ValidationError:
                judged = self._slow_validate(line)
                if judged is None:
                    return []
                event = judged
        return self.add(event)

    def add_tick(self, line: str | bytes) -> None:
        """A tick line (``{"tick": "<ISO-8601>"}``, the clock's record): :meth:`tick` at that instant."""
        self.lines += 1
        at = tick_of(json.loads(line))
        if at is None:
            self._reject(f"line {self.lines}", 'not a tick: expected {"tick": "<ISO-8601 instant with zone>"}')
        else:
            self.tick(at)

    def _slow_validate(self, line: str | bytes) -> Event | None:
        """Re-check a failed event with ``validate_event`` for the contract's reason (or take a tick)."""
        try:
            doc = json.loads(line)
        except ValueError as exc:
            self._reject(f"line {self.lines}", f"not JSON: {exc}")
            return None
        if isinstance(doc, dict) and list(doc) == ["tick"]:
            self.lines -= 1
            self.add_tick(line)
            return None
        event_id = doc.get("event_id") if isinstance(doc, dict) else None
        if not isinstance(event_id, str) or not event_id:
            event_id = f"line {self.lines}"
        try:
            return validate_event(doc, self.now)
        except ContractViolation as exc:
            self._reject(event_id, str(exc))
            return None

    def _order_rejections(self, since: int) -> None:
        """Order the rejections since ``since`` (several at one line: held refunds) by event id, as the
        parallel fold merges its parts' rejections of one line."""
        if len(self.rejected) > since + 1:
            self.rejected[since:] = sorted(self.rejected[since:], key=lambda r: r["event_id"])

    def _reject(self, event_id: str, reason: str) -> None:
        # A line's event id may hold a lone surrogate (JSON allows the escape): kept as its escape, printable.
        self.rejected.append({"event_id": printable(event_id), "reason": printable(reason)})

    def add(self, event: Event) -> list[Decision]:
        """Fold one validated event (:meth:`identify`, then :meth:`follow`); returns its identity decisions.

        An event that cannot be taken is appended to :attr:`rejected` with its reason. One
        identity refuses (invalid identifier, time too far ahead) changes nothing; a refund
        the profile refuses (unknown purchase, above it) keeps its identity decisions.
        """
        self.last_customer_id = None
        try:
            customer_id, decisions, attributed, ms = self.identify(event)
        except Rejected as exc:
            self._reject(event.event_id, str(exc))
            return []
        self.last_customer_id = customer_id
        rejected_before = len(self.rejected)
        refold = self.take_refold()
        if refold is not None:
            self._fold_again(refold)
        else:
            try:
                self.follow(event, customer_id, decisions, attributed, ms)
            except Rejected as exc:
                self._reject(event.event_id, str(exc))
        self._order_rejections(rejected_before)  # held refunds its purchase released
        if decisions and self.keep_decisions:
            self.decisions.extend(decisions)
        return list(decisions)

    def drain_changes(self) -> tuple[set[str], dict[str, str]]:
        """Customers changed and customers merged away since the last call (for the workers' output)."""
        touched, merged = self.touched, self.merged_into
        self.touched, self.merged_into = set(), {}
        self._merged_by = {}
        for alias in merged:
            if alias not in self.views:  # one with a view is live again (a component folded anew since)
                touched.discard(alias)
        return touched, merged

    def identify(self, event: Event) -> tuple[str, tuple[Decision, ...], tuple[Identifier, ...], int]:
        """Identity's half of :meth:`add`: check the time, normalise, resolve and apply the decisions.

        Reads and writes identity state and the log's clock, never a view.

        :returns: (customer id, decisions, identifiers attributed to it, event time in epoch ms).
        :raises Rejected: an invalid identifier or a time too far ahead; nothing changed.
        """
        identifiers = cast(Mapping[str, str], event.identifiers)  # a TypedDict of optional strings
        return self.identify_who(Who(event.event_id, any_zone_ms(event.occurred_at), identifiers))

    def identify_who(self, who: Who) -> tuple[str, tuple[Decision, ...], tuple[Identifier, ...], int]:
        """:meth:`identify` from the three things it reads of an event (the live stage has them without the event)."""
        self.last_event_ms = ms = who.ms
        latest = self.latest_ms
        if self.now is None and latest is not None and self._ahead_ms is not None and ms > latest + self._ahead_ms:
            days = (ms - latest) / _DAY_MS
            raise Rejected(
                f"occurred_at: is {days:.1f} days after the latest event before it; "
                f"at most {self.config.max_ahead_days} days ahead is accepted without a clock"
            )
        cache = self._normalised
        try:
            identifiers = tuple([cache.get(pair) or self._normalise(pair) for pair in who.identifiers.items()])
        except InvalidIdentifier as exc:
            raise Rejected(str(exc)) from exc
        at = (ms, who.event_id)
        customer_id, decisions, attributed = resolve(self.state, identifiers, who.event_id, self.identity, at)
        state = self.state
        # The ids this event's decisions name that were live before them (the profile has their views).
        live_before = {c for c in _named(decisions) if c in state.seq and c not in state.alias} if decisions else set()
        if decisions:
            for decision in decisions:
                apply(state, decision)
        note_first(state, customer_id, at)
        if latest is None or ms > latest:
            self.latest_ms = ms
        if self.history is not None and self._track(customer_id, decisions, identifiers, attributed, at):
            refolded = self._resolve_again(customer_id, who.event_id, _named(decisions), live_before)
            if refolded is not None:
                return refolded
        return customer_id, decisions, attributed, ms

    # -- guardrails in event time --------------------------------------------

    def _track(self, customer_id: str, decisions: tuple[Decision, ...], identifiers: tuple[Identifier, ...],
               attributed: tuple[Identifier, ...], at: tuple[int, str]) -> bool:
        """Note the event's position under its customer; True when it is late in a contested component.

        A component whose guardrails never refused anything resolves the same in any order (every
        customer of a prefix is a part of a final one, within the limits); one where they did must
        be resolved again when an event earlier than its latest arrives, unless it carries one
        identifier already attributed before it in event time (then, in event-time order, it
        resolves to that identifier's owner and decides nothing).
        """
        linked_at = self._linked_at
        alone = len(identifiers) == 1 and len(attributed) == 1 and linked_at.get(attributed[0].key, at) < at
        for ident in attributed:
            if at < linked_at.get(ident.key, at) or ident.key not in linked_at:
                linked_at[ident.key] = at
        canonical = self.state.canonical
        positions, latest_at, refused_keys = self._positions, self._latest_at, self._refused_keys
        for decision in decisions:
            if isinstance(decision, Merged):
                merged, survivor = decision.merged, canonical(decision.survivor)
                if merged == survivor:
                    continue
                positions.setdefault(survivor, []).extend(positions.pop(merged, ()))
                theirs = latest_at.pop(merged, None)
                if theirs is not None and theirs > latest_at.get(survivor, theirs):
                    latest_at[survivor] = theirs
                elif theirs is not None:
                    latest_at.setdefault(survivor, theirs)
                keys = refused_keys.pop(merged, None)
                if keys:
                    refused_keys.setdefault(survivor, set()).update(keys)
                if merged in self._marked:
                    self._marked.add(survivor)
            elif isinstance(decision, (Linked, Minted)) and decision.key in self._refusers:
                self._marked.add(canonical(decision.customer_id))
        self._note_refused(customer_id, identifiers, attributed)
        component = self._component(customer_id)
        late = any(latest_at.get(c, at) > at for c in component)
        positions.setdefault(customer_id, []).append(self.position)
        if at > latest_at.get(customer_id, at) or customer_id not in latest_at:
            latest_at[customer_id] = at
        contested = len(component) > 1 or bool(refused_keys.get(customer_id))
        if contested:  # kept, so resolving this component again reads only what came before it was contested
            self._who_at[self.position] = (at[1], at[0], identifiers)
        return late and not alone and contested

    def _note_refused(self, customer_id: str, identifiers: tuple[Identifier, ...],
                      attributed: tuple[Identifier, ...]) -> None:
        """Note the keys the event carried that the guardrails did not give its customer (shared ones aside)."""
        if len(identifiers) == len(attributed):
            return
        shared = self.identity.shared
        kept = {ident.key for ident in attributed}
        for ident in identifiers:
            if ident.key not in kept and ident.key not in shared:
                self._refused_keys.setdefault(customer_id, set()).add(ident.key)
                self._refusers.setdefault(ident.key, set()).add(customer_id)
                self._marked.add(customer_id)
                holder = self.state.owner.get(ident.key)
                if holder is not None:
                    self._marked.add(self.state.canonical(holder))

    def _forget_refused(self, customers: Iterable[str]) -> None:
        """Drop what :meth:`_note_refused` noted for these live customers (and ids merged into them)."""
        canonical, gone = self.state.canonical, set(customers)
        for cid in gone:
            for key in self._refused_keys.pop(cid, ()):
                refusers = {r for r in self._refusers.get(key, ()) if canonical(r) not in gone}
                if refusers:
                    self._refusers[key] = refusers
                else:
                    self._refusers.pop(key, None)

    def take_refold(self) -> Refold | None:
        """The component the last identified event had resolved again, for the profile's half (once)."""
        refold, self._refold = self._refold, None
        return refold

    def _component(self, customer_id: str) -> list[str]:
        """The live customers connected to ``customer_id`` through guardrail refusals (itself included):
        the holders of keys it was refused, and the customers refused keys it holds."""
        if customer_id not in self._marked:
            return [customer_id]
        state, refused_keys, refusers = self.state, self._refused_keys, self._refusers
        seen = {customer_id}
        todo = [customer_id]
        while todo:
            cid = todo.pop()
            met = [state.owner.get(key) for key in refused_keys.get(cid, ())]
            if refusers:
                met += [r for keys in state.keys.get(cid, {}).values() for key in keys
                        for r in refusers.get(key, ())]
            for other in met:
                if other is not None:
                    other = state.canonical(other)
                    if other not in seen:
                        seen.add(other)
                        todo.append(other)
        return sorted(seen)

    def event_of_line(self, line: str | bytes) -> Event:
        """A JSON line read again for :attr:`history` (it was accepted once, so it validates)."""
        try:
            return validate_fast(line, self._context)
        except ValidationError:
            return Event.model_validate_json(line, context=self._context)

    def _resolve_again(self, customer_id: str, cause: str, named: set[str], live_before: set[str],
                       ) -> tuple[str, tuple[Decision, ...], tuple[Identifier, ...], int] | None:
        """Resolve the late event's component again in event-time order; None when nothing changes.

        When the customers or their identifiers differ from what arrival order gave, the component's
        identity state is replaced and :meth:`add` folds its views again (:meth:`_fold_again`).
        """
        assert self.history is not None
        state = self.state
        component = self._component(customer_id)
        positions = sorted({p for c in component for p in self._positions.get(c, ())})
        who_at = self._who_at
        unread = [p for p in positions if p not in who_at]
        for p, event in zip(unread, self.history(unread), strict=True):
            pairs = cast(Mapping[str, str], event.identifiers)
            who_at[p] = (event.event_id, any_zone_ms(event.occurred_at),
                         tuple([self.normalise_pair(pair) for pair in pairs.items()]))
        whos = sorted((who_at[p][1], who_at[p][0], p) for p in positions)
        scratch = IdentityState()
        scratch.erased = state.erased
        resolutions: list[tuple[int, str, tuple[Decision, ...], tuple[Identifier, ...], int]] = []
        for ms, event_id, p in whos:
            at = (ms, event_id)
            cid, decisions, attributed = resolve(scratch, who_at[p][2], event_id, self.identity, at)
            for decision in decisions:
                apply(scratch, decision)
            note_first(scratch, cid, at)
            resolutions.append((p, cid, decisions, attributed, ms))
        was = {p: c for c in component for p in self._positions.get(c, ())}
        now = {p: scratch.canonical(cid) for p, cid, _, _, _ in resolutions}

        def holdings(s: IdentityState, customers: Iterable[str]) -> dict[str, dict[str, frozenset[str]]]:
            return {c: {kind: frozenset(keys) for kind, keys in s.keys.get(c, {}).items() if keys}
                    for c in customers}

        after = sorted({c for c in now.values()})
        if was == now and holdings(state, component) == holdings(scratch, after):
            return None  # arrival order gave what event time gives
        self.refolds += 1
        bodies = dict(zip(positions, self.history(positions), strict=True))
        steps = [Step(p, bodies[p], cid, decisions, attributed, ms)
                 for p, cid, decisions, attributed, ms in resolutions]
        firsts = {c: min(self._positions.get(c, ()), default=None) for c in component}
        moved_to = {c: now[p] for c, p in firsts.items() if p is not None and c not in scratch.seq}
        # The ids of the component with a view: live before the late event's own decisions.
        viewed = sorted({c for c in component if c not in named}
                        | {c for c in live_before if state.canonical(c) in component})
        self._forget_refused(component)
        resolved = replace_component(state, component, scratch, moved_to)
        # The customer a live id's view is made for carries the ids now resolving to it, as a merge would;
        # not one the late event minted for itself in arrival order (no event was ever resolved to it).
        aliases_of: dict[str, list[str]] = {}
        for old, now_id in resolved.items():
            if old not in scratch.seq and (old not in named or old in live_before):
                aliases_of.setdefault(now_id, []).append(old)
        for i, step in enumerate(steps):
            for decision in step.decisions:
                if isinstance(decision, Minted) and decision.customer_id in aliases_of:
                    steps[i] = step._replace(aliases=tuple(sorted(aliases_of.pop(decision.customer_id))))
        for c in component:
            self._positions.pop(c, None)
            self._latest_at.pop(c, None)
        for step in steps:
            cid = now[step.position]
            for ident in step.attributed:
                self._linked_at[ident.key] = min(self._linked_at.get(ident.key, (step.ms, step.event.event_id)),
                                                 (step.ms, step.event.event_id))
            self._positions.setdefault(cid, []).append(step.position)
            at = (step.ms, step.event.event_id)
            if at > self._latest_at.get(cid, at) or cid not in self._latest_at:
                self._latest_at[cid] = at
            self._note_refused(cid, who_at[step.position][2], step.attributed)
        self._refold = Refold(tuple(viewed), steps, resolved, cause)
        current = next(step for step in steps if step.position == self.position)
        reason = (f"{cause} is earlier than events of {', '.join(component)} and the guardrails decide "
                  f"otherwise in event-time order: the component's events were resolved again")
        refolded = Refolded(cause, tuple(component), tuple(after), reason)
        return now[current.position], (refolded,), current.attributed, current.ms

    def _fold_again(self, refold: Refold) -> None:
        """The profile's side of a component resolved again: its views taken out, then folded anew.

        Every event of the component is judged again: a rejection listed before is not listed twice
        (on a worker it goes to the dead-letter topic again), nor an unscored purchase.
        """
        for cid in refold.before:
            self.reset_view(cid, refold.resolved.get(cid), refold.cause)
        ids = {step.event.event_id for step in refold.steps}
        listed = {r["event_id"] for r in self.rejected if r["event_id"] in ids}
        unscored = {u["event_id"] for u in self.unscored if u["event_id"] in ids}
        unscored_before = len(self.unscored)
        for step in refold.steps:
            try:
                self.follow(step.event, step.customer_id, step.decisions, step.attributed, step.ms, step.position,
                            generation=refold.cause, aliases=step.aliases)
            except Rejected as exc:
                if step.event.event_id not in listed:
                    self._reject(step.event.event_id, str(exc))
        self.unscored[unscored_before:] = [u for u in self.unscored[unscored_before:]
                                           if u["event_id"] not in unscored]

    def reset_view(self, customer_id: str, now_id: str | None, cause: str) -> None:
        """Take out the view of an id of a component identity resolved again, to be folded anew from its events.

        Every ledger entry it holds is withdrawn by an ``adjustment`` entry (``<entry id>~<cause>``, from the
        customer it was issued to): the
        views folded anew issue their own, with ids ending ``@<cause>`` (their ledgers' generation). An
        id not live any more (``now_id``: the live id it resolves to) is retired into that customer, its
        open alert episodes resolved ``merged``; a live id keeps its alert episodes for its view folded
        anew. A refund it held is held again, its deadline counted from the log's clock now.
        """
        view = self.views.pop(customer_id, None)
        if view is None:
            return
        ms = self.latest_ms or 0
        if not self.keep_decisions:
            self.new_entries += [
                (view.issued_to.get(entry.id, customer_id), LedgerEntry(
                    f"{entry.id}~{cause}", "adjustment", -entry.points, ms, cause, entry.transaction_id,
                    entry.rule_version, entry.rule_id, entry.multiplier,
                    f"resolved again in event time ({cause}): {entry.id} withdrawn, the events scored anew"))
                for entry in sorted(view.loyalty.entries.values(), key=lambda e: e.id) if entry.points]
        if now_id is not None:
            self._retire(view, now_id, ms)
            self._merged(customer_id, now_id)
        else:
            self._kept_alerts[customer_id] = view.alerts
        self._alert_due.discard(customer_id)
        self._expiry_due.discard(customer_id)
        self.touched.discard(customer_id)

    def follow(self, event: Event, customer_id: str, decisions: Iterable[Decision],
               attributed: Iterable[Identifier], ms: int, source: int = -1, generation: str = "",
               aliases: Iterable[str] = ()) -> bool:
        """The profile's half of :meth:`add`: what identity decided, applied to the views.

        A mint makes a view; a merge folds the merged customer's view into the survivor's
        (it must be here: on a worker, handed over first, see :meth:`hand_over`). Then a
        refund is checked against the customer's history, and the event is folded into the
        view and scored.

        A refund of a purchase the customer does not hold (yet) is **held** in the view, not
        folded: a late purchase, or a merge that brings the purchase, folds it then, as if it
        had come in event-time order (its reversal included); after ``refund_hold_days`` of
        log time it is rejected with the reason (:meth:`tick`). Held refunds are folded, or
        rejected, in worker mode into :attr:`released` / :attr:`held_rejected`.

        :param source: where the event came from, given back with a held refund's rejection.
        :param generation: the re-fold a view minted here is made in (its ledger's ids end ``@generation``,
            see :meth:`reset_view`); "" for an ordinary event.
        :param aliases: for a view minted here in a re-fold, the ids no longer live that resolve to it.
        :returns: False when the event is held.
        :raises Rejected: a refund above its purchase, or in another currency. Identity's
            decisions stand (identity judged the identifiers, and they were valid), so the
            views are merged and the identifiers noted, but the event itself changes nothing.
        """
        views = self.views
        survivors: set[str] = set()
        for decision in decisions:
            if isinstance(decision, Minted):
                made = views[decision.customer_id] = CustomerView(decision.customer_id, pseudo=decision.shared)
                made.loyalty.generation = generation
                made.aliases.update(dict.fromkeys(aliases))
                kept = self._kept_alerts.pop(decision.customer_id, None)
                if kept:  # an id folded anew keeps its alert episodes
                    made.alerts.update(kept)
            elif isinstance(decision, Merged):
                merged = views.pop(decision.merged)
                self._retire(merged, decision.survivor, ms)
                merge_views(views[decision.survivor], merged)
                self._merged(decision.merged, decision.survivor)
                survivors.add(decision.survivor)
        for survivor in sorted(survivors):  # one person now: each purchase counts every invitation they had
            survivor_view = views[survivor]
            entries = rescore(survivor_view.loyalty, self.rules, event.event_id, "customers merged")
            if entries:
                self._issued(survivor, survivor_view, entries)
        view = views[customer_id]
        self.touched.add(customer_id)
        folded = event.type != "refund" or event.payload.transaction_id in view.purchases  # type: ignore[union-attr]
        if folded:
            self._fold_into(customer_id, view, event, attributed, ms)
        else:
            self._hold(view, event, tuple(attributed), ms, source)
        if view.held:  # this purchase, or a merge, may have brought what a held refund waits for
            self._release(customer_id, view)
            # decided (a held refund rejected) at the first tick after its deadline
            self._alert_due.set(customer_id, _earliest(self._alert_due.due_of(customer_id), _next_held(view)))
        return folded

    def _fold_into(self, customer_id: str, view: CustomerView, event: Event, attributed: Iterable[Identifier],
                   ms: int) -> None:
        """Check a refund against the view's history, then fold the event into the view and score it."""
        due = self._alert_due.due_of(customer_id)
        if due is None or due > ms:
            self._alert_due.set(customer_id, ms)  # decided at the next tick
        if event.type == "refund":
            try:
                self._check_refund(event, view)
            except Rejected:
                note_identifiers(view, attributed)
                raise
        if evolve(view, event, attributed, ms=ms) and event.type in _LOYALTY_TYPES:
            entries = self._score(view.loyalty, event, ms)
            if entries:
                self._issued(customer_id, view, entries)

    def _hold(self, view: CustomerView, event: Event, attributed: tuple[Identifier, ...], ms: int,
              source: int) -> None:
        """Keep a refund until its purchase is the customer's, or its deadline."""
        payload: Any = event.payload
        note_identifiers(view, attributed)  # identity attributed them: they are the customer's either way
        if payload.refund_id in view.refunds:
            return  # applied already (a resend under another transaction id changes nothing)
        deadline = max(ms, self.latest_ms or ms) + self.config.refund_hold_days * _DAY_MS
        held = (ms, event.event_id, event, attributed, deadline, source)
        known = view.held.get(payload.refund_id)
        if known is None or held[:2] < known[:2]:
            view.held[payload.refund_id] = held
        self.holds += 1

    def _release(self, customer_id: str, view: CustomerView) -> None:
        """Fold the held refunds whose purchase the customer now holds, in event-time order."""
        ready = sorted((held[0], held[1], refund_id) for refund_id, held in view.held.items()
                       if held[2].payload.transaction_id in view.purchases)  # type: ignore[union-attr]
        for _, _, refund_id in ready:
            ms, _, event, attributed, _, source = view.held.pop(refund_id)
            try:
                self._fold_into(customer_id, view, event, attributed, ms)
            except Rejected as exc:
                self._held_rejected(customer_id, event, str(exc), source)
                continue
            if not self.keep_decisions:
                self.released.append((customer_id, event))

    def _expire_held(self, customer_id: str, view: CustomerView, ms: int) -> None:
        """Reject the held refunds whose deadline passed by ``ms``."""
        for refund_id, (_, _, event, _, deadline, source) in sorted(view.held.items()):
            if deadline <= ms:
                del view.held[refund_id]
                self.touched.add(customer_id)
                tid = event.payload.transaction_id  # type: ignore[union-attr]
                self._held_rejected(customer_id, event, (
                    f"payload.transaction_id: refund of {tid}, not a purchase of this customer "
                    f"within {self.config.refund_hold_days} days of log time"), source)

    def _held_rejected(self, customer_id: str, event: Event, reason: str, source: int) -> None:
        if self.keep_decisions:
            self._reject(event.event_id, reason)
        else:
            self.held_rejected.append((customer_id, event, reason, source))

    def drain_held(self) -> tuple[list[tuple[str, Event]], list[tuple[str, Event, str, int]]]:
        """Held refunds folded and held refunds rejected since the last call (worker mode)."""
        released, rejected = self.released, self.held_rejected
        self.released, self.held_rejected = [], []
        return released, rejected

    def advance(self, clock_ms: int) -> None:
        """Move the log's clock to ``clock_ms`` (never back): a profile's events carry identity's clock."""
        if self.latest_ms is None or clock_ms > self.latest_ms:
            self.latest_ms = clock_ms

    def _score(self, state: LoyaltyState, event: Event, ms: int) -> list[LedgerEntry]:
        """The loyalty side of one purchase, refund or campaign event (checked already)."""
        payload: Any = event.payload
        if event.type == "purchase":
            try:
                return on_purchase(state, event.event_id, ms, payload, self.rules)
            except NoRulesInForce as exc:
                self.unscored.append({"event_id": event.event_id, "reason": str(exc)})
                return []
        if event.type == "refund":
            try:
                return on_refund(state, event.event_id, ms, payload)
            except UnknownPurchase:
                # _check_refund found the purchase: it earned nothing (unscored), nothing to reverse.
                return []
        return on_campaign(state, event.event_id, ms, payload, self.rules)

    def _issued(self, customer_id: str, view: CustomerView, entries: list[LedgerEntry]) -> None:
        if not self.keep_decisions:
            self.new_entries += [(customer_id, entry) for entry in entries]
        due = self._expiry_due.due_of(customer_id)
        for entry in entries:
            if entry.kind == "earn":  # a new lot; the earliest expiry stays the due time
                expires = view.loyalty.lots[entry.transaction_id].expires_ms
                if due is None or expires < due:
                    due = expires
                    self._expiry_due.set(customer_id, due)

    @staticmethod
    def _next_expiry(view: CustomerView) -> int | None:
        state = view.loyalty
        return min((lot.expires_ms for lot in state.lots.values() if lot.expiry_id not in state.entries
                    and lot.points > lot.reversed_points), default=None)

    def _retire(self, merged: CustomerView, survivor: str, ms: int) -> None:
        """Close the open alert episodes of a customer merged away; the survivor is decided anew."""
        for state, _ in merged.alerts.values():
            _, alerts = retire(state, merged.customer_id, ms, survivor)
            self._alerted(merged, alerts, ms)
        merged.alerts.clear()
        self._alert_due.discard(merged.customer_id)
        expiry = self._expiry_due.due_of(merged.customer_id)
        self._expiry_due.discard(merged.customer_id)
        if expiry is not None:  # the survivor inherits the merged lots: the earlier expiry is due first
            mine = self._expiry_due.due_of(survivor)
            self._expiry_due.set(survivor, expiry if mine is None else min(mine, expiry))

    def erase(self, customer_id: str) -> list[str]:
        """Erase a customer on request (DESIGN.md §6): the person goes, the aggregates stay.

        Their identifiers link nobody any more (a later event of theirs starts a new
        customer, with a new id), their view is emptied, open alert episodes are
        resolved with the reason ``erased`` and nothing more is due for them. Ledger
        entries and alerts already issued stay where they are, keyed by the old id.

        :returns: the ids erased, the live id first and then its aliases; [] when the
            id is unknown or erased already (erasing twice changes nothing).
        """
        erased = self.forget(customer_id)
        if erased:
            self.erase_view(erased[0])
        return erased

    def forget(self, customer_id: str) -> list[str]:
        """Identity's half of :meth:`erase`: the customer's identifiers link nobody any more."""
        erased = forget(self.state, customer_id)
        if erased:  # their events are never resolved again with anyone's
            self._positions.pop(erased[0], None)
            self._latest_at.pop(erased[0], None)
            self._forget_refused(erased[:1])
        return erased

    def erase_view(self, customer_id: str) -> None:
        """The profile's half of :meth:`erase`: empty the live customer's view, close its alerts."""
        view = self.views.get(customer_id)
        ms = self.latest_ms or 0
        if view is not None:
            for kind in sorted(view.alerts):
                _, alerts = close_erased(view.alerts[kind][0], customer_id, ms)
                self._alerted(view, alerts, ms)
            self.views[customer_id] = CustomerView(customer_id)
        self._alert_due.discard(customer_id)
        self._expiry_due.discard(customer_id)
        self.touched.discard(customer_id)

    def hand_over(self, customer_id: str) -> Handover | None:
        """Take a customer merged away out of this Folder, for the Folder that holds its survivor.

        Workers keep views in partitions by customer id, so a merge can join two views that
        live in different places; the survivor's side :meth:`take_over` s this before it
        follows the event that merged them. None: no such view here.
        """
        view = self.views.pop(customer_id, None)
        if view is None:
            return None
        handover = Handover(view, self._alert_due.due_of(customer_id), self._expiry_due.due_of(customer_id))
        self._alert_due.discard(customer_id)
        self._expiry_due.discard(customer_id)
        self.touched.discard(customer_id)
        return handover

    def take_over(self, handover: Handover) -> None:
        """Hold a view handed over by :meth:`hand_over`, as it was there (the merge follows)."""
        customer_id = handover.view.customer_id
        self.views[customer_id] = handover.view
        self._alert_due.set(customer_id, handover.alert_due_ms)
        self._expiry_due.set(customer_id, handover.expiry_due_ms)

    def _alerted(self, view: CustomerView, alerts: list[Alert], ms: int) -> None:
        if alerts and not self.keep_decisions:
            context = alert_context(view, ms, self.config.segment)
            self.new_alerts += [(alert, context) for alert in alerts]

    def tick(self, at: int | datetime) -> None:
        """Let event time pass to ``at``: expire due points, decide due alerts (never backwards)."""
        ms = at if isinstance(at, int) else epoch_ms(at)
        if self.clock_ms is not None and ms < self.clock_ms:
            ms = self.clock_ms
        self.clock_ms = ms
        if self.latest_ms is None or ms > self.latest_ms:
            self.latest_ms = ms  # the log's clock: cards render as of it, late events are judged by it
        views = self.views
        for customer_id in self._expiry_due.pop_due(ms):
            view = views.get(customer_id)
            if view is not None:
                entries = expire(view.loyalty, ms)
                if entries:
                    self.touched.add(customer_id)
                    self._issued(customer_id, view, entries)
                self._expiry_due.set(customer_id, self._next_expiry(view))
        config, segment = self.config.alerts, self.config.segment
        rejected_before = len(self.rejected)
        for customer_id in self._alert_due.pop_due(ms):
            view = views.get(customer_id)
            if view is None:  # merged away
                continue
            if view.held:
                self._expire_held(customer_id, view, ms)
            if view.pseudo:  # a shared identifier's pseudo-customer: no alerts
                self._alert_due.set(customer_id, _next_held(view))
                continue
            inputs = alert_inputs(view, ms, segment)
            for kind in ALERT_KINDS:
                state, last = view.alerts.get(kind) or (AlertState(kind), None)
                state, alerts = decide(state, inputs, ms, config)
                if alerts:
                    last = alerts[-1]
                    self.touched.add(customer_id)
                    self._alerted(view, alerts, ms)
                view.alerts[kind] = (state, last)
            self._alert_due.set(customer_id, _earliest(next_due_ms(inputs, ms, config), _next_held(view)))
        self._order_rejections(rejected_before)  # held refunds rejected at this tick

    def drain_alerts(self) -> list[tuple[Alert, dict[str, Any]]]:
        """Alert transitions since the last call, each with the customer's segment, value and contactability."""
        alerts, self.new_alerts = self.new_alerts, []
        return alerts

    def drain_entries(self) -> list[tuple[str, LedgerEntry]]:
        """Ledger entries issued since the last call, with the customer each was issued to."""
        entries, self.new_entries = self.new_entries, []
        return entries

    def _merged(self, merged: str, survivor: str) -> None:
        """Record ``merged`` -> ``survivor`` in :attr:`merged_into`, re-pointing aliases of ``merged``."""
        merged_into, merged_by = self.merged_into, self._merged_by
        if merged_into.pop(survivor, None) is not None:  # an id merged away earlier is the survivor again
            for aliases in merged_by.values():
                if survivor in aliases:
                    aliases.remove(survivor)
        previous = merged_into.get(merged)
        if previous is not None and merged in merged_by.get(previous, ()):
            merged_by[previous].remove(merged)
        merged_into[merged] = survivor
        into = merged_by.setdefault(survivor, [])
        into.append(merged)
        for alias in merged_by.pop(merged, ()):  # a merge of a merge
            if merged_into.get(alias) == merged:
                merged_into[alias] = survivor
                into.append(alias)

    def normalise_pair(self, pair: tuple[str, str]) -> Identifier:
        """One (kind, value) normalised and keyed, as :meth:`identify` does it (cached).

        :raises InvalidIdentifier: the value is not a valid identifier of its kind.
        """
        return self._normalised.get(pair) or self._normalise(pair)

    def _normalise(self, pair: tuple[str, str]) -> Identifier:
        ident = normalise(pair[0], pair[1], region=self.config.region, secret=self.secret)
        if self.cache_limit is not None and len(self._normalised) >= self.cache_limit:
            self._normalised.clear()  # crude but bounded; values recur, it refills with the live ones
        self._normalised[pair] = ident
        return ident

    def _check_refund(self, event: Event, view: CustomerView) -> None:
        payload: Any = event.payload
        tid = payload.transaction_id
        found = view.purchases.get(tid)
        if found is None:
            raise Rejected(f"payload.transaction_id: refund of {tid}, not a purchase of this customer")
        total = found[1]
        before = sum(
            amount
            for rid, (_, amount, of) in view.refunds.items()
            if of == tid and rid != payload.refund_id  # a redelivered refund is not counted twice
        )
        if before + payload.amount_minor > total:
            raise Rejected(
                f"payload.amount_minor: refunds of {tid} would total {before + payload.amount_minor}, "
                f"above its total_minor {total}"
            )
        lot = view.loyalty.lots.get(tid)
        if lot is not None and lot.currency != payload.currency:
            raise Rejected(f"payload.currency: refund in {payload.currency} of {tid}, a purchase in {lot.currency}")

    # -- output ---------------------------------------------------------------

    def rendered(self, customer_id: str, as_of: datetime) -> dict[str, Any]:
        """A customer as the fold prints it: the card as of ``as_of`` with the whole ledger, its ``lifecycle``
        (stage and transitions), and its ``value`` when the fold scores with a value model (whose CLV is then the
        potential value of its ``value_segment``)."""
        view = self.views[customer_id]
        # The whole ledger: the fold is the oracle a ledger is checked against.
        customer = render(view, as_of, self.config.segment, self.rules, entries=None)
        day = as_of.astimezone(UTC).date()
        alive = self.value_model.alive() if self.value_model is not None else None
        customer["lifecycle"] = lifecycle(spend_by_day(view.purchases, view.refunds, day), day, self.config.stages,
                                          alive)
        if self.value_model is not None:
            from touchpoint.core.value import score, summarise  # numpy and scipy only when value is scored

            model = self.value_model
            value = customer["value"] = score(model, summarise(view.purchases, view.refunds, day, model.fitted.unit))
            if value["clv"] is not None:  # potential value is the model's (current value stays the spend's)
                rfm = customer["rfm"]
                customer["value_segment"] = segment_of(rfm["recency_days"], rfm["frequency"], rfm["monetary_minor"],
                                                       self.config.segment, clv=value["clv"])
        return customer

    def result(self, as_of: datetime | None = None) -> dict[str, Any]:
        """The fold's document (see the module docstring).

        :param as_of: the instant views are rendered for; default the latest
            accepted event time (or nothing to render when there is none).
        """
        if as_of is None:
            if self.latest_ms is None:
                customers: list[dict[str, Any]] = []
            else:
                as_of = datetime.fromtimestamp(0, tz=UTC) + timedelta(milliseconds=self.latest_ms)
        if as_of is not None:
            customers = [self.rendered(c, as_of) for c in sorted(self.views)]
        return {
            "customers": customers,
            "identity_decisions": [d.to_json() for d in self.decisions],
            "loyalty_unscored": self.unscored,
            "rejected": self.rejected,
        }


def fold(
    events_json_lines: Iterable[str | bytes],
    as_of: datetime | None = None,
    config: FoldConfig | None = None,
    secret: bytes = b"",
    now_for_validation: datetime | None = None,
) -> dict[str, Any]:
    """Fold JSON-lines events into customers, identity decisions and rejections.

    :param events_json_lines: one JSON event per item (blank lines skipped).
    :param as_of: render views as of this instant; default the latest
        accepted event time. Also the validation clock when
        ``now_for_validation`` is not given.
    :param config: the fold's knobs (defaults: :class:`FoldConfig`).
    :param secret: the identifier key.
    :param now_for_validation: judge event times against this instant.
    """
    with collector_paused():  # rendering too makes long-lived objects
        return folded(events_json_lines, as_of, config, secret, now_for_validation).result(as_of)


@contextmanager
def collector_paused() -> Iterator[None]:
    """The cyclic collector off meanwhile (as it was if already off): the fold builds millions of long-lived,
    acyclic objects, which it would re-walk over and over for nothing (~15 % of the fold's time)."""
    collecting = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if collecting:
            gc.enable()


def folded(
    events_json_lines: Iterable[str | bytes],
    as_of: datetime | None = None,
    config: FoldConfig | None = None,
    secret: bytes = b"",
    now_for_validation: datetime | None = None,
) -> Folder:
    """The Folder that :func:`fold` renders (its views, decisions and rejections), ticked to ``as_of`` if given."""
    if not secret:
        raise ConfigError("the fold needs the identifier key (secret) to key identifiers")
    for instant in (as_of, now_for_validation):
        if instant is not None and instant.tzinfo is None:
            raise ValueError("as_of and now_for_validation must be aware datetimes")
    folder = Folder(config, secret=secret, now=now_for_validation or as_of)
    lines = events_json_lines if isinstance(events_json_lines, list) else list(events_json_lines)
    folder.history = lambda positions: [folder.event_of_line(lines[p]) for p in positions]
    add = folder.add_json
    with collector_paused():
        for position, line in enumerate(lines):
            if line and not line.isspace():  # as ``line.strip()``, without copying the line
                folder.position = position
                add(line)
            else:
                folder.lines += 1
        if as_of is not None:
            folder.tick(as_of)  # time passes to as_of: dormancy, churn windows, expiries
    return folder


def fold_to_json(
    events_json_lines: Iterable[str | bytes],
    as_of: datetime | None = None,
    config: FoldConfig | None = None,
    secret: bytes = b"",
    now_for_validation: datetime | None = None,
) -> str:
    """:func:`fold`, as compact JSON with sorted keys (deterministic bytes once UTF-8 encoded)."""
    document = fold(events_json_lines, as_of, config, secret, now_for_validation)
    # orjson writes the same bytes as json.dumps(sort_keys=True, separators=(",", ":"),
    # ensure_ascii=False) (tested) about nine times faster: seconds on a million events.
    return orjson.dumps(document, option=orjson.OPT_SORT_KEYS).decode()
