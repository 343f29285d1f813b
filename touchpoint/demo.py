"""README command 1: the backbone end to end on the local default stack.

Brings the stack up, creates the topics, migrates the read model, starts a
Faust worker and the projection writers as child processes, publishes a few
events (good and bad) to the channel topics and waits until the good ones are
rows in PostgreSQL and the bad one is on the dead-letter topic. Prints what
happened and where to look; the children stop when it ends (or on Ctrl-C),
the stack keeps running for a look around.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from contextlib import ExitStack
from datetime import UTC, datetime

import psycopg
from kafka import KafkaConsumer, KafkaProducer

from connectors.topics import ensure_topics, event_topic
from projections.migrate import migrate
from touchpoint.errors import TouchpointError
from touchpoint.settings import Settings
from touchpoint.stack import stack


def sample_events(run_id: str, now: datetime) -> list[dict[str, object]]:
    """A handful of events: one per channel, plus one that must be dead-lettered."""
    at = now.isoformat(timespec="milliseconds")
    ids = {"customer_no": "C00000042", "email": "ann@example.com"}
    good = [
        ("web", "web", {"session_id": "s-1", "action": "login"}),
        ("branch", "purchase", {"transaction_id": f"t-{run_id}", "location_id": "station-7",
                                "lines": [{"sku": "unleaded", "category": "fuel", "quantity": 1, "amount_minor": 4200},
                                          {"sku": "coffee", "category": "shop", "quantity": 1, "amount_minor": 350}],
                                "total_minor": 4550, "currency": "GBP"}),
        ("phone", "call", {"call_id": f"call-{run_id}", "direction": "inbound", "phase": "started"}),
        ("email", "email", {"message_id": f"m-{run_id}", "action": "opened"}),
        ("sms", "sms", {"message_id": f"sms-{run_id}", "action": "delivered"}),
    ]
    events: list[dict[str, object]] = [
        {"event_id": f"demo-{run_id}-{n}", "type": type_, "channel": channel, "occurred_at": at,
         "identifiers": ids, "payload": payload}
        for n, (channel, type_, payload) in enumerate(good)
    ]
    events.append({"event_id": f"demo-{run_id}-bad", "type": "web", "channel": "web", "occurred_at": at,
                   "identifiers": {}, "payload": {"session_id": "s-2", "action": "page_view"}})
    return events


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
        producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all", enable_idempotence=True,
                                 client_id="touchpoint-demo")
        try:
            for event in events:
                producer.send(event_topic(settings, str(event["channel"])), key=str(event["event_id"]).encode(),
                              value=json.dumps(event).encode()).get(timeout=30)
        finally:
            producer.close()
        print(f"published {len(events)} events ({len(events) - 1} good, 1 bad) to "
              f"{settings.topic('events.<channel>')}", flush=True)
        good_ids = [str(e["event_id"]) for e in events[:-1]]
        _wait_for_rows(settings, good_ids, procs, started + timeout_s)
        reason = _wait_for_dead_letter(settings, str(events[-1]["event_id"]), started + timeout_s)
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


def _wait_for_dead_letter(settings: Settings, event_id: str, deadline: float) -> str:
    consumer = KafkaConsumer(settings.topic("dlq"), bootstrap_servers=settings.kafka_bootstrap,
                             auto_offset_reset="earliest", enable_auto_commit=False, group_id=None,
                             consumer_timeout_ms=1000)
    try:
        while time.monotonic() < deadline:
            for message in consumer:
                if json.loads(message.value).get("event_id") == event_id:
                    return dict(message.headers)["touchpoint.dlq.reason"].decode()
        raise TouchpointError("the bad event did not reach the dead-letter topic in time")
    finally:
        consumer.close()
