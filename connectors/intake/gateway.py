"""The HTTP ingest gateway: events in over HTTP for systems that cannot speak Kafka.

Web, SMS and e-mail providers post webhooks and the CTI posts call events to
``POST /v1/events``; the gateway hands them to :class:`EventProducer`, which
checks them against the contract and publishes them to their channel topics.
The answer tells the caller, per event, what became of it.

Who may post (:mod:`connectors.frontline.access`). Every ``POST /v1/events`` carries a
key, as ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``. A key belongs
to a *source system* (``TOUCHPOINT_GATEWAY_KEYS`` or the re-read
``TOUCHPOINT_GATEWAY_KEYS_FILE``: sha256 digests only, rotated and revoked
without a restart) and is scoped to channels and event types: the SMS
provider's key cannot publish purchases. No key, an unknown or a revoked one
is ``401`` with the reason; with no key configured at all every post is
``401`` saying how to configure one (secure by default). The lookup API's
keys are a separate store and are unknown here. ``/healthz``, ``/readyz``,
``/v1/stats`` and the OpenAPI document stay open.

Scope, per event. The channel and type of each event are checked against the
key before anything is published; an event outside the scope is *rejected*
with its reason (field ``channel`` or ``type``), like an event that breaks
the contract, so nothing is silently dropped. The rest of the request goes
on as usual (``202`` if any was accepted). When *no* event of the request is
within the key's scope, the answer is ``403`` (same per-event body): the key
is the problem, not the data. Values that are not strings are left to the
contract check.

Rate and size, per source. Each source has a token bucket of requests
(``rate_per_s`` from its key entry, else ``TOUCHPOINT_GATEWAY_RATE_PER_S``;
``burst`` requests at once, else two seconds' worth): a request finding it
empty is ``429`` with ``Retry-After`` (whole seconds until a token is back).
The bucket is per gateway process: N gateways behind a balancer let a source
through at up to N times its rate. An entry's ``max_body_bytes`` replaces the
gateway's body limit for that source. Keys, then the rate, are checked before
the body is read, so a refused caller costs no parsing.

Counted. Every refusal (401 by reason, 429, 413, and events out of scope) is
counted per process, in total and per source, and ``GET /v1/stats`` shows the
counts (names of sources and numbers only, no key, no body).

Body. One event (a JSON object), a JSON array of events, or NDJSON
(``application/x-ndjson``: one event per line, blank lines ignored). The body
is parsed here rather than by FastAPI, because the three forms share one
route and a bad event must be *reported*, not fail the whole request: a
request that is not JSON is the caller's bug (400), an event that breaks the
contract is data (rejected, with every ``(field, message)`` problem).

Status codes. ``202`` once Kafka has acknowledged every accepted event (at
least one accepted; rejected ones are listed with their problems); ``422``
when every event was rejected (same body); ``401`` no valid key; ``403``
no event within the key's scope; ``429`` with ``Retry-After`` over the
source's rate; ``400`` unparsable body, naming
the line; ``413`` body over ``max_body_bytes`` (checked on Content-Length
up front *and* while reading, so a chunked upload cannot get round it) or
more than ``max_events``; ``415`` a content type other than JSON/NDJSON (or a
charset other than UTF-8); ``503`` with ``Retry-After`` when Kafka or the
registry did not answer: the per-event results say which events did reach
Kafka, and the caller retries the batch as it is, since the event id is the
idempotency key downstream.

Time. ``now`` for the contract's "not too far in the future" check is the
request's arrival instant: at the edge, the wall clock *is* the arrival time.

Threads. ``EventProducer.publish`` blocks until Kafka acknowledges, so it
runs in the thread pool; the event loop only parses and answers (contract
checks and Avro encoding run on the producer's own thread, so a batch of a
thousand events never stalls other requests). An :class:`AsyncEventProducer`
started on the serving loop may be passed instead: it is awaited directly,
which saves the thread hops but checks and encodes on the serving loop.

Producer. Given one, the gateway uses it and the caller owns it. Otherwise
the gateway creates its own :class:`EventProducer` lazily, in a daemon
thread, because the constructor blocks while it bootstraps and raises
:class:`PublishError` (Kafka down) or :class:`RegistryError` (registry
down): the gateway must start and answer (``503``, readiness ``503``) while
they are away, and connect once they are back. A request waits a little for
the *first* attempt (so a gateway that just started does not refuse its first
request); after a failure, requests are answered ``503`` at once while a new
attempt runs in the background.

Privacy. Bodies carry clear identifiers (DESIGN.md §6): nothing of a body is
logged, only counts, statuses and event ids.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import httpx
from aiokafka.client import AIOKafkaClient
from aiokafka.errors import KafkaError
from fastapi import FastAPI, Request
from fastapi.openapi.utils import get_openapi
from opentelemetry import propagate, trace
from pydantic import BaseModel, Field, TypeAdapter
from starlette.concurrency import run_in_threadpool

from connectors.frontline.access import Source, SourceKeys, presented_key
from connectors.frontline.http import SafeJSONResponse, safe_json_app
from connectors.intake.producer import AsyncEventProducer, Delivered, EventProducer, Failed, Refused, Result
from touchpoint.contract.models import AnyEvent, ContractViolation, validate_event
from touchpoint.errors import TouchpointError
from touchpoint.kafka_security import aiokafka_options
from touchpoint.settings import Settings
from touchpoint.telemetry import count_events, tracer
from touchpoint.telemetry_attrs import HTTP_ROUTE

log = logging.getLogger(__name__)
_TRACER = tracer(__name__)
Publisher = EventProducer | AsyncEventProducer

JSON_TYPES = frozenset({"application/json"})
NDJSON_TYPES = frozenset({"application/x-ndjson", "application/ndjson", "application/jsonl"})


# --- response models (the OpenAPI document; answers are built as plain dicts) ---

class Problem(BaseModel):
    field: str = Field(description="Dotted path of the offending field, e.g. `payload.lines.0.amount_minor`; "
                                   "`(event)` when the event as a whole is wrong.")
    message: str


class AcceptedResult(BaseModel):
    index: int = Field(description="0-based position of the event in the request (blank NDJSON lines not counted).")
    event_id: str
    status: Literal["accepted"]
    topic: str
    partition: int
    offset: int


class RejectedResult(BaseModel):
    index: int
    event_id: str | None = Field(description="The event's id when it had a usable one.")
    status: Literal["rejected"]
    problems: list[Problem]


class FailedResult(BaseModel):
    index: int
    event_id: str
    status: Literal["failed"]
    reason: str = Field(description="Why Kafka did not acknowledge it; retry the event unchanged.")


EventResult = Annotated[AcceptedResult | RejectedResult | FailedResult, Field(discriminator="status")]


class IngestResponse(BaseModel):
    """Per-event outcome of a request (202: at least one accepted; 422: all rejected)."""

    accepted: int
    rejected: int
    results: list[EventResult]


class UnavailableResponse(BaseModel):
    """Kafka or the registry did not answer: retry after ``Retry-After`` seconds, with the same event ids."""

    detail: str
    accepted: int
    rejected: int
    failed: int
    results: list[EventResult]


class ForbiddenResponse(BaseModel):
    """No event of the request is within the key's scope; each result says which channel or type is not."""

    detail: str
    accepted: int
    rejected: int
    results: list[EventResult]


class ErrorResponse(BaseModel):
    detail: str


class SourceStats(BaseModel):
    requests: int = Field(description="Requests authenticated with this source's keys.")
    accepted: int = Field(description="Events acknowledged by Kafka.")
    rejected: int = Field(description="Events refused by the contract.")
    out_of_scope: int = Field(description="Events refused because the key may not publish their channel or type.")
    rate_limited: int = Field(description="Requests answered 429.")
    too_large: int = Field(description="Requests answered 413.")


class StatsResponse(BaseModel):
    """Refusals counted by this gateway process since it started (not shared between processes)."""

    since: str
    refusals: dict[str, int] = Field(description="Reason -> count: `no_key`, `invalid_key`, `no_keys_configured`, "
                                                 "`rate_limited`, `too_large` count requests; `out_of_scope` "
                                                 "counts events.")
    sources: dict[str, SourceStats] = Field(description="Per source system (the keys' `name`).")


class ReadinessResponse(BaseModel):
    ready: bool
    checks: dict[str, str] = Field(description="Dependency -> `ok` or what went wrong.")


class HealthResponse(BaseModel):
    status: Literal["ok"]


# --- the gateway's own producer, created without blocking anyone ---

class _ProducerSlot:
    """Holds the producer, creating it in a daemon thread when there is none (see the module docstring)."""

    def __init__(self, factory: Callable[[], EventProducer], given: Publisher | None, first_wait_s: float) -> None:
        self._factory = factory
        self._producer: Publisher | None = given
        self._owned = given is None
        self._first_wait_s = first_wait_s
        self._lock = threading.Lock()
        self._attempt: threading.Thread | None = None
        self._failures = 0
        self._closed = False
        self.last_error = ""

    @property
    def producer(self) -> Publisher | None:
        return self._producer

    def start(self) -> None:
        """Begin a creation attempt unless there is a producer or an attempt under way."""
        with self._lock:
            if self._producer is not None or self._closed or (self._attempt and self._attempt.is_alive()):
                return
            self._attempt = threading.Thread(target=self._create, name="gateway-producer", daemon=True)
            self._attempt.start()

    def _create(self) -> None:
        try:
            producer = self._factory()
        except Exception as exc:  # noqa: BLE001 - any failure means "not connected yet"; the next request retries
            with self._lock:
                self._failures += 1
                self.last_error = f"{type(exc).__name__}: {exc}"
            log.warning("gateway: cannot create the producer",
                        extra={"error": type(exc).__name__, "failures": self._failures})
            return
        with self._lock:
            if not self._closed:
                self._producer, producer = producer, None  # type: ignore[assignment]
                self.last_error = ""
        if producer is not None:  # closed while connecting
            producer.close()
        else:
            log.info("gateway: Kafka producer connected")

    async def get(self) -> Publisher | None:
        """The producer, or None when Kafka cannot be reached (yet)."""
        if self._producer is not None:
            return self._producer
        self.start()
        if self._failures:
            return None  # Kafka was away last time: shed load at once, the attempt goes on in the background.
        deadline = time.monotonic() + self._first_wait_s
        while self._producer is None and time.monotonic() < deadline:
            attempt = self._attempt
            if attempt is None or not attempt.is_alive():
                break
            await asyncio.sleep(0.02)
        return self._producer

    def close(self) -> None:
        """Close the producer if the gateway created it."""
        with self._lock:
            self._closed = True
            producer, self._producer = (self._producer, None) if self._owned else (None, self._producer)
        if isinstance(producer, EventProducer):  # the gateway only ever creates the synchronous face
            producer.close()


# --- who may post, how often: keys, token buckets, counters ---

REFUSALS = ("no_key", "invalid_key", "no_keys_configured", "rate_limited", "too_large", "out_of_scope")
SOURCE_COUNTS = ("requests", "accepted", "rejected", "out_of_scope", "rate_limited", "too_large")


class RateLimiter:
    """One token bucket of requests per source name (so a rotated key and its successor share one).

    In-process state: each gateway process limits on its own. ``clock`` is monotonic seconds, passed in so
    tests can move time.
    """

    def __init__(self, default_rate_per_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._default_rate = default_rate_per_s
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # name -> (tokens, when counted)

    def rate(self, source: Source) -> float:
        """The requests per second ``source`` is allowed."""
        return source.rate_per_s or self._default_rate

    def take(self, source: Source) -> float:
        """Take a token for one request of ``source``: 0 when it may go, else the seconds until it could."""
        rate = self.rate(source)
        burst = source.burst or max(1, math.ceil(2 * rate))
        now = self._clock()
        tokens, then = self._buckets.get(source.name, (float(burst), now))
        tokens = min(float(burst), tokens + max(0.0, now - then) * rate)
        if tokens >= 1:
            self._buckets[source.name] = (tokens - 1, now)
            return 0.0
        self._buckets[source.name] = (tokens, now)
        return (1 - tokens) / rate


@dataclass
class GatewayStats:
    """Refusals and outcomes counted by this process (``GET /v1/stats``)."""

    since: datetime = field(default_factory=lambda: datetime.now(UTC))
    refusals: Counter[str] = field(default_factory=Counter)
    sources: dict[str, Counter[str]] = field(default_factory=dict)

    def count(self, source: str | None, what: str, n: int = 1) -> None:
        """Add ``n`` to ``what`` for ``source`` (None: nobody known), and to the refusal totals if it is one."""
        if what in REFUSALS:
            self.refusals[what] += n
        if source is not None:
            self.sources.setdefault(source, Counter())[what] += n

    def doc(self) -> dict[str, Any]:
        return {"since": self.since.isoformat().replace("+00:00", "Z"),
                "refusals": {r: self.refusals[r] for r in REFUSALS},
                "sources": {name: {c: counts[c] for c in SOURCE_COUNTS}
                            for name, counts in sorted(self.sources.items())}}


class Refusal(Exception):
    """The request is refused before its body is read: status, reason for the caller, headers."""

    def __init__(self, status: int, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.headers = headers or {}


_HOW = "send Authorization: Bearer <key> or X-API-Key: <key>"


def _authenticate(keys: SourceKeys, request: Request, stats: GatewayStats) -> Source:
    """The source a request's key belongs to; :class:`Refusal` (401, counted) without a valid key."""
    presented = presented_key(request.headers)
    source = keys.source(presented) if presented else None
    if source is not None:
        return source
    if not len(keys):
        reason, detail = "no_keys_configured", (
            "the gateway has no keys configured, so it refuses every post: configure source keys in "
            "TOUCHPOINT_GATEWAY_KEYS or TOUCHPOINT_GATEWAY_KEYS_FILE (python -m connectors.frontline.access new-key "
            "--name NAME --channels ... --types ... prints a key and its entry)")
    elif not presented:
        reason, detail = "no_key", f"no API key given: {_HOW}"
    else:
        reason, detail = "invalid_key", f"the API key is not valid (unknown or revoked): {_HOW}"
    stats.count(None, reason)
    log.info("gateway: request refused", extra={"status": 401, "reason": reason})
    raise Refusal(401, detail, {"WWW-Authenticate": "Bearer"})


def _out_of_scope(source: Source, doc: Any) -> tuple[str, str] | None:
    """``(field, reason)`` when the event's channel or type is outside the key's scope."""
    return source.refusal(doc.get("channel"), doc.get("type")) if isinstance(doc, dict) else None


# --- parsing ---

class BadRequest(Exception):
    """The request cannot be taken as events; carries the status code and a message for the caller."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not valid JSON")


def _loads(text: str) -> Any:
    return json.loads(text, parse_constant=_reject_constant)


def _media_type(request: Request) -> str:
    raw = request.headers.get("content-type", "")
    media, *params = (part.strip() for part in raw.split(";"))
    media = media.lower()
    if media not in JSON_TYPES | NDJSON_TYPES:
        accepted = ", ".join(sorted(JSON_TYPES | NDJSON_TYPES))
        raise BadRequest(415, f"unsupported content type {media or '(none)'!r}; send one of {accepted}")
    for param in params:
        key, _, value = param.partition("=")
        if key.strip().lower() == "charset" and value.strip().strip('"').lower() not in ("utf-8", "utf8"):
            raise BadRequest(415, "unsupported charset; events must be UTF-8")
    return media


async def _read_body(request: Request, limit: int) -> bytes:
    length = request.headers.get("content-length")
    if length is not None:
        if not length.strip().isdigit():
            raise BadRequest(400, "Content-Length is not a number")
        if int(length) > limit:
            raise BadRequest(413, f"body is {int(length)} bytes; the limit is {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:  # counted while reading: a chunked upload has no Content-Length to trust
            raise BadRequest(413, f"body is over the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _parse(body: bytes, media: str, max_events: int) -> list[Any]:
    too_many = f"too many events: the limit is {max_events} per request"
    if media in NDJSON_TYPES:
        docs: list[Any] = []
        for number, raw in enumerate(body.split(b"\n"), start=1):
            line = raw.strip()
            if not line:
                continue
            if len(docs) == max_events:
                raise BadRequest(413, too_many)
            try:
                docs.append(_loads(line.decode("utf-8-sig" if number == 1 else "utf-8")))
            except UnicodeDecodeError as exc:
                raise BadRequest(400, f"line {number} is not UTF-8 (byte {exc.start})") from exc
            except json.JSONDecodeError as exc:
                raise BadRequest(400, f"line {number} is not valid JSON: {exc.msg} at column {exc.colno}") from exc
            except (ValueError, RecursionError) as exc:
                raise BadRequest(400, f"line {number} is not valid JSON: {exc}") from exc
        if not docs:
            raise BadRequest(400, "the body holds no events")
        return docs
    try:
        doc = _loads(body.decode("utf-8-sig"))
    except UnicodeDecodeError as exc:
        raise BadRequest(400, f"body is not UTF-8 (byte {exc.start})") from exc
    except json.JSONDecodeError as exc:
        raise BadRequest(400, f"body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from exc
    except (ValueError, RecursionError) as exc:
        raise BadRequest(400, f"body is not valid JSON: {exc}") from exc
    if isinstance(doc, dict):
        return [doc]
    if not isinstance(doc, list):
        raise BadRequest(400, "body must be a JSON object (one event) or an array of event objects")
    if not doc:
        raise BadRequest(400, "the body holds no events")
    if len(doc) > max_events:
        raise BadRequest(413, too_many)
    return doc


# --- publishing and answering ---

def _unsent(docs: list[Any], now: datetime, reason: str) -> list[Result]:
    """Results for a batch that could not be sent: rejected ones say why, the valid ones are Failed."""
    results: list[Result] = []
    for doc in docs:
        try:
            event = validate_event(doc, now)
        except ContractViolation as exc:
            event_id = doc.get("event_id") if isinstance(doc, dict) else None
            results.append(Refused(event_id if isinstance(event_id, str) else None, exc.problems))
            continue
        results.append(Failed(event.event_id, reason))
    return results


def _forbidden(doc: dict[str, Any], why: tuple[str, str]) -> Refused:
    """The result of an event outside the key's scope."""
    event_id = doc.get("event_id")
    return Refused(event_id if isinstance(event_id, str) else None, [why])


def _merge(docs: list[Any], forbidden: dict[int, tuple[str, str]], published: list[Result]) -> list[Result]:
    """Every event's result in request order: the refused ones from ``forbidden``, the others in turn."""
    rest = iter(published)
    return [_forbidden(doc, forbidden[i]) if i in forbidden else next(rest) for i, doc in enumerate(docs)]


def _result_doc(index: int, result: Result) -> dict[str, Any]:
    match result:
        case Delivered(event_id, topic, partition, offset):
            return {"index": index, "event_id": event_id, "status": "accepted", "topic": topic,
                    "partition": partition, "offset": offset}
        case Refused(event_id, problems):
            return {"index": index, "event_id": event_id, "status": "rejected",
                    "problems": [{"field": f, "message": m} for f, m in problems]}
        case Failed(event_id, reason):
            return {"index": index, "event_id": event_id, "status": "failed", "reason": reason}
    raise TypeError(f"unknown result {result!r}")


@dataclass
class _Gateway:
    slot: _ProducerSlot
    settings: Settings
    max_body_bytes: int
    max_events: int
    retry_after_s: int
    keys: SourceKeys
    limiter: RateLimiter
    stats: GatewayStats

    def _admit(self, request: Request) -> Source:
        """The request's source, if its key is valid and its bucket has a token; else :class:`Refusal`."""
        source = _authenticate(self.keys, request, self.stats)
        self.stats.count(source.name, "requests")
        wait = self.limiter.take(source)
        if wait > 0:
            retry_after = max(1, math.ceil(wait))
            self.stats.count(source.name, "rate_limited")
            log.info("gateway: request refused",
                     extra={"status": 429, "reason": "rate_limited", "source": source.name})
            detail = (f"source {source.name} is over its rate of {self.limiter.rate(source):g} requests per second; "
                      f"retry after {retry_after} s")
            raise Refusal(429, detail, {"Retry-After": str(retry_after)})
        return source

    async def ingest(self, request: Request) -> SafeJSONResponse:
        now = datetime.now(UTC)  # arrival time: the reference for "too far in the future"
        try:
            source = self._admit(request)
        except Refusal as exc:
            return SafeJSONResponse({"detail": exc.detail}, status_code=exc.status, headers=exc.headers)
        try:
            media = _media_type(request)
            body = await _read_body(request, source.max_body_bytes or self.max_body_bytes)
            docs = _parse(body, media, self.max_events)
        except BadRequest as exc:
            if exc.status == 413:
                self.stats.count(source.name, "too_large")
            log.info("gateway: request refused", extra={"status": exc.status, "source": source.name})
            return SafeJSONResponse({"detail": exc.detail}, status_code=exc.status)

        # Scope first: an event the key may not publish never reaches the producer.
        forbidden = {i: why for i, doc in enumerate(docs) if (why := _out_of_scope(source, doc)) is not None}
        allowed = [doc for i, doc in enumerate(docs) if i not in forbidden]
        if forbidden:
            self.stats.count(source.name, "out_of_scope", len(forbidden))
        if not allowed:
            log.info("gateway: request refused",
                     extra={"status": 403, "reason": "out_of_scope", "source": source.name, "events": len(docs)})
            results: list[Result] = [_forbidden(docs[i], why) for i, why in forbidden.items()]
            return SafeJSONResponse({"detail": f"source {source.name} may not publish any of these events "
                                           "(see each result for the channel or type its key does not allow)",
                                 "accepted": 0, "rejected": len(results),
                                 "results": [_result_doc(i, r) for i, r in enumerate(results)]}, status_code=403)

        producer = await self.slot.get()
        unavailable = ""
        if producer is None:
            unavailable = f"not connected: {self.slot.last_error or 'connecting to Kafka'}"
            published = await run_in_threadpool(_unsent, allowed, now, "not sent: the gateway is not connected")
        else:
            try:
                if isinstance(producer, AsyncEventProducer):
                    published = await producer.publish(allowed, now)
                else:
                    published = await run_in_threadpool(producer.publish, allowed, now)
            except TouchpointError as exc:  # the registry is down (RegistryError) or alike: retry later
                unavailable = f"not published: {type(exc).__name__}"
                log.warning("gateway: publish failed", extra={"error": type(exc).__name__, "events": len(allowed)})
                published = await run_in_threadpool(_unsent, allowed, now, f"not sent: {exc}")
        results = _merge(docs, forbidden, published)

        accepted = sum(isinstance(r, Delivered) for r in results)
        rejected = sum(isinstance(r, Refused) for r in results)
        failed = [r.event_id for r in results if isinstance(r, Failed)]
        self.stats.count(source.name, "accepted", accepted)
        self.stats.count(source.name, "rejected", rejected - len(forbidden))
        count_events("gateway", "accepted", accepted)
        count_events("gateway", "rejected", rejected)
        body_doc: dict[str, Any] = {"accepted": accepted, "rejected": rejected,
                                    "results": [_result_doc(i, r) for i, r in enumerate(results)]}
        if failed or unavailable:
            status = 503
            body_doc = {"detail": unavailable or "Kafka did not acknowledge every event; retry them unchanged",
                        "failed": len(failed), **body_doc}
            log.warning("gateway: events not acknowledged",
                        extra={"status": status, "source": source.name, "accepted": accepted, "rejected": rejected,
                               "failed": len(failed), "failed_event_ids": failed[:50]})
            return SafeJSONResponse(body_doc, status_code=status, headers={"Retry-After": str(self.retry_after_s)})
        status = 202 if accepted else 422
        log.info("gateway: events ingested",
                 extra={"status": status, "source": source.name, "accepted": accepted, "rejected": rejected,
                        "out_of_scope": len(forbidden)})
        return SafeJSONResponse(body_doc, status_code=status)

    async def readiness(self) -> SafeJSONResponse:
        kafka, registry = await asyncio.gather(self._kafka_check(), self._registry_check())
        checks = {"kafka": kafka, "registry": registry}
        if self.slot.producer is None:
            checks["producer"] = f"not connected: {self.slot.last_error}" if self.slot.last_error else "connecting"
            if kafka == "ok":
                self.slot.start()
        ready = kafka == "ok" and registry == "ok"
        return SafeJSONResponse({"ready": ready, "checks": checks}, status_code=200 if ready else 503)

    async def _kafka_check(self) -> str:
        # aiokafka on the serving loop: no thread, and kafka-python's admin client leaks a socket per
        # failed connection (a ResourceWarning each probe while Kafka is down).
        client = AIOKafkaClient(bootstrap_servers=self.settings.kafka_bootstrap, request_timeout_ms=2000,
                                client_id="touchpoint-gateway-ready", **aiokafka_options(self.settings))
        try:
            await asyncio.wait_for(client.bootstrap(), 3.0)
            return "ok"
        except (KafkaError, OSError, TimeoutError) as exc:
            return f"unreachable at {self.settings.kafka_bootstrap}: {type(exc).__name__}"
        finally:
            await client.close()

    async def _registry_check(self) -> str:
        try:
            async with httpx.AsyncClient(timeout=2.0) as client:
                response = await client.get(f"{self.settings.registry_url.rstrip('/')}/subjects")
        except httpx.HTTPError as exc:
            return f"unreachable at {self.settings.registry_url}: {type(exc).__name__}"
        return "ok" if response.status_code == 200 else f"answered {response.status_code}"


# --- OpenAPI ---

_EVENT_SCHEMA = TypeAdapter(AnyEvent).json_schema(ref_template="#/components/schemas/{model}")
_EVENT_DEFS = _EVENT_SCHEMA.pop("$defs")

_REQUEST_BODY = {
    "required": True,
    "description": "One event (a JSON object), a JSON array of events, or NDJSON (one event per line, blank "
                   "lines ignored). Events follow the contract (DESIGN.md §1); identifiers are clear values.",
    "content": {
        "application/json": {
            "schema": {"oneOf": [
                {"$ref": "#/components/schemas/Event"},
                {"type": "array", "items": {"$ref": "#/components/schemas/Event"}, "minItems": 1},
            ]},
        },
        "application/x-ndjson": {
            "schema": {"type": "string", "description": "One Event object as compact JSON per line."},
        },
    },
}

_INGEST_RESPONSES: dict[int | str, dict[str, Any]] = {
    202: {"model": IngestResponse, "description": "Kafka acknowledged every accepted event (at least one); "
                                                  "rejected events are listed with their problems."},
    400: {"model": ErrorResponse, "description": "The body is not JSON / an NDJSON line is broken (named)."},
    401: {"model": ErrorResponse, "description": "No key, or one that is unknown or revoked (or none is configured).",
          "headers": {"WWW-Authenticate": {"schema": {"type": "string"}, "description": "`Bearer`."}}},
    403: {"model": ForbiddenResponse, "description": "No event of the request is within the key's channels and "
                                                     "types; each result says what the key does not allow."},
    413: {"model": ErrorResponse, "description": "The body is over the size limit, or holds too many events."},
    415: {"model": ErrorResponse, "description": "Content type is not application/json or application/x-ndjson."},
    422: {"model": IngestResponse, "description": "Every event was rejected; each result says which field and why."},
    429: {"model": ErrorResponse, "description": "The source is over its rate: retry after `Retry-After` seconds.",
          "headers": {"Retry-After": {"schema": {"type": "integer"}, "description": "Seconds to wait."}}},
    503: {"model": UnavailableResponse, "description": "Kafka or the registry did not acknowledge: retry the "
                                                       "events unchanged after `Retry-After` seconds.",
          "headers": {"Retry-After": {"schema": {"type": "integer"}, "description": "Seconds to wait."}}},
}


def create_gateway(settings: Settings, producer: EventProducer | AsyncEventProducer | None = None, *,
                   max_body_bytes: int = 1_048_576, max_events: int = 1000, retry_after_s: int = 5,
                   first_connect_wait_s: float = 5.0, publish_timeout_s: float = 15.0,
                   clock: Callable[[], float] = time.monotonic) -> FastAPI:
    """The gateway's ASGI app.

    :param settings: connections, and who may post: ``gateway_keys``, ``gateway_keys_file``,
        ``gateway_rate_per_s``.
    :param producer: publish through this one (the caller closes it; an :class:`AsyncEventProducer` must have
        been started on the serving loop); None: the gateway creates and owns an :class:`EventProducer`,
        lazily and retrying, so it starts even while Kafka or the registry is down.
    :param max_body_bytes: largest request body accepted (413 beyond), unless the source's key says otherwise.
    :param max_events: most events in one request (413 beyond).
    :param retry_after_s: the ``Retry-After`` of a 503.
    :param first_connect_wait_s: how long a request waits for the gateway's first connection to Kafka.
    :param publish_timeout_s: the bound on every Kafka wait of the gateway's own producer.
    :param clock: monotonic seconds for the rate limits (tests move it).
    :raises ConfigError: the gateway key settings are invalid (at build time, not at the first request).
    """
    keys = SourceKeys(settings)
    if not len(keys):
        log.warning("no gateway keys configured: every POST /v1/events is refused (401); "
                    "see TOUCHPOINT_GATEWAY_KEYS")
    slot = _ProducerSlot(lambda: EventProducer(settings, timeout_s=publish_timeout_s), producer, first_connect_wait_s)
    gateway = _Gateway(slot, settings, max_body_bytes, max_events, retry_after_s, keys,
                       RateLimiter(settings.gateway_rate_per_s, clock), GatewayStats())

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        slot.start()  # connect early when served; tests over ASGITransport connect on the first request
        yield
        await run_in_threadpool(slot.close)

    app = safe_json_app(title="Touchpoint ingest gateway", version="1", lifespan=lifespan,
                  description="Events in over HTTP for systems that cannot speak Kafka. Send your source "
                              "system's key as `Authorization: Bearer <key>` or `X-API-Key: <key>`.")
    app.state.gateway = gateway

    @app.post("/v1/events", status_code=202, response_model=IngestResponse, responses=_INGEST_RESPONSES,
              openapi_extra={"requestBody": _REQUEST_BODY}, summary="Publish one event, a JSON array or NDJSON")
    async def post_events(request: Request) -> SafeJSONResponse:
        # The request's span; the caller's own traceparent, if it sent one, is its parent.
        with _TRACER.start_as_current_span("gateway", context=propagate.extract(request.headers),
                                           kind=trace.SpanKind.SERVER, attributes={HTTP_ROUTE: "/v1/events"}):
            return await gateway.ingest(request)

    @app.get("/v1/stats", response_model=StatsResponse, summary="Refusals and outcomes counted by this process")
    async def stats() -> dict[str, Any]:
        return gateway.stats.doc()

    @app.get("/healthz", response_model=HealthResponse, summary="The process answers")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", response_model=ReadinessResponse, summary="Kafka and the registry answer",
             responses={503: {"model": ReadinessResponse, "description": "Kafka or the registry does not answer."}})
    async def readyz() -> SafeJSONResponse:
        return await gateway.readiness()

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description,
                                 routes=app.routes)
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            components.update(_EVENT_DEFS)
            components["Event"] = _EVENT_SCHEMA
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def serve_gateway(settings: Settings) -> None:
    """Run the gateway with uvicorn on the settings' address until interrupted."""
    import uvicorn

    from touchpoint.logs import configure_logging
    from touchpoint.telemetry import configure_metrics, configure_tracing

    configure_logging(settings.log_level, settings.log_json)
    configure_tracing(settings, "touchpoint-gateway")
    configure_metrics(settings, "touchpoint-gateway")
    app = create_gateway(settings, max_body_bytes=settings.gateway_max_body_bytes,
                         max_events=settings.gateway_max_events)
    uvicorn.run(app, host=settings.gateway_host, port=settings.gateway_port, log_config=None,
                access_log=False)  # access lines would be noise next to our JSON logs
