"""Pseudonyms: sealed with the identifier's own data key, deterministic, unreadable once the key is gone."""

from __future__ import annotations

import os

import pytest

from touchpoint.core.normalise import normalise
from touchpoint.core.pseudonym import Unreadable, parse, pseudonym, reveal

SECRET = b"test-secret"


def sealed(kind: str, value: str, data_key: bytes) -> str:
    ident = normalise(kind, value, secret=SECRET)
    return pseudonym(kind, ident.key, ident.display, data_key)


def test_the_clear_value_is_not_in_the_pseudonym_and_its_key_opens_it() -> None:
    data_key = os.urandom(32)
    token = sealed("email", "Ann.Smith@Example.com", data_key)
    assert "ann" not in token.casefold() and "example" not in token.casefold()
    assert reveal(token, data_key) == "ann.smith@example.com"


def test_same_identifier_same_key_same_pseudonym() -> None:
    data_key = os.urandom(32)
    assert sealed("phone", "07700 900123", data_key) == sealed("phone", "+447700900123", data_key)


def test_a_destroyed_key_or_a_new_one_opens_nothing() -> None:
    token = sealed("phone", "+447700900123", os.urandom(32))
    with pytest.raises(Unreadable, match="erased"):
        reveal(token, None)
    with pytest.raises(Unreadable, match="another data key"):
        reveal(token, os.urandom(32))


def test_a_pseudonym_moved_to_another_identifier_does_not_open() -> None:
    """The key is the associated data: a sealed value glued to another key is refused, not shown."""
    data_key = os.urandom(32)
    ann, bob = sealed("email", "ann@example.com", data_key), sealed("email", "bob@example.com", data_key)
    forged = f"{ann.rsplit(':', 1)[0]}:{bob.rsplit(':', 1)[1]}"
    with pytest.raises(Unreadable):
        reveal(forged, data_key)


def test_a_card_shows_its_last_four_without_a_key() -> None:
    token = sealed("card", "4111 1111 1111 1111", os.urandom(32))
    assert "4111111111111111" not in token and token.endswith(":…1111")
    assert reveal(token, None) == "…1111"
    assert parse(token).key.startswith("card:")


def test_sealing_needs_a_data_key_of_the_right_size() -> None:
    ident = normalise("email", "ann@example.com", secret=SECRET)
    with pytest.raises(ValueError, match="32-byte data key"):
        pseudonym("email", ident.key, ident.display, b"short")
