"""Bulk lookup protection on the real stack: per-key rates and daily ceilings kept in PostgreSQL by the lookup's
own statement, shared by every API process; refusals audited; the admin's lift; the access alerts.

The read model holds a few dozen cards written by the customers projection, as in ``test_lookup``.
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from kafka import KafkaConsumer, TopicPartition

from connectors.frontline.access import digest
from connectors.frontline.lookup import create_lookup_app
from connectors.operations.access import AccessWatch, access_topic
from connectors.platform.access_wire import AccessAlertSerde
from connectors.platform.registry import RegistryClient
from projections.customers import CustomersProjection
from projections.writer import write_batch
from tests.e2e.oracle import end_offset
from tests.fix_stack import REPO, scoped, settings_env, spawn_touchpoint, stop_process
from tests.integration.test_lookup import (
    TestClient,  # imported there with Starlette's httpx warning silenced
    card_doc,
    key,
    record,
)
from touchpoint.core.access import AccessConfig
from touchpoint.settings import Settings

pytestmark = pytest.mark.integration

CUSTOMERS = 40
ADMIN_KEY = "limits-admin-key-0123456789abcdef"
RATE_KEY = "limits-rate-key-0123456789abcdef"
CEILING_KEY = "limits-ceiling-key-0123456789abcdef"
SHARDED_KEY = "limits-sharded-key-0123456789abcdef"
PICK_KEY = "limits-pick-key-0123456789abcdef"
HEAL_KEY = "limits-heal-key-0123456789abcdef"
HOSTILE_KEYS = [f"limits-hostile-{i}-0123456789abcdef" for i in range(4)]
# Two keys with a bucket of one row, two with one of four shards (a burst of 40: one shard per 10).
HOSTILE_BURSTS = [5, 5, 40, 40]
API_KEYS: dict[str, dict[str, Any]] = {
    digest(ADMIN_KEY): {"name": "lim-admin", "role": "admin", "per_minute": 6000, "burst": 100},
    digest(RATE_KEY): {"name": "lim-rate", "role": "agent", "per_minute": 60, "burst": 3},
    digest(CEILING_KEY): {"name": "lim-ceiling", "role": "agent", "per_minute": 6000, "burst": 100,
                          "daily_customers": 3},
    digest(SHARDED_KEY): {"name": "lim-sharded", "role": "service", "per_minute": 6, "burst": 40},
    digest(PICK_KEY): {"name": "lim-pick", "role": "service", "per_minute": 60, "burst": 40},
    digest(HEAL_KEY): {"name": "lim-heal", "role": "service", "per_minute": 6, "burst": 20},
    **{digest(k): {"name": f"lim-hostile-{i}", "role": "service", "per_minute": 6, "burst": HOSTILE_BURSTS[i]}
       for i, k in enumerate(HOSTILE_KEYS)},
}


def phone(i: int) -> str:
    return f"+4477009{i:05d}"


@pytest.fixture(scope="module")
def limits_settings(settings: Settings) -> Iterator[Settings]:
    """A database of this module's own with cards for ``CUSTOMERS`` phones, and the keys above."""
    with scoped(settings, f"{settings.pg_database}_limits") as own:
        own = own.model_copy(update={"api_keys": API_KEYS})
        with psycopg.connect(own.pg_conninfo()) as conn:
            write_batch(conn, CustomersProjection(own), [
                record(own, i, card_doc(f"lim-{i}", "lead", {"phone": [key(own, "phone", phone(i))]},
                                        "2026-01-01T00:00:00.000Z")) for i in range(CUSTOMERS)])
        yield own


def audit(settings: Settings, key_name: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(settings.pg_conninfo()) as conn:
        return conn.execute("SELECT endpoint, status, customer_id, reason FROM lookup_audit WHERE key_name = %s "
                            "ORDER BY id", (key_name,)).fetchall()


def lookup(client: Any, key: str, i: int) -> Any:
    return client.get("/v1/customers/lookup", params={"phone": phone(i)}, headers={"X-API-Key": key})


@pytest.fixture(scope="module")
def client(limits_settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_lookup_app(limits_settings)) as test_client:
        yield test_client


def test_a_burst_past_the_rate_is_429_with_retry_after_and_audited(limits_settings: Settings, client: Any) -> None:
    answers = [lookup(client, RATE_KEY, i) for i in range(5)]
    assert [a.status_code for a in answers] == [200, 200, 200, 429, 429]
    for refused in answers[3:]:
        assert refused.headers["retry-after"] == "1"  # one token a second
        assert "rate" in refused.json()["detail"] and "lim-rate" in refused.json()["detail"]
        assert "card" not in refused.json()
    page = client.get("/agent", params={"phone": phone(4)}, headers={"X-API-Key": RATE_KEY})
    assert page.status_code == 429 and page.headers["retry-after"] == "1" and "retry after" in page.text
    rows = audit(limits_settings, "lim-rate")
    assert [(endpoint, status, customer) for endpoint, status, customer, _ in rows] == [
        ("lookup", 200, "lim-0"), ("lookup", 200, "lim-1"), ("lookup", 200, "lim-2"), ("lookup", 429, None),
        ("lookup", 429, None), ("agent_page", 429, None)]
    time.sleep(1.1)  # a token is back
    assert lookup(client, RATE_KEY, 5).status_code == 200


def test_a_bucket_in_shards_gives_its_whole_burst_to_lookups_one_at_a_time(client: TestClient) -> None:
    """A burst of 40 is four shards of 10: lookups one after another take each token before the first 429."""
    statuses = [lookup(client, SHARDED_KEY, i % CUSTOMERS).status_code for i in range(43)]
    assert statuses == [200] * 40 + [429] * 3


def test_a_lookup_takes_its_token_from_the_shard_with_the_most_tokens_now(limits_settings: Settings,
                                                                          client: TestClient) -> None:
    """Four shards of 10 refilling at a quarter token a second each: the one that held 2 tokens six seconds ago
    has 3.5 now, more than the one that holds 3 just now; the lookup takes its token from the former."""
    with psycopg.connect(limits_settings.pg_conninfo()) as conn:
        conn.execute("INSERT INTO lookup_buckets (key_name, shard, tokens, at, allowed) VALUES "
                     "('lim-pick', 0, 2, now() - interval '6 seconds', true), ('lim-pick', 1, 3, now(), true), "
                     "('lim-pick', 2, 0, now(), true), ('lim-pick', 3, 0, now(), true)")
    assert lookup(client, PICK_KEY, 1).status_code == 200
    with psycopg.connect(limits_settings.pg_conninfo()) as conn:
        tokens = dict(conn.execute("SELECT shard, tokens FROM lookup_buckets WHERE key_name = 'lim-pick'").fetchall())
    assert tokens[1] == 3 and 2.4 < tokens[0] < 2.8, tokens  # 2 + 0.25 × 6 (and a little) - 1


def test_a_bucket_whose_shards_were_lost_gets_them_back_at_its_first_refusal(limits_settings: Settings,
                                                                             client: TestClient) -> None:
    """The buckets' table is unlogged: a crash of PostgreSQL empties it. A key the API made shards for goes on
    with the one its next lookup creates until a refusal, which makes the missing shards again, full."""
    assert lookup(client, HEAL_KEY, 1).status_code == 200  # the API makes its two shards of 10
    with psycopg.connect(limits_settings.pg_conninfo()) as conn:
        conn.execute("DELETE FROM lookup_buckets WHERE key_name = 'lim-heal'")  # as a crash would
    statuses = [lookup(client, HEAL_KEY, i % CUSTOMERS).status_code for i in range(22)]
    assert statuses == [200] * 10 + [429] + [200] * 10 + [429], statuses


def test_the_ceiling_blocks_the_key_until_an_admin_lifts_it(limits_settings: Settings, client: Any) -> None:
    assert [lookup(client, CEILING_KEY, i).status_code for i in (10, 11, 10, 12)] == [200, 200, 200, 200]
    past = lookup(client, CEILING_KEY, 13)  # a fourth distinct customer today: past the ceiling of 3
    assert past.status_code == 403 and "ceiling" in past.json()["detail"], past.text
    assert lookup(client, CEILING_KEY, 10).status_code == 403  # blocked: even a customer seen before
    blocks = client.get("/v1/keys/blocked", headers={"X-API-Key": ADMIN_KEY})
    assert blocks.status_code == 200
    (block,) = [b for b in blocks.json()["blocked"] if b["key_name"] == "lim-ceiling"]
    assert block["customers"] == 4 and block["ceiling"] == 3

    assert client.post("/v1/keys/lim-ceiling/lift", headers={"X-API-Key": CEILING_KEY},
                       params={"reason": "me"}).status_code == 403  # only an admin lifts
    assert client.post("/v1/keys/lim-ceiling/lift", headers={"X-API-Key": ADMIN_KEY}).status_code == 400  # why?
    lifted = client.post("/v1/keys/lim-ceiling/lift", headers={"X-API-Key": ADMIN_KEY},
                         params={"reason": "supervisor confirmed a campaign callback list"})
    assert lifted.status_code == 200 and lifted.json()["key_name"] == "lim-ceiling", lifted.text
    assert client.post("/v1/keys/lim-ceiling/lift", headers={"X-API-Key": ADMIN_KEY},
                       params={"reason": "again"}).status_code == 404  # not blocked any more
    assert [lookup(client, CEILING_KEY, i).status_code for i in (10, 13, 14)] == [200, 200, 200]

    statuses = [(endpoint, status) for endpoint, status, _, _ in audit(limits_settings, "lim-ceiling")]
    assert statuses.count(("lookup", 403)) == 2
    (lift,) = [row for row in audit(limits_settings, "lim-admin") if row[0] == "lift" and row[1] == 200]
    assert lift[3] == "supervisor confirmed a campaign callback list"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_hostile_run_across_two_api_processes_never_passes_a_key_beyond_its_burst(
        limits_settings: Settings, tmp_path: Path) -> None:
    """Four keys, each hammered from four threads on each of two server processes at once: every key gets its
    burst and no more (its refill in the few seconds of the run is a fraction of one lookup; a bucket in shards
    may refuse a lookup while a shard another statement holds has a token left, at most one a shard), every
    refusal is a 429 with Retry-After, and every request has its audit row."""
    ports = [_free_port(), _free_port()]
    env = {"TOUCHPOINT_API_KEYS": json.dumps(API_KEYS), "TOUCHPOINT_API_WORKERS": "1",
           "TOUCHPOINT_API_ACCESS_WINDOW_S": "3600"}
    apis = [spawn_touchpoint(limits_settings, "api", log=tmp_path / f"api-{port}.log",
                             env={**env, "TOUCHPOINT_API_PORT": str(port)}) for port in ports]
    try:
        for port, api in zip(ports, apis, strict=True):
            deadline = time.monotonic() + 60
            while True:
                assert api.poll() is None, (tmp_path / f"api-{port}.log").read_text()
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert time.monotonic() < deadline, "the API did not start"
                time.sleep(0.2)
        answers: Counter[tuple[str, int]] = Counter()
        retry_afters: set[str | None] = set()
        lock = threading.Lock()
        per_thread = 12
        began = time.monotonic()

        def hammer(key_index: int, port: int) -> None:
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
                for n in range(per_thread):
                    answer = http.get("/v1/customers/lookup", params={"phone": phone(20 + n)},
                                      headers={"X-API-Key": HOSTILE_KEYS[key_index]})
                    with lock:
                        answers[(f"lim-hostile-{key_index}", answer.status_code)] += 1
                        if answer.status_code == 429:
                            retry_afters.add(answer.headers.get("retry-after"))

        threads = [threading.Thread(target=hammer, args=(k, port)) for k in range(len(HOSTILE_KEYS))
                   for port in ports for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        took = time.monotonic() - began
    finally:
        for api in apis:
            stop_process(api)
    refill = int(took * 6 / 60) + 1  # tokens back during the run, rounded up
    for k in range(len(HOSTILE_KEYS)):
        name = f"lim-hostile-{k}"
        served, burst = answers[(name, 200)], HOSTILE_BURSTS[k]
        assert burst - burst // 10 <= served <= burst + refill, (name, dict(answers), took)
        assert served + answers[(name, 429)] == per_thread * 4 * len(ports), dict(answers)
        statuses = Counter(status for _, status, _, _ in audit(limits_settings, name))
        assert statuses == {200: served, 429: answers[(name, 429)]}, (name, statuses)
    assert retry_afters and all(r is not None and int(r) >= 1 for r in retry_afters), retry_afters


def test_an_access_alert_reaches_its_topic_without_a_customer_in_it(limits_settings: Settings) -> None:
    """A key reading far more than its (empty) history in one window: an ``unusual_volume`` alert on
    ``touchpoint.alerts.access``; a key blocked at its ceiling in that window: ``ceiling_reached``. Neither
    names a customer or an identifier."""
    topic = access_topic(limits_settings)
    before = end_offset(limits_settings, topic)
    # The window holding every lookup the tests above made (the hostile keys' and the ceiling's block), up to now.
    start = datetime.now(UTC) - timedelta(seconds=900)
    watch = AccessWatch(limits_settings, AccessConfig(window_s=900, multiple=5, min_lookups=30))

    async def judge() -> list[dict[str, Any]]:
        async with await psycopg.AsyncConnection.connect(limits_settings.pg_conninfo(), autocommit=True) as conn:
            return await watch.judge(conn, start)

    try:
        alerts = asyncio.run(judge())
    finally:
        watch.close()
    reasons = {(a["reason"], a["key_name"]) for a in alerts}
    assert ("ceiling_reached", "lim-ceiling") in reasons, alerts
    assert {("unusual_volume", f"lim-hostile-{k}") for k in range(len(HOSTILE_KEYS))} <= reasons, alerts

    read = access_alerts_after(limits_settings, before, lambda read: len(read) >= len(alerts), 20)
    assert sorted(a["alert_id"] for a in read) == sorted(a["alert_id"] for a in alerts)
    text = json.dumps(read)
    tailed = subprocess.run(  # noqa: S603 - the operator's view of the same topic
        [sys.executable, "-m", "touchpoint", "alerts", "tail", "--kind", "access", "--from-beginning", "--json",
         "--max", str(len(alerts)), "--timeout", "30"],
        env=settings_env(limits_settings), cwd=REPO, capture_output=True, text=True, timeout=90, check=False)
    assert tailed.returncode == 0, tailed.stderr
    assert {json.loads(line)["alert_id"] for line in tailed.stdout.splitlines()} == {a["alert_id"] for a in alerts}
    for i in range(CUSTOMERS):  # no customer id, phone or phone key in any alert
        assert f"lim-{i}\"" not in text and phone(i) not in text and key(limits_settings, "phone", phone(i)) not in text


def test_the_apis_own_watch_publishes_an_alert_for_a_busy_key(limits_settings: Settings) -> None:
    """The access watch the API runs in its lifespan (here with windows of 2 s and a minimum of one lookup): a key
    with no history that makes a dozen lookups has an ``unusual_volume`` alert on the topic within a few windows
    (however the lookups fall into windows on a busy machine: the first window holding any of them alerts)."""
    # A database of its own: the module's client holds the watch's lock on the module's (one watch per database).
    with scoped(limits_settings, f"{limits_settings.pg_database}_watch") as own:
        watched = own.model_copy(update={"api_access_window_s": 2, "api_access_min_lookups": 1})
        read = _alerts_of_a_busy_key(watched)
        with psycopg.connect(watched.pg_conninfo()) as conn:  # what the watch did, for a failure's message
            judged = (conn.execute("SELECT judged_until FROM access_watch").fetchall(),
                      conn.execute("SELECT key_name, window_start, lookups FROM lookup_windows").fetchall(),
                      conn.execute("SELECT min(at), max(at), count(*) FROM lookup_audit").fetchall())
    alerts = [a for a in read if a["key_name"] == "lim-admin"]
    assert alerts and all(a["reason"] == "unusual_volume" and a["role"] == "admin" for a in alerts), (read, judged)
    assert 1 <= sum(a["lookups"] for a in alerts) <= 12, alerts


def _alerts_of_a_busy_key(watched: Settings) -> list[dict[str, Any]]:
    topic = access_topic(watched)
    before = end_offset(watched, topic)
    with TestClient(create_lookup_app(watched)) as api:
        assert [lookup(api, ADMIN_KEY, i).status_code for i in range(12)] == [404] * 12  # nobody here: still read
        return access_alerts_after(watched, before, lambda read: any(a["key_name"] == "lim-admin" for a in read), 60)


def access_alerts_after(settings: Settings, before: dict[int, int], enough: Callable[[list[dict[str, Any]]], bool],
                        timeout_s: float) -> list[dict[str, Any]]:
    """The access alerts on the topic after the offsets ``before``, read until ``enough`` of them or the timeout."""
    topic = access_topic(settings)
    read: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout_s
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, enable_auto_commit=False)
    try:
        partitions = [TopicPartition(topic, p) for p in sorted(before)]
        consumer.assign(partitions)
        for tp in partitions:
            consumer.seek(tp, before[tp.partition])
        with RegistryClient(settings.registry_url) as registry:
            serde = AccessAlertSerde(registry)
            while not enough(read) and time.monotonic() < deadline:
                for messages in consumer.poll(timeout_ms=500).values():
                    read += [serde.deserialize(m.value) for m in messages]
    finally:
        consumer.close()
    return read
