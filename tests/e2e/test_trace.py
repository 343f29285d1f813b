"""One event's whole path is one trace, gateway -> publish -> ingest -> customers -> project, and every stage counts it.

The gateway, the worker and the projection writers run as child processes
with tracing on, exporting over OTLP/HTTP to a receiver in this test, which
keeps every span it is sent in memory (the in-memory exporter of a test
spanning processes). One event is posted to the gateway; the test then
waits for its spans and checks that they share one trace id, that each is
the child of the one before (the context rode in the Kafka headers), which
service sent each, and that no span attribute holds the event's clear
identifiers. The same receiver takes the metrics: each stage's event counter
and the projections process's lag gauge must arrive.
"""

from __future__ import annotations

import json
import socket
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from connectors.frontline.access import digest
from tests.e2e.otlp import Receiver, Span, running_receiver
from tests.e2e.test_pipeline import wait_until
from tests.fix_stack import scoped, spawn_touchpoint, stop_process
from touchpoint.settings import Settings

pytestmark = pytest.mark.integration

KEY = "trace-key-0123456789abcdef"
PATH = ["gateway", "publish", "ingest", "identity", "profile", "project"]
SERVICE = {"gateway": "touchpoint-gateway", "publish": "touchpoint-gateway", "ingest": "touchpoint-worker",
           "identity": "touchpoint-worker", "profile": "touchpoint-worker", "project": "touchpoint-projections"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def trace_of(spans: list[Span], event_id: str) -> list[Span] | None:
    """The spans of the event's trace in path order, once every stage has sent its own."""
    starts = [s for s in spans if s.name == "publish" and event_id in s.attributes.get("touchpoint.event_id", "")]
    if not starts:
        return None
    trace_id = starts[0].trace_id
    mine = {s.name: s for s in spans if s.trace_id == trace_id}
    return [mine[name] for name in PATH] if all(name in mine for name in PATH) else None


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with running_receiver() as server:
        yield server


def test_one_event_is_one_trace_from_gateway_to_projection_and_counted(settings: Settings, receiver: Receiver,
                                                                      tmp_path: Path) -> None:
    port = free_port()
    traced = {"TOUCHPOINT_TRACING": "true", "TOUCHPOINT_OTLP_ENDPOINT": receiver.endpoint,
              "OTEL_METRIC_EXPORT_INTERVAL": "1000"}
    gateway_env = {**traced, "TOUCHPOINT_GATEWAY_PORT": str(port), "TOUCHPOINT_GATEWAY_KEYS": json.dumps(
        {digest(KEY): {"name": "trace-test", "channels": ["*"], "types": ["*"]}})}
    event_id = f"trace-{uuid.uuid4().hex[:10]}"
    email = f"tracer.{uuid.uuid4().hex[:6]}@example.com"
    event = {"event_id": event_id, "type": "web", "channel": "web",
             "occurred_at": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
             "identifiers": {"email": email, "phone": "+447700900555"},
             "payload": {"session_id": f"s-{event_id}", "action": "login"}}
    with scoped(settings, f"{settings.pg_database}_trace", topic_prefix=f"{settings.topic_prefix}-trace") as own:
        procs = [spawn_touchpoint(own, verb, log=tmp_path / f"{verb}.log",
                                  env=gateway_env if verb == "gateway" else traced)
                 for verb in ("gateway", "worker", "project")]
        try:
            url = f"http://127.0.0.1:{port}"
            wait_until(lambda: _ready(url), 60, "the gateway to be ready", tuple(procs))
            answer = httpx.post(f"{url}/v1/events", json=event, headers={"Authorization": f"Bearer {KEY}"},
                                timeout=30)
            assert answer.status_code == 202, answer.text
            path = wait_until(lambda: trace_of(receiver.spans, event_id), 120,
                              "the event's spans from every stage", tuple(procs))
            counters = [("touchpoint-gateway", "gateway", "accepted"), ("touchpoint-worker", "ingest", "accepted"),
                        ("touchpoint-worker", "identity", "resolved"),
                        ("touchpoint-worker", "profile", "folded"),
                        ("touchpoint-projections", "projection interactions", "written")]
            wait_until(lambda: all(receiver.counted(*c) >= 1 for c in counters), 60,
                       "every stage's event counter", tuple(procs))
            wait_until(lambda: any(name == "touchpoint.lag" and attrs == (("touchpoint.stage", "profile"),)
                                   for (_, name, attrs) in list(receiver.points)), 60, "the lag gauge", tuple(procs))
        finally:
            for proc in procs:
                stop_process(proc)

    assert len({s.trace_id for s in path}) == 1
    for parent, child in zip(path, path[1:], strict=False):
        assert child.parent_id == parent.span_id, f"{child.name} is not the child of {parent.name}"
    assert {s.name: s.service for s in path} == SERVICE
    leaked = [(s.name, key) for s in receiver.spans for key, value in s.attributes.items()
              if email in value or "7700900555" in value]
    assert leaked == [], f"clear identifiers in span attributes: {leaked}"


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False
