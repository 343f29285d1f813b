"""Event-time instants as epoch milliseconds, and back to ISO-8601 text.

The pure core counts time in integer milliseconds (what the Avro contract's
``timestamp-millis`` holds): comparisons and arithmetic are exact and cheap.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

__all__ = ["DAY_MS", "any_zone_ms", "epoch_ms", "iso_ms"]

DAY_MS = 86_400_000
_DAY_MS = DAY_MS
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)


def epoch_ms(instant: datetime) -> int:
    """An aware datetime as integer milliseconds since the epoch."""
    return (instant - _EPOCH) // _MS


_EPOCH_ORDINAL = _EPOCH.toordinal()


def any_zone_ms(instant: datetime) -> int:
    """:func:`epoch_ms`, faster for an instant at offset zero in a zone other than ``UTC``.

    Pydantic parses ``...Z`` to its own ``TzInfo(0)``, and subtracting across two
    zone objects costs several times the arithmetic on the fields done here.
    """
    offset = instant.utcoffset()
    if offset is None or offset:  # (a naive datetime fails in epoch_ms, as it should)
        return epoch_ms(instant)
    return (((instant.toordinal() - _EPOCH_ORDINAL) * 86_400 + instant.hour * 3_600 + instant.minute * 60
             + instant.second) * 1_000 + instant.microsecond // 1_000)


_DAY_PREFIX: dict[int, str] = {}
# The clock part from tables: "HH:MM:" per minute of the day, "SS." per second, "mmmZ" per milli.
_HOUR_MINUTE = tuple(f"{m // 60:02d}:{m % 60:02d}:" for m in range(24 * 60))
_SECOND = tuple(f"{s:02d}." for s in range(60))
_MILLI = tuple(f"{m:03d}Z" for m in range(1000))


def iso_ms(ms: int) -> str:
    """Milliseconds since the epoch as ``YYYY-MM-DDTHH:MM:SS.mmmZ``."""
    # Rendering formats ~50 times per customer: cache the date part, look the clock up in tables.
    day, rem = divmod(ms, _DAY_MS)
    prefix = _DAY_PREFIX.get(day)
    if prefix is None:
        if len(_DAY_PREFIX) > 100_000:
            _DAY_PREFIX.clear()
        prefix = _DAY_PREFIX[day] = (_EPOCH + timedelta(days=day)).strftime("%Y-%m-%dT")
    seconds, milli = divmod(rem, 1000)
    minutes, sec = divmod(seconds, 60)
    return f"{prefix}{_HOUR_MINUTE[minutes]}{_SECOND[sec]}{_MILLI[milli]}"
