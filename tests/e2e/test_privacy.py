"""Erasure end to end on the real stack, and the subject-access export (DESIGN.md §6).

A population and one known person (Ann: customer number, e-mail, phone,
card; purchases with points) go through the producer library, a worker and
the projection writers; her marketing e-mail consent, granted on the web, is
withdrawn through the call centre. The test exports Ann (identifiers
readable, the opt-out honoured), reads her card through the lookup API as an
admin (opened) and as an agent (masked), erases
her, and checks: nobody is found by her identifiers; her card, aliases,
identifier keys and interactions are gone from the read model; her
pseudonyms on the topics no longer open; the ledger total is unchanged and
no alert of hers is open; a rebuild of the read model from the log gives
the live read model again, still without her; and a new event from her
e-mail starts a new customer.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from subprocess import Popen
from typing import Any

import psycopg
import pytest
from kafka import KafkaConsumer, TopicPartition
from starlette.exceptions import StarletteDeprecationWarning

from connectors.frontline.access import digest
from connectors.frontline.lookup import create_lookup_app
from connectors.intake.producer import Delivered, EventProducer
from connectors.operations.clock import publish_tick
from connectors.operations.privacy import UnknownCustomer, erase, export
from connectors.platform.keystore import PostgresKeyStore
from connectors.platform.registry import RegistryClient
from connectors.platform.serde import EventSerde
from projections.checksum import checksum
from projections.rebuild import rebuild
from tests.e2e.oracle import drained, end_offset
from tests.e2e.test_pipeline import wait_until
from tests.fix_stack import REPO, scoped, settings_env, spawn_touchpoint, stop_process
from touchpoint.core.masking import ERASED
from touchpoint.core.normalise import normalise
from touchpoint.core.pseudonym import Unreadable, parse, reveal
from touchpoint.generate import generate
from touchpoint.settings import Settings

with warnings.catch_warnings():
    # Starlette 1.x prefers the httpx2 fork for its TestClient; httpx (installed) still works.
    warnings.filterwarnings("ignore", category=StarletteDeprecationWarning)
    from fastapi.testclient import TestClient

pytestmark = pytest.mark.integration

ANN = {"customer_no": "C77000001", "email": "Ann.Erase@Example.com", "phone": "07700 900777",
       "card": "4000 0012 3456 7899"}
ADMIN_KEY = "privacy-admin-key-0123456789"
AGENT_KEY = "privacy-agent-key-0123456789"


def ann_events(now: datetime) -> list[dict[str, Any]]:
    at = [(now - timedelta(days=d)).isoformat(timespec="milliseconds").replace("+00:00", "Z") for d in (30, 20, 10)]
    purchase = {"location_id": "FS-7", "currency": "GBP", "total_minor": 9000,
                "lines": [{"sku": "unleaded", "category": "fuel", "quantity": 1, "amount_minor": 6000},
                          {"sku": "shop", "category": "shop", "quantity": 1, "amount_minor": 3000}]}
    return [
        {"event_id": "ann-web", "type": "web", "channel": "web", "occurred_at": at[0],
         "identifiers": {"email": ANN["email"], "customer_no": ANN["customer_no"]},
         "payload": {"session_id": "s-ann", "action": "login"}},
        {"event_id": "ann-buy", "type": "purchase", "channel": "branch", "occurred_at": at[1],
         "identifiers": {"customer_no": ANN["customer_no"], "card": ANN["card"]},
         "payload": {"transaction_id": "t-ann", **purchase}},
        {"event_id": "ann-call", "type": "call", "channel": "phone", "occurred_at": at[2],
         "identifiers": {"phone": ANN["phone"], "customer_no": ANN["customer_no"]},
         "payload": {"call_id": "k-ann", "direction": "inbound", "phase": "started"}},
        # Marketing e-mail granted on the web, then withdrawn on the phone: honoured for e-mail everywhere.
        {"event_id": "ann-yes", "type": "consent", "channel": "web", "occurred_at": at[0],
         "identifiers": {"email": ANN["email"]}, "payload": {"purpose": "marketing", "channel": "email",
                                                             "granted": True}},
        {"event_id": "ann-no", "type": "consent", "channel": "phone", "occurred_at": at[2],
         "identifiers": {"phone": ANN["phone"]}, "payload": {"purpose": "marketing", "channel": "email",
                                                             "granted": False}},
    ]


@dataclass
class Pipeline:
    settings: Settings
    logs: Path
    worker: Popen[bytes]
    writer: Popen[bytes] | None = None

    def caught_up(self, what: str) -> None:
        procs = (self.worker,) if self.writer is None else (self.worker, self.writer)
        wait_until(lambda: drained(self.settings), 180, what, procs)


@pytest.fixture
def pipeline(settings: Settings, tmp_path: Path) -> Iterator[Pipeline]:
    """Own topics and database, a worker and the projection writers, the population and Ann published."""
    with scoped(settings, f"{settings.pg_database}_privacy", topic_prefix=f"{settings.topic_prefix}-privacy") as own:
        running = Pipeline(own, tmp_path, spawn_touchpoint(own, "worker", log=tmp_path / "worker.log"))
        running.writer = spawn_touchpoint(own, "project", log=tmp_path / "project-1.log")
        try:
            now = datetime.now(UTC)
            population = [e for e in generate(customers=40, days=40, seed=5, start=now - timedelta(days=45))
                          if str(e["event_id"]).startswith("ev-")]
            with EventProducer(own) as producer:
                results = producer.publish([*population, *ann_events(now)], now)
            assert all(isinstance(r, Delivered) for r in results)
            publish_tick(own, now)
            running.caught_up("the pipeline to catch up")
            yield running
        finally:
            for proc in (running.worker, running.writer):
                if proc is not None:
                    stop_process(proc)


def key_of(settings: Settings, kind: str, value: str) -> str:
    return normalise(kind, value, secret=settings.identifier_key.get_secret_value().encode()).key


def customer_of(settings: Settings, kind: str, value: str) -> str | None:
    with psycopg.connect(settings.pg_conninfo()) as conn:
        row = conn.execute("SELECT customer_id FROM customer_identifiers WHERE key = %s",
                           (key_of(settings, kind, value),)).fetchone()
    return row[0] if row else None


def scalar(settings: Settings, query: str, *params: object) -> Any:
    with psycopg.connect(settings.pg_conninfo()) as conn:
        row = conn.execute(query, params).fetchone()
    return row[0] if row else None


def api(settings: Settings, method: str, path: str, key: str = ADMIN_KEY, **query: str) -> Any:
    """One call to the lookup API (admin by default)."""
    keyed = settings.model_copy(update={"api_keys": {digest(ADMIN_KEY): {"name": "dpo", "role": "admin"},
                                                     digest(AGENT_KEY): {"name": "desk", "role": "agent"}}})
    with TestClient(create_lookup_app(keyed), headers={"Authorization": f"Bearer {key}"}) as client:
        return client.request(method, path, params=query)


def lookup(settings: Settings, key: str = ADMIN_KEY, **query: str) -> Any:
    return api(settings, "GET", "/v1/customers/lookup", key, **query)


def anns_tokens(settings: Settings) -> list[str]:
    """The identifiers of Ann's events as the customer-events topic holds them."""
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, enable_auto_commit=False,
                             consumer_timeout_ms=3000)
    topic = settings.topic("customer-events")
    try:
        parts = [TopicPartition(topic, p) for p in end_offset(settings, topic)]
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        with RegistryClient(settings.registry_url) as registry:
            serde = EventSerde(registry)
            return [token for m in consumer if m.value and m.value[:1] == b"\x00"
                    for event in [serde.deserialize(m.value)] if event.event_id.startswith("ann-")
                    for token in event.identifiers.values()]
    finally:
        consumer.close()


async def opened(settings: Settings, tokens: list[str]) -> list[str]:
    async with PostgresKeyStore(settings) as keystore:
        data_keys = await keystore.data_keys({parse(t).key for t in tokens}, create=False)
    shown = []
    for token in tokens:
        try:
            shown.append(reveal(token, data_keys.get(parse(token).key)))
        except Unreadable:
            shown.append(ERASED)
    return shown


def test_export_erase_and_come_back(pipeline: Pipeline) -> None:
    settings = pipeline.settings
    ann = customer_of(settings, "customer_no", ANN["customer_no"])
    assert ann is not None and customer_of(settings, "phone", ANN["phone"]) == ann

    document = export(settings, ann)
    assert document["card"]["identifiers"] == {"card": ["…7899"], "customer_no": [ANN["customer_no"]],
                                               "email": ["ann.erase@example.com"], "phone": ["+447700900777"]}
    assert [i["event_id"] for i in document["interactions"]] == ["ann-web", "ann-yes", "ann-buy", "ann-call",
                                                                 "ann-no"]
    assert document["card"]["consent"] == {"marketing": {"email": False}}  # the phone's opt-out beats the web's grant
    assert sum(e["points"] for e in document["loyalty_ledger"]) > 0
    assert lookup(settings, email=ANN["email"]).json()["customer_id"] == ann
    # The API opens the pseudonyms for the reader: clear for an admin who asks, masked for an agent.
    clear = lookup(settings, phone=ANN["phone"], unmasked="true", reason="subject access request").json()[
        "card"]["identifiers"]
    assert clear["email"] == ["ann.erase@example.com"] and clear["phone"] == ["+447700900777"]
    masked = lookup(settings, AGENT_KEY, phone=ANN["phone"]).json()["card"]["identifiers"]
    assert masked == {"customer_no": [ANN["customer_no"]], "email": ["a***@example.com"], "phone": ["•••• 0777"],
                      "card": ["•••• 7899"]}
    tokens = anns_tokens(settings)
    assert ERASED not in asyncio.run(opened(settings, tokens))
    ledger_total = scalar(settings, "SELECT sum(points) FROM loyalty_ledger")
    live_customers = scalar(settings, "SELECT count(*) FROM customers")

    assert api(settings, "POST", f"/v1/customers/{ann}/erasure", AGENT_KEY).status_code == 403
    answer = api(settings, "POST", f"/v1/customers/{ann}/erasure")
    assert answer.status_code == 200, answer.text
    report = answer.json()
    # customer_no, e-mail, phone (the card shows its last four only)
    assert report["customer_id"] == ann and report["keys_destroyed"] == 3
    print(report)
    pipeline.caught_up("the erasure to reach every stage")

    for kind, value in ANN.items():
        assert customer_of(settings, kind, value) is None, kind
        if kind != "card":
            assert lookup(settings, **{kind: value}).status_code == 404, kind
    assert scalar(settings, "SELECT count(*) FROM customers WHERE customer_id = %s", ann) == 0
    assert scalar(settings, "SELECT count(*) FROM interactions WHERE event_id LIKE 'ann-%%'") == 0
    assert scalar(settings, "SELECT count(*) FROM customers") == live_customers - 1
    assert scalar(settings, "SELECT sum(points) FROM loyalty_ledger") == ledger_total  # aggregates kept
    assert scalar(settings, "SELECT count(*) FROM alerts WHERE customer_id = %s AND state <> 'resolved'", ann) == 0
    assert [s for s in asyncio.run(opened(settings, tokens)) if s != ERASED and not s.startswith("…")] == []
    with pytest.raises(UnknownCustomer):
        export(settings, ann)
    assert api(settings, "POST", f"/v1/customers/{ann}/erasure").status_code == 404  # erased already
    with pytest.raises(UnknownCustomer):
        erase(settings, ann)

    live = checksum(settings.pg_conninfo())
    assert pipeline.writer is not None
    stop_process(pipeline.writer)  # a rebuild owns the read model while it runs
    pipeline.writer = None
    rebuild(settings, progress=False)
    assert checksum(settings.pg_conninfo()) == live  # the log replays the erasure too
    assert customer_of(settings, "email", ANN["email"]) is None
    pipeline.writer = spawn_touchpoint(settings, "project", log=pipeline.logs / "project-2.log")

    with EventProducer(settings) as producer:
        back = {**ann_events(datetime.now(UTC))[0], "event_id": "ann-back"}
        assert isinstance(producer.publish([back], datetime.now(UTC))[0], Delivered)
    wait_until(lambda: customer_of(settings, "email", ANN["email"]), 60, "Ann's new card")
    new = customer_of(settings, "email", ANN["email"])
    assert new is not None and new != ann
    exported = subprocess.run([sys.executable, "-m", "touchpoint", "privacy", "export", "--customer", new],
                              env=settings_env(settings), cwd=REPO, capture_output=True, text=True, timeout=60,
                              check=False, stdin=subprocess.DEVNULL)
    assert exported.returncode == 0, exported.stderr
    assert json.loads(exported.stdout)["card"]["identifiers"]["email"] == ["ann.erase@example.com"]
