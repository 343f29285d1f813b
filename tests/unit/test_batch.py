"""What a stage's loop commits after a batch: per partition, the offset after its last message, or past the
transaction markers the consumer stepped over."""

from __future__ import annotations

from confluent_kafka import TopicPartition

from streams.batch import Received, next_offsets, to_commit


def message(topic: str, partition: int, offset: int) -> Received:
    return Received(topic, partition, offset, None, b"", None, 0.0)


def test_the_offset_after_the_last_message_of_each_partition() -> None:
    batch = [message("a", 0, 5), message("b", 0, 9), message("a", 1, 2), message("a", 0, 6), message("a", 0, 7)]
    assert sorted((tp.topic, tp.partition, tp.offset) for tp in next_offsets(batch)) == [
        ("a", 0, 8), ("a", 1, 3), ("b", 0, 10)]


def test_an_empty_batch_commits_nothing() -> None:
    assert next_offsets([]) == []


class SteppedOverMarkers:
    """A consumer's positions as librdkafka reports them: past transaction markers it has read."""

    def __init__(self, positions: dict[tuple[str, int], int]) -> None:
        self.positions = positions

    def assignment(self) -> list[TopicPartition]:
        return [TopicPartition(topic, partition) for topic, partition in self.positions]

    def position(self, partitions: list[TopicPartition]) -> list[TopicPartition]:
        return [TopicPartition(tp.topic, tp.partition, self.positions[tp.topic, tp.partition]) for tp in partitions]


def test_a_transaction_marker_after_the_last_message_is_committed_past() -> None:
    # a/0: messages up to 7, then a commit marker at 8 the consumer stepped over; a/1 not read yet (no position);
    # b/0: nothing in this batch, but a marker stepped over since the last commit.
    consumer = SteppedOverMarkers({("a", 0): 9, ("a", 1): -1001, ("b", 0): 4})
    batch = [message("a", 0, 6), message("a", 0, 7)]
    committed: dict[tuple[str, int], int] = {("b", 0): 3}
    offsets = to_commit(consumer, batch, committed)  # type: ignore[arg-type]
    assert sorted((tp.topic, tp.partition, tp.offset) for tp in offsets) == [("a", 0, 9), ("b", 0, 4)]
    committed.update(((tp.topic, tp.partition), tp.offset) for tp in offsets)
    assert to_commit(consumer, [], committed) == []  # type: ignore[arg-type]  # nothing new: no commit
