"""What the customers projection stores for agents: identifiers masked, the customer number still sealed."""

from __future__ import annotations

import json
import os

import pytest

from touchpoint.core.masking import ERASED, agent_identifiers, open_identifiers, open_in_text
from touchpoint.core.pseudonym import is_pseudonym, pseudonym


def test_stored_for_agents_masked_except_the_customer_number_which_stays_sealed_until_a_lookup_opens_it() -> None:
    email, phone, number = "email:" + "e" * 32, "phone:" + "a" * 32, "customer_no:" + "c" * 32
    keys = {name: os.urandom(32) for name in (email, phone, number)}
    sealed = {"email": [pseudonym("email", email, "ada@example.com", keys[email])],
              "phone": [pseudonym("phone", phone, "+447700900123", keys[phone])],
              "customer_no": [pseudonym("customer_no", number, "C100", keys[number])]}
    stored = agent_identifiers(sealed, keys)
    assert stored["email"] == ["a***@example.com"] and stored["phone"] == ["•••• 0123"]
    assert stored["customer_no"] == sealed["customer_no"] and is_pseudonym(stored["customer_no"][0])
    assert "C100" not in repr(stored)
    assert open_identifiers(stored, keys)["customer_no"] == ["C100"]
    assert open_identifiers(stored, {})["customer_no"] == [ERASED]  # its key destroyed: erased


@pytest.mark.parametrize("erased", [(), ("customer_no:" + "c" * 32,), ("customer_no:" + "d" * 32,)])
def test_opened_in_the_text_as_in_the_document(erased: tuple[str, ...]) -> None:
    """The lookup opens the stored JSON text in place: the same values as opening the parsed document."""
    numbers = ["customer_no:" + "c" * 32, "customer_no:" + "d" * 32]
    keys = {name: os.urandom(32) for name in numbers}
    stored = {"customer_no": [pseudonym("customer_no", numbers[0], "C100", keys[numbers[0]]),
                              pseudonym("customer_no", numbers[1], 'Zoë "7"', keys[numbers[1]])],
              "email": ["a***@example.com"], "card": ["•••• 0123"]}
    kept = {name: key for name, key in keys.items() if name not in erased}
    text = json.dumps(stored, ensure_ascii=False).encode()
    assert json.loads(open_in_text(text, kept)) == open_identifiers(stored, kept)
    assert (ERASED in json.loads(open_in_text(text, kept))["customer_no"]) == bool(erased)
    assert open_in_text(b'{"email": ["a***@example.com"]}', keys) == b'{"email": ["a***@example.com"]}'
