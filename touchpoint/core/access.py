"""Access alerts: a lookup key reading far more than it usually does, or blocked at its daily ceiling (pure).

The lookup API's limits (:mod:`connectors.frontline.limits`) stop a key; these alerts tell operations that a
key needed stopping, or is close to it, while the audit trail only tells the story afterwards. Per window of
``window_s`` seconds, per key:

* **unusual volume**: the key made at least ``min_lookups`` lookups in the window and more than ``multiple``
  times its usual volume (its mean lookups per window over the windows it was seen in, within the
  history kept; a key with no history yet has a usual volume of 0, so its first busy window alerts);
* **ceiling reached**: the key was blocked at its daily ceiling of distinct customers in the window.

An alert names the key, its role, its counts and the window, never a customer or an identifier: who was
read is in the audit trail, for whoever investigates. Alert ids are derived from the key, the reason and
the window, so a window judged twice (a restarted watcher) gives the same ids.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from touchpoint.core.instants import iso_ms

__all__ = ["REASONS", "AccessConfig", "Block", "KeyWindow", "access_alerts", "usual_volume"]

REASONS = ("unusual_volume", "ceiling_reached")


@dataclass(frozen=True, slots=True)
class AccessConfig:
    """When a key's window is unusual: at least ``min_lookups``, and more than ``multiple`` × its usual volume."""

    window_s: int = 300
    multiple: float = 5.0
    min_lookups: int = 30

    def __post_init__(self) -> None:
        if self.window_s < 1 or self.multiple < 1 or self.min_lookups < 1:
            raise ValueError(f"access alerts: window_s, multiple and min_lookups must be at least 1, got {self}")


@dataclass(frozen=True, slots=True)
class KeyWindow:
    """One key's lookups in one window: how many, of how many distinct customers, how many refused."""

    key_name: str
    role: str
    lookups: int
    customers: int
    refused: int


@dataclass(frozen=True, slots=True)
class Block:
    """A key blocked at its daily ceiling: its distinct customers that day, the ceiling, when (epoch ms)."""

    key_name: str
    role: str
    customers: int
    ceiling: int
    since_ms: int


def usual_volume(history: Sequence[int]) -> float:
    """A key's usual lookups per window: the mean over the windows of the history it was seen in (0: none)."""
    return sum(history) / len(history) if history else 0.0


def _alert_id(*parts: object) -> str:
    return hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()[:32]


def access_alerts(start_ms: int, windows: Sequence[KeyWindow], usual: Mapping[str, float],
                  blocks: Sequence[Block], config: AccessConfig) -> list[dict[str, Any]]:
    """The alerts of the window beginning at ``start_ms``, sorted by reason and key.

    :param windows: each key's counts in the window.
    :param usual: each key's usual lookups per window before this one (absent: no history, 0).
    :param blocks: the keys blocked in the window.
    """
    end_ms = start_ms + config.window_s * 1000
    window = {"window_start": iso_ms(start_ms), "window_end": iso_ms(end_ms)}
    alerts: list[dict[str, Any]] = []
    for w in sorted(windows, key=lambda w: w.key_name):
        typical = usual.get(w.key_name, 0.0)
        if w.lookups >= config.min_lookups and w.lookups > config.multiple * typical:
            alerts.append({
                "alert_id": _alert_id("unusual_volume", w.key_name, start_ms), "reason": "unusual_volume",
                "key_name": w.key_name, "role": w.role, **window, "at": iso_ms(end_ms),
                "lookups": w.lookups, "customers": w.customers, "refused": w.refused,
                "usual_lookups": round(typical, 3), "ceiling": None,
                "text": (f"{w.lookups} lookups of {w.customers} customers in {config.window_s} s, "
                         f"{'no usual volume yet' if typical == 0 else f'usually {typical:.1f}'} "
                         f"(alert above {config.multiple:g}× and at least {config.min_lookups})"),
            })
    counts = {w.key_name: w for w in windows}
    for b in sorted(blocks, key=lambda b: b.key_name):
        seen = counts.get(b.key_name)
        alerts.append({
            "alert_id": _alert_id("ceiling_reached", b.key_name, b.since_ms), "reason": "ceiling_reached",
            "key_name": b.key_name, "role": b.role, **window, "at": iso_ms(b.since_ms),
            "lookups": seen.lookups if seen else 0, "customers": b.customers, "refused": seen.refused if seen else 0,
            "usual_lookups": round(usual.get(b.key_name, 0.0), 3), "ceiling": b.ceiling,
            "text": (f"blocked: {b.customers} distinct customers today, past its ceiling of {b.ceiling}; "
                     "refused until an admin lifts it"),
        })
    return sorted(alerts, key=lambda a: (REASONS.index(a["reason"]), a["key_name"]))
