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

Sealed text: ``tp1t:<kind>:<32 hex>:~<sealed>``. Free text about a person that
is not an identifier (a ``profile`` event's name) is sealed under the data
key of one of the person's identifiers (``<kind>:<32 hex>``, the event's
strongest), so erasing the person erases it too. That data key already seals
its identifier under the fixed nonce, so a sealed text carries a random nonce
of its own (given by the caller) before the ciphertext.

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


TEXT_PREFIX = "tp1t:"
_TEXT_AAD = b"touchpoint sealed text\0"  # apart from the identifier sealed under the same data key


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


def is_sealed_text(value: str) -> bool:
    return value.startswith(TEXT_PREFIX)


def text_key(value: str) -> str:
    """The name of the data key a sealed text is sealed under (``<kind>:<32 hex>``).

    :raises ValueError: ``value`` is not a well-formed sealed text.
    """
    kind, _, rest = value.removeprefix(TEXT_PREFIX).partition(":")
    digest, _, sealed = rest.partition(":")
    if not is_sealed_text(value) or not kind or not _HEX.fullmatch(digest) or not sealed.startswith("~") \
            or len(sealed) < 2:
        raise ValueError("not a well-formed sealed text (tp1t:<kind>:<32 hex digits>:~<sealed>)")
    return f"{kind}:{digest}"


def seal_text(key: str, text: str, data_key: bytes, nonce: bytes) -> str:
    """``text`` sealed under the data key of the identifier ``key`` (``<kind>:<32 hex>``).

    :param nonce: 12 random bytes, new for every sealing (``os.urandom(12)``).
    """
    if len(data_key) != DATA_KEY_BYTES or len(nonce) != len(_NONCE):
        raise ValueError(f"sealing needs a {DATA_KEY_BYTES}-byte data key and a {len(_NONCE)}-byte nonce")
    sealed = nonce + AESGCM(data_key).encrypt(nonce, text.encode(), _TEXT_AAD + key.encode())
    return f"{TEXT_PREFIX}{key}:~{base64.urlsafe_b64encode(sealed).decode().rstrip('=')}"


def open_text(value: str, data_key: bytes | None) -> str:
    """The clear text of a sealed text.

    :raises Unreadable: the data key is gone or is not the one that sealed it.
    :raises ValueError: ``value`` is not a well-formed sealed text.
    """
    key = text_key(value)
    if data_key is None:
        raise Unreadable(f"the data key of {key} is gone (erased)")
    body = value.rpartition(":~")[2]
    try:
        sealed = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
        nonce, ciphertext = sealed[:len(_NONCE)], sealed[len(_NONCE):]
        return AESGCM(data_key).decrypt(nonce, ciphertext, _TEXT_AAD + key.encode()).decode()
    except (InvalidTag, ValueError) as exc:
        raise Unreadable(f"text sealed under {key} cannot be opened with this data key") from exc
