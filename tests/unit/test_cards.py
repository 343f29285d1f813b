"""The records of customer-views: what the headers say equals what the value says, with or without them."""

from __future__ import annotations

import orjson
import pytest

from touchpoint.contract.cards import AS_OF, KIND, card_record, erased_record, merged_record, read_card

STAMP = "2026-03-01T09:30:00.000Z"
VIEW = {"customer_id": "cus_1", "value_segment": "gold", "timeline": [{"event_id": "e\n\\1"}]}


@pytest.mark.parametrize(("record", "kind"), [
    (card_record("cus_1", STAMP, VIEW, {"phone": ["k1", "k2"]}), "view"),
    (merged_record("cus_2", STAMP, "cus_1"), "merged"),
    (erased_record("cus_3", STAMP), "erased"),
])
def test_headers_and_value_say_the_same(record: tuple[bytes, bytes, list[tuple[str, bytes]]], kind: str) -> None:
    key, value, headers = record
    doc = orjson.loads(value)
    assert key.decode() == doc["customer_id"]
    assert dict(headers) == {KIND: kind.encode(), AS_OF: STAMP.encode()}
    with_headers = read_card(value, headers)
    without = read_card(value, [])
    assert with_headers[:2] == without[:2] == (kind, STAMP)
    assert without[2] == doc
    # A card's value is handed on as bytes; merges and erasures are small and parsed.
    assert with_headers[2] == (None if kind == "view" else doc)


def test_a_card_keeps_its_view_and_keys() -> None:
    _, value, _ = card_record("cus_1", STAMP, VIEW, {"phone": ["k1"]})
    assert orjson.loads(value) == {"customer_id": "cus_1", "as_of": STAMP, "view": VIEW, "keys": {"phone": ["k1"]}}


@pytest.mark.parametrize("value", [b"[1, 2]", b'{"customer_id": "x"}', b"not json"])
def test_a_value_that_is_no_record_is_refused(value: bytes) -> None:
    with pytest.raises(ValueError):
        read_card(value, [])
