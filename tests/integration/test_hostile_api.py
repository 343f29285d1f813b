"""Hostile input at the HTTP doors: the ingest gateway and the lookup API, on the real stack.

Gateway. Schemathesis fuzzes ``POST /v1/events`` (and the open routes)
against the gateway's *own* OpenAPI document, positive and negative cases,
and nothing may answer 5xx. Hypothesis then posts mutations of valid events
(values of the wrong type, missing fields, unknown or malformed identifiers,
huge strings, NUL bytes, lone surrogates, confusable digits, NaN) as one
object, an array or NDJSON, and the gateway's verdict per event is compared
with the contract's own (:func:`validate_event`): an event is refused
exactly when the contract refuses it, and every refusal names its fields
with a message. The gateway publishes through a real producer to topics of
this module's own prefix, so accepted events really reach Kafka.

Lookup API. SQL-injection strings, 100 kB values, NUL bytes and Unicode
confusables in every query parameter and in the customer id of the path:
never a 5xx, a 400 or 404 with a clear ``detail``, and the read model's
tables still hold what they held. Missing and wrong credentials are 401; an
agent asking for unmasked identifiers is 403, however ``unmasked`` is spelt.

Both apps run in-process (ASGI) against the real Kafka, registry and
PostgreSQL; the module has a database and topic prefix of its own.
"""

from __future__ import annotations

import json
import math
import uuid
import warnings
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlencode

import psycopg
import pytest
import schemathesis
from hypothesis import HealthCheck, example, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from starlette.exceptions import StarletteDeprecationWarning

with warnings.catch_warnings():
    # Starlette 1.x prefers the httpx2 fork for its TestClient; httpx (installed) still works.
    warnings.filterwarnings("ignore", category=StarletteDeprecationWarning)
    from fastapi.testclient import TestClient

from connectors.frontline.access import digest
from connectors.frontline.lookup import create_lookup_app
from connectors.intake.gateway import create_gateway
from connectors.intake.producer import EventProducer, normalised
from projections.customers import CustomersProjection
from projections.writer import write_batch
from tests.fix_stack import scoped
from tests.integration.test_lookup import (
    ADA_IDENTIFIERS,
    ADMIN_KEY,
    AGENT_KEY,
    API_KEYS,
    CARD,
    EMAIL,
    OPS_KEY,
    PHONE,
    card_doc,
    key,
    record,
)
from tests.unit.contract_samples import SAMPLES, sample
from touchpoint.contract.models import ContractViolation, validate_event
from touchpoint.settings import Settings

pytestmark = pytest.mark.integration

GATEWAY_KEY = "hostile-gateway-key-0123456789abcdef"
# Every channel and type, and a rate no fuzzer reaches: this module tests the data, not the limiter.
GATEWAY_KEYS = {digest(GATEWAY_KEY): {"name": "fuzzer", "channels": ["*"], "types": ["*"],
                                      "rate_per_s": 1_000_000, "burst": 1_000_000}}
MAX_BODY = 1_048_576


# --- the stack, narrowed to this module ---

@pytest.fixture(scope="module")
def hostile_settings(settings: Settings) -> Iterator[Settings]:
    """A database and topic prefix of this module's own, with gateway source keys and lookup API keys."""
    with scoped(settings, f"{settings.pg_database}_hostile_api", f"{settings.topic_prefix}-hostile-api") as own:
        yield own.model_copy(update={"gateway_keys": GATEWAY_KEYS, "api_keys": API_KEYS})


@pytest.fixture(scope="module")
def gateway(hostile_settings: Settings) -> Iterator[TestClient]:
    """The gateway's ASGI app, publishing through a real producer, with the fuzzer's key on every request."""
    with EventProducer(hostile_settings) as producer, \
            TestClient(create_gateway(hostile_settings, producer, max_body_bytes=MAX_BODY),
                       headers={"Authorization": f"Bearer {GATEWAY_KEY}"}) as client:
        yield client


# --- gateway: schemathesis against its own OpenAPI document ---

def test_gateway_openapi_fuzz_never_5xx(gateway: TestClient) -> None:
    """Positive and negative cases from the gateway's own OpenAPI document, every operation; never a 5xx.

    The schema is loaded inside the test and driven with ``@given``: schemathesis' lazy
    ``from_fixture`` loader does not work with pytest 9 (it reads a ``_nodeid`` pytest no longer has).
    """
    schema = schemathesis.openapi.from_dict(gateway.app.openapi())
    cases = st.one_of(schema.as_strategy(GenerationMode.POSITIVE), schema.as_strategy(GenerationMode.NEGATIVE))
    seen: Counter[tuple[str, int]] = Counter()

    @given(case=cases)
    @hypothesis_settings(max_examples=120, deadline=None, database=None,
                         suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                                HealthCheck.data_too_large])
    def one(case: Any) -> None:
        response = gateway.request(**_httpx_kwargs(case.as_transport_kwargs(base_url="http://testserver")))
        seen[(f"{case.method} {case.path}", response.status_code)] += 1
        assert response.status_code < 500, \
            f"{case.method} {case.formatted_path}: {response.status_code} {response.text[:500]}"
        if response.status_code >= 400:
            assert _reasoned(response.json()), response.text[:500]

    one()
    posts = {status for (op, status), _ in seen.items() if op == "POST /v1/events"}
    # The fuzz reached the contract check (202s need the producer, which an earlier test may leave down).
    assert 422 in posts, seen
    assert posts & {400, 415}, seen


def _httpx_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """A schemathesis case's requests-style arguments as httpx's, with the fuzzer's key.

    The body is serialised here (``ensure_ascii``, so lone surrogates travel escaped, as any JSON
    encoder may send them); cookies become a header (httpx deprecates per-request cookies).
    """
    headers = {str(k): str(v) for k, v in (kwargs.get("headers") or {}).items()}
    if kwargs.get("cookies"):
        headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in kwargs["cookies"].items())
    # The key goes with every request, whatever headers the case made up: the fuzz is of the data.
    headers["Authorization"] = f"Bearer {GATEWAY_KEY}"
    out: dict[str, Any] = {"method": kwargs["method"], "url": kwargs["url"], "headers": headers,
                           "params": kwargs.get("params")}
    if "json" in kwargs:
        out["content"] = json.dumps(kwargs["json"]).encode()
    elif kwargs.get("data") is not None:
        data = kwargs["data"]
        out["content"] = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
    return out


def _reasoned(body: Any) -> bool:
    """A refusal says why: a non-empty ``detail``, or per-event results that each name their problems."""
    if isinstance(body, dict) and isinstance(body.get("detail"), str) and body["detail"].strip():
        return True
    results = body.get("results") if isinstance(body, dict) else None
    return bool(results) and all(r["status"] != "rejected" or r["problems"] for r in results)


# --- gateway: mutated events, judged against the contract ---

HOSTILE_STRINGS = [
    "", " ", "\x00", "a\x00b", "' OR 1=1 --", "1; DROP TABLE customers", "x" * 100_000, "\ud800", "\udfff x",
    "\u202egnp.exe", "０７７００ ９００１２３", "٠٧٧٠٠٩٠٠١٢٣", "ａｄａ＠ｅｘａｍｐｌｅ．ｃｏｍ", "аda@example.com",
    "null", "NaN", "9" * 40, "4111 1111 1111 1112", "+44", "@", "🂡" * 50, "\r\n", "{\"$ne\": 1}",
]
HOSTILE_TEXT = st.one_of(st.sampled_from(HOSTILE_STRINGS), st.text(max_size=30))
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
                    st.floats(allow_nan=True, allow_infinity=True), HOSTILE_TEXT)
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=5)
IDENTIFIERS = st.dictionaries(
    st.sampled_from(["customer_no", "phone", "email", "card", "cookie", "device", "ssn", "", "CARD"]),
    st.one_of(HOSTILE_TEXT, SCALARS), max_size=4)


def _slots(node: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every path to a value inside an event (keys of objects, indices of arrays)."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for k, child in items:
        yield (*path, k)
        yield from _slots(child, (*path, k))


def _at(doc: Any, path: tuple[Any, ...]) -> Any:
    for k in path:
        doc = doc[k]
    return doc


@st.composite
def hostile_events(draw: st.DrawFn) -> Any:
    """A valid sample with a fresh id, then one to three mutations (or, rarely, not an object at all)."""
    if draw(st.integers(0, 19)) == 0:
        return draw(SCALARS)
    event = sample(draw(st.sampled_from(sorted(SAMPLES))))
    event["event_id"] = f"hostile-{uuid.uuid4().hex}"
    for _ in range(draw(st.integers(1, 3))):
        slots = list(_slots(event)) if isinstance(event, dict) else []
        if not slots:
            break
        how = draw(st.sampled_from(["drop", "set", "set", "identifiers", "keep"]))
        path = draw(st.sampled_from(slots))
        parent = _at(event, path[:-1])
        if how == "drop":
            del parent[path[-1]]
        elif how == "set":
            parent[path[-1]] = draw(VALUES)
        elif how == "identifiers":
            event["identifiers"] = draw(IDENTIFIERS)
    return event


def _problems_at_the_edge(doc: Any, now: datetime, settings: Settings) -> set[str] | None:
    """The fields the edge refuses ``doc`` for (the contract, then the identifiers' normalisation); None: accepted."""
    try:
        normalised(validate_event(doc, now), settings.identifier_key.get_secret_value().encode(),
                   settings.phone_region)
    except ContractViolation as exc:
        return {f for f, _ in exc.problems}
    return None


def _dumps(doc: Any) -> str:
    # ensure_ascii keeps lone surrogates sendable (escaped); NaN and Infinity are left for the gateway to refuse.
    return json.dumps(doc, ensure_ascii=True)


def _non_finite(node: Any) -> bool:
    if isinstance(node, float):
        return not math.isfinite(node)
    items = node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
    return any(_non_finite(child) for child in items)


def test_mutated_events_refused_exactly_when_the_edge_refuses_them(gateway: TestClient,
                                                                   hostile_settings: Settings) -> None:
    seen: Counter[str] = Counter()

    nan, huge, surrogate_id = sample("purchase"), sample("web"), sample("web")
    nan["payload"]["total_minor"] = math.nan
    huge["payload"]["page"] = "x" * (MAX_BODY // 3)
    # Valid JSON text, not valid Unicode: the refusal echoes the id back (it was a 500 once in several runs).
    surrogate_id["event_id"] = "\ud800"

    @given(docs=st.lists(hostile_events(), min_size=1, max_size=4),
           form=st.sampled_from(["object", "array", "ndjson"]))
    @example(docs=[nan], form="object")
    @example(docs=[huge, huge, huge, huge], form="ndjson")
    @example(docs=[surrogate_id], form="object")
    @example(docs=[sample("sms"), surrogate_id], form="ndjson")
    @hypothesis_settings(max_examples=200, deadline=None, database=None,
                         suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    def one(docs: list[Any], form: str) -> None:
        if form == "object" and len(docs) == 1 and isinstance(docs[0], dict):
            body, content_type = _dumps(docs[0]), "application/json"
        elif form == "ndjson":
            body, content_type = "\n".join(_dumps(d) for d in docs) + "\n", "application/x-ndjson"
        else:
            body, content_type = _dumps(docs), "application/json"
        raw = body.encode()
        now = datetime.now(UTC)
        response = gateway.post("/v1/events", content=raw, headers={"Content-Type": content_type})
        assert response.status_code < 500, response.text[:1000]
        answer = response.json()
        seen[f"status {response.status_code}"] += 1
        if response.status_code == 413:
            assert len(raw) > MAX_BODY and "limit" in answer["detail"], answer
            return
        if response.status_code == 400:
            # The only way these bodies are not JSON: NaN/Infinity, which json.dumps writes and JSON forbids.
            assert any(_non_finite(d) for d in docs) and "not valid JSON" in answer["detail"], answer
            return
        assert not any(_non_finite(d) for d in docs), answer
        assert len(raw) <= MAX_BODY
        assert response.status_code in (202, 422), answer
        results = answer["results"]
        assert [r["index"] for r in results] == list(range(len(docs)))
        for doc, result in zip(docs, results, strict=True):
            expected = _problems_at_the_edge(doc, now, hostile_settings)
            seen[result["status"]] += 1
            if expected is None:
                assert result["status"] == "accepted", (doc, result)
                assert result["event_id"] == doc["event_id"]
            else:
                assert result["status"] == "rejected", (doc, result)
                assert result["problems"], result
                assert all(p["field"] and p["message"] for p in result["problems"]), result
                assert {p["field"] for p in result["problems"]} == expected, (doc, result)
        accepted = sum(r["status"] == "accepted" for r in results)
        assert response.status_code == (202 if accepted else 422)
        assert (answer["accepted"], answer["rejected"]) == (accepted, len(docs) - accepted)

    one()
    # The mutations reached both verdicts and the parser's refusal of NaN.
    assert seen["accepted"] and seen["rejected"] > seen["accepted"], seen
    assert seen["status 400"] and seen["status 413"], seen
    print(dict(seen))


def test_refusals_echo_text_that_is_not_unicode_as_the_escapes_it_came_in(gateway: TestClient) -> None:
    """A lone surrogate (``"\\ud800"``, valid JSON) in an event id or a field comes back escaped, never a 500."""
    by_id, by_field = sample("web"), sample("web")
    by_id["event_id"] = "bad-\udc80-id"
    by_field["payload"]["page"] = "/\ud83d"
    body = json.dumps([by_id, by_field]).encode()
    assert b"\\udc80" in body and b"\\ud83d" in body  # sent as JSON escapes
    response = gateway.post("/v1/events", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 422, response.text[:1000]
    assert response.content.decode("utf-8")  # the body itself is valid UTF-8
    results = response.json()["results"]
    assert [r["status"] for r in results] == ["rejected", "rejected"]
    assert results[0]["event_id"] == "bad-\udc80-id"
    assert {p["field"] for p in results[0]["problems"]} == {"event_id"}
    assert {p["field"] for p in results[1]["problems"]} == {"payload.page"}


def test_gateway_without_a_valid_key_is_401_with_the_reason(gateway: TestClient) -> None:
    event = sample("web")
    for headers in ({"Authorization": ""}, {"Authorization": "Bearer not-a-key"}, {"X-API-Key": "' OR 1=1 --"},
                    {"Authorization": f"Basic {GATEWAY_KEY}"}, {"Authorization": f"Bearer {GATEWAY_KEY.upper()}"}):
        anonymous = TestClient(gateway.app, headers=headers)
        answer = anonymous.post("/v1/events", json=event)
        assert answer.status_code == 401, (headers, answer.text)
        assert "key" in answer.json()["detail"], answer.text


# --- lookup API ---

@pytest.fixture(scope="module")
def seeded(hostile_settings: Settings) -> str:
    """Ada's card in the read model, written by the customers projection; her customer id."""
    ada = "hostile-ada"
    with psycopg.connect(hostile_settings.pg_conninfo()) as conn:
        write_batch(conn, CustomersProjection(hostile_settings), [
            record(hostile_settings, 1, card_doc(ada, "champion", {
                "phone": [key(hostile_settings, "phone", PHONE)], "email": [key(hostile_settings, "email", EMAIL)],
                "card": [key(hostile_settings, "card", CARD)]}, "2026-02-01T00:00:00.000Z",
                identifiers=ADA_IDENTIFIERS)),
        ])
    return ada


@pytest.fixture(scope="module")
def lookup(hostile_settings: Settings, seeded: str) -> Iterator[TestClient]:
    """The lookup API on this module's database, as an agent."""
    with TestClient(create_lookup_app(hostile_settings), headers={"Authorization": f"Bearer {AGENT_KEY}"}) as client:
        yield client


def raw_get(client: TestClient, path: str, query: dict[str, str], headers: dict[str, str]) -> tuple[int, Any]:
    """GET straight through the ASGI interface: httpx refuses URL parts over 64 kB before sending them.

    The request runs in ``client``'s event loop (its portal), where the app's lifespan and async connection
    pool live; returns status and JSON body.
    """
    app = client.app
    assert client.portal is not None, "the client must be entered (its lifespan running)"
    messages: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        messages.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
             "path": path, "raw_path": quote(path).encode(), "query_string": urlencode(query).encode(),
             "root_path": "", "server": ("testserver", 80), "client": ("127.0.0.1", 1234),
             "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()]}
    try:
        client.portal.call(app, scope, receive, send)
    except Exception:
        # Starlette answers an unhandled error with a 500 and then re-raises it for the server to log.
        if not any(m["type"] == "http.response.start" for m in messages):
            raise
    start = next(m for m in messages if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in messages if m["type"] == "http.response.body")
    try:
        return start["status"], json.loads(body)
    except ValueError:
        return start["status"], body.decode(errors="replace")


def table_counts(settings: Settings) -> dict[str, int]:
    with psycopg.connect(settings.pg_conninfo()) as conn:
        return {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]  # type: ignore[index]
                for t in ("customers", "customer_identifiers", "customer_aliases", "schema_migrations")}


HOSTILE_VALUES = {
    "or-1-1": "' OR 1=1 --",
    "drop-table": "1; DROP TABLE customers",
    "drop-table-quoted": "x'); DROP TABLE customers; --",
    "union": "' UNION SELECT customer_id, as_of, view FROM customers --",
    "100kB": "7" * 100_000,
    "nul": "07700\x00900123",
    "fullwidth-digits-other": "０７７００ ９００９９９",
    "cyrillic-a": "аda@example.com",
    "rtl-override": "\u202eada@example.com",
    "percent": "%",
    "backslash": "\\",
}
KINDS = ("phone", "email", "card", "customer_no", "cookie", "device")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("value", list(HOSTILE_VALUES.values()), ids=list(HOSTILE_VALUES))
def test_hostile_lookup_parameters_are_400_or_404_and_tables_survive(
        hostile_settings: Settings, lookup: TestClient, kind: str, value: str) -> None:
    before = table_counts(hostile_settings)
    status, body = raw_get(lookup, "/v1/customers/lookup", {kind: value}, {"Authorization": f"Bearer {AGENT_KEY}"})
    assert status in (400, 404), (kind, status, str(body)[:500])
    detail = body["detail"]
    assert isinstance(detail, str) and detail.strip()
    assert detail.startswith(kind) if status == 400 else f"nobody matches {kind}" in detail
    assert "champion" not in json.dumps(body)
    assert table_counts(hostile_settings) == before


@pytest.mark.parametrize("value", list(HOSTILE_VALUES.values()), ids=list(HOSTILE_VALUES))
def test_hostile_customer_id_in_the_path_is_404_and_tables_survive(
        hostile_settings: Settings, lookup: TestClient, value: str) -> None:
    before = table_counts(hostile_settings)
    status, body = raw_get(lookup, f"/v1/customers/{value}", {}, {"Authorization": f"Bearer {AGENT_KEY}"})
    assert status == 404, (status, str(body)[:500])
    assert body["detail"].startswith("no customer")
    assert table_counts(hostile_settings) == before


def test_a_nul_in_the_customer_id_is_404_audited_and_shown_escaped(
        hostile_settings: Settings, lookup: TestClient, seeded: str) -> None:
    """PostgreSQL text cannot hold NUL, so no customer id does: 404 (once a 500), and the refusal is audited."""
    status, body = raw_get(lookup, f"/v1/customers/{seeded}\x00", {}, {"Authorization": f"Bearer {AGENT_KEY}"})
    assert (status, body) == (404, {"detail": f"no customer {seeded}\\x00"})
    with psycopg.connect(hostile_settings.pg_conninfo()) as conn:
        last = conn.execute("SELECT endpoint, identifier_kind, customer_id, status FROM lookup_audit "
                            "ORDER BY id DESC LIMIT 1").fetchone()
    assert last == ("customer", "customer_id", None, 404)


def test_agent_page_with_a_nul_in_the_customer_id_is_404(lookup: TestClient, seeded: str) -> None:
    for query in ({"customer_id": f"{seeded}\x00"}, {"kind": "customer_id", "value": f"\x00{seeded}"}):
        status, body = raw_get(lookup, "/agent", query, {"Authorization": f"Bearer {AGENT_KEY}"})
        assert status == 404, (status, str(body)[:300])
        assert "\x00" not in body and "no customer" in body  # the page shows the NUL escaped, not raw


@pytest.mark.parametrize("kind", KINDS)
def test_a_nul_in_a_lookup_parameter_is_400_naming_it(hostile_settings: Settings, lookup: TestClient,
                                                      kind: str) -> None:
    status, body = raw_get(lookup, "/v1/customers/lookup", {kind: "ada\x00"}, {"Authorization": f"Bearer {AGENT_KEY}"})
    assert (status, body) == (400, {"detail": f"{kind}: may not contain a NUL byte"})
    with psycopg.connect(hostile_settings.pg_conninfo()) as conn:
        last = conn.execute("SELECT endpoint, identifier_kind, identifier_key, status FROM lookup_audit "
                            "ORDER BY id DESC LIMIT 1").fetchone()
    assert last == ("lookup", kind, None, 400)


@pytest.mark.parametrize("parameter", ["customer_id", "key_name"])
def test_a_nul_in_an_audit_filter_is_400_naming_it(lookup: TestClient, parameter: str) -> None:
    status, body = raw_get(lookup, "/v1/audit", {parameter: "ada\x00"}, {"Authorization": f"Bearer {ADMIN_KEY}"})
    assert (status, body) == (400, {"detail": f"{parameter}: may not contain a NUL byte"})


def test_several_hostile_parameters_at_once_are_400(lookup: TestClient) -> None:
    answer = lookup.get("/v1/customers/lookup", params={"phone": "' OR 1=1 --", "email": "1; DROP TABLE customers"})
    assert answer.status_code == 400
    assert answer.json()["detail"].startswith("give exactly one of")


def test_confusable_fullwidth_digits_find_the_same_phone(lookup: TestClient, seeded: str) -> None:
    """Full-width digits are digits to libphonenumber: the same number, the same (masked) card, no error."""
    answer = lookup.get("/v1/customers/lookup", params={"phone": "０７７００ ９００１２３"})
    assert answer.status_code == 200, answer.text
    assert answer.json()["customer_id"] == seeded
    assert EMAIL not in answer.text


@pytest.mark.parametrize("path", ["/v1/customers/lookup?phone=07700900123", "/v1/customers/hostile-ada",
                                  "/v1/lag", "/v1/audit"])
@pytest.mark.parametrize("headers", [
    {}, {"Authorization": "Bearer"}, {"Authorization": "Bearer ' OR 1=1 --"}, {"X-API-Key": "not-a-key"},
    {"Authorization": f"Basic {AGENT_KEY}"}, {"Authorization": f"Bearer {AGENT_KEY[:-1]}"},
    {"X-API-Key": GATEWAY_KEY},  # a gateway source's key is unknown to the lookup API
    {"Cookie": "touchpoint_key=not-a-key"},
], ids=["none", "empty-bearer", "injection", "unknown", "basic", "truncated", "gateway-key", "bad-cookie"])
def test_missing_or_wrong_credentials_are_401(lookup: TestClient, path: str, headers: dict[str, str]) -> None:
    anonymous = TestClient(lookup.app, headers=headers)
    anonymous.portal = lookup.portal  # the app's pool lives in the lookup client's event loop
    answer = anonymous.get(path)
    assert answer.status_code == 401, (path, headers, answer.text)
    assert "key" in answer.json()["detail"]
    assert answer.headers["www-authenticate"] == "Bearer"
    assert "champion" not in answer.text


@pytest.mark.parametrize("spelling", ["true", "True", "1", "yes", "on"])
def test_agent_asking_unmasked_is_403_however_spelt(lookup: TestClient, seeded: str, spelling: str) -> None:
    for path, params in (("/v1/customers/lookup", {"phone": PHONE}), (f"/v1/customers/{seeded}", {})):
        answer = lookup.get(path, params={**params, "unmasked": spelling})
        assert answer.status_code == 403, (path, spelling, answer.text)
        assert "may not see unmasked" in answer.json()["detail"]
        assert EMAIL not in answer.text and CARD not in answer.text
    page = lookup.get("/agent", params={"phone": PHONE, "unmasked": spelling})
    assert page.status_code == 403 and EMAIL not in page.text


def test_operations_may_unmask(lookup: TestClient) -> None:
    """The 403 above is the role, not a broken door: operations gets the clear card."""
    answer = lookup.get("/v1/customers/lookup", params={"phone": PHONE, "unmasked": "true", "reason": "fraud case"},
                        headers={"Authorization": f"Bearer {OPS_KEY}"})
    assert answer.status_code == 200, answer.text
    assert answer.json()["card"]["identifiers"]["email"] == [EMAIL]
