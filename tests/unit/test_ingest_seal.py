"""Ingest seals identifiers that reach a channel topic in clear (a channel system's own Kafka client).

The pure part (which events need sealing, what they become) and the batch
step around the key store (one call per batch, outages waited out), with an
in-memory registry and key store; the real stack is exercised by
``tests/e2e/test_hostile.py``.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Collection
from typing import Any

import pytest

from connectors.intake.producer import keys_to_seal, normalised, pseudonymised
from connectors.platform.keystore import KeyStoreError
from streams import ingest
from streams.ingest import Accepted, Rejected, has_clear_values, judge, sealed, to_seal
from tests.unit.contract_samples import NOW, sample
from tests.unit.test_ingest_judge import avro_of, serde
from touchpoint.core.pseudonym import (
    DATA_KEY_BYTES,
    Unreadable,
    is_pseudonym,
    is_sealed_text,
    open_text,
    reveal,
    text_key,
)

SECRET = b"test-identifier-key"

CLEAR = {
    "email": "Ada.Lovelace@Example.com",
    "phone": "07700 900123",
    "card": "4111 1111 1111 1111",
    "customer_no": "C-100234",
    "cookie": "ck-5f2a9c",
    "device": "dev-77aa01",
}
# Every form a clear value could take in the bytes: as written, without separators, normalised.
CLEAR_FORMS = [*CLEAR.values(), "ada.lovelace@example.com", "07700900123", "+447700900123", "4111111111111111"]


class MemoryKeyStore:
    """Data keys in a dict; counts calls; the first ``down`` calls fail as an unreachable database would."""

    def __init__(self, down: int = 0) -> None:
        self.keys: dict[str, bytes] = {}
        self.calls: list[set[str]] = []
        self.down = down

    async def data_keys(self, keys: Collection[str], *, create: bool) -> dict[str, bytes]:
        self.calls.append(set(keys))
        if self.down:
            self.down -= 1
            raise KeyStoreError("the key store's database cannot be reached")
        if create:
            for key in keys:
                self.keys.setdefault(key, os.urandom(DATA_KEY_BYTES))
        return {key: self.keys[key] for key in keys if key in self.keys}

    async def destroy(self, keys: Collection[str]) -> int:
        return sum(self.keys.pop(key, None) is not None for key in keys)

    async def close(self) -> None:
        pass


def accepted(identifiers: dict[str, str], type_: str = "purchase", event_id: str | None = None) -> Accepted:
    """The verdict ingest gives a message written by a producer that is not ours, with these identifiers."""
    doc: dict[str, Any] = sample(type_)
    if event_id is not None:
        doc["event_id"] = event_id
    # Written as is: a foreign producer's record is not checked against the JSON form's shapes first.
    verdict = judge(serde(), avro_of(doc, lambda record: record.update(identifiers=identifiers)), NOW)
    assert isinstance(verdict, Accepted), verdict
    return verdict


def library_sealed(identifiers: dict[str, str], keys: dict[str, bytes]) -> dict[str, str]:
    """The identifiers as the producer library writes them, with the same data keys."""
    event = accepted(identifiers).event
    checked = normalised(event, SECRET, "GB")
    return dict(pseudonymised(event, checked, keys, {}).identifiers)


def test_pseudonymised_events_need_no_sealing_and_clear_ones_do() -> None:
    keys = {key: os.urandom(DATA_KEY_BYTES) for key in
            keys_to_seal([(accepted(CLEAR).event, normalised(accepted(CLEAR).event, SECRET, "GB"))])}
    assert not has_clear_values(accepted(library_sealed(CLEAR, keys)).event)
    assert has_clear_values(accepted(CLEAR).event)
    # One clear value beside pseudonyms is enough.
    mixed = {**library_sealed(CLEAR, keys), "cookie": "ck-new-one"}
    assert has_clear_values(accepted(mixed).event)


def test_sealed_events_hold_only_pseudonyms_the_library_would_have_written() -> None:
    store = MemoryKeyStore()
    clear = to_seal(accepted(CLEAR), SECRET, "GB")
    assert isinstance(clear, Accepted) and clear.clear is not None
    keys = asyncio.run(store.data_keys(keys_to_seal([(clear.event, clear.clear)]), create=True))
    assert set(keys) == {ident.key for kind, ident in clear.clear.items() if kind != "card"}

    [event] = sealed([clear], keys)
    assert all(is_pseudonym(value) for value in event.identifiers.values()), event.identifiers
    assert dict(event.identifiers) == library_sealed(CLEAR, keys), "the same pseudonyms as the producer library"
    raw = serde().serialize(event)
    assert [form for form in CLEAR_FORMS if form.encode() in raw] == []
    # The sealed values open with their data keys; a card shows only its last four.
    opened = {kind: reveal(value, keys.get(clear.clear[kind].key)) for kind, value in event.identifiers.items()}
    assert opened == {"email": "ada.lovelace@example.com", "phone": "+447700900123", "card": "…1111",
                      "customer_no": "C-100234", "cookie": "ck-5f2a9c", "device": "dev-77aa01"}
    # Re-read as ingest's output is read downstream: accepted, nothing left in clear, everything else kept.
    again = judge(serde(), raw, NOW)
    assert isinstance(again, Accepted) and not has_clear_values(again.event)
    assert again.event.model_dump(exclude={"identifiers"}) == clear.event.model_dump(exclude={"identifiers"})


def test_a_batch_seals_a_person_once_and_keeps_pseudonyms_given() -> None:
    keys = {key: os.urandom(DATA_KEY_BYTES) for key in
            keys_to_seal([(accepted(CLEAR).event, normalised(accepted(CLEAR).event, SECRET, "GB"))])}
    given = library_sealed(CLEAR, keys)
    mixed = to_seal(accepted({"email": CLEAR["email"], "cookie": given["cookie"]}, "web"), SECRET, "GB")
    first = to_seal(accepted({"email": "ADA.LOVELACE@example.com"}, "email"), SECRET, "GB")
    assert isinstance(mixed, Accepted) and isinstance(first, Accepted)
    events = sealed([mixed, first], keys)
    assert events[0].identifiers == {"email": given["email"], "cookie": given["cookie"]}
    assert events[1].identifiers == {"email": given["email"]}


@pytest.mark.parametrize(("kind", "value"), [("card", "4111 1111 1111 1112"), ("email", "not-an-address"),
                                             ("phone", "12"), ("cookie", "   ")])
def test_an_invalid_clear_identifier_is_dead_lettered_not_forwarded(kind: str, value: str) -> None:
    verdict = to_seal(accepted({"customer_no": "C-1", kind: value}), SECRET, "GB")
    assert isinstance(verdict, Rejected)
    assert verdict.reason.startswith(f"contract: identifiers.{kind}"), verdict.reason


def test_one_key_store_call_per_batch_and_outages_waited_out(monkeypatch: pytest.MonkeyPatch) -> None:
    waits: list[float] = []

    async def no_wait(seconds: float) -> None:
        waits.append(seconds)

    monkeypatch.setattr(ingest.asyncio, "sleep", no_wait)
    batch = []
    for n in range(50):
        verdict = to_seal(accepted({"email": f"person{n % 10}@example.com", "phone": f"+4477009{n % 10:05d}"},
                                   event_id=f"ev-{n}"), SECRET, "GB")
        assert isinstance(verdict, Accepted)
        batch.append(verdict)
    store = MemoryKeyStore(down=2)
    values = asyncio.run(ingest._sealed_patiently(store, serde(), batch))
    assert waits == [0.5, 1.0], "two outages waited out with backoff"
    assert len(store.calls) == 3 and len(store.calls[-1]) == 20, "one call per attempt, for the whole batch"
    assert len(values) == 50
    for n, (sealed_event, raw) in enumerate(values):
        event = judge(serde(), raw, NOW)
        assert isinstance(event, Accepted) and event.event.event_id == f"ev-{n}"
        assert event.event == sealed_event, "the sealed event is what its bytes say"
        assert not has_clear_values(event.event)
        assert f"person{n % 10}@example.com".encode() not in raw


def test_a_profile_name_is_sealed_under_the_strongest_identifier_even_beside_pseudonyms() -> None:
    """A profile event's name is personal data like an identifier: sealed before ``accepted``, under the data
    key of the event's strongest identifier (erasing the person erases it), also when the identifiers
    themselves arrived sealed."""
    store = MemoryKeyStore()
    keys = asyncio.run(store.data_keys(
        keys_to_seal([(accepted(CLEAR).event, normalised(accepted(CLEAR).event, SECRET, "GB"))]), create=True))
    given = library_sealed({"customer_no": CLEAR["customer_no"], "email": CLEAR["email"]}, keys)
    verdict = accepted(given, "profile")
    assert has_clear_values(verdict.event), "pseudonymised identifiers, but the name in clear"
    clear = to_seal(verdict, SECRET, "GB")
    assert isinstance(clear, Accepted) and clear.clear is not None
    number_key = clear.clear["customer_no"].key
    assert keys_to_seal([(clear.event, clear.clear)]) == {number_key}
    [event] = sealed([clear], asyncio.run(store.data_keys({number_key}, create=True)))
    name = event.payload.name  # type: ignore[union-attr]
    assert name is not None and is_sealed_text(name) and text_key(name) == number_key
    assert open_text(name, store.keys[number_key]) == "Jane Doe"
    assert dict(event.identifiers) == given and b"Jane" not in serde().serialize(event)
    again = judge(serde(), serde().serialize(event), NOW)
    assert isinstance(again, Accepted) and not has_clear_values(again.event)
    with pytest.raises(Unreadable):  # the person erased: their data key destroyed
        open_text(name, os.urandom(DATA_KEY_BYTES))
