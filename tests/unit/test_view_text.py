"""The customers projection's stored view: its identifiers last, so a lookup puts the masked ones in their place."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from projections.customers import view_text

MASKED = {"email": ["a***@example.com"], "phone": ["•••• 0123"]}


@pytest.mark.parametrize("view", [
    {"aliases": [], "customer_id": "cus_1", "identifiers": {"email": ["tp1:email:x"]}, "timeline": [{"a": "é\\"}]},
    {"identifiers": {"phone": ["tp1:phone:y"]}},
    {"customer_id": "cus_2", "identifiers": {}, "z": None},
    {"customer_id": "cus_4", "identifiers": {"email": ["tp1:email:x"]}, "person": {"name": "tp1t:email:x:~y"}, "z": 1},
    {"person": {"name": None}, "identifiers": {}},
])
def test_the_view_with_other_identifiers_in_place_is_the_view_with_those(view: dict[str, Any]) -> None:
    text, at = view_text(view)
    assert at is not None
    assert orjson.loads(text) == view
    assert orjson.loads(text[:at] + b'"identifiers":' + orjson.dumps(MASKED) + b"}") == {**view, "identifiers": MASKED}


@pytest.mark.parametrize("view", [{"customer_id": "cus_3"}, {"identifiers": ["not", "an", "object"]}])
def test_a_view_without_an_identifiers_object_has_no_place_for_them(view: dict[str, Any]) -> None:
    text, at = view_text(view)
    assert at is None and orjson.loads(text) == view


def test_the_person_comes_just_before_the_identifiers() -> None:
    """The lookup opens a sealed name in the person block alone, found back from where identifiers begin."""
    person = {"language": "en", "name": "tp1t:email:x:~y", "preferred_channel": None}
    text, at = view_text({"a": 1, "person": person, "identifiers": {"email": []}, "timeline": []})
    assert at is not None
    start = text.rfind(b'"person":', 0, at)
    assert text[start:at] == b'"person":' + orjson.dumps(person) + b","
