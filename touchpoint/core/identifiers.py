"""Identifier kinds and how far each is trusted.

Pure data and functions. The order is the priority identity resolution
uses: a customer number is the strongest proof of who someone is, a cookie
the weakest.
"""

from __future__ import annotations

from collections.abc import Mapping

IDENTIFIER_KINDS = ("customer_no", "card", "email", "phone", "device", "cookie")
"""Identifier kinds, strongest first."""


def strongest_identifier(identifiers: Mapping[str, str]) -> tuple[str, str]:
    """The (kind, value) this event's identity rests on most.

    :raises ValueError: no known identifier kind is present.
    """
    for kind in IDENTIFIER_KINDS:
        if kind in identifiers:
            return kind, identifiers[kind]
    raise ValueError("no known identifier")
