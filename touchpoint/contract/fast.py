"""A stricter, faster check of the contract's JSON form, for hot loops that fall back to the contract.

The contract (:mod:`touchpoint.contract.models`) states its rules in Python
validators, so each event costs pydantic several calls back into Python
(money, currency, phone, e-mail, the time zone and millisecond truncation).
:data:`FAST_EVENT` is the same discriminated union of subclasses of the
contract's event classes (a ``PurchaseEvent`` here is a ``PurchaseEvent``:
``match`` and ``isinstance`` work) with those rules stated as pydantic-core
constraints instead:

* money: a strict JSON integer in ``[0, AVRO_LONG_MAX]`` (the contract
  refuses floats, bools and strings the same way);
* currency: exactly three ASCII capitals;
* phone: separators ``" -()."``, an optional ``+``, 7 to 15 ASCII digits;
* e-mail: ``local@domain.tld`` in printable ASCII without ``@`` in a part
  (the contract also takes non-ASCII text, which this check refuses);
* ``occurred_at`` must be aware and within years 1 to 9999 in UTC, but it
  is *not* converted to UTC nor truncated to the millisecond: the caller only reads its epoch milliseconds
  (:func:`touchpoint.core.instants.epoch_ms` floors, so the instant is the
  contract's to the millisecond).

Everything else (the envelope's ``now`` and at-least-one-identifier checks,
refunds above zero, campaign windows, the other payloads) is the contract's
own code, inherited. The rule that makes it safe: **an event this check
accepts, the contract accepts, with equal values** (``occurred_at`` aside, to
the millisecond). It may refuse what the contract accepts; a caller must then
ask the contract (:func:`~touchpoint.contract.models.validate_event`), which
also words the reason. ``tests/unit/test_contract_fast.py`` holds it to that.
Only clear identifiers (``pseudonymised`` false) are checked this way.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import AwareDatetime, ConfigDict, Field, TypeAdapter, with_config
from typing_extensions import TypedDict

from touchpoint.contract.models import (
    AVRO_LONG_MAX,
    BranchVisitEvent,
    CallEvent,
    CampaignEvent,
    CaseEvent,
    ConsentEvent,
    EmailEvent,
    Event,
    ProfileEvent,
    PurchaseEvent,
    PurchaseLine,
    PurchasePayload,
    RefundEvent,
    RefundPayload,
    SmsEvent,
    Text,
    WebEvent,
)

__all__ = ["FAST_EVENT", "validate_json"]

# Aware, and representable in UTC (the contract converts; an instant before year 1 there is refused).
_Instant = Annotated[
    AwareDatetime,
    Field(ge=datetime(1, 1, 1, tzinfo=UTC), le=datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)),
]
_Money = Annotated[int, Field(strict=True, ge=0, le=AVRO_LONG_MAX)]
_Currency = Annotated[str, Field(strict=True, pattern=r"^[A-Z]{3}$")]
_SEP = r"[ ().\-]*"
_Phone = Annotated[Text, Field(pattern=rf"^{_SEP}(?:\+{_SEP})?(?:[0-9]{_SEP}){{7,15}}$")]
_PART = r"[\x21-\x3f\x41-\x7e]+"  # printable ASCII, no space, no @
_Email = Annotated[Text, Field(pattern=rf"^{_PART}@{_PART}\.{_PART}$")]


@with_config(ConfigDict(extra="forbid"))
class _Identifiers(TypedDict, total=False):
    customer_no: Text
    phone: _Phone
    email: _Email
    card: Text
    cookie: Text
    device: Text


class _PurchaseLine(PurchaseLine):
    amount_minor: _Money


class _PurchasePayload(PurchasePayload):
    # The stricter line model is a subclass of the contract's: list's invariance is a typing artefact here.
    lines: Annotated[list[_PurchaseLine], Field(min_length=1)]  # type: ignore[assignment]
    total_minor: _Money
    currency: _Currency


class _RefundPayload(RefundPayload):
    amount_minor: _Money
    currency: _Currency


class _PurchaseEvent(PurchaseEvent):
    occurred_at: _Instant
    identifiers: _Identifiers
    payload: _PurchasePayload


class _RefundEvent(RefundEvent):
    occurred_at: _Instant
    identifiers: _Identifiers
    payload: _RefundPayload


class _BranchVisitEvent(BranchVisitEvent):
    occurred_at: _Instant
    identifiers: _Identifiers


class _CallEvent(CallEvent):
    occurred_at: _Instant
    identifiers: _Identifiers


class _EmailEvent(EmailEvent):
    occurred_at: _Instant
    identifiers: _Identifiers


class _WebEvent(WebEvent):
    occurred_at: _Instant
    identifiers: _Identifiers


class _SmsEvent(SmsEvent):
    occurred_at: _Instant
    identifiers: _Identifiers


class _CaseEvent(CaseEvent):
    occurred_at: _Instant
    identifiers: _Identifiers


class _ConsentEvent(ConsentEvent):
    occurred_at: _Instant
    identifiers: _Identifiers


class _CampaignEvent(CampaignEvent):
    occurred_at: _Instant
    identifiers: _Identifiers


class _ProfileEvent(ProfileEvent):
    occurred_at: _Instant
    identifiers: _Identifiers


FAST_EVENT: TypeAdapter[Event] = TypeAdapter(
    Annotated[
        _PurchaseEvent
        | _RefundEvent
        | _BranchVisitEvent
        | _CallEvent
        | _EmailEvent
        | _WebEvent
        | _SmsEvent
        | _CaseEvent
        | _ConsentEvent
        | _CampaignEvent
        | _ProfileEvent,
        Field(discriminator="type"),
    ]
)
_validate_json = FAST_EVENT.validator.validate_json


def validate_json(data: str | bytes, context: dict[str, Any]) -> Event:
    """One event from its JSON text, or :class:`pydantic.ValidationError` (then ask the contract).

    :param context: as the contract's: ``{"now": datetime | None, "pseudonymised": False}``.
    """
    return _validate_json(data, context=context)  # type: ignore[no-any-return]
