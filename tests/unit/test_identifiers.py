"""Identifier priority."""

from __future__ import annotations

import pytest

from touchpoint.contract.models import Identifiers
from touchpoint.core.identifiers import IDENTIFIER_KINDS, strongest_identifier


def test_every_contract_kind_has_a_priority() -> None:
    assert set(Identifiers.__annotations__) == set(IDENTIFIER_KINDS)


@pytest.mark.parametrize(
    ("identifiers", "expected"),
    [
        ({"cookie": "c", "customer_no": "C1", "email": "e"}, ("customer_no", "C1")),
        ({"cookie": "c", "card": "k", "phone": "+44"}, ("card", "k")),
        ({"cookie": "c", "phone": "+44"}, ("phone", "+44")),
        ({"device": "d", "cookie": "c"}, ("device", "d")),
        ({"cookie": "c"}, ("cookie", "c")),
    ],
)
def test_strongest_identifier(identifiers: dict[str, str], expected: tuple[str, str]) -> None:
    assert strongest_identifier(identifiers) == expected


def test_no_known_identifier() -> None:
    with pytest.raises(ValueError, match="no known identifier"):
        strongest_identifier({"passport": "x"})
