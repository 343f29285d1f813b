"""The event contract as frozen pydantic models, with its semantic checks.

Shape. One model per payload, named like its Avro record and with the same
field names, and the envelope :class:`Event`. Each type also has an envelope
subclass that pins ``type`` and narrows ``payload`` (``PurchaseEvent`` carries
a ``PurchasePayload``), so the pure core can ``match`` on either.
``Event.model_validate(doc)`` dispatches on ``type`` through a discriminated
union of those subclasses: the payload has no tag of its own (the Avro union
branch and the JSON ``type`` are the tag), so the union has to sit at the
envelope level. Enumerations are ``Literal`` strings, not ``Enum`` classes,
so a dump is exactly the JSON form and the Avro symbols. ``test_contract_avro``
walks these models against the ``.avsc`` files so the two cannot drift.

Checks. Only what one event can tell about itself; what needs history (a
refund above what was bought, duplicates) belongs to the stream stages.

* money is an ``int`` of minor units, never negative; floats, numeric strings
  and bools are refused (pydantic's lax mode would take ``10.0`` and ``True``);
  currency is three upper-case letters; a refund is above zero;
* a purchase has at least one line and ``total_minor >= 0``; the total is *not*
  required to equal the sum of the lines, because basket-level discounts,
  rounding and vouchers make them differ legitimately;
* ``occurred_at`` must carry a time zone; it is kept in UTC, truncated to the
  millisecond the wire holds (so a JSON -> Avro -> model round trip is exact),
  and may be at most 24h after the ``now`` passed in (never the wall clock);
* at least one identifier, of a known kind. In the JSON form identifiers are
  clear values and e-mail and phone are checked for shape; on the topics they
  are pseudonyms (DESIGN.md §6), so ``pseudonymised=True`` skips those checks.
  ``phonenumbers`` is not a dependency, so the phone check is structural:
  an optional ``+`` and 7 to 15 digits once separators are removed.

Failures surface as :class:`ContractViolation`, listing every problem as a
``(field_path, message)`` pair, e.g. ``("payload.lines.0.amount_minor",
"money must not be negative")``: the dead-letter reason a person acts on.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal, Self, cast, get_args

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
    with_config,
)
from typing_extensions import TypedDict  # pydantic needs this one before Python 3.12

from touchpoint.errors import TouchpointError

EventType = Literal["purchase", "refund", "branch_visit", "call", "email", "web", "sms", "case", "consent", "campaign",
                    "profile"]
Channel = Literal["branch", "phone", "email", "web", "sms"]
MAX_AHEAD = timedelta(hours=24)
"""How far after ``now`` an event time may be (producer clocks drift; beyond that it is a bug)."""

_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
_PHONE = re.compile(r"\+?\d{7,15}")
_PHONE_SEPARATORS = str.maketrans("", "", " -().")
_CURRENCY = re.compile(r"[A-Z]{3}")
_LANGUAGE = re.compile(r"[A-Za-z]{2,3}(-[A-Za-z0-9]{1,8})*")  # a BCP 47 tag's shape: en, en-GB, zh-Hant-TW
NAME_MAX = 200


class ContractViolation(TouchpointError):
    """An event does not honour the contract; ``problems`` lists ``(field_path, message)``."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{path}: {message}" for path, message in problems))


AVRO_INT_MAX = 2**31 - 1
AVRO_LONG_MAX = 2**63 - 1


def _money(value: object) -> object:
    # Runs before pydantic's int parsing, which in lax mode accepts 10.0, "10" and True.
    if type(value) is not int:
        raise ValueError(f"money must be an integer number of minor units, not {type(value).__name__}")
    if value < 0:
        raise ValueError("money must not be negative")
    if value > AVRO_LONG_MAX:
        raise ValueError(f"money must be at most {AVRO_LONG_MAX} minor units (Avro long)")
    return value


def _currency(value: str) -> str:
    if not _CURRENCY.fullmatch(value):
        raise ValueError("currency must be an ISO 4217 code: three upper-case letters")
    return value


def _utc(value: datetime) -> datetime:
    if value.tzinfo is None or (offset := value.utcoffset()) is None:
        raise ValueError("time must carry a time zone (an ISO-8601 instant such as 2025-01-31T09:30:00Z)")
    # The wire holds milliseconds (timestamp-millis); truncate now so round trips are exact.
    if offset or value.fold or type(value) is not datetime:
        try:
            return value.astimezone(UTC).replace(microsecond=value.microsecond // 1000 * 1000)
        except OverflowError as exc:  # e.g. 0001-01-01T00:00:00+01:00 is before year 1 in UTC
            raise ValueError("time is outside the range of representable instants") from exc
    # Already UTC (nearly every event): the same instant, built directly (this runs once per
    # event, and astimezone + replace cost several times the constructor).
    return datetime(value.year, value.month, value.day, value.hour, value.minute, value.second,
                    value.microsecond // 1000 * 1000, UTC)


def _pseudonymised(info: ValidationInfo) -> bool:
    return bool((info.context or {}).get("pseudonymised"))


def _email(value: str, info: ValidationInfo) -> str:
    if not _pseudonymised(info) and not _EMAIL.fullmatch(value):
        raise ValueError("not an e-mail address")
    return value


def _phone(value: str, info: ValidationInfo) -> str:
    if not _pseudonymised(info) and not _PHONE.fullmatch(value.translate(_PHONE_SEPARATORS)):
        raise ValueError("not a phone number (an optional + and 7 to 15 digits)")
    return value


Text = Annotated[str, Field(strict=True, min_length=1)]
Money = Annotated[int, BeforeValidator(_money)]
Currency = Annotated[str, Field(strict=True), AfterValidator(_currency)]
UtcTime = Annotated[datetime, AfterValidator(_utc)]
# Bounded to the Avro types they travel as: the models may not accept what the wire cannot hold.
Count = Annotated[int, Field(strict=True, ge=0, le=AVRO_INT_MAX)]
Positive = Annotated[int, Field(strict=True, ge=1, le=AVRO_INT_MAX)]


@with_config(ConfigDict(extra="forbid"))
class Identifiers(TypedDict, total=False):
    """Identifier kind -> value (an Avro ``map<string>``); unknown kinds are refused."""

    customer_no: Text
    phone: Annotated[Text, AfterValidator(_phone)]
    email: Annotated[Text, AfterValidator(_email)]
    card: Text
    cookie: Text
    device: Text


def identifier_values(identifiers: Identifiers) -> Mapping[str, str]:
    """The identifiers as a mapping of kind to value, for code over any kind (every value is a string)."""
    return cast(Mapping[str, str], identifiers)


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class PurchaseLine(_Frozen):
    sku: Text
    category: Text
    quantity: Positive
    amount_minor: Money


class PurchasePayload(_Frozen):
    transaction_id: Text
    location_id: Text
    lines: Annotated[list[PurchaseLine], Field(min_length=1)]
    total_minor: Money
    currency: Currency
    campaign_code: Text | None = None


class RefundPayload(_Frozen):
    refund_id: Text
    transaction_id: Text
    amount_minor: Money
    currency: Currency

    @field_validator("amount_minor")
    @classmethod
    def _above_zero(cls, value: int) -> int:
        if value == 0:
            raise ValueError("a refund must be above zero")
        return value


class BranchVisitPayload(_Frozen):
    branch_id: Text
    purpose: Text


class CallPayload(_Frozen):
    call_id: Text
    direction: Literal["inbound", "outbound"]
    phase: Literal["started", "ended"]
    ivr_reason: Text | None = None
    duration_s: Count | None = None
    outcome: Text | None = None
    agent_id: Text | None = None


class EmailPayload(_Frozen):
    message_id: Text
    action: Literal["sent", "delivered", "opened", "clicked", "bounced", "unsubscribed", "replied", "failed"]
    campaign_id: Text | None = None


class WebPayload(_Frozen):
    session_id: Text
    action: Literal["page_view", "login", "basket_add", "basket_abandon", "search"]
    page: Text | None = None


class SmsPayload(_Frozen):
    message_id: Text
    action: Literal["sent", "delivered", "replied", "opt_out", "failed"]
    campaign_id: Text | None = None


class CasePayload(_Frozen):
    case_id: Text
    action: Literal["opened", "updated", "closed"]
    category: Text
    severity: Text | None = None
    subject: Text | None = None


class ConsentPayload(_Frozen):
    purpose: Literal["marketing", "profiling"]
    channel: Channel
    granted: Annotated[bool, Field(strict=True)]


class CampaignPayload(_Frozen):
    campaign_id: Text
    action: Literal["invited", "started", "ended"]
    multiplier: Positive | None = None
    starts_at: UtcTime | None = None
    ends_at: UtcTime | None = None

    @field_validator("ends_at")
    @classmethod
    def _after_start(cls, value: datetime | None, info: ValidationInfo) -> datetime | None:
        starts_at = info.data.get("starts_at")
        if value is not None and starts_at is not None and value <= starts_at:
            raise ValueError("ends_at must be after starts_at")
        return value


def _language(value: str) -> str:
    if not _LANGUAGE.fullmatch(value):
        raise ValueError("not a language tag (BCP 47, such as en, en-GB or pt-BR)")
    return value


class ProfilePayload(_Frozen):
    name: Annotated[Text, Field(max_length=NAME_MAX)] | None = None
    language: Annotated[Text, AfterValidator(_language)] | None = None
    preferred_channel: Channel | None = None

    @model_validator(mode="after")
    def _something(self) -> Self:
        if self.name is None and self.language is None and self.preferred_channel is None:
            raise ValueError("a profile event sets at least one of name, language and preferred_channel")
        return self


Payload = (
    PurchasePayload
    | RefundPayload
    | BranchVisitPayload
    | CallPayload
    | EmailPayload
    | WebPayload
    | SmsPayload
    | CasePayload
    | ConsentPayload
    | CampaignPayload
    | ProfilePayload
)


class Event(_Frozen):
    """The envelope. Validate through ``Event.model_validate`` to get the subclass of the type."""

    event_id: Text
    type: EventType
    channel: Channel
    occurred_at: UtcTime
    identifiers: Identifiers
    payload: Payload

    @field_validator("identifiers")
    @classmethod
    def _at_least_one(cls, value: Identifiers) -> Identifiers:
        if not value:
            raise ValueError("at least one identifier is required")
        return value

    @field_validator("occurred_at")
    @classmethod
    def _not_ahead(cls, value: datetime, info: ValidationInfo) -> datetime:
        now = (info.context or {}).get("now")
        if now is not None and value > now + MAX_AHEAD:
            ahead, limit = (value - now) / timedelta(hours=1), MAX_AHEAD / timedelta(hours=1)
            raise ValueError(f"is {ahead:.1f}h after now; at most {limit:g}h ahead is accepted")
        return value

    @classmethod
    def model_validate(cls, obj: Any, **kwargs: Any) -> Self:
        """On ``Event`` itself dispatch on ``type``; on a subclass validate as usual."""
        if cls is Event:
            return cast(Self, _ANY_EVENT.validate_python(obj, **kwargs))
        return super().model_validate(obj, **kwargs)

    @classmethod
    def model_validate_json(cls, json_data: str | bytes | bytearray, **kwargs: Any) -> Self:
        """As :meth:`model_validate`, from JSON text."""
        if cls is Event:
            return cast(Self, _ANY_EVENT.validate_json(json_data, **kwargs))
        return super().model_validate_json(json_data, **kwargs)


class PurchaseEvent(Event):
    type: Literal["purchase"] = "purchase"
    payload: PurchasePayload


class RefundEvent(Event):
    type: Literal["refund"] = "refund"
    payload: RefundPayload


class BranchVisitEvent(Event):
    type: Literal["branch_visit"] = "branch_visit"
    payload: BranchVisitPayload


class CallEvent(Event):
    type: Literal["call"] = "call"
    payload: CallPayload


class EmailEvent(Event):
    type: Literal["email"] = "email"
    payload: EmailPayload


class WebEvent(Event):
    type: Literal["web"] = "web"
    payload: WebPayload


class SmsEvent(Event):
    type: Literal["sms"] = "sms"
    payload: SmsPayload


class CaseEvent(Event):
    type: Literal["case"] = "case"
    payload: CasePayload


class ConsentEvent(Event):
    type: Literal["consent"] = "consent"
    payload: ConsentPayload


class CampaignEvent(Event):
    type: Literal["campaign"] = "campaign"
    payload: CampaignPayload


class ProfileEvent(Event):
    type: Literal["profile"] = "profile"
    payload: ProfilePayload


AnyEvent = Annotated[
    PurchaseEvent
    | RefundEvent
    | BranchVisitEvent
    | CallEvent
    | EmailEvent
    | WebEvent
    | SmsEvent
    | CaseEvent
    | ConsentEvent
    | CampaignEvent
    | ProfileEvent,
    Field(discriminator="type"),
]
_ANY_EVENT: TypeAdapter[Event] = TypeAdapter(AnyEvent)
PAYLOAD_MODELS: dict[str, type[BaseModel]] = {
    cls.model_fields["type"].default: cls.model_fields["payload"].annotation for cls in get_args(get_args(AnyEvent)[0])
}
"""Event type -> payload model, e.g. ``"purchase" -> PurchasePayload``."""
EVENT_MODELS: dict[str, type[Event]] = {
    cls.model_fields["type"].default: cls for cls in get_args(get_args(AnyEvent)[0])
}
"""Event type -> event class, e.g. ``"purchase" -> PurchaseEvent``."""

# Pydantic's wording for the commonest failures, said in the contract's terms.
_MESSAGES = {
    "missing": "required field is missing",
    "extra_forbidden": "not a field of the contract",
    "union_tag_not_found": "required field is missing",
}


def problems_of(exc: ValidationError) -> list[tuple[str, str]]:
    """``(field_path, message)`` pairs for a validation error of :data:`AnyEvent`."""
    found = []
    for err in exc.errors(include_url=False):
        kind, ctx = err["type"], err.get("ctx", {})
        if kind.startswith("union_tag_"):  # no or unknown ``type``: the tag itself is wrong
            loc: tuple[Any, ...] = ("type",)
        else:  # errors inside a type start with its tag (("purchase", "payload", ...)): drop it
            loc = err["loc"][1:]
        if kind == "union_tag_invalid":
            message = f"unknown event type {ctx['tag']!r}; expected one of {ctx['expected_tags']}"
        elif kind == "extra_forbidden" and loc[:1] == ("identifiers",):
            message = f"unknown identifier kind; known kinds: {', '.join(Identifiers.__annotations__)}"
        else:
            message = _MESSAGES.get(kind, err["msg"]).removeprefix("Value error, ")
        found.append((".".join(map(str, loc)) or "(event)", message))
    return found


def validate_event(doc: Any, now: datetime | None, *, pseudonymised: bool = False) -> Event:
    """Check one event in its JSON form (or a dict decoded from Avro) against the contract.

    :param doc: the event as a dict of JSON values (or datetimes).
    :param now: the instant to judge ``occurred_at`` against (arrival time, from
        the caller, never the wall clock here); ``None`` skips that check.
    :param pseudonymised: identifiers are pseudonyms (as on the topics), not clear values.
    :returns: the event, as the subclass of its type.
    :raises ContractViolation: listing every problem found.
    """
    if now is not None and now.tzinfo is None:
        raise ValueError("now must be an aware datetime")
    if not isinstance(doc, dict):
        raise ContractViolation([("(event)", "an event must be an object")])
    try:
        return Event.model_validate(doc, context={"now": now, "pseudonymised": pseudonymised})
    except ValidationError as exc:
        raise ContractViolation(problems_of(exc)) from exc
