"""The profile's cards held back in a backlog: its state is never written ahead of the cards it covers.

A restart replays only what came after the state table's checkpoint, so a write covering a change whose
card had not gone out would lose that card for good. The table write is replaced by a list here.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from streams.profile import PartitionStage
from touchpoint.settings import Settings


def stage_with_recorded_writes() -> tuple[PartitionStage, list[Any]]:
    stage = PartitionStage(Settings(), 0)
    stage.position = 1  # the partition is ours and recovered
    writes: list[Any] = []

    async def write(records: dict[str, bytes | None], checkpoint: tuple[str, bytes]) -> None:
        writes.append(sorted(records))

    stage.table.write = write  # type: ignore[method-assign]
    return stage, writes


async def test_no_state_write_while_a_card_it_covers_is_held() -> None:
    stage, writes = stage_with_recorded_writes()
    stage.changed.add("cus_held")
    stage.unrendered["cus_held"] = (datetime(2026, 1, 5, tzinfo=UTC), 0)
    assert stage.write_due(backlog=True)
    await stage.persist(backlog=True)
    assert writes == []
    stage.unrendered.clear()  # the card went out
    await stage.persist(backlog=True)
    assert writes == [["cus_held"]]


async def test_a_write_waits_for_its_interval_in_a_backlog() -> None:
    stage, writes = stage_with_recorded_writes()
    stage.changed.add("cus_a")
    await stage.persist(backlog=True)
    stage.changed.add("cus_b")
    assert not stage.write_due(backlog=True)  # written just now: cards may be held again
    await stage.persist(backlog=True)
    assert writes == [["cus_a"]]
