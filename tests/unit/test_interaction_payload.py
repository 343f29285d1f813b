"""The interactions projection writes each payload from the decoded Avro record: equal to the model's dump."""

from __future__ import annotations

import pytest

from projections.interactions import payload_json
from tests.unit.contract_samples import SAMPLES, sample
from touchpoint.contract import decode, encode, event_schema, to_avro_record
from touchpoint.contract.models import ContractViolation, Event, validate_event
from touchpoint.generate import generate


def decoded(event: Event) -> dict[str, object]:
    _, record = decode(encode(7, to_avro_record(event)), lambda _: event_schema(), event_schema())
    return record  # type: ignore[no-any-return]


@pytest.mark.parametrize("kind", sorted(SAMPLES))
def test_every_type_of_payload(kind: str) -> None:
    event = validate_event(sample(kind), None)
    assert payload_json(decoded(event)) == event.payload.model_dump(mode="json")


def test_a_generated_population() -> None:
    compared = 0
    for doc in generate(customers=60, days=120, seed=11):
        try:
            event = validate_event(doc, None)
        except ContractViolation:
            continue
        assert payload_json(decoded(event)) == event.payload.model_dump(mode="json"), event.event_id
        compared += 1
    assert compared > 1000
