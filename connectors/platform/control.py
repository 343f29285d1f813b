"""The log's control records on ``accepted``: ticks and erasures, as the stages and the tools write and read them.

A control record carries the header ``touchpoint-record`` (:data:`TICK_HEADER`), whose value tells a
tick (``tick``, :mod:`connectors.operations.clock` writes them) from an erasure (``erase``,
:mod:`connectors.operations.privacy`), so the identity stage knows one from an Avro event without
trying to decode it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from touchpoint.core.instants import epoch_ms, iso_ms

Headers = list[tuple[str, bytes]]

TICK_HEADER = "touchpoint-record"
"""The header of every control record on ``accepted``; its value says which record it is."""
TICK_VALUE = b"tick"
TICK_KEY = b"clock"
TICK_PARTITION = 0
"""``accepted`` has one partition; ticks are written to it explicitly, never hashed by key."""


def is_control(headers: Any, value: bytes) -> bool:
    """Whether a record's headers (a list of pairs or a mapping) mark it as the control record ``value``."""
    if not headers:
        return False
    pairs = headers.items() if isinstance(headers, Mapping) else headers
    return any(key == TICK_HEADER and given == value for key, given in pairs)


def tick_record(at: datetime) -> tuple[bytes, bytes, Headers]:
    """The ``(key, value, headers)`` of the tick for instant ``at`` (aware; sub-milliseconds dropped).

    :raises ValueError: ``at`` has no time zone.
    """
    if at.tzinfo is None:
        raise ValueError(f"a tick needs an aware instant, got {at.isoformat()}")
    value = json.dumps({"tick": iso_ms(epoch_ms(at))}, separators=(",", ":")).encode()
    return TICK_KEY, value, [(TICK_HEADER, TICK_VALUE)]


ERASE_VALUE = b"erase"
"""The control header's value (:data:`TICK_HEADER`) of an erasure record."""


def is_erasure(headers: Any) -> bool:
    """Whether a record's headers (a list of pairs or a mapping) mark it as an erasure."""
    return is_control(headers, ERASE_VALUE)


def erasure_record(customer_id: str, at: datetime) -> tuple[bytes, bytes, list[tuple[str, bytes]]]:
    """(key, value, headers) of the erasure record for ``customer_id``."""
    value = json.dumps({"erase": customer_id, "requested_at": at.isoformat(timespec="milliseconds")}).encode()
    return customer_id.encode(), value, [(TICK_HEADER, ERASE_VALUE)]


def erased_id(value: bytes) -> str | None:
    """The customer id an erasure record names (None when the record is not one of ours)."""
    try:
        doc = json.loads(value)
    except ValueError:
        return None
    customer_id = doc.get("erase") if isinstance(doc, dict) else None
    return customer_id if isinstance(customer_id, str) and customer_id else None
