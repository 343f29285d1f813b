"""Pseudonyms: the form an identifier travels in on the topics (DESIGN.md §6).

``tp1:<kind>:<32 hex>:<shown>``

* ``<kind>:<32 hex>`` is the identifier's key, the keyed hash identity
  resolution matches on (:func:`touchpoint.core.normalise.identifier_key`);
* ``<shown>`` for a card is ``…`` and its last four digits, which may be
  shown to anyone; for every other kind it is ``~`` and the base64url of the
  normalised clear value sealed with AES-256-GCM under the identifier's own
  data key (from the key store), the key as associated data.

A data key seals exactly one value, its identifier's, so the fixed nonce
never repeats under a key and the same identifier always gets the same
pseudonym: a duplicate delivery or a replay stays byte-identical. Erasure
destroys the data key (crypto-shredding): the pseudonym still carries its
keyed hash, but nobody can read the value out of it any more. A data key
made later for the same identifier (the person comes back) cannot open the
old pseudonyms either: GCM authenticates, and :func:`reveal` refuses.

Pure functions: the data keys are passed in by the adapters that hold them.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

PREFIX = "tp1:"
SHOWN_AS_IS = frozenset({"card"})
"""Kinds whose shown part is not the clear value (a card's last four), so it needs no sealing."""
DATA_KEY_BYTES = 32
_NONCE = bytes(12)  # one value per data key: a fixed nonce never repeats under a key
_HEX = re.compile(r"[0-9a-f]{32}")


class Unreadable(ValueError):
    """A pseudonym cannot be opened: its data key was destroyed (erased) or is not the one that sealed it."""


@dataclass(frozen=True, slots=True)
class Parsed:
    """A pseudonym's parts: ``key`` (``"<kind>:<32 hex>"``) and ``shown`` (``…1234`` or ``~<sealed>``)."""

    kind: str
    key: str
    shown: str

    @property
    def sealed(self) -> bool:
        return self.shown.startswith("~")


def is_pseudonym(value: str) -> bool:
    return value.startswith(PREFIX)


def parse(value: str) -> Parsed:
    """Split a pseudonym; :class:`ValueError` with the reason when it is not a well-formed one."""
    kind, _, rest = value.removeprefix(PREFIX).partition(":")
    digest, _, shown = rest.partition(":")
    if not kind or not _HEX.fullmatch(digest) or not shown:
        raise ValueError("not a well-formed pseudonym (tp1:<kind>:<32 hex digits>:<shown>)")
    if (kind in SHOWN_AS_IS) == shown.startswith("~"):
        shown = "its last four" if kind in SHOWN_AS_IS else "sealed"
        raise ValueError(f"a {kind} pseudonym's shown part must be {shown}")
    return Parsed(kind, f"{kind}:{digest}", shown)


def pseudonym(kind: str, key: str, display: str, data_key: bytes | None) -> str:
    """The pseudonym of a normalised identifier (``key`` and ``display`` from ``normalise``).

    :param data_key: the identifier's own data key; unused (may be None) for kinds shown as they are.
    """
    if kind in SHOWN_AS_IS:
        return f"{PREFIX}{key}:{display}"
    if data_key is None or len(data_key) != DATA_KEY_BYTES:
        raise ValueError(f"a {kind} pseudonym needs its identifier's {DATA_KEY_BYTES}-byte data key")
    sealed = AESGCM(data_key).encrypt(_NONCE, display.encode(), key.encode())
    return f"{PREFIX}{key}:~{base64.urlsafe_b64encode(sealed).decode().rstrip('=')}"


def reveal(value: str, data_key: bytes | None) -> str:
    """The clear display value of a pseudonym (a card's last four need no key).

    :raises Unreadable: the data key is gone or is not the one that sealed it.
    :raises ValueError: ``value`` is not a well-formed pseudonym.
    """
    parsed = parse(value)
    if not parsed.sealed:
        return parsed.shown
    if data_key is None:
        raise Unreadable(f"the data key of {parsed.key} is gone (erased)")
    body = parsed.shown[1:]
    try:
        sealed = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
        return AESGCM(data_key).decrypt(_NONCE, sealed, parsed.key.encode()).decode()
    except (InvalidTag, ValueError) as exc:
        raise Unreadable(f"{parsed.key} was sealed under another data key (erased and made anew)") from exc
