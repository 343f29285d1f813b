"""The HTTP ingest gateway against the real broker and registry, through its ASGI app."""

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

from connectors.gateway import create_gateway
from connectors.producer import AsyncEventProducer, Delivered, EventProducer, Failed, Result
from connectors.registry import RegistryClient
from connectors.serde import EventSerde
from connectors.topics import event_topic
from tests.unit.contract_samples import sample
from touchpoint.errors import PublishError
from touchpoint.settings import Settings

pytestmark = pytest.mark.integration
NDJSON = {"Content-Type": "application/x-ndjson"}


def fresh(event_type: str, **changes: Any) -> dict[str, Any]:
    """A valid sample with a unique event id (reruns and other tests never collide)."""
    event = sample(event_type)
    event["event_id"] = f"{event['event_id']}-{uuid.uuid4().hex[:8]}"
    event.update(changes)
    return event


@pytest.fixture(scope="module")
def producer(settings: Settings) -> Iterator[EventProducer]:
    with EventProducer(settings) as real:
        yield real


@pytest.fixture
def make_client(settings: Settings, producer: EventProducer) -> Iterator[Callable[..., httpx.AsyncClient]]:
    """Clients of gateways built with the real producer and the given options."""
    clients: list[httpx.AsyncClient] = []

    def make(app: FastAPI | None = None, **options: Any) -> httpx.AsyncClient:
        app = app or create_gateway(settings, producer, **options)
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway")
        clients.append(client)
        return client

    yield make


@pytest.fixture
async def client(make_client: Callable[..., httpx.AsyncClient]) -> AsyncIterator[httpx.AsyncClient]:
    async with make_client() as c:
        yield c


def read_back(settings: Settings, topic: str, partition: int, offset: int) -> tuple[bytes | None, str]:
    """The message at (topic, partition, offset) and its decoded event id."""
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
    return message.key, event.event_id


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
    key, event_id = read_back(settings, result["topic"], result["partition"], result["offset"])
    assert event_id == event["event_id"]
    assert key is not None and b"+44" not in key  # keyed hash, never the clear phone number


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
    assert {"202", "400", "413", "415", "422", "503"} <= set(post["responses"])
    assert "Retry-After" in post["responses"]["503"]["headers"]
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


async def test_health_and_readiness(client: httpx.AsyncClient) -> None:
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    response = await client.get("/readyz")
    assert response.status_code == 200, response.text
    assert response.json() == {"ready": True, "checks": {"kafka": "ok", "registry": "ok"}}


async def test_kafka_down_is_503_with_retry_after(settings: Settings) -> None:
    """Kafka on a closed port: EventProducer's constructor raises PublishError; the gateway creates its
    producer lazily, so it starts anyway, answers 503 meanwhile and says which events were fine."""
    down = settings.model_copy(update={"kafka_bootstrap": "127.0.0.1:1"})
    with pytest.raises(PublishError):
        EventProducer(down, timeout_s=5)
    app = create_gateway(down, retry_after_s=7)
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway") as c:
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


async def test_registry_down_is_503_with_retry_after(settings: Settings) -> None:
    down = settings.model_copy(update={"registry_url": "http://127.0.0.1:1/apis/ccompat/v7"})
    app = create_gateway(down)
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway") as c:
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


async def test_async_producer_on_the_serving_loop(settings: Settings) -> None:
    producer = await AsyncEventProducer.start(settings)
    try:
        app = create_gateway(settings, producer)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway") as c:
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
        settings: Settings, make_client: Callable[..., httpx.AsyncClient]) -> None:
    with _HalfAcknowledged(settings) as flaky:
        async with make_client(create_gateway(settings, flaky)) as c:
            events = [fresh("web"), fresh("web"), fresh("web", identifiers={})]
            response = await c.post("/v1/events", json=events)
    assert response.status_code == 503 and response.headers["Retry-After"] == "5"
    body = response.json()
    assert (body["accepted"], body["rejected"], body["failed"]) == (1, 1, 1)
    assert [r["status"] for r in body["results"]] == ["accepted", "failed", "rejected"]
