"""README command 1: the backbone end to end on the local default stack.

Brings the stack up, creates the topics, migrates the read model and starts
the Faust worker, the projection writers, the HTTP gateway and the lookup API
as child processes (with a gateway key and an agent key made for this run).
Then it generates a population (a few thousand customers over a year, its
history ending today) plus one known person seen on all five channels, and
ingests it the two ways channel systems do: the web, e-mail and SMS systems
through the HTTP gateway, the branch tills and the call centre through the
producer library. It writes broken bytes straight to a channel topic, waits
until every stage has caught up (progress bars on stderr), ticks the clock,
and prints what happened: events in, customers recognised, merges, points
issued and reversed, alerts raised, dead-lettered events with their reasons,
and the agent page's URL for a merged customer, a dormant one, a churn risk
and a fuel-and-shop double-points earner.

Afterwards it keeps everything running so the agent page can be opened (when
standard input is a terminal, or with ``--serve``); Ctrl-C, at any point,
stops every process it started: the children and the parts of the stack
that were not running before.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
import time
import uuid
from collections import Counter
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from tqdm import tqdm

from connectors.frontline.access import digest
from connectors.intake.producer import Delivered, EventProducer, Failed, Refused
from connectors.operations.clock import publish_tick
from connectors.platform.registry import RegistryClient
from connectors.platform.serde import EventSerde
from connectors.platform.topics import ensure_topics, event_topic
from projections.migrate import migrate
from touchpoint.core.normalise import normalise
from touchpoint.errors import TouchpointError
from touchpoint.generate import generate
from touchpoint.kafka_security import kafka_python_options
from touchpoint.settings import WORKER_PROCESSES, Settings
from touchpoint.stack import stack
from touchpoint.stack.process import stop_child

GATEWAY_CHANNELS = frozenset({"web", "email", "sms"})
"""Channels whose systems post over HTTP in the demo; branch and phone use the producer library."""
GATEWAY_BATCH = 500


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


CHILDREN: list[tuple[str, str | None]] = [*(("worker", stages) for stages in WORKER_PROCESSES),
                                          ("project", None), ("gateway", None), ("api", None)]
"""The processes the demo starts: ``touchpoint VERB`` (a worker with only these stages)."""


def child_logs(settings: Settings) -> list[Path]:
    """The log file of each process the demo starts."""
    return [_log_path(settings, verb, stages) for verb, stages in CHILDREN]


def _log_path(settings: Settings, verb: str, stages: str | None = None) -> Path:
    name = verb if stages is None else f"{verb}-{stages.replace(',', '-')}"
    return settings.home.resolve() / "logs" / f"demo-{name}.log"


def _spawn(settings: Settings, verb: str, stack_: ExitStack, env: dict[str, str],
           stages: str | None = None) -> subprocess.Popen[bytes]:
    """``touchpoint VERB`` (a worker with only ``stages``, if given), its output in the stack's logs."""
    log_path = _log_path(settings, verb, stages)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log_file = stack_.enter_context(log_path.open("ab"))
    proc = subprocess.Popen(  # noqa: S603
        [sys.executable, "-m", "touchpoint", verb], stdout=log_file, stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env={**os.environ, **env, **({} if stages is None else {"TOUCHPOINT_WORKER_STAGES": stages})},
    )

    stack_.callback(stop_child, proc)
    print(f"started `touchpoint {verb}`{'' if stages is None else f' ({stages})'} (pid {proc.pid}), "
          f"log: {log_path}", flush=True)
    return proc


def run_demo(settings: Settings, *, customers: int = 2000, days: int = 365, seed: int | None = None,
             serve: bool | None = None, timeout_s: float = 1800.0) -> None:
    """Run the demo; raises TouchpointError when a stage fails or does not catch up in time.

    :param serve: keep the backbone running after the summary until Ctrl-C (default: when stdin is a terminal).
    """
    started = time.monotonic()
    serve = sys.stdin.isatty() if serve is None else serve
    was_running = {component.name for component in stack.components(settings) if component.pid() is not None}
    try:
        stack.up(settings)
        _run(settings, customers, days, seed, serve, started + timeout_s)
    except KeyboardInterrupt:
        print("\ninterrupted: stopping what the demo started", flush=True)
    finally:
        for component in reversed(stack.components(settings)):
            if component.name not in was_running and component.pid() is not None:
                print(component.stop(), flush=True)


def _run(settings: Settings, customers: int, days: int, seed: int | None, serve: bool, deadline: float) -> None:
    began = time.monotonic()
    created = ensure_topics(settings)
    print(f"topics: {len(created)} created, the rest already existed", flush=True)
    print(f"read model: {len(migrate(settings))} migration(s) applied", flush=True)
    run_id = uuid.uuid4().hex[:8]
    now = datetime.now(UTC)
    # A fresh seed per run: event ids are the idempotency key, a rerun must add new events.
    # The history ends today, so RFM, segments, dormancy and churn read as they would in production.
    history_start = (now - timedelta(days=days)).replace(hour=0, minute=0, second=0, microsecond=0)
    population = [*sample_events(run_id, now),
                  *generate(customers, days, seed=int(run_id, 16) % 1_000_000 if seed is None else seed,
                            start=history_start)]
    gateway_key, agent_key = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    env = {
        "TOUCHPOINT_GATEWAY_KEYS": json.dumps({**settings.gateway_keys, digest(gateway_key): {
            "name": "demo-channels", "channels": sorted(GATEWAY_CHANNELS), "types": ["*"], "rate_per_s": 1000}}),
        "TOUCHPOINT_API_KEYS": json.dumps({**settings.api_keys, digest(agent_key): {
            "name": "demo-agent", "role": "agent"}}),
    }
    dlq_start = _end_offsets(settings, settings.topic("dlq"))
    with ExitStack() as children:
        procs = [_spawn(settings, verb, children, env, stages) for verb, stages in CHILDREN]
        gateway_url = f"http://{settings.gateway_host}:{settings.gateway_port}"
        api_url = f"http://{settings.gateway_host}:{settings.api_port}"
        _wait_ready([gateway_url, api_url], procs, deadline)
        over_http = [e for e in population if e.get("channel") in GATEWAY_CHANNELS]
        in_python = [e for e in population if e.get("channel") not in GATEWAY_CHANNELS]
        via_gateway = _post_all(gateway_url, gateway_key, over_http)
        via_library = _publish_all(settings, in_python, now)
        delivered = [r for r in via_gateway + via_library if isinstance(r, Delivered)]
        refused = [r for r in via_gateway + via_library if isinstance(r, Refused)]
        failed = [r for r in via_gateway + via_library if isinstance(r, Failed)]
        if failed:
            raise TouchpointError(f"{len(failed)} events were not acknowledged by Kafka, e.g. {failed[0]}")
        print(f"events in: {len(delivered)} of {len(population)} ({len(over_http)} web, e-mail and SMS events "
              f"posted to the gateway, {len(in_python)} branch and phone events through the producer library; "
              f"Avro, schema id {_schema_id(settings)}); {len(refused)} refused at the edge with a reason, "
              f"e.g. {_first_problem(refused)}", flush=True)
        raw = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all", client_id="touchpoint-demo",
                            **kafka_python_options(settings))
        try:
            raw.send(event_topic(settings, "web"), value=BAD_BYTES).get(timeout=30)
        finally:
            raw.close()
        print(f"wrote {len(BAD_BYTES)} broken bytes straight to {event_topic(settings, 'web')}", flush=True)
        _wait_caught_up(settings, procs, deadline, "folding and projecting")
        # Time passes in the log: a tick at now lets dormancy, churn windows and expiries be judged,
        # after the events are in the ordered log (the tick goes there directly, events via ingest).
        publish_tick(settings, datetime.now(UTC))
        print("the clock ticked once (touchpoint clock does it every minute in production)", flush=True)
        _wait_caught_up(settings, procs, deadline, "judging dormancy and churn")
        card = _wait_for_card(settings, "C00000042", deadline)
        rows = _rows_of(settings, [r.event_id for r in delivered])
        dead = _dead_letters(settings, dlq_start)
        at_edge = Counter(_reason_kind(f"{field}: {message}") for r in refused for field, message in r.problems[:1])
        _summary(settings, began, len(delivered), rows, card, at_edge, dead, api_url, agent_key)
        if serve:
            print("\nthe backbone keeps running so you can open the agent page; Ctrl-C stops everything the demo "
                  "started", flush=True)
            while all(proc.poll() is None for proc in procs):
                time.sleep(1)
            raise TouchpointError("a child process exited; see its log under the stack's logs directory")


def _wait_ready(urls: list[str], procs: list[subprocess.Popen[bytes]], deadline: float) -> None:
    """Until each URL's ``/readyz`` answers 200."""
    for url in urls:
        while True:
            _check_alive(procs)
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise TouchpointError(f"{url} was not ready in time")
            time.sleep(0.3)


def _post_all(url: str, key: str, events: list[dict[str, Any]]) -> list[Delivered | Refused | Failed]:
    """POST the events to the gateway in batches; a 503 or 429 batch is retried after its Retry-After."""
    results: list[Delivered | Refused | Failed] = []
    headers = {"Authorization": f"Bearer {key}"}
    with httpx.Client(timeout=60) as client, tqdm(total=len(events), unit="ev", unit_scale=True, file=sys.stderr,
                                                    desc="gateway (HTTP)", mininterval=0.5) as bar:
        for first in range(0, len(events), GATEWAY_BATCH):
            batch = events[first:first + GATEWAY_BATCH]
            for _attempt in range(10):
                answer = client.post(f"{url}/v1/events", json=batch, headers=headers)
                if answer.status_code not in (429, 503):
                    break
                time.sleep(float(answer.headers.get("Retry-After", "1")))
            if answer.status_code not in (202, 422):
                raise TouchpointError(f"the gateway answered {answer.status_code}: {answer.text[:500]}")
            for result in answer.json()["results"]:
                if result["status"] == "accepted":
                    results.append(Delivered(result["event_id"], result["topic"], result["partition"],
                                             result["offset"]))
                else:
                    problems = [(p["field"], p["message"]) for p in result.get("problems", [])]
                    results.append(Refused(result.get("event_id"), problems))
            bar.update(len(batch))
    return results


def _publish_all(settings: Settings, events: list[dict[str, Any]], now: datetime,
                 chunk: int = 2000) -> list[Delivered | Refused | Failed]:
    results: list[Delivered | Refused | Failed] = []
    with EventProducer(settings) as producer, tqdm(total=len(events), unit="ev", unit_scale=True, file=sys.stderr,
                                                    desc="producer library", mininterval=0.5) as bar:
        for first in range(0, len(events), chunk):
            results += producer.publish(events[first:first + chunk], now)
            bar.update(min(chunk, len(events) - first))
    return results


def _summary(settings: Settings, began: float, delivered: int, rows: int, card: dict[str, Any],
             at_edge: Counter[str], dead: Counter[str], api_url: str, agent_key: str) -> None:
    with psycopg.connect(settings.pg_conninfo(), autocommit=True) as conn:
        def one(query: str, params: tuple[object, ...] = ()) -> Any:
            row = conn.execute(query, params).fetchone()
            return row[0] if row else None

        cards = one("SELECT count(*) FROM customers")
        aliases = one("SELECT count(*) FROM customer_aliases")
        segments: dict[str, int] = dict(conn.execute(
            "SELECT value_segment, count(*) FROM customers GROUP BY 1 ORDER BY 1").fetchall())
        earned, reversed_ = conn.execute(
            "SELECT coalesce(sum(points) FILTER (WHERE kind IN ('earn', 'adjustment')), 0), "
            "coalesce(-sum(points) FILTER (WHERE kind = 'reversal'), 0) FROM loyalty_ledger").fetchone() or (0, 0)
        active: dict[str, int] = dict(conn.execute(
            "SELECT kind, count(*) FROM alerts WHERE state <> 'resolved' GROUP BY 1").fetchall())
        held = one("SELECT coalesce(sum(json_array_length(view->'held_refunds')), 0) FROM customers")
        # The most recently written of each kind: this run's customers, not an earlier run's.
        interesting = {
            "merged (its other id is an alias)": one(
                "SELECT a.survivor FROM customer_aliases a JOIN customers c ON c.customer_id = a.survivor "
                "ORDER BY c.as_of DESC, a.survivor LIMIT 1"),
            "dormant": one("SELECT customer_id FROM alerts WHERE kind = 'dormancy' AND state <> 'resolved' "
                           "ORDER BY updated_at DESC, customer_id LIMIT 1"),
            "churn risk": one("SELECT customer_id FROM alerts WHERE kind = 'churn' AND state <> 'resolved' "
                              "ORDER BY updated_at DESC, customer_id LIMIT 1"),
            "fuel and shop, double points": one(
                "SELECT customer_id FROM loyalty_ledger WHERE rule_id = 'fuel_and_shop' AND kind = 'earn' "
                "AND customer_id <> %s ORDER BY occurred_at DESC, customer_id LIMIT 1", (card["customer_id"],)),
        }

    def by_reason(counts: Counter[str]) -> str:
        return "\n".join(f"    {count:5d} × {reason}" for reason, count in counts.most_common(6)) or "    none"

    print(
        f"\nend to end in {time.monotonic() - began:.1f}s:\n"
        f"  {rows} events became rows in `interactions`\n"
        f"  {cards} customers recognised (`customers`, all runs so far), {aliases} ids merged into another "
        f"customer (`customer_aliases`); segments {segments}\n"
        f"  the known person (customer_no C00000042, ann@example.com, five channels) is "
        f"{card['customer_id']}: {card['counts']['total']} interactions, last contact {card['last_contact']}\n"
        f"  loyalty: {earned} points issued, {reversed_} reversed on refunds (`loyalty_ledger`, all runs)\n"
        f"  alerts active: {active.get('dormancy', 0)} dormancy, {active.get('churn', 0)} churn (`alerts`; "
        f"`./run alerts tail --from-beginning` follows the alert topics)\n"
        f"  {sum(at_edge.values())} events refused at the edge (gateway and producer library), by reason:\n"
        f"{by_reason(at_edge)}\n"
        f"  {delivered - rows} accepted at the edge and not in `interactions`: refunds held for a purchase their "
        f"customer does not hold (yet), or refused once their history was known; {held} refunds held now "
        f"(`held_refunds` on the cards, all runs)\n"
        f"  {sum(dead.values())} dead-lettered on `{settings.topic('dlq')}` during this run, by reason:\n"
        f"{by_reason(dead)}\n"
        f"\nthe agent's page (sign in with the demo agent key {agent_key}):\n"
        + "\n".join(f"  {what:34} {api_url}/agent?customer_id={cid}" if cid else f"  {what:34} none this run"
                     for what, cid in interesting.items())
        + f"\n  {'the known person':34} {api_url}/agent?customer_no=C00000042\n"
        "\nlook around:\n"
        f"  psql -h {settings.pg_host} -p {settings.pg_port} -U {settings.pg_user} {settings.pg_database} "
        "-c 'SELECT customer_id, value_segment, view->'\\''rfm'\\'' FROM customers LIMIT 10'\n"
        "  ./run loyalty simulate --rules NEW.yaml FILE.jsonl   ./run fold FILE.jsonl (the same core, offline)\n"
        "  ./run stack status | logs | down",
        flush=True,
    )


def _end_offsets(settings: Settings, topic: str) -> dict[int, int]:
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, enable_auto_commit=False,
                             **kafka_python_options(settings))
    try:
        parts = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        return {tp.partition: offset for tp, offset in consumer.end_offsets(parts).items()}
    finally:
        consumer.close()


def _dead_letters(settings: Settings, start: dict[int, int]) -> Counter[str]:
    """This run's dead letters by reason (the reason's first clause: ids and values vary)."""
    topic = settings.topic("dlq")
    end = _end_offsets(settings, topic)
    reasons: Counter[str] = Counter()
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, enable_auto_commit=False,
                             consumer_timeout_ms=5000, **kafka_python_options(settings))
    try:
        todo = [TopicPartition(topic, p) for p, last in end.items() if last > start.get(p, 0)]
        consumer.assign(todo)
        for tp in todo:
            consumer.seek(tp, start.get(tp.partition, 0))
        remaining = sum(end[tp.partition] - start.get(tp.partition, 0) for tp in todo)
        for message in consumer:
            if message.offset < end[message.partition]:
                reason = dict(message.headers).get("touchpoint.dlq.reason", b"(no reason)").decode(errors="replace")
                reasons[_reason_kind(reason)] += 1
                remaining -= 1
            if remaining <= 0:
                break
    finally:
        consumer.close()
    return reasons


def _reason_kind(reason: str) -> str:
    """A reason without the parts that differ per event (ids and numbers), for counting."""
    head = _VARYING.sub("…", reason.split(";")[0])
    return head if len(head) <= 110 else head[:107] + "..."


_VARYING = re.compile(r"[\w.-]*\d[\w.:-]*")


def _first_problem(refused: list[Refused]) -> str:
    if not refused:
        return "none"
    field, message = refused[0].problems[0]
    return f"{refused[0].event_id}: {field}: {message}"


def _wait_for_card(settings: Settings, customer_no: str, deadline: float) -> dict[str, Any]:
    """The card of the customer holding this customer number, once projected (found by its keyed hash)."""
    key = normalise("customer_no", customer_no, secret=settings.identifier_key.get_secret_value().encode()).key
    with psycopg.connect(settings.pg_conninfo(), autocommit=True) as conn:
        while time.monotonic() < deadline:
            row = conn.execute("SELECT c.view FROM customer_identifiers i JOIN customers c USING (customer_id) "
                               "WHERE i.key = %s", (key,)).fetchone()
            if row is not None:
                return dict(row[0])
            time.sleep(0.3)
    raise TouchpointError(f"no card for customer_no {customer_no} in time")


def _check_alive(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        if proc.poll() is not None:
            command = proc.args if isinstance(proc.args, list) else [proc.args]
            raise TouchpointError(f"`{' '.join(str(a) for a in command[1:])}` exited with code {proc.returncode}; "
                                  "see its log")


def _wait_caught_up(settings: Settings, procs: list[subprocess.Popen[bytes]], deadline: float, what: str) -> None:
    """Until every stage has processed everything published so far; a bar counts the records left."""
    from projections.lag import pipeline_lag

    lag = pipeline_lag(settings)
    total = sum(lag.values())
    with tqdm(total=total, unit="rec", unit_scale=True, file=sys.stderr, desc=what, mininterval=0.5) as bar:
        while behind := sum(lag.values()):
            _check_alive(procs)
            if time.monotonic() > deadline:
                raise TouchpointError(f"the pipeline did not catch up in time; records behind per stage: {lag}")
            time.sleep(0.5)
            lag = pipeline_lag(settings)
            behind = sum(lag.values())
            if bar.n + behind > total:  # later stages' input grows as earlier stages produce it
                bar.total = total = bar.n + behind
            bar.update(total - behind - bar.n)


def _rows_of(settings: Settings, event_ids: list[str]) -> int:
    with psycopg.connect(settings.pg_conninfo(), autocommit=True) as conn:
        (found,) = conn.execute(
            "SELECT count(*) FROM interactions WHERE event_id = ANY(%s)", (event_ids,)).fetchone() or (0,)
    return int(found)


def _schema_id(settings: Settings) -> int:
    with RegistryClient(settings.registry_url) as registry:
        return EventSerde(registry).writer_id
