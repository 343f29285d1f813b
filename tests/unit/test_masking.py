"""What the customers projection stores for agents: identifiers masked, the customer number still sealed."""

from __future__ import annotations

import os

from touchpoint.core.masking import ERASED, agent_identifiers, open_identifiers
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
