"""README command 1: the backbone end to end on the local default stack.

Brings the stack up, creates the topics, migrates the read model, starts a
Faust worker and the projection writers as child processes, publishes a few
events (good and bad) to the channel topics and waits until the good ones are
rows in PostgreSQL and the bad one is on the dead-letter topic. Prints what
happened and where to look; the children stop when it ends (or on Ctrl-C),
the stack keeps running for a look around.
"""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from contextlib import ExitStack
from datetime import UTC, datetime

import psycopg
from kafka import KafkaConsumer, KafkaProducer

from connectors.producer import Delivered, EventProducer
from connectors.registry import RegistryClient
from connectors.serde import EventSerde
from connectors.topics import ensure_topics, event_topic
from projections.migrate import migrate
from touchpoint.errors import TouchpointError
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


def run_demo(settings: Settings, timeout_s: float = 120.0) -> None:
    """Run the demo; raises TouchpointError when an event does not arrive in time."""
    started = time.monotonic()
    stack.up(settings)
    created = ensure_topics(settings)
    print(f"topics: {len(created)} created, the rest already existed", flush=True)
    print(f"read model: {len(migrate(settings))} migration(s) applied", flush=True)
    run_id = uuid.uuid4().hex[:8]
    events = sample_events(run_id, datetime.now(UTC))
    with ExitStack() as children:
        procs = [_spawn(settings, "worker", children), _spawn(settings, "project", children)]
        with EventProducer(settings) as producer:
            results = producer.publish(events, datetime.now(UTC))
        delivered = [r for r in results if isinstance(r, Delivered)]
        if len(delivered) != len(events):
            raise TouchpointError(f"the producer library did not deliver every sample event: {results}")
        print(f"published {len(events)} events through the producer library (Avro, schema id "
              f"{_schema_id(settings)}) to {settings.topic('events.<channel>')}", flush=True)
        raw = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all", client_id="touchpoint-demo")
        try:
            bad_offset = raw.send(event_topic(settings, "web"), value=BAD_BYTES).get(timeout=30).offset
        finally:
            raw.close()
        print(f"wrote {len(BAD_BYTES)} broken bytes straight to {event_topic(settings, 'web')}", flush=True)
        good_ids = [str(e["event_id"]) for e in events]
        _wait_for_rows(settings, good_ids, procs, started + timeout_s)
        reason = _wait_for_dead_letter(settings, event_topic(settings, "web"), bad_offset, started + timeout_s)
    print(
        "\nend to end in {:.1f}s:\n"
        "  {} events became rows in PostgreSQL table `interactions`\n"
        "  1 bad event is on `{}` with reason: {}\n\n"
        "look around:\n"
        "  psql -h {} -p {} -U {} {} -c 'SELECT event_id, type, channel FROM interactions'\n"
        "  ./run stack status | ./run stack logs | ./run stack down".format(
            time.monotonic() - started, len(good_ids), settings.topic("dlq"), reason,
            settings.pg_host, settings.pg_port, settings.pg_user, settings.pg_database,
        )
    )


def _wait_for_rows(settings: Settings, event_ids: list[str], procs: list[subprocess.Popen[bytes]],
                   deadline: float) -> None:
    with psycopg.connect(settings.pg_conninfo(), autocommit=True) as conn:
        while True:
            (found,) = conn.execute(
                "SELECT count(*) FROM interactions WHERE event_id = ANY(%s)", (event_ids,)
            ).fetchone() or (0,)
            if found == len(event_ids):
                return
            for proc in procs:
                if proc.poll() is not None:
                    raise TouchpointError(f"a child process exited with code {proc.returncode}; see its log")
            if time.monotonic() > deadline:
                raise TouchpointError(f"only {found} of {len(event_ids)} events reached PostgreSQL in time")
            time.sleep(0.3)


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
