"""Topic configs: channel topics, where clear identifiers from a channel system's own client may land, keep
records for ``channel_retention_days`` only; every other topic keeps its records as before."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from connectors.platform.topics import CHANNELS, event_topic, topic_specs
from touchpoint.settings import Settings

DAY_MS = 86_400_000


def test_channel_topics_keep_a_week_by_default_and_the_others_keep_everything(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TOUCHPOINT_CHANNEL_RETENTION_DAYS", raising=False)
    settings = Settings()
    specs = {spec.name: spec.configs for spec in topic_specs(settings)}
    for channel in CHANNELS:
        assert specs.pop(event_topic(settings, channel)) == {
            "cleanup.policy": "delete", "retention.ms": str(7 * DAY_MS), "segment.ms": str(DAY_MS)}
    assert specs[settings.topic("dlq")] == specs[settings.topic("accepted")] == {
        "retention.ms": "-1", "cleanup.policy": "delete"}
    assert all(configs["retention.ms"] == "-1" for configs in specs.values())


def test_the_channel_retention_is_a_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOUCHPOINT_CHANNEL_RETENTION_DAYS", "0.5")
    settings = Settings()
    [branch] = [spec for spec in topic_specs(settings) if spec.name == event_topic(settings, "branch")]
    assert branch.configs["retention.ms"] == branch.configs["segment.ms"] == str(DAY_MS // 2)
    monkeypatch.setenv("TOUCHPOINT_CHANNEL_RETENTION_DAYS", "0")
    with pytest.raises(ValidationError):
        Settings()
