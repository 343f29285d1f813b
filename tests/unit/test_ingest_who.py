"""The ``touchpoint-who`` header ingest puts on accepted events: identity from it decides exactly as from the event."""

from __future__ import annotations

from streams.ingest import WHO, who_header, who_of
from tests.unit.test_partitions import folder
from touchpoint.contract.models import ContractViolation, Event, validate_event
from touchpoint.core.fold import Rejected, Who
from touchpoint.core.instants import any_zone_ms
from touchpoint.core.partitions import IdentityLog
from touchpoint.generate import generate


def events(customers: int, days: int, seed: int) -> list[Event]:
    """A generated population's valid events (the generator mixes in bad ones, which ingest rejects)."""
    valid = []
    for doc in generate(customers=customers, days=days, seed=seed):
        try:
            valid.append(validate_event(doc, None))
        except ContractViolation:
            pass
    return valid


def test_the_header_says_what_identity_reads_of_the_event() -> None:
    for event in events(20, 30, seed=3):
        header = who_header(event)
        assert header[0] == WHO
        assert who_of([("traceparent", b"00-x"), header]) == Who(event.event_id, any_zone_ms(event.occurred_at),
                                                                   dict(event.identifiers))


def test_no_header_no_who() -> None:
    assert who_of(None) is None
    assert who_of([("traceparent", b"00-x")]) is None


def test_identity_from_headers_equals_identity_from_events() -> None:
    from_events, from_headers = IdentityLog(folder(), 3), IdentityLog(folder(), 3)
    decided = 0
    for offset, event in enumerate(events(40, 60, seed=5)):
        who = who_of([who_header(event)])
        assert who is not None
        try:
            expected = from_events.event(offset, event)
        except Rejected as exc:
            try:
                from_headers.who(offset, who)
            except Rejected as again:
                assert str(again) == str(exc)
                continue
            raise AssertionError(f"{event.event_id}: rejected from the event only") from exc
        customer_id, decisions, records = from_headers.who(offset, who)
        assert (customer_id, decisions) == expected[:2]
        # The same records to the same partitions; only the event itself is left out (its bytes travel).
        assert [(p, type(r)) for p, r in records] == [(p, type(r)) for p, r in expected[2]]
        for (_, got), (_, want) in zip(records, expected[2], strict=True):
            if hasattr(want, "event"):
                assert got.event is None
                assert {**vars_of(got), "event": None} == {**vars_of(want), "event": None}
            else:
                assert got == want
        decided += 1
    assert decided > 100
    assert vars_of(from_headers.folder.state) == vars_of(from_events.folder.state)


def vars_of(record: object) -> dict[str, object]:
    return {name: getattr(record, name) for name in record.__slots__}  # type: ignore[attr-defined]
