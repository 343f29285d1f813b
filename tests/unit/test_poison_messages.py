"""A message without a value on the stages' own topics is a reason to dead-letter, not a failed batch.

Nothing of ours writes one, but anyone with write access to ``accepted`` or ``resolved`` can; a batch
that fails on it would be taken again and again from the committed offsets, and the stage would stop.
"""

from __future__ import annotations

import orjson
import pytest

from connectors.platform.registry import RegistryClient
from connectors.platform.serde import EventSerde
from streams import resolved
from streams.identity import IdentityStage, stage_folder
from streams.ingest import WHO
from touchpoint.settings import Settings


@pytest.fixture
def serde() -> EventSerde:
    return EventSerde(RegistryClient("http://127.0.0.1:9"))  # never called: no value to read


# With the header ingest writes, identity could resolve the event without reading the value at all.
@pytest.mark.parametrize("headers", [[], [(WHO, orjson.dumps(["ev-1", 0, {"email": "a@example.com"}]))]])
def test_identity_gives_a_reason_for_a_message_without_a_value(serde: EventSerde, headers: list[tuple[str, bytes]]
                                                               ) -> None:
    fed = IdentityStage(Settings(), serde).feed(7, None, headers)
    assert fed.reason is not None and "without a value" in fed.reason
    assert not fed.records


@pytest.mark.parametrize("kind", [b"resolved", b"hand-in", b"tick"])
def test_the_profile_refuses_a_message_of_resolved_without_a_value(serde: EventSerde, kind: bytes) -> None:
    with pytest.raises(ValueError, match="without a value"):
        resolved.decode(None, [(resolved.RECORD, kind), (resolved.POSITION, b"3,0")], serde,
                        stage_folder(Settings()), b"secret")
