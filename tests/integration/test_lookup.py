"""The lookup API over a real PostgreSQL read model written by the customers projection.

Cards go in as customer-views records through ``CustomersProjection.write``
inside ``write_batch`` (the projection's own transaction), so the test covers
the identifier rows the projection writes and the API that reads them. The
module has a database of its own (the session's is compared with the fold
of the log by the end-to-end tests, and projection offsets live there).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from starlette.exceptions import StarletteDeprecationWarning

with warnings.catch_warnings():
    # Starlette 1.x prefers the httpx2 fork for its TestClient; httpx (installed) still works.
    warnings.filterwarnings("ignore", category=StarletteDeprecationWarning)
    from fastapi.testclient import TestClient

from connectors.lookup import create_lookup_app
from projections.customers import CustomersProjection
from projections.writer import Record, write_batch
from touchpoint.core.normalise import normalise
from tests.fix_stack import scoped
from touchpoint.settings import Settings

pytestmark = pytest.mark.integration

PHONE = "+447700900123"
EMAIL = "ada@example.com"
CARD = "4111111111111111"
OTHER_PHONE = "+447700900456"


def key(settings: Settings, kind: str, value: str) -> str:
    return normalise(kind, value, region=settings.phone_region,
                     secret=settings.identifier_key.get_secret_value().encode()).key


def card_doc(customer_id: str, segment: str, keys: dict[str, list[str]], as_of: str) -> dict[str, Any]:
    return {"customer_id": customer_id, "as_of": as_of, "keys": keys,
            "view": {"customer_id": customer_id, "value_segment": segment}}


def record(settings: Settings, offset: int, doc: dict[str, Any]) -> Record:
    return Record(settings.topic("customer-views"), 0, offset, str(doc["customer_id"]).encode(),
                  json.dumps(doc).encode())


@pytest.fixture(scope="module")
def lookup_settings(settings: Settings) -> Iterator[Settings]:
    """The session's settings on a fresh, migrated database of this module's own."""
    with scoped(settings, f"{settings.pg_database}_lookup") as own:
        yield own


@pytest.fixture(scope="module")
def ids() -> dict[str, str]:
    return {"ada": "lk-ada", "bob": "lk-bob", "old": "lk-old", "older": "lk-older"}


@pytest.fixture(scope="module")
def client(lookup_settings: Settings, ids: dict[str, str]) -> Iterator[TestClient]:
    settings = lookup_settings
    projection = CustomersProjection(settings)
    ada, bob, old, older = ids["ada"], ids["bob"], ids["old"], ids["older"]
    with psycopg.connect(settings.pg_conninfo()) as conn:
        # lk-older merged into lk-old, then lk-old into lk-ada (a chain); lk-old's phone
        # moves to lk-ada because lk-ada's later card lists it.
        write_batch(conn, projection, [
            record(settings, 100, card_doc(old, "new", {"phone": [key(settings, "phone", OTHER_PHONE)]},
                                           "2026-01-01T00:00:00.000Z")),
            record(settings, 101, card_doc(bob, "dormant", {"cookie": [key(settings, "cookie", "ck-bob")]},
                                           "2026-01-01T00:00:00.000Z")),
            # An older record with no "keys" field still projects its card.
            record(settings, 102, {"customer_id": older, "as_of": "2026-01-01T00:00:00.000Z",
                                   "view": {"customer_id": older, "value_segment": "new"}}),
        ])
        write_batch(conn, projection, [
            record(settings, 110, card_doc(ada, "champion", {
                "phone": [key(settings, "phone", PHONE), key(settings, "phone", OTHER_PHONE)],
                "email": [key(settings, "email", EMAIL)],
                "card": [key(settings, "card", CARD)],
            }, "2026-02-01T00:00:00.000Z")),
            record(settings, 111, {"customer_id": old, "as_of": "2026-02-01T00:00:00.000Z", "merged_into": ada}),
            record(settings, 112, {"customer_id": older, "as_of": "2026-02-01T00:00:00.000Z",
                                   "merged_into": old}),
        ])
    with TestClient(create_lookup_app(settings)) as test_client:
        yield test_client


def test_phone_in_national_format(client: TestClient, ids: dict[str, str]) -> None:
    answer = client.get("/v1/customers/lookup", params={"phone": "07700 900123"})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["customer_id"] == ids["ada"]
    assert body["card"] == {"customer_id": ids["ada"], "value_segment": "champion"}
    assert body["as_of"].startswith("2026-02-01T00:00:00")
    assert "resolved_from" not in body


def test_merged_customers_phone_moved_to_survivor(client: TestClient, ids: dict[str, str]) -> None:
    answer = client.get("/v1/customers/lookup", params={"phone": "+44 7700 900456"})
    assert answer.status_code == 200, answer.text
    assert answer.json()["customer_id"] == ids["ada"]


def test_email_in_another_case(client: TestClient, ids: dict[str, str]) -> None:
    answer = client.get("/v1/customers/lookup", params={"email": "  Ada@EXAMPLE.com "})
    assert answer.status_code == 200, answer.text
    assert answer.json()["customer_id"] == ids["ada"]


def test_card_digits_with_spaces(client: TestClient, ids: dict[str, str]) -> None:
    answer = client.get("/v1/customers/lookup", params={"card": "4111 1111 1111 1111"})
    assert answer.status_code == 200, answer.text
    assert answer.json()["customer_id"] == ids["ada"]


def test_cookie(client: TestClient, ids: dict[str, str]) -> None:
    answer = client.get("/v1/customers/lookup", params={"cookie": "ck-bob"})
    assert answer.status_code == 200, answer.text
    assert answer.json()["card"]["value_segment"] == "dormant"


def test_nobody_matches(client: TestClient) -> None:
    answer = client.get("/v1/customers/lookup", params={"phone": "07700 900999"})
    assert answer.status_code == 404
    assert answer.json() == {"detail": "nobody matches phone +447700900999"}


def test_unknown_card_is_not_echoed(client: TestClient) -> None:
    answer = client.get("/v1/customers/lookup", params={"card": "5555 5555 5555 4444"})
    assert answer.status_code == 404
    assert "5555555555554444" not in answer.text and "5555 5555" not in answer.text
    assert answer.json()["detail"].startswith("nobody matches card")


@pytest.mark.parametrize(("params", "names"), [
    ({}, ["none"]),
    ({"phone": "07700 900123", "email": EMAIL}, ["email", "phone"]),
])
def test_not_exactly_one_parameter(client: TestClient, params: dict[str, str], names: list[str]) -> None:
    answer = client.get("/v1/customers/lookup", params=params)
    assert answer.status_code == 400
    detail = answer.json()["detail"]
    assert detail.startswith("give exactly one of")
    assert all(name in detail.split("(got ")[1] for name in names)


def test_invalid_phone_names_the_parameter(client: TestClient) -> None:
    answer = client.get("/v1/customers/lookup", params={"phone": "not a phone"})
    assert answer.status_code == 400
    assert answer.json()["detail"].startswith("phone: ")


def test_invalid_card_names_the_parameter_without_echo(client: TestClient) -> None:
    answer = client.get("/v1/customers/lookup", params={"card": "4111 1111 1111 1112"})
    assert answer.status_code == 400
    assert answer.json()["detail"].startswith("card: ")
    assert "1112" not in answer.text


def test_by_id(client: TestClient, ids: dict[str, str]) -> None:
    answer = client.get(f"/v1/customers/{ids['bob']}")
    assert answer.status_code == 200, answer.text
    assert answer.json()["customer_id"] == ids["bob"]
    assert "resolved_from" not in answer.json()


@pytest.mark.parametrize("alias", ["old", "older"])
def test_alias_answers_with_survivor(client: TestClient, ids: dict[str, str], alias: str) -> None:
    answer = client.get(f"/v1/customers/{ids[alias]}")
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["customer_id"] == ids["ada"]
    assert body["resolved_from"] == ids[alias]
    assert body["card"]["value_segment"] == "champion"


def test_unknown_id(client: TestClient) -> None:
    answer = client.get("/v1/customers/lk-nobody")
    assert answer.status_code == 404
    assert answer.json() == {"detail": "no customer lk-nobody"}


def test_healthz(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}


def test_stale_record_does_not_overwrite(lookup_settings: Settings, client: TestClient,
                                         ids: dict[str, str]) -> None:
    """A replayed older card (lower offset) changes neither the card nor where its keys point."""
    settings = lookup_settings
    stale = card_doc(ids["bob"], "champion", {"phone": [key(settings, "phone", PHONE)]},
                     "2025-12-01T00:00:00.000Z")
    with psycopg.connect(settings.pg_conninfo()) as conn:
        write_batch(conn, CustomersProjection(settings), [record(settings, 50, stale)])
    assert client.get(f"/v1/customers/{ids['bob']}").json()["card"]["value_segment"] == "dormant"
    assert client.get("/v1/customers/lookup", params={"phone": PHONE}).json()["customer_id"] == ids["ada"]
