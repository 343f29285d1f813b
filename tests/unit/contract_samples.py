"""One valid event per type in its JSON form, for any test to reuse.

Each call of :func:`sample` returns a fresh deep copy, so a test may mutate it
to build a bad input. ``NOW`` is the arrival instant the samples are judged at.
"""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from typing import Any

NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)

SAMPLES: dict[str, dict[str, Any]] = {
    "purchase": {
        "event_id": "pos-7781-000123",
        "type": "purchase",
        "channel": "branch",
        "occurred_at": "2025-03-01T09:15:02.250Z",
        "identifiers": {"card": "6011000990139424", "customer_no": "C-100234"},
        "payload": {
            "transaction_id": "T-88123",
            "location_id": "BR-017",
            "lines": [
                {"sku": "FUEL-95", "category": "fuel", "quantity": 1, "amount_minor": 6240},
                {"sku": "COFFEE-L", "category": "shop", "quantity": 2, "amount_minor": 590},
            ],
            "total_minor": 6830,
            "currency": "EUR",
            "campaign_code": "SPRING25",
        },
    },
    "refund": {
        "event_id": "pos-7781-000150",
        "type": "refund",
        "channel": "branch",
        "occurred_at": "2025-03-01T10:00:00Z",
        "identifiers": {"customer_no": "C-100234"},
        "payload": {"refund_id": "R-901", "transaction_id": "T-88123", "amount_minor": 590, "currency": "EUR"},
    },
    "branch_visit": {
        "event_id": "visit-2025-03-01-0042",
        "type": "branch_visit",
        "channel": "branch",
        "occurred_at": "2025-03-01T08:45:00+01:00",
        "identifiers": {"customer_no": "C-100234"},
        "payload": {"branch_id": "BR-017", "purpose": "account_opening"},
    },
    "call": {
        "event_id": "cti-55120-end",
        "type": "call",
        "channel": "phone",
        "occurred_at": "2025-03-01T11:02:40Z",
        "identifiers": {"phone": "+44 20 7946 0958"},
        "payload": {
            "call_id": "55120",
            "direction": "inbound",
            "phase": "ended",
            "ivr_reason": "billing",
            "duration_s": 312,
            "outcome": "resolved",
            "agent_id": "A-77",
        },
    },
    "email": {
        "event_id": "esp-msg-991-open",
        "type": "email",
        "channel": "email",
        "occurred_at": "2025-02-28T19:20:00Z",
        "identifiers": {"email": "Jane.Doe@example.com"},
        "payload": {"message_id": "msg-991", "action": "opened", "campaign_id": "CMP-12"},
    },
    "web": {
        "event_id": "web-s81-0007",
        "type": "web",
        "channel": "web",
        "occurred_at": "2025-03-01T07:59:59.999Z",
        "identifiers": {"cookie": "ck-3f9a", "device": "dev-a1"},
        "payload": {"session_id": "s81", "action": "basket_abandon", "page": "/basket"},
    },
    "sms": {
        "event_id": "sms-4410-optout",
        "type": "sms",
        "channel": "sms",
        "occurred_at": "2025-03-01T06:00:00Z",
        "identifiers": {"phone": "+447700900123"},
        "payload": {"message_id": "4410", "action": "opt_out", "campaign_id": None},
    },
    "case": {
        "event_id": "crm-case-77-open",
        "type": "case",
        "channel": "phone",
        "occurred_at": "2025-03-01T11:03:00Z",
        "identifiers": {"customer_no": "C-100234"},
        "payload": {"case_id": "77", "action": "opened", "category": "cancel_request", "severity": "high",
                    "subject": "Close my loyalty account"},
    },
    "consent": {
        "event_id": "pref-centre-0912",
        "type": "consent",
        "channel": "web",
        "occurred_at": "2025-03-01T07:00:00Z",
        "identifiers": {"customer_no": "C-100234", "email": "jane.doe@example.com"},
        "payload": {"purpose": "marketing", "channel": "sms", "granted": False},
    },
    "campaign": {
        "event_id": "cmp-12-invite-C-100234",
        "type": "campaign",
        "channel": "email",
        "occurred_at": "2025-02-27T09:00:00Z",
        "identifiers": {"customer_no": "C-100234"},
        "payload": {
            "campaign_id": "CMP-12",
            "action": "invited",
            "multiplier": 3,
            "starts_at": "2025-03-01T00:00:00Z",
            "ends_at": "2025-03-31T23:59:59Z",
        },
    },
    "profile": {
        "event_id": "pref-centre-0913",
        "type": "profile",
        "channel": "web",
        "occurred_at": "2025-03-01T07:01:00Z",
        "identifiers": {"customer_no": "C-100234", "email": "jane.doe@example.com"},
        "payload": {"name": "Jane Doe", "language": "en-GB", "preferred_channel": "email"},
    },
}


def sample(event_type: str) -> dict[str, Any]:
    """A fresh copy of the valid sample of ``event_type``."""
    return copy.deepcopy(SAMPLES[event_type])
