"""What a stage's loop commits after a batch: per partition, the offset after its last message."""

from __future__ import annotations

from streams.batch import Received, next_offsets


def message(topic: str, partition: int, offset: int) -> Received:
    return Received(topic, partition, offset, None, b"", None, 0.0)


def test_the_offset_after_the_last_message_of_each_partition() -> None:
    batch = [message("a", 0, 5), message("b", 0, 9), message("a", 1, 2), message("a", 0, 6), message("a", 0, 7)]
    assert sorted((tp.topic, tp.partition, tp.offset) for tp in next_offsets(batch)) == [
        ("a", 0, 8), ("a", 1, 3), ("b", 0, 10)]


def test_an_empty_batch_commits_nothing() -> None:
    assert next_offsets([]) == []
