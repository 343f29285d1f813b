"""What a reader sees of a card's identifiers: pseudonyms opened with their data keys, masked by role.

Cards hold identifiers as pseudonyms (DESIGN.md §6). :func:`open_identifiers`
opens them with data keys the caller fetched (:data:`ERASED` where the key
was destroyed: crypto-shredding); :func:`mask_card` masks the opened values
for the agent role (``j***@example.com``, ``•••• 0123``). The customers
projection runs both once per card change and stores the result beside the
card (:func:`agent_identifiers`: what an agent sees whole, the customer
number, stays sealed there and is opened per lookup); the lookup API masks
whole cards per request only for clear (unmasked) reads and older rows.
The person's name (a ``profile`` event's, a sealed text) is shown whole to
every role that reads cards, so an agent can greet the caller: it stays
sealed at rest and is opened per lookup like the customer number.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any, Final

from touchpoint.core.pseudonym import (
    PREFIX,
    TEXT_PREFIX,
    Unreadable,
    is_pseudonym,
    is_sealed_text,
    open_text,
    parse,
    reveal,
    text_key,
)

__all__ = ["ERASED", "MASK", "SHOWN_WHOLE", "agent_identifiers", "mask_card", "mask_identifier", "open_identifiers",
           "open_in_text", "open_sealed", "pseudonym_keys"]

ERASED: Final = "(erased)"
"""What a reader sees of an identifier whose data key was destroyed."""
MASK: Final = "•••• "


def pseudonym_keys(identifiers: object) -> set[str]:
    """The data-key names of the pseudonyms in a card's ``identifiers`` (kind -> values); anything else: none."""
    if not isinstance(identifiers, Mapping):
        return set()
    return {parse(value).key for values in identifiers.values() if isinstance(values, (list, tuple))
            for value in values if isinstance(value, str) and is_pseudonym(value)}


def open_identifiers(identifiers: Mapping[str, Sequence[str]], data_keys: Mapping[str, bytes]) -> dict[str, list[str]]:
    """A card's identifiers with their pseudonyms opened by ``data_keys``; :data:`ERASED` when a key is gone."""
    opened: dict[str, list[str]] = {}
    for kind, values in identifiers.items():
        opened[kind] = []
        for value in values:
            if not is_pseudonym(value):
                opened[kind].append(value)
                continue
            try:
                opened[kind].append(reveal(value, data_keys.get(parse(value).key)))
            except Unreadable:
                opened[kind].append(ERASED)
    return opened


# A pseudonym ("tp1:<kind>:<32 hex>:<shown>") or a sealed text ("tp1t:<kind>:<32 hex>:~<sealed>") as a JSON
# string; its data key's name is "<kind>:<32 hex>".
_SEALED_STRING = re.compile(rb'"((' + re.escape(PREFIX.encode()) + rb"|" + re.escape(TEXT_PREFIX.encode())
                            + rb')([a-z_]+:[0-9a-f]{32}):[^"\\]+)"')
_TEXT_PREFIX = TEXT_PREFIX.encode()


def open_in_text(text: bytes, data_keys: Mapping[str, bytes]) -> bytes:
    """JSON text with each pseudonym and sealed text in it opened in place (:data:`ERASED` where its key is
    gone), as :func:`open_identifiers` and :func:`open_sealed` open them: the lookup opens what an agent sees
    whole (customer numbers, the name) in the stored card without parsing and writing the JSON again."""
    def opened(match: re.Match[bytes]) -> bytes:
        value, key = match[1].decode(), data_keys.get(match[3].decode())
        try:
            shown = open_text(value, key) if match[2] == _TEXT_PREFIX else reveal(value, key)
        except Unreadable:
            shown = ERASED
        return json.dumps(shown, ensure_ascii=False).encode()

    return _SEALED_STRING.sub(opened, text)


def open_sealed(value: str | None, data_keys: Mapping[str, bytes]) -> str | None:
    """A sealed text opened (a name); :data:`ERASED` when its key is gone; anything else as it is."""
    if value is None or not is_sealed_text(value):
        return value
    try:
        return open_text(value, data_keys.get(text_key(value)))
    except Unreadable:
        return ERASED


SHOWN_WHOLE: Final = frozenset({"customer_no"})
"""Kinds an agent sees whole (:func:`mask_identifier`): at rest they stay sealed, opened per read."""


def agent_identifiers(identifiers: Mapping[str, Sequence[str]], data_keys: Mapping[str, bytes]) -> dict[str, Any]:
    """A card's identifiers as the customers projection stores them for agents: masked, except the kinds an agent
    sees whole (:data:`SHOWN_WHOLE`), which stay as they are (sealed: nothing identifies a person in clear at
    rest) for the lookup to open with :func:`open_identifiers` and nothing else."""
    opened = open_identifiers({kind: values for kind, values in identifiers.items() if kind not in SHOWN_WHOLE},
                              data_keys)
    shown: dict[str, Any] = mask_card({"identifiers": opened})["identifiers"]
    return {kind: list(values) if kind in SHOWN_WHOLE else shown[kind] for kind, values in identifiers.items()}


def mask_card(card: dict[str, Any]) -> dict[str, Any]:
    """A copy of a rendered card (identifiers opened) with its identifiers masked for the agent role."""
    identifiers = card.get("identifiers")
    if not isinstance(identifiers, dict):
        return card
    masked = {kind: [mask_identifier(kind, str(value)) for value in values] if isinstance(values, list) else values
              for kind, values in identifiers.items()}
    return {**card, "identifiers": masked}


def mask_identifier(kind: str, display: str) -> str:
    """One identifier as an agent sees it (``display`` as the card holds it)."""
    if kind == "customer_no":
        return display
    if kind == "email":
        local, at, domain = display.rpartition("@")
        return f"{local[:1]}***@{domain}" if at else "***"
    digits = "".join(c for c in display if c.isdigit()) if kind in ("phone", "card") else display
    if kind == "card":  # the card holds "…" and the last four already
        return MASK + digits[-4:]
    # A value of four characters or fewer would be shown whole: show nothing of it.
    return MASK + digits[-4:] if len(digits) > 4 else MASK.strip()
