"""The records of customer-views: what the headers say equals what the value says, with or without them."""

from __future__ import annotations

import orjson
import pytest

from touchpoint.contract.cards import (
    AS_OF,
    KIND,
    POSITION,
    card_record,
    erased_record,
    log_position,
    merged_record,
    read_card,
)

STAMP = "2026-03-01T09:30:00.000Z"
VIEW = {"customer_id": "cus_1", "value_segment": "gold", "timeline": [{"event_id": "e\n\\1"}]}
AT = log_position((1234, 2))


@pytest.mark.parametrize(("record", "kind"), [
    (card_record("cus_1", STAMP, AT, VIEW, {"phone": ["k1", "k2"]}), "view"),
    (merged_record("cus_2", STAMP, AT, "cus_1"), "merged"),
    (erased_record("cus_3", STAMP, AT), "erased"),
])
def test_headers_and_value_say_the_same(record: tuple[bytes, bytes, list[tuple[str, bytes]]], kind: str) -> None:
    key, value, headers = record
    doc = orjson.loads(value)
    assert key.decode() == doc["customer_id"]
    assert dict(headers) == {KIND: kind.encode(), AS_OF: STAMP.encode(), POSITION: str(AT).encode()}
    with_headers = read_card(value, headers)
    without = read_card(value, [])
    assert with_headers[:3] == without[:3] == (kind, STAMP, AT)
    assert without.doc == doc
    # A card's value is handed on as bytes; merges and erasures are small and parsed.
    assert with_headers.doc == (None if kind == "view" else doc)


def test_a_card_keeps_its_view_and_keys() -> None:
    _, value, _ = card_record("cus_1", STAMP, AT, VIEW, {"phone": ["k1"]})
    assert orjson.loads(value) == {"customer_id": "cus_1", "as_of": STAMP, "position": AT, "view": VIEW,
                                   "keys": {"phone": ["k1"]}}


def test_a_record_written_before_positions_has_none() -> None:
    value = orjson.dumps({"customer_id": "cus_1", "as_of": STAMP, "merged_into": "cus_2"})
    assert read_card(value, [(KIND, b"merged"), (AS_OF, STAMP.encode())]).position is None
    assert read_card(value, []).position is None


@pytest.mark.parametrize(("earlier", "later"), [((5, 0), (5, 1)), ((5, 65535), (6, 0)), ((0, 0), (1 << 40, 3))])
def test_positions_order_as_identity_wrote_them(earlier: tuple[int, int], later: tuple[int, int]) -> None:
    assert log_position(earlier) < log_position(later)


def test_a_count_past_its_bits_is_refused() -> None:
    with pytest.raises(ValueError):
        log_position((1, 1 << 16))


@pytest.mark.parametrize("value", [b"[1, 2]", b'{"customer_id": "x"}', b"not json"])
def test_a_value_that_is_no_record_is_refused(value: bytes) -> None:
    with pytest.raises(ValueError):
        read_card(value, [])
