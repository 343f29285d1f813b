"""The access alerts' conditions (pure) and their record on the wire."""

from __future__ import annotations

from typing import Any

import pytest

from connectors.platform.access_wire import FIELDS, from_avro_record, to_avro_record
from touchpoint.core.access import AccessConfig, Block, KeyWindow, access_alerts, usual_volume
from touchpoint.errors import SerializationError

START = 1_765_000_000_000  # a window start, epoch ms
CONFIG = AccessConfig(window_s=300, multiple=5.0, min_lookups=30)


@pytest.mark.parametrize(("lookups", "usual", "alerts"), [
    (29, None, False),   # below the minimum, even with no history
    (30, None, True),    # the minimum, no history yet: usual volume 0
    (100, 20.0, False),  # five times usual is not more than five times
    (101, 20.0, True),
    (40, 7.9, True),
    (1_000, 400.0, False),  # a service reading its usual volume
])
def test_unusual_volume(lookups: int, usual: float | None, alerts: bool) -> None:
    window = KeyWindow("desk-7", "agent", lookups, customers=lookups // 2, refused=0)
    found = access_alerts(START, [window], {} if usual is None else {"desk-7": usual}, [], CONFIG)
    assert bool(found) is alerts
    if alerts:
        (alert,) = found
        assert alert["reason"] == "unusual_volume" and alert["lookups"] == lookups
        assert alert["window_start"] == "2025-12-06T05:46:40.000Z" and alert["window_end"] == "2025-12-06T05:51:40.000Z"
        assert alert["ceiling"] is None and alert["usual_lookups"] == (usual or 0.0)


def test_a_block_is_an_alert_with_its_ceiling_and_the_keys_window() -> None:
    windows = [KeyWindow("desk-7", "agent", 12, 12, 3)]
    (alert,) = access_alerts(START, windows, {"desk-7": 10.0}, [Block("desk-7", "agent", 201, 200, START + 5_000)],
                             CONFIG)
    assert alert["reason"] == "ceiling_reached" and alert["ceiling"] == 200 and alert["customers"] == 201
    assert alert["lookups"] == 12 and alert["refused"] == 3 and alert["at"] == "2025-12-06T05:46:45.000Z"
    assert "200" in alert["text"] and "admin" in alert["text"]


def test_alerts_are_sorted_and_their_ids_repeat_for_the_same_window() -> None:
    windows = [KeyWindow("b", "agent", 50, 50, 0), KeyWindow("a", "service", 5_000, 4_000, 0)]
    blocks = [Block("c", "agent", 201, 200, START)]
    first = access_alerts(START, windows, {}, blocks, CONFIG)
    assert [(a["reason"], a["key_name"]) for a in first] == [
        ("unusual_volume", "a"), ("unusual_volume", "b"), ("ceiling_reached", "c")]
    again = access_alerts(START, list(reversed(windows)), {}, blocks, CONFIG)
    assert [a["alert_id"] for a in again] == [a["alert_id"] for a in first]
    later = access_alerts(START + 300_000, windows, {}, [], CONFIG)
    assert {a["alert_id"] for a in later}.isdisjoint(a["alert_id"] for a in first)


def test_usual_volume_is_the_mean_of_the_windows_seen() -> None:
    assert usual_volume([]) == 0.0
    assert usual_volume([10, 20, 60]) == 30.0


def test_config_refuses_nonsense() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        AccessConfig(window_s=0)


def test_an_alert_dict_round_trips_through_its_record() -> None:
    (alert,) = access_alerts(START, [KeyWindow("desk-7", "agent", 90, 80, 4)], {"desk-7": 3.0}, [], CONFIG)
    assert set(alert) == set(FIELDS)
    assert from_avro_record(to_avro_record(alert)) == dict(sorted(alert.items()))


@pytest.mark.parametrize(("change", "says"), [
    ({"at": "2025-12-06T05:51:40"}, "has no time zone"),
    ({"at": 5}, "expected ISO-8601 text"),
    ({"customer_id": "cus_1"}, "unknown keys customer_id"),
    ({"text": ...}, "misses text"),
])
def test_a_bad_alert_dict_is_refused(change: dict[str, Any], says: str) -> None:
    (alert,) = access_alerts(START, [KeyWindow("desk-7", "agent", 90, 80, 4)], {}, [], CONFIG)
    doc = {k: v for k, v in {**alert, **change}.items() if v is not ...}  # ...: the key left out
    with pytest.raises(SerializationError, match=says):
        to_avro_record(doc)
