"""The envelope checks: every way an event can be wrong gets a reason naming the field."""

from __future__ import annotations

import json

import pytest

from touchpoint.core.envelope import Accepted, Rejected, check_json_event, strongest_identifier

GOOD = {
    "event_id": "e-1", "type": "web", "channel": "web", "occurred_at": "2026-11-01T10:00:00+00:00",
    "identifiers": {"email": "ann@example.com", "cookie": "ck-1"}, "payload": {"session_id": "s", "action": "login"},
}


def test_good_event_is_accepted() -> None:
    verdict = check_json_event(json.dumps(GOOD).encode())
    assert verdict == Accepted(GOOD)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"event_id": ""}, "event_id: missing or empty"),
        ({"type": "teleport"}, "type: 'teleport' is not one of"),
        ({"channel": "fax"}, "channel: 'fax' is not one of"),
        ({"occurred_at": "2026-11-01T10:00:00"}, "occurred_at: must be an ISO-8601 instant with a time zone"),
        ({"occurred_at": "yesterday"}, "occurred_at: must be"),
        ({"identifiers": {}}, "identifiers: at least one identifier is required"),
        ({"identifiers": {"passport": "X1"}}, "identifiers: unknown kinds ['passport']"),
        ({"identifiers": {"email": " "}}, "identifiers: values must be non-empty strings"),
        ({"payload": None}, "payload: must be an object"),
    ],
)
def test_bad_envelope_is_rejected_with_reason(change: dict[str, object], reason: str) -> None:
    verdict = check_json_event(json.dumps({**GOOD, **change}).encode())
    assert isinstance(verdict, Rejected)
    assert reason in verdict.reason


@pytest.mark.parametrize(
    ("raw", "reason"),
    [(b"\xff\xfe", "not JSON"), (b"{", "not JSON"), (b"[1, 2]", "event must be a JSON object"), (b"", "not JSON")],
)
def test_undecodable_bytes_are_rejected(raw: bytes, reason: str) -> None:
    verdict = check_json_event(raw)
    assert isinstance(verdict, Rejected) and verdict.reason.startswith(reason)


def test_several_problems_are_all_reported() -> None:
    verdict = check_json_event(json.dumps({**GOOD, "type": "x", "identifiers": {}}).encode())
    assert isinstance(verdict, Rejected)
    assert "type:" in verdict.reason and "identifiers:" in verdict.reason


@pytest.mark.parametrize(
    ("identifiers", "expected"),
    [
        ({"cookie": "c", "customer_no": "C1", "email": "e"}, ("customer_no", "C1")),
        ({"cookie": "c", "phone": "+44"}, ("phone", "+44")),
        ({"device": "d", "cookie": "c"}, ("device", "d")),
    ],
)
def test_strongest_identifier(identifiers: dict[str, str], expected: tuple[str, str]) -> None:
    assert strongest_identifier(identifiers) == expected
