"""The common envelope every event carries, and the checks it must pass.

Pure functions: bytes or a dict in, a verdict out. The checks here are the
envelope's own (DESIGN.md §1); each event type's payload is checked by the
contract module once the Avro contract lands. A verdict always carries a
reason a person can act on, because a rejected event goes to the dead-letter
topic with it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

CHANNELS = frozenset({"branch", "phone", "email", "web", "sms"})
TYPES = frozenset(
    {"purchase", "refund", "branch_visit", "call", "email", "web", "sms", "case", "consent", "campaign"}
)
IDENTIFIER_KINDS = ("customer_no", "card", "email", "phone", "device", "cookie")
"""Identifier kinds, strongest first (the order identity resolution trusts them)."""


@dataclass(frozen=True)
class Accepted:
    event: dict[str, Any]


@dataclass(frozen=True)
class Rejected:
    reason: str


def check_json_event(raw: bytes) -> Accepted | Rejected:
    """Decode one JSON event and check its envelope."""
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        return Rejected(f"not JSON: {exc}")
    if not isinstance(doc, dict):
        return Rejected("event must be a JSON object")
    problems = envelope_problems(doc)
    return Rejected("; ".join(problems)) if problems else Accepted(doc)


def envelope_problems(doc: dict[str, Any]) -> list[str]:
    """Every problem with the envelope fields, empty when it is fine."""
    problems = []
    event_id = doc.get("event_id")
    if not isinstance(event_id, str) or not event_id.strip():
        problems.append("event_id: missing or empty")
    if doc.get("type") not in TYPES:
        problems.append(f"type: {doc.get('type')!r} is not one of {sorted(TYPES)}")
    if doc.get("channel") not in CHANNELS:
        problems.append(f"channel: {doc.get('channel')!r} is not one of {sorted(CHANNELS)}")
    occurred_at = doc.get("occurred_at")
    try:
        parsed = datetime.fromisoformat(occurred_at) if isinstance(occurred_at, str) else None
    except ValueError:
        parsed = None
    if parsed is None or parsed.tzinfo is None:
        problems.append("occurred_at: must be an ISO-8601 instant with a time zone")
    identifiers = doc.get("identifiers")
    if not isinstance(identifiers, dict) or not identifiers:
        problems.append("identifiers: at least one identifier is required")
    else:
        unknown = sorted(set(identifiers) - set(IDENTIFIER_KINDS))
        if unknown:
            problems.append(f"identifiers: unknown kinds {unknown}")
        if not all(isinstance(v, str) and v.strip() for v in identifiers.values()):
            problems.append("identifiers: values must be non-empty strings")
    if not isinstance(doc.get("payload"), dict):
        problems.append("payload: must be an object")
    return problems


def strongest_identifier(identifiers: dict[str, str]) -> tuple[str, str]:
    """The (kind, value) identity resolution trusts most on this event."""
    for kind in IDENTIFIER_KINDS:
        if kind in identifiers:
            return kind, identifiers[kind]
    raise ValueError("no known identifier")
