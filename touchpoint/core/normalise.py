"""Identifier normalisation: one canonical form and one keyed hash per identifier.

Identity matches on keys, never on clear values (DESIGN.md §6, privacy by
design): ``key = "<kind>:" + HMAC-SHA256(secret, "<kind>:<normalised>")``,
truncated to 32 hex digits (128 bits: collisions are not a practical concern
for a customer base, and the kind prefix keeps kinds apart). The same
``secret`` must be used by every process that resolves identity (the
``identifier_key`` setting), or the keys will not meet.

``display`` is what a person may be shown: the normalised clear value, except
for cards, whose clear number never leaves :func:`normalise` (``"…1234"``).

Pseudonyms (:mod:`touchpoint.core.pseudonym`). At the edge every identifier
becomes its pseudonym before it is written to a topic, so the log holds keys
and sealed values, never a clear one. :func:`normalise` reads a pseudonym
back without any key: its key is the one the clear value gives, its display
the pseudonym itself (a card's: its last four), which only a reader holding
the identifier's data key can open.

Rules per kind

* ``phone``: parsed by Google's libphonenumber (``phonenumbers``) with the
  default region for national numbers (``07700 900123`` in ``GB`` is
  ``+447700900123``), formatted E.164. Accepted when *possible* (right length
  for the country), not only when *valid*: the Ofcom drama ranges the
  synthetic data and tests use are possible but not allocated.
* ``email``: trimmed and case-folded (``casefold``, not ``lower``: ß and
  friends); one ``@``, a non-empty local part, a dotted domain with no empty
  label, no white space.
* ``card``: spaces and dashes removed; 12-19 digits; Luhn-valid.
* ``customer_no``, ``cookie``, ``device``: trimmed; must not be empty.

Values recur (a customer's phone is on every call), so results are cached per
(kind, value, region, secret); the phone parse has its own cache too. An
invalid value raises :class:`InvalidIdentifier` with a reason a person can act
on; it never echoes a card number.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass
from functools import lru_cache

import phonenumbers

from touchpoint.core import pseudonym
from touchpoint.core.identifiers import IDENTIFIER_KINDS
from touchpoint.errors import TouchpointError

__all__ = ["Identifier", "InvalidIdentifier", "identifier_key", "normalise"]

_CARD_SEPARATORS = str.maketrans("", "", " -")
_WHITESPACE = re.compile(r"\s")
_CACHE_SIZE = 1 << 18


class InvalidIdentifier(TouchpointError):
    """An identifier value cannot be normalised; ``reason`` says why."""

    def __init__(self, kind: str, reason: str) -> None:
        self.kind = kind
        self.reason = reason
        super().__init__(f"identifiers.{kind}: {reason}")


@dataclass(frozen=True, slots=True)
class Identifier:
    """A normalised identifier: ``key`` (keyed hash) for matching, ``display`` to show."""

    kind: str
    key: str
    display: str


def identifier_key(kind: str, normalised: str, secret: bytes) -> str:
    """The keyed hash identity matches on: ``"<kind>:" + 32 hex digits``."""
    mac = _keyed(secret).copy()  # copying a keyed HMAC skips re-deriving its pads from the key
    mac.update(f"{kind}:{normalised}".encode())
    return f"{kind}:{mac.hexdigest()[:32]}"


@lru_cache(maxsize=8)
def _keyed(secret: bytes) -> hmac.HMAC:
    return hmac.new(secret, digestmod=hashlib.sha256)


@lru_cache(maxsize=_CACHE_SIZE)
def _phone(value: str, region: str) -> str:
    try:
        number = phonenumbers.parse(value, region)
    except phonenumbers.NumberParseException as exc:
        raise InvalidIdentifier("phone", f"not a phone number ({exc._msg})") from exc
    if not phonenumbers.is_possible_number(number):
        raise InvalidIdentifier("phone", "not a possible phone number (wrong length for its country)")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def _email(value: str) -> str:
    email = value.strip().casefold()
    local, at, domain = email.rpartition("@")
    if not at or not local or "@" in local:
        raise InvalidIdentifier("email", "not an e-mail address (needs exactly one @ with text before it)")
    if _WHITESPACE.search(email):
        raise InvalidIdentifier("email", "not an e-mail address (contains white space)")
    labels = domain.split(".")
    if len(labels) < 2 or not all(labels):
        raise InvalidIdentifier("email", "not an e-mail address (the domain needs a dot and no empty label)")
    return email


def _luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def _card(value: str) -> str:
    digits = value.strip().translate(_CARD_SEPARATORS)
    # Reasons never quote the value: it may be a real card number.
    if not digits.isascii() or not digits.isdigit():
        raise InvalidIdentifier("card", "a card number has only digits, spaces and dashes")
    if not 12 <= len(digits) <= 19:
        raise InvalidIdentifier("card", f"a card number has 12 to 19 digits, not {len(digits)}")
    if not _luhn_ok(digits):
        raise InvalidIdentifier("card", "card number fails the Luhn check")
    return digits


def _from_pseudonym(kind: str, value: str) -> Identifier:
    try:
        parsed = pseudonym.parse(value)
    except ValueError as exc:
        raise InvalidIdentifier(kind, str(exc)) from exc
    if parsed.kind != kind:
        raise InvalidIdentifier(kind, f"a pseudonym of a {parsed.kind} identifier, not of {kind}")
    return Identifier(kind, parsed.key, value if parsed.sealed else parsed.shown)


@lru_cache(maxsize=_CACHE_SIZE)
def _normalise(kind: str, value: str, region: str, secret: bytes) -> Identifier:
    if pseudonym.is_pseudonym(value):
        if kind not in IDENTIFIER_KINDS:
            raise InvalidIdentifier(kind, f"unknown identifier kind; known kinds: {', '.join(IDENTIFIER_KINDS)}")
        return _from_pseudonym(kind, value)
    if kind == "phone":
        clear = _phone(value.strip(), region)
    elif kind == "email":
        clear = _email(value)
    elif kind == "card":
        digits = _card(value)
        return Identifier(kind, identifier_key(kind, digits, secret), "…" + digits[-4:])
    elif kind in IDENTIFIER_KINDS:
        clear = value.strip()
        if not clear:
            raise InvalidIdentifier(kind, "must not be empty")
    else:
        raise InvalidIdentifier(kind, f"unknown identifier kind; known kinds: {', '.join(IDENTIFIER_KINDS)}")
    return Identifier(kind, identifier_key(kind, clear, secret), clear)


def normalise(kind: str, value: str, *, region: str = "GB", secret: bytes) -> Identifier:
    """Normalise one identifier and key it.

    :param kind: one of :data:`~touchpoint.core.identifiers.IDENTIFIER_KINDS`.
    :param value: the clear value as the channel wrote it.
    :param region: ISO 3166 region for national phone numbers.
    :param secret: the key of the HMAC (the ``identifier_key`` setting).
    :returns: the identifier's kind, key and display value.
    :raises InvalidIdentifier: the value is not a valid identifier of that kind.
    """
    if not isinstance(value, str):
        raise InvalidIdentifier(kind, f"must be a string, not {type(value).__name__}")
    return _normalise(kind, value, region, secret)
