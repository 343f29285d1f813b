"""README command 1: the backbone end to end on the local default stack.

Brings the stack up, creates the topics, migrates the read model, starts a
Faust worker and the projection writers as child processes, publishes a
generated population (its history ending today) plus one known person seen
on all five channels through the producer library, writes broken bytes
straight to a channel topic, and waits until every stage has caught up.
Prints what happened (events in, refused at the edge, dead-lettered, customer
cards, merges, segments, the known person's card) and where to look; the
children stop when it ends (or on Ctrl-C), the stack keeps running.
"""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from kafka import KafkaConsumer, KafkaProducer

from connectors.clock import publish_tick
from connectors.producer import Delivered, EventProducer, Refused
from connectors.registry import RegistryClient
from connectors.serde import EventSerde
from connectors.topics import ensure_topics, event_topic
from projections.migrate import migrate
from touchpoint.errors import TouchpointError
from touchpoint.generate import generate
from touchpoint.settings import Settings
from touchpoint.stack import stack


def sample_events(run_id: str, now: datetime) -> list[dict[str, object]]:
    """One event per channel for one person, in the contract's JSON form."""
    at = now.isoformat(timespec="milliseconds")
    ids = {"customer_no": "C00000042", "email": "ann@example.com"}
    by_channel = [
        ("web", "web", {"session_id": f"s-{run_id}", "action": "login"}),
        ("branch", "purchase", {"transaction_id": f"t-{run_id}", "location_id": "station-7",
                                "lines": [{"sku": "unleaded", "category": "fuel", "quantity": 1, "amount_minor": 4200},
                                          {"sku": "coffee", "category": "shop", "quantity": 1, "amount_minor": 350}],
                                "total_minor": 4550, "currency": "GBP"}),
        ("phone", "call", {"call_id": f"call-{run_id}", "direction": "inbound", "phase": "started"}),
        ("email", "email", {"message_id": f"m-{run_id}", "action": "opened"}),
        ("sms", "sms", {"message_id": f"sms-{run_id}", "action": "delivered"}),
    ]
    return [
        {"event_id": f"demo-{run_id}-{n}", "type": type_, "channel": channel, "occurred_at": at,
         "identifiers": ids, "payload": payload}
        for n, (channel, type_, payload) in enumerate(by_channel)
    ]


BAD_BYTES = b"\x00\x00\x00\x00\x07 truncated: not an Avro event"
"""What a broken channel system might write straight to a topic."""


def _spawn(settings: Settings, verb: str, stack_: ExitStack) -> subprocess.Popen[bytes]:
    log_path = settings.home.resolve() / "logs" / f"demo-{verb}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log_file = stack_.enter_context(log_path.open("ab"))
    proc = subprocess.Popen(  # noqa: S603
        [sys.executable, "-m", "touchpoint", verb], stdout=log_file, stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )

    def stop() -> None:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    stack_.callback(stop)
    print(f"started `touchpoint {verb}` (pid {proc.pid}), log: {log_path}", flush=True)
    return proc


def run_demo(settings: Settings, timeout_s: float = 180.0, customers: int = 300, days: int = 120) -> None:
    """Run the demo; raises TouchpointError when an event does not arrive in time."""
    started = time.monotonic()
    stack.up(settings)
    created = ensure_topics(settings)
    print(f"topics: {len(created)} created, the rest already existed", flush=True)
    print(f"read model: {len(migrate(settings))} migration(s) applied", flush=True)
    run_id = uuid.uuid4().hex[:8]
    now = datetime.now(UTC)
    ann = sample_events(run_id, now)
    # A fresh seed per run: event ids are the idempotency key, a rerun must add new events.
    # The history ends today, so RFM and segments read as they would in production.
    history_start = (now - timedelta(days=days)).replace(hour=0, minute=0, second=0, microsecond=0)
    population = list(generate(customers, days, seed=int(run_id, 16) % 1_000_000, start=history_start))
    with ExitStack() as children:
        procs = [_spawn(settings, "worker", children), _spawn(settings, "project", children)]
        with EventProducer(settings) as producer:
            results = producer.publish(ann, now)
            if not all(isinstance(r, Delivered) for r in results):
                raise TouchpointError(f"the producer library did not deliver every sample event: {results}")
            results += producer.publish(population, now)
        delivered = [r for r in results if isinstance(r, Delivered)]
        refused = [r for r in results if isinstance(r, Refused)]
        print(f"published {len(delivered)} events of {customers} generated customers and one known person "
              f"through the producer library (Avro, schema id {_schema_id(settings)}); "
              f"{len(refused)} refused at the edge, e.g. {_first_problem(refused)}", flush=True)
        raw = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all", client_id="touchpoint-demo")
        try:
            bad_offset = raw.send(event_topic(settings, "web"), value=BAD_BYTES).get(timeout=30).offset
        finally:
            raw.close()
        print(f"wrote {len(BAD_BYTES)} broken bytes straight to {event_topic(settings, 'web')}", flush=True)
        # Time passes in the log: a tick at now lets dormancy, churn windows and expiries be judged.
        # After the events are in the ordered log (the tick goes there directly, events via ingest).
        _wait_caught_up(settings, procs, started + timeout_s)
        publish_tick(settings, datetime.now(UTC))
        print("the clock ticked once (touchpoint clock does it every minute in production)", flush=True)
        _wait_caught_up(settings, procs, started + timeout_s)
        reason = _wait_for_dead_letter(settings, event_topic(settings, "web"), bad_offset, started + timeout_s)
        card = _wait_for_card(settings, "C00000042", started + timeout_s)
        rows = _rows_of(settings, [r.event_id for r in delivered])
    with psycopg.connect(settings.pg_conninfo(), autocommit=True) as conn:
        (cards,) = conn.execute("SELECT count(*) FROM customers").fetchone() or (0,)
        (aliases,) = conn.execute("SELECT count(*) FROM customer_aliases").fetchone() or (0,)
        segments = dict(conn.execute("SELECT value_segment, count(*) FROM customers GROUP BY 1").fetchall())
        earned, reversed_ = conn.execute(
            "SELECT coalesce(sum(points) FILTER (WHERE kind = 'earn'), 0), "
            "coalesce(-sum(points) FILTER (WHERE kind = 'reversal'), 0) FROM loyalty_ledger").fetchone() or (0, 0)
        active = dict(conn.execute("SELECT kind, count(*) FROM alerts WHERE state <> 'resolved' GROUP BY 1").fetchall())
        example = conn.execute(
            "SELECT customer_id, kind, severity, (SELECT string_agg(r->>'text', '; ') FROM "
            "jsonb_array_elements(reasons) r WHERE r->>'code' <> 'score') FROM alerts WHERE state <> 'resolved' "
            "ORDER BY kind, severity DESC, customer_id LIMIT 1").fetchone()
    print(
        f"\nend to end in {time.monotonic() - started:.1f}s:\n"
        f"  {rows} events became rows in `interactions`; {len(delivered) - rows} were dead-lettered by the "
        f"customers stage once history was known (e.g. a refund of an unknown purchase)\n"
        f"  {cards} customer cards in `customers` (all runs so far), {aliases} ids merged into others "
        f"(`customer_aliases`); segments {segments}\n"
        f"  the known person (customer_no C00000042, ann@example.com, five channels) is "
        f"{card['customer_id']}: {card['counts']['total']} interactions, last contact "
        f"{card['last_contact']}\n"
        f"  loyalty: {earned} points issued, {reversed_} reversed on refunds (`loyalty_ledger`, all runs)\n"
        f"  alerts active: {active.get('dormancy', 0)} dormancy, {active.get('churn', 0)} churn (`alerts`); "
        f"e.g. {example[0] + ' ' + example[1] + ' (' + example[2] + '): ' + example[3] if example else 'none'}\n"
        f"  1 bad message is on `{settings.topic('dlq')}` with reason: {reason}\n\n"
        "look around:\n"
        f"  psql -h {settings.pg_host} -p {settings.pg_port} -U {settings.pg_user} {settings.pg_database} "
        "-c 'SELECT customer_id, value_segment, view->'\\''rfm'\\'' FROM customers LIMIT 10'\n"
        "  ./run alerts tail --from-beginning   ./run loyalty simulate --rules NEW.yaml FILE.jsonl\n"
        "  ./run fold FILE.jsonl   (the same core, offline)   ./run stack status | logs | down"
    )


def _first_problem(refused: list[Refused]) -> str:
    if not refused:
        return "none"
    field, message = refused[0].problems[0]
    return f"{refused[0].event_id}: {field}: {message}"


def _wait_for_card(settings: Settings, customer_no: str, deadline: float) -> dict[str, Any]:
    """The card of the customer holding this customer number, once projected."""
    with psycopg.connect(settings.pg_conninfo(), autocommit=True) as conn:
        while time.monotonic() < deadline:
            row = conn.execute(
                "SELECT view FROM customers WHERE view->'identifiers'->'customer_no' ? %s", (customer_no,)
            ).fetchone()
            if row is not None:
                return dict(row[0])
            time.sleep(0.3)
    raise TouchpointError(f"no card for customer_no {customer_no} in time")


def _wait_caught_up(settings: Settings, procs: list[subprocess.Popen[bytes]], deadline: float) -> None:
    """Until every stage has processed everything published so far."""
    from projections.lag import pipeline_lag

    lag: dict[str, int] = {}
    while time.monotonic() < deadline:
        for proc in procs:
            if proc.poll() is not None:
                raise TouchpointError(f"a child process exited with code {proc.returncode}; see its log")
        lag = pipeline_lag(settings)
        if not any(lag.values()):
            return
        time.sleep(0.5)
    raise TouchpointError(f"the pipeline did not catch up in time; records behind per stage: {lag}")


def _rows_of(settings: Settings, event_ids: list[str]) -> int:
    with psycopg.connect(settings.pg_conninfo(), autocommit=True) as conn:
        (found,) = conn.execute(
            "SELECT count(*) FROM interactions WHERE event_id = ANY(%s)", (event_ids,)).fetchone() or (0,)
    return int(found)


def _schema_id(settings: Settings) -> int:
    with RegistryClient(settings.registry_url) as registry:
        return EventSerde(registry).writer_id


def _wait_for_dead_letter(settings: Settings, source_topic: str, source_offset: int, deadline: float) -> str:
    consumer = KafkaConsumer(settings.topic("dlq"), bootstrap_servers=settings.kafka_bootstrap,
                             auto_offset_reset="earliest", enable_auto_commit=False, group_id=None,
                             consumer_timeout_ms=1000)
    try:
        while time.monotonic() < deadline:
            for message in consumer:
                headers = dict(message.headers)
                if (headers.get("touchpoint.dlq.topic") == source_topic.encode()
                        and headers.get("touchpoint.dlq.offset") == str(source_offset).encode()):
                    return headers["touchpoint.dlq.reason"].decode()
        raise TouchpointError("the bad event did not reach the dead-letter topic in time")
    finally:
        consumer.close()
