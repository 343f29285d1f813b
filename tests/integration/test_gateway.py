"""The HTTP ingest gateway against the real broker and registry, through its ASGI app.

Callers hold source keys (configured as sha256 digests, as in production); the
default client is a source allowed every channel and type. Also covered: no
key, a wrong or revoked key, a key of another channel or type, the counters
of refusals, rate limits with ``Retry-After`` and per-source body limits.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from kafka import KafkaConsumer, TopicPartition

from connectors.frontline.access import digest
from connectors.intake.gateway import create_gateway
from connectors.intake.producer import AsyncEventProducer, Delivered, EventProducer, Failed, Result
from connectors.platform.keystore import PostgresKeyStore
from connectors.platform.registry import RegistryClient
from connectors.platform.serde import EventSerde
from connectors.platform.topics import event_topic
from tests.unit.contract_samples import sample
from touchpoint.contract.models import Event
from touchpoint.core.pseudonym import parse, reveal
from touchpoint.errors import ConfigError, PublishError
from touchpoint.settings import Settings

pytestmark = pytest.mark.integration
NDJSON = {"Content-Type": "application/x-ndjson"}

ALL_KEY = "all-key-0123456789abcdef"        # the CTI and web site: every channel and type
SMS_KEY = "sms-key-0123456789abcdef"        # the SMS provider: sms events on the sms channel only
WEB_KEY = "web-key-0123456789abcdef"        # web analytics: the web channel, web events only
SLOW_KEY = "slow-key-0123456789abcdef"      # half a request per second, two at once
SMALL_KEY = "small-key-0123456789abcdef"    # bodies of at most 600 bytes
GATEWAY_KEYS = {
    digest(ALL_KEY): {"name": "everything", "channels": ["*"], "types": ["*"]},
    digest(SMS_KEY): {"name": "sms-provider", "channels": ["sms"], "types": ["sms"]},
    digest(WEB_KEY): {"name": "web-analytics", "channels": ["web"], "types": ["web"]},
    digest(SLOW_KEY): {"name": "slow", "channels": ["*"], "types": ["*"], "rate_per_s": 0.5, "burst": 2},
    digest(SMALL_KEY): {"name": "small", "channels": ["*"], "types": ["*"], "max_body_bytes": 600},
}
ALL = {"Authorization": f"Bearer {ALL_KEY}"}


def fresh(event_type: str, **changes: Any) -> dict[str, Any]:
    """A valid sample with a unique event id (reruns and other tests never collide)."""
    event = sample(event_type)
    event["event_id"] = f"{event['event_id']}-{uuid.uuid4().hex[:8]}"
    event.update(changes)
    return event


@pytest.fixture(scope="module")
def gateway_settings(settings: Settings) -> Settings:
    """The session's settings with this module's source keys."""
    return settings.model_copy(update={"gateway_keys": GATEWAY_KEYS})


@pytest.fixture(scope="module")
def producer(settings: Settings) -> Iterator[EventProducer]:
    with EventProducer(settings) as real:
        yield real


def asgi_client(app: FastAPI, key: str | None = ALL_KEY) -> httpx.AsyncClient:
    """A client of ``app`` sending ``key`` as a bearer token on every request (None: no key)."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway", headers=headers)


@pytest.fixture
def make_client(gateway_settings: Settings, producer: EventProducer) -> Iterator[Callable[..., httpx.AsyncClient]]:
    """Clients of gateways built with the real producer and the given options, holding ``key``."""

    def make(app: FastAPI | None = None, key: str | None = ALL_KEY, **options: Any) -> httpx.AsyncClient:
        return asgi_client(app or create_gateway(gateway_settings, producer, **options), key)

    yield make


@pytest.fixture
async def client(make_client: Callable[..., httpx.AsyncClient]) -> AsyncIterator[httpx.AsyncClient]:
    async with make_client() as c:
        yield c


def read_back(settings: Settings, topic: str, partition: int, offset: int) -> tuple[bytes | None, bytes, Event]:
    """The message at (topic, partition, offset): its key, its bytes and its event."""
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, enable_auto_commit=False,
                             consumer_timeout_ms=10_000)
    try:
        tp = TopicPartition(topic, partition)
        consumer.assign([tp])
        consumer.seek(tp, offset)
        message = next(iter(consumer))
    finally:
        consumer.close()
    assert message.offset == offset
    with RegistryClient(settings.registry_url) as registry:
        event = EventSerde(registry).deserialize(message.value)
    return message.key, message.value, event


async def test_one_event_is_on_its_channel_topic_at_the_offset_answered(
        client: httpx.AsyncClient, settings: Settings) -> None:
    event = fresh("call")
    response = await client.post("/v1/events", json=event)
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["accepted"] == 1 and body["rejected"] == 0
    [result] = body["results"]
    assert result["status"] == "accepted" and result["index"] == 0 and result["event_id"] == event["event_id"]
    assert result["topic"] == event_topic(settings, "phone")
    key, _, published = read_back(settings, result["topic"], result["partition"], result["offset"])
    assert published.event_id == event["event_id"]
    assert key is not None and b"+44" not in key  # keyed hash, never the clear phone number


async def test_identifiers_reach_the_topic_as_pseudonyms_only(client: httpx.AsyncClient, settings: Settings) -> None:
    event = fresh("purchase")
    event["identifiers"].update({"email": "Pseudo.Nym@Example.com", "phone": "07700 900871"})
    card = event["identifiers"]["card"]
    response = await client.post("/v1/events", json=event)
    assert response.status_code == 202, response.text
    [result] = response.json()["results"]
    _, raw, published = read_back(settings, result["topic"], result["partition"], result["offset"])
    for clear in (card, card[:-4], event["identifiers"]["customer_no"], "pseudo.nym", "Pseudo.Nym", "7700900871",
                  "7700 900871"):
        assert clear.encode() not in raw, clear
    tokens = published.identifiers
    assert set(tokens) == {"card", "customer_no", "email", "phone"}
    assert tokens["card"].startswith("tp1:card:") and tokens["card"].endswith(":…" + card[-4:])
    async with PostgresKeyStore(settings) as keystore:
        data_keys = await keystore.data_keys([parse(t).key for t in tokens.values()], create=False)
    assert {kind: reveal(t, data_keys.get(parse(t).key)) for kind, t in tokens.items()} == {
        "card": "…" + card[-4:], "customer_no": event["identifiers"]["customer_no"],
        "email": "pseudo.nym@example.com", "phone": "+447700900871"}


async def test_a_card_failing_luhn_is_refused_at_the_edge_without_quoting_it(client: httpx.AsyncClient) -> None:
    event = fresh("purchase")
    event["identifiers"]["card"] = "6011000990139425"  # the sample's number with its check digit broken
    response = await client.post("/v1/events", json=event)
    assert response.status_code == 422, response.text
    [result] = response.json()["results"]
    assert result["status"] == "rejected"
    assert "Luhn" in response.text and "identifiers.card" in response.text
    assert "6011000990139425" not in response.text


async def test_array_with_one_bad_event_accepts_the_others_and_names_the_field(client: httpx.AsyncClient) -> None:
    bad = fresh("purchase")
    bad["payload"]["total_minor"] = -1
    events = [fresh("web"), bad, fresh("sms")]
    response = await client.post("/v1/events", json=events)
    assert response.status_code == 202, response.text
    body = response.json()
    assert (body["accepted"], body["rejected"]) == (2, 1)
    assert [r["status"] for r in body["results"]] == ["accepted", "rejected", "accepted"]
    assert [r["index"] for r in body["results"]] == [0, 1, 2]
    assert [r["event_id"] for r in body["results"]] == [e["event_id"] for e in events]
    assert body["results"][1]["problems"] == [{"field": "payload.total_minor", "message": "money must not be negative"}]


async def test_ndjson_with_blank_lines(client: httpx.AsyncClient) -> None:
    events = [fresh("email"), fresh("case"), fresh("consent")]
    text = "\n".join(json.dumps(e) for e in events[:2]) + "\n\n  \r\n" + json.dumps(events[2]) + "\n"
    response = await client.post("/v1/events", content=text, headers=NDJSON)
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["accepted"] == 3
    assert [r["event_id"] for r in body["results"]] == [e["event_id"] for e in events]


async def test_all_rejected_is_422_with_the_reasons(client: httpx.AsyncClient) -> None:
    no_id, not_an_event = fresh("web", identifiers={}), 42
    response = await client.post("/v1/events", json=[no_id, not_an_event])
    assert response.status_code == 422, response.text
    body = response.json()
    assert (body["accepted"], body["rejected"]) == (0, 2)
    assert body["results"][0]["problems"][0]["field"] == "identifiers"
    assert body["results"][1] == {"index": 1, "event_id": None, "status": "rejected",
                                  "problems": [{"field": "(event)", "message": "an event must be an object"}]}


def _future(event: dict[str, Any]) -> None:
    event["occurred_at"] = (datetime.now(UTC) + timedelta(days=2)).isoformat()


@pytest.mark.parametrize(("event_type", "breaks", "field", "says"), [
    ("web", lambda e: e.update(identifiers={}), "identifiers", "at least one identifier"),
    ("web", lambda e: e.update(type="teleport"), "type", "unknown event type"),
    ("web", lambda e: e.update(channel="fax"), "channel", "'branch'"),
    ("purchase", lambda e: e["payload"].update(total_minor=-1), "payload.total_minor", "negative"),
    ("purchase", lambda e: e["payload"]["lines"][0].update(amount_minor=62.4), "payload.lines.0.amount_minor",
     "integer"),
    ("web", _future, "occurred_at", "after now"),
    ("email", lambda e: e["identifiers"].update(email="jane.doe-at-example.com"), "identifiers.email", "e-mail"),
], ids=["no-identifier", "unknown-type", "unknown-channel", "negative-money", "float-money", "2-days-ahead",
        "malformed-email"])
async def test_each_kind_of_bad_event_is_rejected_with_its_field(
        client: httpx.AsyncClient, event_type: str, breaks: Callable[[dict[str, Any]], None], field: str,
        says: str) -> None:
    bad = fresh(event_type)
    breaks(bad)
    response = await client.post("/v1/events", json=bad)
    assert response.status_code == 422, response.text
    [result] = response.json()["results"]
    assert result["status"] == "rejected" and result["event_id"] == bad["event_id"]
    assert [p["field"] for p in result["problems"]] == [field]
    assert says in result["problems"][0]["message"]


async def test_number_beyond_avro_long_is_rejected_not_a_server_error(client: httpx.AsyncClient) -> None:
    huge = fresh("purchase")
    huge["payload"]["total_minor"] = 10**20
    good = fresh("web")
    response = await client.post("/v1/events", json=[good, huge])
    assert response.status_code == 202, response.text
    results = response.json()["results"]
    assert [r["status"] for r in results] == ["accepted", "rejected"]
    assert results[1]["problems"][0]["field"] == "payload.total_minor"
    assert "Avro long" in results[1]["problems"][0]["message"]


@pytest.mark.parametrize(("content", "headers", "says"), [
    (b'{"event_id": "x", ', {"Content-Type": "application/json"}, "not valid JSON"),
    (b"NaN", {"Content-Type": "application/json"}, "not valid JSON"),
    (b"[" * 100_000, {"Content-Type": "application/json"}, "not valid JSON"),
    (b"\xff\xfe{}", {"Content-Type": "application/json"}, "not UTF-8"),
    (b'"an event?"', {"Content-Type": "application/json"}, "JSON object"),
    (b"[]", {"Content-Type": "application/json"}, "no events"),
    (b"", {"Content-Type": "application/json"}, "not valid JSON"),
    (b'{"a": 1}\n\n{"b": 2\n', NDJSON, "line 3 is not valid JSON"),
    (b"\n \n", NDJSON, "no events"),
], ids=["truncated", "nan", "deep", "not-utf8", "scalar", "empty-array", "empty", "ndjson-line-3", "ndjson-blank"])
async def test_unparsable_body_is_400_with_a_clear_message(
        client: httpx.AsyncClient, content: bytes, headers: dict[str, str], says: str) -> None:
    response = await client.post("/v1/events", content=content, headers=headers)
    assert response.status_code == 400, response.text
    assert says in response.json()["detail"]


async def test_oversize_body_is_413_by_length_and_while_streaming(
        make_client: Callable[..., httpx.AsyncClient]) -> None:
    async with make_client(max_body_bytes=1000) as small:
        body = json.dumps([fresh("web") for _ in range(10)]).encode()
        assert len(body) > 1000
        response = await small.post("/v1/events", content=body, headers={"Content-Type": "application/json"})
        assert response.status_code == 413 and "1000 bytes" in response.json()["detail"]

        async def chunked() -> AsyncIterator[bytes]:  # no Content-Length: only counting catches it
            for _ in range(20):
                yield b" " * 100

        response = await small.post("/v1/events", content=chunked(), headers={"Content-Type": "application/json"})
        assert response.status_code == 413 and "1000 bytes" in response.json()["detail"]


async def test_too_many_events_is_413_with_the_limit(make_client: Callable[..., httpx.AsyncClient]) -> None:
    async with make_client(max_events=2) as small:
        events = [fresh("web") for _ in range(3)]
        response = await small.post("/v1/events", json=events)
        assert response.status_code == 413 and "limit is 2" in response.json()["detail"]
        ndjson = "\n".join(json.dumps(e) for e in events)
        response = await small.post("/v1/events", content=ndjson, headers=NDJSON)
        assert response.status_code == 413 and "limit is 2" in response.json()["detail"]
        assert (await small.post("/v1/events", json=events[:2])).status_code == 202


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded",
                                          "application/json; charset=latin-1"])
async def test_wrong_content_type_is_415(client: httpx.AsyncClient, content_type: str | None) -> None:
    headers = {} if content_type is None else {"Content-Type": content_type}
    response = await client.post("/v1/events", content=json.dumps(fresh("web")), headers=headers)
    assert response.status_code == 415, response.text
    assert response.json()["detail"]


async def test_json_with_charset_is_fine(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/events", content=json.dumps(fresh("web")),
                                 headers={"Content-Type": "application/json; charset=UTF-8"})
    assert response.status_code == 202, response.text


async def test_openapi_documents_the_ingest_route(client: httpx.AsyncClient) -> None:
    doc = (await client.get("/openapi.json")).json()
    post = doc["paths"]["/v1/events"]["post"]
    assert set(post["requestBody"]["content"]) == {"application/json", "application/x-ndjson"}
    assert {"202", "400", "401", "403", "413", "415", "422", "429", "503"} <= set(post["responses"])
    assert "Retry-After" in post["responses"]["503"]["headers"]
    assert "Retry-After" in post["responses"]["429"]["headers"]
    schemas = doc["components"]["schemas"]
    assert {"Event", "PurchaseEvent", "PurchasePayload", "IngestResponse", "UnavailableResponse"} <= set(schemas)
    # Every reference resolves inside the document.
    refs = {ref.rsplit("/", 1)[1] for ref in _refs(doc)}
    assert refs <= set(schemas), refs - set(schemas)


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                yield value
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _refs(value)


async def test_health_and_readiness_need_no_key(make_client: Callable[..., httpx.AsyncClient]) -> None:
    async with make_client(key=None) as anonymous:
        assert (await anonymous.get("/healthz")).json() == {"status": "ok"}
        response = await anonymous.get("/readyz")
        assert response.status_code == 200, response.text
        assert response.json() == {"ready": True, "checks": {"kafka": "ok", "registry": "ok"}}
        assert (await anonymous.get("/openapi.json")).status_code == 200
        assert (await anonymous.get("/v1/stats")).status_code == 200


async def test_kafka_down_is_503_with_retry_after(gateway_settings: Settings) -> None:
    """Kafka on a closed port: EventProducer's constructor raises PublishError; the gateway creates its
    producer lazily, so it starts anyway, answers 503 meanwhile and says which events were fine."""
    down = gateway_settings.model_copy(update={"kafka_bootstrap": "127.0.0.1:1"})
    with pytest.raises(PublishError):
        EventProducer(down, timeout_s=5)
    app = create_gateway(down, retry_after_s=7)
    try:
        async with asgi_client(app) as c:
            good, bad = fresh("web"), fresh("web", channel="fax")
            for _ in range(2):  # the first waits for the connection attempt, the second is shed at once
                response = await c.post("/v1/events", json=[good, bad])
                assert response.status_code == 503, response.text
                assert response.headers["Retry-After"] == "7"
                body = response.json()
                assert "PublishError" in body["detail"] and "127.0.0.1:1" in body["detail"]
                assert (body["accepted"], body["rejected"], body["failed"]) == (0, 1, 1)
                assert [(r["event_id"], r["status"]) for r in body["results"]] == [
                    (good["event_id"], "failed"), (bad["event_id"], "rejected")]
            ready = await c.get("/readyz")
            assert ready.status_code == 503
            checks = ready.json()["checks"]
            assert checks["kafka"] != "ok" and checks["registry"] == "ok" and "PublishError" in checks["producer"]
    finally:
        app.state.gateway.slot.close()


async def test_registry_down_is_503_with_retry_after(gateway_settings: Settings) -> None:
    down = gateway_settings.model_copy(update={"registry_url": "http://127.0.0.1:1/apis/ccompat/v7"})
    app = create_gateway(down)
    try:
        async with asgi_client(app) as c:
            event = fresh("sms")
            response = await c.post("/v1/events", json=event)
            assert response.status_code == 503, response.text
            assert response.headers["Retry-After"] == "5"
            assert "RegistryError" in response.json()["detail"]
            assert response.json()["results"][0]["status"] == "failed"
            ready = await c.get("/readyz")
            assert ready.status_code == 503 and ready.json()["checks"]["registry"] != "ok"
    finally:
        app.state.gateway.slot.close()


async def test_async_producer_on_the_serving_loop(gateway_settings: Settings) -> None:
    producer = await AsyncEventProducer.start(gateway_settings)
    try:
        app = create_gateway(gateway_settings, producer)
        async with asgi_client(app) as c:
            huge = fresh("purchase")
            huge["payload"]["total_minor"] = 10**20
            response = await c.post("/v1/events", json=[fresh("web"), huge, fresh("sms", identifiers={})])
    finally:
        await producer.close()
    assert response.status_code == 202, response.text
    assert [r["status"] for r in response.json()["results"]] == ["accepted", "rejected", "rejected"]


class _HalfAcknowledged(EventProducer):
    """The real producer, except Kafka 'loses' the acknowledgement of every second delivered event."""

    def publish(self, docs: Any, now: datetime) -> list[Result]:
        results = super().publish(docs, now)
        return [Failed(r.event_id, "not acknowledged by Kafka: timed out") if isinstance(r, Delivered) and i % 2
                else r for i, r in enumerate(results)]


async def test_unacknowledged_events_make_a_503_listing_them(
        gateway_settings: Settings, make_client: Callable[..., httpx.AsyncClient]) -> None:
    with _HalfAcknowledged(gateway_settings) as flaky:
        async with make_client(create_gateway(gateway_settings, flaky)) as c:
            events = [fresh("web"), fresh("web"), fresh("web", identifiers={})]
            response = await c.post("/v1/events", json=events)
    assert response.status_code == 503 and response.headers["Retry-After"] == "5"
    body = response.json()
    assert (body["accepted"], body["rejected"], body["failed"]) == (1, 1, 1)
    assert [r["status"] for r in body["results"]] == ["accepted", "failed", "rejected"]


# --- who may post: keys, scope, counters, rate and size per source ---------------------------------


async def stats_of(client: httpx.AsyncClient) -> dict[str, Any]:
    response = await client.get("/v1/stats")
    assert response.status_code == 200, response.text
    doc: dict[str, Any] = response.json()
    return doc


@pytest.mark.parametrize(("headers", "reason", "counted"), [
    ({}, "no API key given", "no_key"),
    ({"Authorization": "Bearer not-a-key"}, "the API key is not valid", "invalid_key"),
    ({"X-API-Key": "not-a-key"}, "the API key is not valid", "invalid_key"),
    ({"Authorization": f"Basic {ALL_KEY}"}, "no API key given", "no_key"),
    # A lookup API key is a different store's: unknown here.
    ({"Authorization": "Bearer agent-key-0123456789abcdef"}, "the API key is not valid", "invalid_key"),
], ids=["none", "wrong-bearer", "wrong-x-api-key", "basic-scheme", "lookup-key"])
async def test_without_a_valid_key_401_counted_and_nothing_published(
        gateway_settings: Settings, producer: EventProducer, headers: dict[str, str], reason: str,
        counted: str) -> None:
    with_lookup_keys = gateway_settings.model_copy(
        update={"api_keys": {digest("agent-key-0123456789abcdef"): {"name": "alice", "role": "agent"}}})
    app = create_gateway(with_lookup_keys, producer)
    async with asgi_client(app, key=None) as c:
        event = fresh("web")
        response = await c.post("/v1/events", json=event, headers=headers)
        assert response.status_code == 401, response.text
        detail = response.json()["detail"]
        assert detail.startswith(reason) and "Authorization: Bearer <key>" in detail
        assert response.headers["www-authenticate"] == "Bearer"
        assert "not-a-key" not in response.text and ALL_KEY not in response.text  # keys are never echoed
        refusals = (await stats_of(c))["refusals"]
        assert refusals[counted] == 1 and sum(refusals.values()) == 1
        # The same request with a good key goes through: it was the key, not the event.
        assert (await c.post("/v1/events", json=event, headers=ALL)).status_code == 202


async def test_no_keys_configured_refuses_every_post_and_says_how_to_configure(
        settings: Settings, producer: EventProducer) -> None:
    assert not settings.gateway_keys and settings.gateway_keys_file is None
    async with asgi_client(create_gateway(settings, producer)) as c:
        response = await c.post("/v1/events", json=fresh("web"))
        assert response.status_code == 401, response.text
        detail = response.json()["detail"]
        assert "no keys configured" in detail and "TOUCHPOINT_GATEWAY_KEYS" in detail
        assert "python -m connectors.frontline.access new-key" in detail
        assert (await stats_of(c))["refusals"]["no_keys_configured"] == 1
        assert (await c.get("/healthz")).status_code == 200


async def test_key_of_another_channel_is_403_with_the_reason_and_counted(
        make_client: Callable[..., httpx.AsyncClient]) -> None:
    async with make_client(key=SMS_KEY) as sms:
        purchase = fresh("purchase")
        response = await sms.post("/v1/events", json=purchase)
        assert response.status_code == 403, response.text
        body = response.json()
        assert "sms-provider may not publish" in body["detail"]
        assert (body["accepted"], body["rejected"]) == (0, 1)
        assert body["results"] == [{
            "index": 0, "event_id": purchase["event_id"], "status": "rejected",
            "problems": [{"field": "channel", "message": "source sms-provider may not publish on channel 'branch' "
                                                         "(its key allows: sms)"}]}]
        stats = await stats_of(sms)
        assert stats["refusals"]["out_of_scope"] == 1
        assert stats["sources"]["sms-provider"] == {"requests": 1, "accepted": 0, "rejected": 0, "out_of_scope": 1,
                                                    "rate_limited": 0, "too_large": 0}
        # Its own channel goes through.
        assert (await sms.post("/v1/events", json=fresh("sms"))).status_code == 202


async def test_type_outside_the_key_is_refused_even_on_an_allowed_channel(
        make_client: Callable[..., httpx.AsyncClient]) -> None:
    async with make_client(key=WEB_KEY) as web:
        consent = fresh("consent")  # channel web, type consent: the channel is allowed, the type is not
        assert consent["channel"] == "web"
        response = await web.post("/v1/events", json=consent)
        assert response.status_code == 403, response.text
        [result] = response.json()["results"]
        assert result["problems"] == [{"field": "type", "message": "source web-analytics may not publish events of "
                                                                   "type 'consent' (its key allows: web)"}]


async def test_mixed_request_publishes_the_allowed_and_lists_the_others_as_rejected(
        settings: Settings, make_client: Callable[..., httpx.AsyncClient]) -> None:
    broken = fresh("sms", identifiers={})
    events = [fresh("sms"), fresh("purchase"), broken, fresh("web"), fresh("sms")]
    async with make_client(key=SMS_KEY) as sms:
        response = await sms.post("/v1/events", json=events)
        assert response.status_code == 202, response.text
        body = response.json()
        assert (body["accepted"], body["rejected"]) == (2, 3)
        results = body["results"]
        assert [r["index"] for r in results] == [0, 1, 2, 3, 4]
        assert [r["event_id"] for r in results] == [e["event_id"] for e in events]
        assert [r["status"] for r in results] == ["accepted", "rejected", "rejected", "rejected", "accepted"]
        assert [p["field"] for p in results[1]["problems"]] == ["channel"]
        assert "may not publish on channel 'branch'" in results[1]["problems"][0]["message"]
        assert [p["field"] for p in results[2]["problems"]] == ["identifiers"]  # the contract's refusal
        assert "channel 'web'" in results[3]["problems"][0]["message"]
        assert {r["topic"] for r in results if r["status"] == "accepted"} == {event_topic(settings, "sms")}
        counts = (await stats_of(sms))["sources"]["sms-provider"]
        assert (counts["accepted"], counts["rejected"], counts["out_of_scope"]) == (2, 1, 2)
        # In scope but all broken: the contract's 422, not a 403.
        assert (await sms.post("/v1/events", json=[broken])).status_code == 422


async def test_revoked_key_is_401_without_a_restart(
        gateway_settings: Settings, producer: EventProducer, tmp_path: Any) -> None:
    keys_file = tmp_path / "gateway-keys.json"
    entry = {"name": "email-provider", "channels": ["email"], "types": ["email"]}
    keys_file.write_text(json.dumps({digest("first-key"): entry}))
    settings = gateway_settings.model_copy(update={"gateway_keys": {}, "gateway_keys_file": keys_file})
    async with asgi_client(create_gateway(settings, producer), key=None) as c:
        first, second = {"X-API-Key": "first-key"}, {"X-API-Key": "second-key"}
        assert (await c.post("/v1/events", json=fresh("email"), headers=first)).status_code == 202
        assert (await c.post("/v1/events", json=fresh("email"), headers=second)).status_code == 401
        # Rotate: the second key replaces the first (a new file moved into place, as deploy tools do).
        staged = tmp_path / "gateway-keys.json.new"
        staged.write_text(json.dumps({digest("second-key"): entry}))
        staged.replace(keys_file)
        revoked = await c.post("/v1/events", json=fresh("email"), headers=first)
        assert revoked.status_code == 401 and "unknown or revoked" in revoked.json()["detail"]
        assert (await c.post("/v1/events", json=fresh("email"), headers=second)).status_code == 202
        # A broken file keeps the last valid keys rather than locking every source out.
        keys_file.write_text("{not json")
        assert (await c.post("/v1/events", json=fresh("email"), headers=second)).status_code == 202
        stats = await stats_of(c)
        assert stats["refusals"]["invalid_key"] == 2
        assert stats["sources"]["email-provider"]["accepted"] == 3


async def test_rate_limit_is_429_with_retry_after_until_a_token_is_back(
        gateway_settings: Settings, producer: EventProducer) -> None:
    now = [1000.0]
    app = create_gateway(gateway_settings, producer, clock=lambda: now[0])
    async with asgi_client(app, key=SLOW_KEY) as slow, asgi_client(app) as other:
        # Burst of 2, then empty: the third request waits for half a second's rate to earn a token (2 s).
        assert [(await slow.post("/v1/events", json=fresh("web"))).status_code for _ in range(2)] == [202, 202]
        limited = await slow.post("/v1/events", json=fresh("web"))
        assert limited.status_code == 429, limited.text
        assert limited.headers["Retry-After"] == "2"
        assert "slow is over its rate of 0.5 requests per second" in limited.json()["detail"]
        # Another source has a bucket of its own.
        assert (await other.post("/v1/events", json=fresh("web"))).status_code == 202
        now[0] += 1.0  # half a token: still limited, and told to wait the remaining second
        limited = await slow.post("/v1/events", json=fresh("web"))
        assert limited.status_code == 429 and limited.headers["Retry-After"] == "1"
        now[0] += 1.0
        assert (await slow.post("/v1/events", json=fresh("web"))).status_code == 202
        stats = await stats_of(slow)
        assert stats["refusals"]["rate_limited"] == 2
        assert stats["sources"]["slow"]["rate_limited"] == 2 and stats["sources"]["slow"]["accepted"] == 3
        assert stats["sources"]["everything"]["rate_limited"] == 0


async def test_default_rate_applies_to_a_key_without_one(
        gateway_settings: Settings, producer: EventProducer) -> None:
    now = [0.0]
    slow_default = gateway_settings.model_copy(update={"gateway_rate_per_s": 1.0})
    app = create_gateway(slow_default, producer, clock=lambda: now[0])
    async with asgi_client(app) as c:
        statuses = [(await c.post("/v1/events", json=fresh("web"))).status_code for _ in range(3)]
        assert statuses == [202, 202, 429]  # burst: two seconds' worth of 1 request per second


async def test_body_limit_per_source(make_client: Callable[..., httpx.AsyncClient]) -> None:
    event = fresh("web")
    body = json.dumps([event, fresh("web"), fresh("web")]).encode()
    assert 600 < len(body) < 1_048_576
    async with make_client(key=SMALL_KEY) as small:
        response = await small.post("/v1/events", content=body, headers={"Content-Type": "application/json"})
        assert response.status_code == 413 and "600 bytes" in response.json()["detail"]
        assert (await small.post("/v1/events", json=event)).status_code == 202
        stats = await stats_of(small)
        assert stats["refusals"]["too_large"] == 1 and stats["sources"]["small"]["too_large"] == 1
        # The gateway-wide limit still applies to the others.
        assert (await small.post("/v1/events", content=body, headers={**ALL, "Content-Type": "application/json"})
                ).status_code == 202


@pytest.mark.parametrize(("entry", "says"), [
    ({"name": "x", "channels": ["smss"], "types": ["sms"]}, "unknown channels 'smss'"),
    ({"name": "x", "channels": ["sms"], "types": []}, "needs 'types'"),
    ({"name": "x", "channels": ["sms"]}, "needs 'types'"),
    ({"name": "x", "channels": ["sms", "*"], "types": ["*"]}, "give one or the other"),
    ({"name": "x", "channels": ["*"], "types": ["*"], "rate_per_s": 0}, "rate_per_s must be a positive number"),
    ({"name": "x", "channels": ["*"], "types": ["*"], "role": "agent"}, "unknown fields role"),
    ({"name": "x", "types": ["*"]}, "needs 'channels'"),
])
def test_invalid_gateway_keys_fail_at_startup(gateway_settings: Settings, entry: dict[str, Any], says: str) -> None:
    with pytest.raises(ConfigError, match="TOUCHPOINT_GATEWAY_KEYS") as caught:
        create_gateway(gateway_settings.model_copy(update={"gateway_keys": {digest("k"): entry}}))
    assert says in str(caught.value)
