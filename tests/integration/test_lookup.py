"""The lookup API over a real PostgreSQL read model written by the customers projection.

Cards go in as customer-views records through ``CustomersProjection.write``
inside ``write_batch`` (the projection's own transaction), so the test covers
the identifier rows the projection writes and the API that reads them. The
module has a database of its own (the session's is compared with the fold
of the log by the end-to-end tests, and projection offsets live there).

Callers hold API keys of the three roles (configured as sha256 digests, as in
production); the default client is an agent. Also covered: masking per role,
the audit rows every lookup leaves, key rotation through the keys file,
readiness, projection lag and the agent page's HTML (the browser drives it in
``tests/e2e/test_agent_page.py``).
"""

from __future__ import annotations

import asyncio
import json
import os
import warnings
from collections.abc import Iterator
from typing import Any

import httpx
import psycopg
import pytest
from psycopg.rows import dict_row
from starlette.exceptions import StarletteDeprecationWarning

with warnings.catch_warnings():
    # Starlette 1.x prefers the httpx2 fork for its TestClient; httpx (installed) still works.
    warnings.filterwarnings("ignore", category=StarletteDeprecationWarning)
    from fastapi.testclient import TestClient

from connectors.frontline.access import digest
from connectors.frontline.lookup import COOKIE, create_lookup_app
from connectors.platform.keystore import PostgresKeyStore
from projections.customers import CustomersProjection
from projections.writer import Record, write_batch
from tests.fix_stack import scoped
from touchpoint.core.masking import ERASED
from touchpoint.core.normalise import identifier_key, normalise
from touchpoint.core.pseudonym import pseudonym, seal_text
from touchpoint.settings import Settings

pytestmark = pytest.mark.integration

PHONE = "+447700900123"
EMAIL = "ada@example.com"
CARD = "4111111111111111"
OTHER_PHONE = "+447700900456"

AGENT_KEY = "agent-key-0123456789abcdef"
OPS_KEY = "ops-key-0123456789abcdef"
ADMIN_KEY = "admin-key-0123456789abcdef"
# Limits no test here reaches: this module tests the lookup, test_lookup_limits the limits.
_UNLIMITED = {"per_minute": 1_000_000, "burst": 100_000}
API_KEYS = {digest(AGENT_KEY): {"name": "alice", "role": "agent", **_UNLIMITED},
            digest(OPS_KEY): {"name": "oscar", "role": "operations", **_UNLIMITED},
            digest(ADMIN_KEY): {"name": "ann", "role": "admin", **_UNLIMITED}}

# Ada's identifiers as the card shows them (display form), and as an agent sees them.
ADA_IDENTIFIERS = {"card": ["…1111"], "customer_no": ["C100"], "email": [EMAIL], "phone": [PHONE, OTHER_PHONE]}
ADA_MASKED = {"card": ["•••• 1111"], "customer_no": ["C100"], "email": ["a***@example.com"],
              "phone": ["•••• 0123", "•••• 0456"]}


def key(settings: Settings, kind: str, value: str) -> str:
    return normalise(kind, value, region=settings.phone_region,
                     secret=settings.identifier_key.get_secret_value().encode()).key


def card_doc(customer_id: str, segment: str, keys: dict[str, list[str]], as_of: str,
             **view: Any) -> dict[str, Any]:
    return {"customer_id": customer_id, "as_of": as_of, "keys": keys,
            "view": {"customer_id": customer_id, "value_segment": segment, **view}}


def record(settings: Settings, offset: int, doc: dict[str, Any]) -> Record:
    return Record(settings.topic("customer-views"), 0, offset, str(doc["customer_id"]).encode(),
                  json.dumps(doc).encode())


@pytest.fixture(scope="module")
def lookup_settings(settings: Settings) -> Iterator[Settings]:
    """The session's settings on a fresh, migrated database of this module's own, with API keys."""
    with scoped(settings, f"{settings.pg_database}_lookup") as own:
        yield own.model_copy(update={"api_keys": API_KEYS})


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
            }, "2026-02-01T00:00:00.000Z", identifiers=ADA_IDENTIFIERS)),
            record(settings, 111, {"customer_id": old, "as_of": "2026-02-01T00:00:00.000Z", "merged_into": ada}),
            record(settings, 112, {"customer_id": older, "as_of": "2026-02-01T00:00:00.000Z",
                                   "merged_into": old}),
        ])
    with TestClient(create_lookup_app(settings), headers={"Authorization": f"Bearer {AGENT_KEY}"}) as test_client:
        yield test_client


def other_client(client: TestClient, **kwargs: Any) -> TestClient:
    """Another client (own headers and cookies) on the running app; not entered, so the lifespan runs once.

    It sends through ``client``'s portal, the event loop the app's lifespan runs in: the app's async
    connection pool belongs to that loop (a client of its own would start a loop per request).
    """
    other = TestClient(client.app, **kwargs)
    other.portal = client.portal
    return other


def audit_rows(settings: Settings) -> list[dict[str, Any]]:
    """Every lookup_audit row, oldest first."""
    with psycopg.connect(settings.pg_conninfo()) as conn, conn.cursor(row_factory=dict_row) as cur:
        return cur.execute("SELECT * FROM lookup_audit ORDER BY id").fetchall()


def test_phone_in_national_format(client: TestClient, ids: dict[str, str]) -> None:
    answer = client.get("/v1/customers/lookup", params={"phone": "07700 900123"})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["customer_id"] == ids["ada"]
    assert body["card"] == {"customer_id": ids["ada"], "value_segment": "champion", "identifiers": ADA_MASKED}
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


def test_json_answers_carry_the_security_headers(client: TestClient, ids: dict[str, str]) -> None:
    for answer in (client.get("/v1/customers/lookup", params={"phone": PHONE}), client.get("/v1/customers/lk-nobody"),
                   other_client(client).get(f"/v1/customers/{ids['ada']}")):
        assert (answer.headers["cache-control"], answer.headers["x-content-type-options"]) == ("no-store", "nosniff")


@pytest.mark.parametrize("path", ["/v1/customers/lookup?phone=07700900123", "/v1/customers/lk-ada"])
def test_unmasked_that_is_no_boolean_is_422_naming_it(lookup_settings: Settings, client: TestClient,
                                                      path: str) -> None:
    before = len(audit_rows(lookup_settings))
    answer = client.get(path, params={"unmasked": "perhaps"})
    assert answer.status_code == 422, answer.text
    (error,) = answer.json()["detail"]
    assert (error["loc"], error["type"], error["input"]) == (["query", "unmasked"], "bool_parsing", "perhaps")
    assert len(audit_rows(lookup_settings)) == before  # a malformed request reads nothing


def test_openapi_documents_the_lookup_doors(client: TestClient) -> None:
    """The lookup doors read their parameters themselves; the document still says what they take and give."""
    paths = client.get("/openapi.json").json()["paths"]
    lookup, by_id = paths["/v1/customers/lookup"]["get"], paths["/v1/customers/{customer_id}"]["get"]
    assert [p["name"] for p in lookup["parameters"]] == ["phone", "email", "card", "customer_no", "cookie", "device",
                                                         "unmasked", "reason"]
    assert [(p["name"], p["in"]) for p in by_id["parameters"]] == [("customer_id", "path"), ("unmasked", "query"),
                                                                   ("reason", "query")]
    for door in (lookup, by_id):
        assert door["responses"]["200"]["content"]["application/json"]["schema"] == \
            {"$ref": "#/components/schemas/CustomerCard"}
        assert {"401", "403", "404", "422", "429"} <= set(door["responses"])


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


# --- access: keys, roles, masking -------------------------------------------------------


@pytest.mark.parametrize(("headers", "reason"), [
    ({}, "no API key given"),
    ({"Authorization": "Bearer not-a-key"}, "the API key is not valid"),
    ({"X-API-Key": "not-a-key"}, "the API key is not valid"),
    ({"Authorization": f"Basic {AGENT_KEY}"}, "no API key given"),
])
def test_without_a_valid_key_401(lookup_settings: Settings, client: TestClient, headers: dict[str, str],
                                 reason: str) -> None:
    before = len(audit_rows(lookup_settings))
    anonymous = other_client(client)
    for path in ("/v1/customers/lookup?phone=07700900123", "/v1/customers/lk-ada", "/v1/lag"):
        answer = anonymous.get(path, headers=headers)
        assert answer.status_code == 401, (path, answer.text)
        assert answer.json()["detail"].startswith(reason)
        assert "Bearer" in answer.json()["detail"]
        assert answer.headers["www-authenticate"] == "Bearer"
        assert "champion" not in answer.text
    # Nobody to record: an unauthenticated request writes no audit row.
    assert len(audit_rows(lookup_settings)) == before


def test_x_api_key_header_works(client: TestClient, ids: dict[str, str]) -> None:
    other = other_client(client)
    answer = other.get("/v1/customers/lookup", params={"email": EMAIL}, headers={"X-API-Key": OPS_KEY})
    assert answer.status_code == 200, answer.text
    assert answer.json()["customer_id"] == ids["ada"]


def test_agent_may_not_unmask(lookup_settings: Settings, client: TestClient, ids: dict[str, str]) -> None:
    answer = client.get("/v1/customers/lookup", params={"phone": PHONE, "unmasked": "true"})
    assert answer.status_code == 403
    assert answer.json() == {"detail": "role agent may not see unmasked identifiers (operations and admin may)"}
    assert EMAIL not in answer.text
    assert client.get(f"/v1/customers/{ids['ada']}", params={"unmasked": "true"}).status_code == 403
    last = audit_rows(lookup_settings)[-1]
    assert (last["key_name"], last["role"], last["status"], last["unmasked"], last["customer_id"]) == \
        ("alice", "agent", 403, True, None)


@pytest.mark.parametrize("role_key", [OPS_KEY, ADMIN_KEY])
def test_operations_and_admin_masked_unless_asked(client: TestClient, ids: dict[str, str], role_key: str) -> None:
    auth = {"Authorization": f"Bearer {role_key}"}
    masked = client.get("/v1/customers/lookup", params={"phone": PHONE}, headers=auth).json()
    assert masked["card"]["identifiers"] == ADA_MASKED
    clear = client.get("/v1/customers/lookup", params={"phone": PHONE, "unmasked": "true", "reason": "fraud case 17"},
                       headers=auth)
    assert clear.status_code == 200, clear.text
    assert clear.json()["card"]["identifiers"] == ADA_IDENTIFIERS
    by_id = client.get(f"/v1/customers/{ids['old']}", params={"unmasked": "1", "reason": "subject access"},
                       headers=auth).json()
    assert by_id["card"]["identifiers"] == ADA_IDENTIFIERS and by_id["resolved_from"] == ids["old"]


@pytest.mark.parametrize(("reason", "problem"), [
    (None, "needs a reason"), ("   ", "needs a reason"), ("x" * 201, "at most 200"), ("why\x00", "NUL"),
])
def test_an_unmasked_read_needs_a_reason_and_keeps_it_in_the_audit_row(
        lookup_settings: Settings, client: TestClient, reason: str | None, problem: str) -> None:
    """Clear identifiers are read for a stated reason, kept with the audit row; none (or a bad one) is 400,
    audited too, and nothing of the card is sent."""
    auth = {"Authorization": f"Bearer {OPS_KEY}"}
    params = {"phone": PHONE, "unmasked": "true", **({"reason": reason} if reason is not None else {})}
    refused = client.get("/v1/customers/lookup", params=params, headers=auth)
    assert refused.status_code == 400 and problem in refused.json()["detail"], refused.text
    last = audit_rows(lookup_settings)[-1]
    assert (last["key_name"], last["status"], last["unmasked"], last["customer_id"]) == ("oscar", 400, True, None)
    answered = client.get("/v1/customers/lookup", params={**params, "reason": "  chargeback dispute 4411 "},
                          headers=auth)
    assert answered.status_code == 200, answered.text
    last = audit_rows(lookup_settings)[-1]
    assert (last["status"], last["unmasked"], last["reason"]) == (200, True, "chargeback dispute 4411")
    masked = client.get("/v1/customers/lookup", params={"phone": PHONE, "reason": "not needed"}, headers=auth)
    assert masked.status_code == 200 and audit_rows(lookup_settings)[-1]["reason"] is None


def test_agent_sees_masked_card_by_id(client: TestClient, ids: dict[str, str]) -> None:
    body = client.get(f"/v1/customers/{ids['older']}").json()
    assert body["card"]["identifiers"] == ADA_MASKED
    assert EMAIL not in json.dumps(body) and "900123" not in json.dumps(body)


def test_invalid_key_settings_fail_at_startup(lookup_settings: Settings) -> None:
    from touchpoint.errors import ConfigError

    with pytest.raises(ConfigError, match="role 'boss'"):
        create_lookup_app(lookup_settings.model_copy(
            update={"api_keys": {digest("k"): {"name": "x", "role": "boss"}}}))
    with pytest.raises(ConfigError, match="not a sha256 hex digest"):
        create_lookup_app(lookup_settings.model_copy(update={"api_keys": {"k": {"name": "x", "role": "agent"}}}))


def test_keys_file_rotates_without_restart(lookup_settings: Settings, tmp_path: Any, ids: dict[str, str]) -> None:
    keys_file = tmp_path / "keys.json"
    keys_file.write_text(json.dumps({digest("first-key"): {"name": "first", "role": "agent"}}))
    settings = lookup_settings.model_copy(update={"api_keys": {}, "api_keys_file": keys_file})
    with TestClient(create_lookup_app(settings)) as api:
        path = f"/v1/customers/{ids['bob']}"
        assert api.get(path, headers={"X-API-Key": "first-key"}).status_code == 200
        assert api.get(path, headers={"X-API-Key": "second-key"}).status_code == 401
        # Rotate: the second key replaces the first (a new file moved into place, as deploy tools do).
        staged = tmp_path / "keys.json.new"
        staged.write_text(json.dumps({digest("second-key"): {"name": "second", "role": "operations"}}))
        staged.replace(keys_file)
        assert api.get(path, headers={"X-API-Key": "first-key"}).status_code == 401
        assert api.get(path, headers={"X-API-Key": "second-key"}).status_code == 200
        # A broken file keeps the last valid keys rather than locking everybody out.
        keys_file.write_text("{not json")
        assert api.get(path, headers={"X-API-Key": "second-key"}).status_code == 200
    assert [r["key_name"] for r in audit_rows(lookup_settings)[-3:]] == ["first", "second", "second"]


# --- audit --------------------------------------------------------------------------------


def test_every_lookup_is_audited_without_clear_values(lookup_settings: Settings, client: TestClient,
                                                      ids: dict[str, str]) -> None:
    settings = lookup_settings
    secret = settings.identifier_key.get_secret_value().encode()
    before = len(audit_rows(settings))
    client.get("/v1/customers/lookup", params={"phone": "07700 900123"})           # found
    client.get("/v1/customers/lookup", params={"email": "nobody@example.com"})     # 404
    client.get("/v1/customers/lookup", params={"card": "4111 1111 1111 1112"})     # 400, invalid
    client.get("/v1/customers/lookup", params={"phone": PHONE, "email": EMAIL})    # 400, two given
    client.get(f"/v1/customers/{ids['old']}")                                      # found via alias
    client.get("/agent", params={"phone": PHONE})                                  # the page
    rows = audit_rows(settings)[before:]
    got = [(r["key_name"], r["role"], r["endpoint"], r["identifier_kind"], r["identifier_key"], r["customer_id"],
            r["status"], r["unmasked"]) for r in rows]
    assert got == [
        ("alice", "agent", "lookup", "phone", key(settings, "phone", PHONE), ids["ada"], 200, False),
        ("alice", "agent", "lookup", "email", key(settings, "email", "nobody@example.com"), None, 404, False),
        ("alice", "agent", "lookup", "card", None, None, 400, False),
        ("alice", "agent", "lookup", None, None, None, 400, False),
        ("alice", "agent", "customer", "customer_id", identifier_key("customer_id", ids["old"], secret),
         ids["ada"], 200, False),
        ("alice", "agent", "agent_page", "phone", key(settings, "phone", PHONE), ids["ada"], 200, False),
    ]
    assert all(r["at"] is not None for r in rows)
    dumped = json.dumps([{k: str(v) for k, v in r.items()} for r in rows])
    for clear in ("900123", "nobody@example.com", "41111111", ids["old"]):
        assert clear not in dumped.replace(ids["ada"], "")


def test_audit_readable_by_admin_only(client: TestClient, ids: dict[str, str]) -> None:
    client.get(f"/v1/customers/{ids['bob']}")
    assert client.get("/v1/audit").status_code == 403
    assert client.get("/v1/audit", headers={"Authorization": f"Bearer {OPS_KEY}"}).status_code == 403
    answer = client.get("/v1/audit", params={"customer_id": ids["bob"], "limit": 1},
                        headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    assert answer.status_code == 200, answer.text
    (row,) = answer.json()["rows"]
    assert (row["key_name"], row["endpoint"], row["customer_id"], row["status"]) == \
        ("alice", "customer", ids["bob"], 200)


# --- health, readiness, lag ---------------------------------------------------------------


def test_readyz(lookup_settings: Settings, client: TestClient) -> None:
    from projections.migrate import migration_files

    answer = client.get("/readyz", headers={"Authorization": ""})
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"status": "ready", "migrations": len(migration_files())}
    with psycopg.connect(lookup_settings.pg_conninfo()) as conn:
        conn.execute("DELETE FROM schema_migrations WHERE name = '0007_lookup_audit.sql'")
    try:
        answer = client.get("/readyz")
        assert answer.status_code == 503
        assert answer.json() == {"status": "not ready", "reason": "migrations not applied: 0007_lookup_audit.sql"}
    finally:
        with psycopg.connect(lookup_settings.pg_conninfo()) as conn:
            conn.execute("INSERT INTO schema_migrations (name) VALUES ('0007_lookup_audit.sql')")


def test_lag_per_partition(lookup_settings: Settings, client: TestClient) -> None:
    answer = client.get("/v1/lag")
    assert answer.status_code == 200, answer.text
    lag = answer.json()
    assert lag["kafka"] == "ok"
    assert lag["as_of"].startswith("2026-02-01T00:00:00")
    assert lag["age_ms"] > 0
    views = [p for p in lag["partitions"] if p["projection"] == "customers"]
    topic = lookup_settings.topic("customer-views")
    assert {(p["topic"], p["partition"]) for p in views} == \
        {(topic, n) for n in range(lookup_settings.topic_partitions)}
    (stored,) = [p for p in views if p["partition"] == 0]
    # The records went in straight through the projection (offsets up to 112 at least); the topic itself
    # is empty, and a projection ahead of its topic is not behind.
    assert stored["next_offset"] >= 113
    # The session's topics also carry other tests' records: behind is what the topic holds past the stored offset.
    assert stored["behind"] == max(0, stored["end_offset"] - stored["next_offset"])
    assert stored["updated_at"] is not None
    assert {p["projection"] for p in lag["partitions"]} == {"interactions", "customers", "loyalty", "alerts"}
    assert lag["behind"] == sum(p["behind"] for p in lag["partitions"])


# --- the agent page (HTML; the browser test drives it for real) ---------------------------


def test_page_without_key_shows_login(client: TestClient) -> None:
    browser = other_client(client)
    answer = browser.get("/agent", params={"phone": PHONE})
    assert answer.status_code == 401
    assert 'id="login"' in answer.text and "champion" not in answer.text.lower()
    # After signing in the agent comes back to the same pop-up link.
    assert 'name="next" value="/agent?phone=%2B447700900123"' in answer.text
    assert "nonce" not in answer.headers["content-security-policy"]


def test_page_login_sets_httponly_cookie(client: TestClient, ids: dict[str, str]) -> None:
    browser = other_client(client, follow_redirects=False)
    bad = browser.post("/agent/login", data={"key": "wrong", "next": "/agent"})
    assert bad.status_code == 401 and "That key is not valid." in bad.text
    assert COOKIE not in bad.headers.get("set-cookie", "")
    foreign = browser.post("/agent/login", data={"key": AGENT_KEY}, headers={"Origin": "https://evil.example"})
    assert foreign.status_code == 403
    cross_site = browser.post("/agent/login", data={"key": AGENT_KEY}, headers={"Sec-Fetch-Site": "cross-site"})
    assert cross_site.status_code == 403
    answer = browser.post("/agent/login", data={"key": AGENT_KEY, "next": "https://evil.example/agent"})
    assert answer.status_code == 303
    assert answer.headers["location"] == "/agent"  # never off-site
    cookie = answer.headers["set-cookie"]
    assert cookie.startswith(f"{COOKIE}=") and "HttpOnly" in cookie and "SameSite=lax" in cookie
    page = browser.get("/agent", params={"phone": "07700 900123"})
    assert page.status_code == 200, page.text
    assert ids["ada"] in page.text and "a***@example.com" in page.text and EMAIL not in page.text
    assert browser.post("/agent/logout").status_code == 303
    browser.cookies.clear()
    assert browser.get("/agent", params={"phone": PHONE}).status_code == 401


def test_page_escapes_everything(lookup_settings: Settings, client: TestClient) -> None:
    settings = lookup_settings
    evil = "<img src=x onerror=alert(1)>"
    doc = card_doc("lk-evil", f"gold{evil}", {"cookie": [key(settings, "cookie", "ck-evil")]},
                   "2026-02-02T00:00:00.000Z",
                   likely_reasons=[{"rank": 1, "code": "x", "text": f"Reason {evil}", "opening_line": evil}],
                   open_cases=[f"X1{evil}"], timeline=[{"channel": evil, "type": "web", "event_id": "e",
                                                        "occurred_at": "2026-02-01T10:00:00.000Z"}])
    with psycopg.connect(settings.pg_conninfo()) as conn:
        write_batch(conn, CustomersProjection(settings), [record(settings, 200, doc)])
    page = client.get("/agent", params={"kind": "cookie", "value": "ck-evil"})
    assert page.status_code == 200, page.text
    assert "<img" not in page.text
    assert "&lt;img src=x onerror=alert(1)&gt;" in page.text
    assert "script-src 'nonce-" in page.headers["content-security-policy"]
    assert page.headers["cache-control"] == "no-store"
    assert page.headers["referrer-policy"] == "same-origin"


def test_page_nobody_and_invalid(client: TestClient) -> None:
    nobody = client.get("/agent", params={"phone": "07700 900999"})
    assert nobody.status_code == 404 and "nobody matches phone +447700900999" in nobody.text
    bad = client.get("/agent", params={"kind": "card", "value": "4111 1111 1111 1112"})
    assert bad.status_code == 400 and "card: " in bad.text and "1112" not in bad.text
    assert client.get("/agent", params={"phone": PHONE, "unmasked": "true"}).status_code == 403
    empty = client.get("/agent")
    assert empty.status_code == 200 and 'id="search"' in empty.text


# kafka-python's network thread leaves its failed connection attempts' sockets to the garbage
# collector (ResourceWarning); collected below, inside this test, so no later test inherits them.
@pytest.mark.filterwarnings("ignore::ResourceWarning", "ignore::pytest.PytestUnraisableExceptionWarning")
def test_lag_without_kafka_still_answers(lookup_settings: Settings, client: TestClient) -> None:
    """Kafka down: the offsets PostgreSQL holds and the reason, within the client's short timeouts."""
    import gc
    import socket
    import time

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{sock.getsockname()[1]}"
    settings = lookup_settings.model_copy(update={"kafka_bootstrap": dead})
    with TestClient(create_lookup_app(settings), headers={"X-API-Key": OPS_KEY}) as api:
        started = time.monotonic()
        lag = api.get("/v1/lag").json()
        assert time.monotonic() - started < 15
    gc.collect()
    assert lag["kafka"].startswith("unreachable: ")
    assert lag["behind"] is None
    (stored,) = [p for p in lag["partitions"] if p["projection"] == "customers"]
    # Offsets up to 112 at least went in through the projection (later tests add more).
    assert stored["partition"] == 0 and stored["next_offset"] >= 113
    assert (stored["end_offset"], stored["behind"]) == (None, None)


def data_keys(settings: Settings, keys: list[str]) -> dict[str, bytes]:
    """The key store's data keys of ``keys``, made where missing (as the pipeline's sealing makes them)."""
    async def made() -> dict[str, bytes]:
        store = PostgresKeyStore(settings)
        try:
            return await store.data_keys(keys, create=True)
        finally:
            await store.close()

    return asyncio.run(made())


def destroy_keys(settings: Settings, keys: list[str]) -> int:
    """Destroy the data keys of ``keys`` (crypto-shredding, as an erasure does); how many existed."""
    async def destroyed() -> int:
        store = PostgresKeyStore(settings)
        try:
            return await store.destroy(keys)
        finally:
            await store.close()

    return asyncio.run(destroyed())


def card_by_phone(client: TestClient, phone: str, unmasked_by: str | None = None) -> dict[str, Any]:
    """The card found by phone: as an agent sees it, or unmasked (with a reason) by the holder of a key."""
    params, headers = {"phone": phone}, None
    if unmasked_by is not None:
        params |= {"unmasked": "true", "reason": "checking what the card opens"}
        headers = {"Authorization": f"Bearer {unmasked_by}"}
    answer = client.get("/v1/customers/lookup", params=params, headers=headers)
    assert answer.status_code == 200, answer.text
    return answer.json()["card"]  # type: ignore[no-any-return]


def test_pseudonyms_open_in_the_lookup_and_a_destroyed_key_shows_erased(lookup_settings: Settings,
                                                                        client: TestClient) -> None:
    settings = lookup_settings
    phone, email = "+447700900789", "eve@example.com"
    phone_key, email_key, card_key = key(settings, "phone", phone), key(settings, "email", email), \
        key(settings, "card", "4242424242424242")
    data = data_keys(settings, [phone_key, email_key])
    shown = {"card": [pseudonym("card", card_key, "…4242", None)], "customer_no": ["C7"],
             "email": [pseudonym("email", email_key, email, data[email_key])],
             "phone": [pseudonym("phone", phone_key, phone, data[phone_key])]}
    with psycopg.connect(settings.pg_conninfo()) as conn:
        write_batch(conn, CustomersProjection(settings), [record(settings, 300, card_doc(
            "lk-eve", "gold", {"phone": [phone_key], "email": [email_key], "card": [card_key]},
            "2026-03-01T00:00:00.000Z", identifiers=shown))])

    opened = {"card": ["…4242"], "customer_no": ["C7"], "email": [email], "phone": [phone]}
    assert card_by_phone(client, "07700 900789", ADMIN_KEY)["identifiers"] == opened
    assert card_by_phone(client, "07700 900789")["identifiers"] == {
        "card": ["•••• 4242"], "customer_no": ["C7"], "email": ["e***@example.com"], "phone": ["•••• 0789"]}
    assert destroy_keys(settings, [email_key]) == 1
    assert card_by_phone(client, "07700 900789", ADMIN_KEY)["identifiers"] == {**opened, "email": [ERASED]}


def test_the_sealed_name_opens_for_every_role_and_shows_erased_once_its_key_is_gone(lookup_settings: Settings,
                                                                                     client: TestClient) -> None:
    """A profile's name is sealed under the data key of one of the person's identifiers (here the e-mail, which
    an agent sees masked): the card stores it sealed, with that key among the ones an agent's card opens; the
    lookup opens it for an agent and for a clear read alike, also from a row stored before agent_keys."""
    settings = lookup_settings
    phone, email = "+447700900777", "zoe@example.com"
    phone_key, email_key = key(settings, "phone", phone), key(settings, "email", email)
    data = data_keys(settings, [phone_key, email_key])
    name = 'Zoë "Z" Ó Briain'
    sealed = seal_text(email_key, name, data[email_key], os.urandom(12))
    shown = {"email": [pseudonym("email", email_key, email, data[email_key])],
             "phone": [pseudonym("phone", phone_key, phone, data[phone_key])]}
    person = {"language": "ga", "name": sealed, "preferred_channel": "sms"}
    with psycopg.connect(settings.pg_conninfo()) as conn:
        write_batch(conn, CustomersProjection(settings), [record(settings, 310, card_doc(
            "lk-zoe", "gold", {"phone": [phone_key], "email": [email_key]}, "2026-03-01T00:00:00.000Z",
            identifiers=shown, person=person, timeline=[]))])
        stored = conn.execute("SELECT view::text, agent_keys FROM customers WHERE customer_id = 'lk-zoe'").fetchone()
    assert stored is not None and name not in stored[0] and stored[1] == [email_key]

    assert card_by_phone(client, phone)["person"] == {**person, "name": name}
    assert card_by_phone(client, phone)["identifiers"] == {"email": ["z***@example.com"], "phone": ["•••• 0777"]}
    assert card_by_phone(client, phone, OPS_KEY)["person"] == {**person, "name": name}
    with psycopg.connect(settings.pg_conninfo()) as conn:  # a row from before migration 0015
        conn.execute("UPDATE customers SET agent_keys = NULL WHERE customer_id = 'lk-zoe'")
    assert card_by_phone(client, phone)["person"]["name"] == name
    assert card_by_phone(client, phone, OPS_KEY)["person"]["name"] == name

    assert destroy_keys(settings, [email_key]) == 1
    assert card_by_phone(client, phone, OPS_KEY)["person"]["name"] == ERASED
    with psycopg.connect(settings.pg_conninfo()) as conn:
        conn.execute("UPDATE customers SET agent_keys = %s WHERE customer_id = 'lk-zoe'", ([email_key],))
    assert card_by_phone(client, phone)["person"]["name"] == ERASED


def test_a_card_stored_before_its_masked_form_is_masked_by_the_api(lookup_settings: Settings,
                                                                    client: TestClient, ids: dict[str, str]) -> None:
    """Rows from before migration 0014 have no masked identifiers: the API opens and masks the view itself."""
    settings = lookup_settings
    stored = client.get("/v1/customers/lookup", params={"phone": PHONE})
    assert stored.status_code == 200, stored.text
    with psycopg.connect(settings.pg_conninfo()) as conn:
        before = conn.execute("SELECT masked_identifiers::text, identifiers_at FROM customers WHERE customer_id = %s",
                              (ids["ada"],)).fetchone()
        assert before is not None and before[0] is not None and before[1] is not None
        conn.execute("UPDATE customers SET masked_identifiers = NULL, identifiers_at = NULL WHERE customer_id = %s",
                     (ids["ada"],))
    try:
        by_api = client.get("/v1/customers/lookup", params={"phone": PHONE})
        assert by_api.status_code == 200, by_api.text
        assert by_api.json() == stored.json()
        assert by_api.json()["card"]["identifiers"]["email"] == ["a***@example.com"]
    finally:
        with psycopg.connect(settings.pg_conninfo()) as conn:
            conn.execute("UPDATE customers SET masked_identifiers = %s::json, identifiers_at = %s "
                         "WHERE customer_id = %s", (*before, ids["ada"]))


def test_concurrent_lookups_each_have_their_audit_row(lookup_settings: Settings, client: TestClient,
                                                       ids: dict[str, str]) -> None:
    """Lookups running together on the pool's connections: one audit row each, with its status."""
    settings = lookup_settings
    before = len(audit_rows(settings))
    phones = [PHONE, OTHER_PHONE, "+447700900999"] * 10

    async def many() -> list[int]:
        transport = httpx.ASGITransport(app=client.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api",
                                     headers={"X-API-Key": AGENT_KEY}) as http:
            answers = await asyncio.gather(*(http.get("/v1/customers/lookup", params={"phone": p}) for p in phones))
        return [answer.status_code for answer in answers]

    statuses = client.portal.call(many)  # type: ignore[union-attr]
    assert statuses == [200, 200, 404] * 10
    rows = audit_rows(settings)[before:]
    assert sorted((r["identifier_key"], r["status"]) for r in rows) == sorted(
        (key(settings, "phone", p), status) for p, status in zip(phones, statuses, strict=True))
