"""Benchmark of the front-line lookup (issue 8): HTTP latency at a fixed offered rate, next to raw PostgreSQL.

Preparation (timed and printed, not part of the figures):

1. A fresh database ``touchpoint_bench_<id>`` (migrated with
   :func:`projections.migrate.migrate`) and topic prefix ``bench-<id>``, both
   removed at the end, also on SIGTERM or Ctrl-C.
2. **A million cards.** A small generated population is folded with the real
   core (:class:`~touchpoint.core.fold.Folder`, cards rendered with
   :func:`~touchpoint.core.profile.render`), so the cards have the size and
   shape the profile agent writes. They are replicated to ``--customers``
   rows of ``customers``, each with its own customer id, phone
   (``+447400000000 + n``; the generator's are ``+447700900000 + n``) and
   e-mail (``u<n>@example.com``), and two ``customer_identifiers`` rows
   holding those identifiers' keyed hashes. The keys are
   :func:`~touchpoint.core.normalise.identifier_key` of the normalised value
   (what :func:`~touchpoint.core.normalise.normalise` computes; every 997th is
   checked against ``normalise()`` itself, which costs ~85 us a phone). Rows
   go in with ``COPY``, then ``ANALYZE``.
3. The lookup API (``python -m touchpoint api``, one ``service``-role key in
   ``TOUCHPOINT_API_KEYS``, with that role's limits: the rate and the daily ceiling are kept by the
   lookup's statement, as for every key), a worker (``touchpoint worker``) and the
   projection writers (``touchpoint project``) as subprocesses on the bench's
   database and topics, and a publisher of generated events at ``--ingest-rate``
   events/s with the producer library. The publisher is a child process, not
   a thread: in this process it would share the GIL with the load generator
   and its pauses would show up as lookup latency.

Measured, with the pipeline idle (the worker and the projection writers
running, nothing published):

* **HTTP.** For each ``--rates`` value, an open-loop load generator
  (asyncio streams, a pool of ``--connections`` keep-alive HTTP/1.1 connections)
  sends ``GET /v1/customers/lookup?phone=…`` on a fixed timetable (kept by a
  thread: asyncio's timers fire on whole milliseconds) for
  ``--seconds``; latency is measured from each request's *scheduled* send
  time, so a stall delays the requests behind it and is counted for all of
  them (no coordinated omission). Phones are drawn at random among the
  loaded customers, half written nationally (``07400 …``), and
  ``--miss-share`` of them belong to nobody (404 expected). Printed:
  p50/p99/p99.9/max, the achieved rate, statuses, errors (anything else than
  200 for a hit and 404 for a miss; requests still unanswered ``--seconds``
  after the last send are cancelled and counted at their wait so far), and the CPU the API process and this
  process spent per request. A short warm-up at the first rate and lookups one at a time come first.
* **Raw PostgreSQL.** After each rate, the same kind of lookups with the API's own SQL
  (``connectors.frontline.lookup._READ_BY_KEY`` and ``_AUDITED_BY_KEY``, imported, not
  copied) on the API's kind of connections (:class:`~connectors.frontline.pg.HotPool`):
  one after another, the card read alone and the API's statement (the card read, the key's limits and the audit row,
  committed); then the API's statement on the same timetable as the HTTP lookups (at most 10 s).
  Printed: p50/p99/p99.9, and the ratios HTTP / raw: ``http_p50_over_statement_p50_at_<rate>`` divides
  by the statement on the same timetable (both sides wake the same way), the ratio against the
  statements one after another is printed beside it. The timetable's own lateness is printed too.
* **Breakdown.** One lookup's CPU in the API at the first rate, in parts timed one by one in this
  process: normalising the phone, the statement on the driver's side, opening the customer numbers, the
  answer's bytes; the rest
  is the HTTP server, routing, the key check and the event loop.
* **Floor.** The same load generator against a bare ASGI app answering 10 kB (uvicorn, one process) at
  the first rate: what HTTP costs here before any lookup work, to read the ratios against.

Then, with ``--ingest-rate`` > 0, a publisher of generated events starts (the pipeline at
``--pipeline-nice``) and the first rate is measured again while the pipeline works.
``--json`` prints the figures as one JSON object on stdout (``api_cpu_ms``: the worst rate's,
``p99_ms_at_<rate>``, ``p99_ms_at_<rate>_with_ingest``, ``achieved_at_<rate>``,
``one_at_a_time_p99_ms``, ``cards``, ...) and the report on stderr.

Every figure line carries the load average at that moment: two cores shared
with other work make the wall clock measure the neighbours too.

    python -m bench.lookup                     # 1,000,000 customers, 200 then 1,000 requests/s, 20 s each
    python -m bench.lookup --customers 100000 --rates 200 --seconds 10
    python -m bench.lookup --tiny              # CI smoke: 1,000 customers, 2 s at 20 and 50 requests/s
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import multiprocessing
import os
import random
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

from bench.machine import machine_line
from touchpoint.settings import Settings
from touchpoint.stack.process import stop_child

_PHONE_BASE = 447_400_000_000  # +44 7400 000000: a UK mobile range the generator does not use
_CHUNK = 10_000  # rows per COPY transaction
_TOPIC = "customer-views"


def _load() -> str:
    return f"load {os.getloadavg()[0]:.2f}"


def _pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile (values in seconds); 0.0 for none."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _ms(values: list[float]) -> str:
    return (f"p50 {_pct(values, 0.5) * 1e3:.2f} ms, p99 {_pct(values, 0.99) * 1e3:.2f} ms, "
            f"p99.9 {_pct(values, 0.999) * 1e3:.2f} ms, max {max(values, default=0.0) * 1e3:.2f} ms")


def _phone(n: int) -> str:
    return f"+{_PHONE_BASE + n}"


def _national(n: int) -> str:
    digits = str(_PHONE_BASE + n)[2:]  # 7400nnnnnn
    return f"0{digits[:4]} {digits[4:]}"


def _email(n: int) -> str:
    return f"u{n}@example.com"


# --- the read model: a folded population, replicated ---

def _templates(customers: int, days: int, seed: int,
               secret: bytes) -> tuple[list[tuple[str, str, str, dict[str, Any]]], int]:
    """Cards of a folded generated population as ``(json template, as_of, value_segment, person)``, and events
    folded.

    The template is the card's JSON (keys sorted) up to where its person and identifiers go, last, with
    ``@@CID@@`` for the customer id; the person with the name in clear (sealed per replica).
    """
    from touchpoint.contract.models import ContractViolation, validate_event
    from touchpoint.core.fold import FoldConfig, Folder
    from touchpoint.core.profile import render
    from touchpoint.generate import generate

    folder = Folder(FoldConfig(), secret=secret, keep_decisions=False, log_clock_check=False)
    folded = 0
    for doc in generate(customers, days, seed):
        try:
            folder.add(validate_event(doc, None))
        except ContractViolation:
            continue
        folded += 1
    as_of = datetime.fromtimestamp(0, UTC) + timedelta(milliseconds=folder.latest_ms or 0)
    stamp = as_of.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    out = []
    for customer_id in sorted(folder.views):
        card = render(folder.views[customer_id], as_of, folder.config.segment, folder.rules)
        card = {**card, "customer_id": "@@CID@@", "aliases": []}
        card.pop("identifiers")
        person = card.pop("person")
        # As the customers projection stores a view: its person and identifiers last (view_text).
        out.append((json.dumps(card, sort_keys=True)[:-1] + ",", stamp, str(card["value_segment"]), person))
    return out, folded


def _fill(settings: Settings, templates: list[tuple[str, str, str, dict[str, Any]]], customers: int, secret: bytes,
          source_topic: str, workers: int) -> None:
    """COPY ``customers`` rows (cards from ``templates``, round robin) and their phone and e-mail keys.

    The cards hold their phone and e-mail as pseudonyms sealed under data keys made in the key store, as
    ingestion writes them, and the person's name (when the template has one) sealed under the e-mail's data
    key, so every lookup opens it as in production (its wrapped key comes with the card, by ``agent_keys``).
    ``workers`` threads, each with its own connection, take chunks in turn: PostgreSQL's side (parsing each card
    into jsonb and compressing it) is most of the work, and each connection has a backend of its own.
    """
    from concurrent.futures import ThreadPoolExecutor

    import psycopg
    from tqdm import tqdm

    from connectors.platform.keystore import PostgresKeyStore
    from touchpoint.core.masking import mask_card
    from touchpoint.core.normalise import identifier_key, normalise
    from touchpoint.core.pseudonym import pseudonym, seal_text

    conninfo = settings.pg_conninfo()

    def rows(start: int, loop: asyncio.AbstractEventLoop, keystore: PostgresKeyStore) -> tuple[bytes, bytes]:
        cards, keys = [], []
        people = []
        for n in range(start, min(customers, start + _CHUNK)):
            phone, email = _phone(n), _email(n)
            people.append((n, phone, email, identifier_key("phone", phone, secret),
                           identifier_key("email", email, secret)))
        data_keys = loop.run_until_complete(keystore.data_keys(
            [key for *_, phone_key, email_key in people for key in (phone_key, email_key)], create=True))
        for n, phone, email, phone_key, email_key in people:
            template, as_of, segment, person = templates[n % len(templates)]
            customer_id = f"cus_{n:016x}"
            if n % 997 == 0:  # the keys are what ingestion and the API compute
                assert normalise("phone", _national(n), secret=secret).key == phone_key, phone
                assert normalise("email", email.upper(), secret=secret).key == email_key, email
            ids = json.dumps({"email": [pseudonym("email", email_key, email, data_keys[email_key])],
                              "phone": [pseudonym("phone", phone_key, phone, data_keys[phone_key])]})
            if person["name"] is not None:
                person = {**person, "name": seal_text(email_key, person["name"], data_keys[email_key], os.urandom(12))}
            agent_keys = "{" + email_key + "}" if person["name"] is not None else "{}"
            head = template.replace("@@CID@@", customer_id, 1) + f'"person":{json.dumps(person)},'
            view = f'{head}"identifiers":{ids}}}'.replace("\\", "\\\\")  # COPY text: backslashes doubled
            # The identifiers an agent sees, as the customers projection stores them beside the view.
            shown = json.dumps(mask_card({"identifiers": {"email": [email], "phone": [phone]}})["identifiers"],
                               ensure_ascii=False).replace("\\", "\\\\")
            cards.append(f"{customer_id}\t{view}\t{shown}\t{len(head.encode())}\t{agent_keys}\t{as_of}\t"
                         f"{segment}\t{source_topic}\t0\t0\n")
            keys.append(f"{phone_key}\tphone\t{customer_id}\t0\n{email_key}\temail\t{customer_id}\t0\n")
        return "".join(cards).encode(), "".join(keys).encode()

    def worker(first: int, bar: tqdm[Any]) -> None:
        loop = asyncio.new_event_loop()  # the key store is async; one loop and connection per thread
        keystore = PostgresKeyStore(settings)
        with psycopg.connect(conninfo) as conn:
            conn.execute("SET synchronous_commit = off")  # a bulk load; the last COMMIT is what counts
            for start in range(first * _CHUNK, customers, workers * _CHUNK):
                cards, keys = rows(start, loop, keystore)
                with conn.cursor() as cur:
                    with cur.copy("COPY customers (customer_id, view, masked_identifiers, identifiers_at, "
                                  "agent_keys, as_of, value_segment, source_topic, "
                                  "source_partition, source_offset) FROM STDIN") as copy:
                        copy.write(cards)
                    with cur.copy("COPY customer_identifiers (key, kind, customer_id, source_offset) "
                                  "FROM STDIN") as copy:
                        copy.write(keys)
                conn.commit()
                bar.update(min(_CHUNK, customers - start))
        loop.run_until_complete(keystore.close())
        loop.close()

    with tqdm(total=customers, unit=" customers", unit_scale=True, desc="loading", file=sys.stderr,
              mininterval=1.0) as bar, ThreadPoolExecutor(workers) as pool:
        for done in [pool.submit(worker, first, bar) for first in range(workers)]:
            done.result()
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute("ANALYZE customers")
        conn.execute("ANALYZE customer_identifiers")


# --- the ingest that runs meanwhile ---

def _publish_events(topic_prefix: str, database: str, rate: float, customers: int, days: int,
                    ready: Any, stop: Any, published: Any, nice: int) -> None:
    """Child process: publish generated events at ``rate``/s until ``stop`` is set (or they run out)."""
    os.nice(nice)  # the channels' systems: another machine in production, background work here
    from connectors.intake.producer import Delivered, EventProducer
    from touchpoint.generate import generate
    from touchpoint.settings import load_settings

    settings = load_settings(topic_prefix=topic_prefix, pg_database=database)
    events = [e for e in generate(customers, days, seed=17) if e["event_id"].startswith("ev-")]
    batch = max(1, int(rate / 10))
    with EventProducer(settings) as producer:
        ready.set()
        began = time.perf_counter()
        for i in range(0, len(events), batch):
            if stop.is_set():
                break
            delivered = sum(isinstance(r, Delivered) for r in producer.publish(events[i:i + batch], datetime.now(UTC)))
            with published.get_lock():
                published.value += delivered
            ahead = began + (i + batch) / rate - time.perf_counter()
            if ahead > 0:
                stop.wait(ahead)


# --- the load generator ---

@dataclass
class _Run:
    latencies: list[float] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    sent: int = 0
    span_s: float = 0.0
    unanswered: int = 0
    in_flight: dict[int, float] = field(default_factory=dict)  # request number -> scheduled time
    late: list[float] = field(default_factory=list)  # how long after its scheduled time each request started


def _lookups(rng: random.Random, customers: int, n: int, miss_share: float) -> list[tuple[int, bool]]:
    """``n`` phones as (number index, hit?): misses are indices past the loaded customers."""
    out = []
    for _ in range(n):
        if rng.random() < miss_share:
            out.append((customers + rng.randrange(customers), False))
        else:
            out.append((rng.randrange(customers), True))
    return out


class _Connections:
    """Keep-alive HTTP/1.1 connections to one host, at most ``size``; taking one is O(1).

    A minimal client on asyncio streams rather than httpx: httpx's pool scans every queued request on each
    assignment (quadratic once thousands wait), and its per-request CPU (~5 ms here under load) would compete
    with the API for the same two cores.
    """

    def __init__(self, host: str, port: int, size: int) -> None:
        self.host, self.port = host, port
        self.free: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter] | None] = asyncio.Queue()
        for _ in range(size):
            self.free.put_nowait(None)  # a slot not connected yet

    async def get(self, request: bytes, timeout_s: float) -> int:
        """Send one request and read its answer; its status."""
        slot = await self.free.get()
        try:
            async with asyncio.timeout(timeout_s):
                if slot is None:
                    slot = await asyncio.open_connection(self.host, self.port)
                reader, writer = slot
                writer.write(request)
                status = int((await reader.readline()).split()[1])
                length, close = None, False
                while (line := await reader.readline()) not in (b"\r\n", b""):
                    name, _, value = line.partition(b":")
                    name = name.strip().lower()
                    if name == b"content-length":
                        length = int(value)
                    elif name == b"connection" and value.strip().lower() == b"close":
                        close = True
                if length is None:
                    raise ConnectionError("an answer without Content-Length")
                await reader.readexactly(length)
            if close:
                writer.close()
                slot = None
            return status
        except BaseException:
            if slot is not None:
                slot[1].close()
            slot = None
            raise
        finally:
            self.free.put_nowait(slot)

    async def close(self) -> None:
        while not self.free.empty():
            slot = self.free.get_nowait()
            if slot is not None:
                slot[1].close()


async def _paced(rate: float, seconds: float, one: Callable[[int], Awaitable[None]], run: _Run) -> None:
    """Start ``one(i)`` for the ``rate * seconds`` requests on a fixed timetable; each one's latency from its
    scheduled time into ``run``. What is unanswered a grace period after the last scheduled start is cancelled and
    counted at its wait so far (a lower bound of its latency): an overloaded server is not waited for without end."""
    total = int(rate * seconds)
    tasks: list[asyncio.Task[None]] = []
    loop = asyncio.get_running_loop()
    start = time.perf_counter() + 0.01
    all_sent = asyncio.Event()
    stop = threading.Event()

    async def timed(i: int) -> None:
        scheduled = start + i / rate
        run.in_flight[i] = scheduled
        try:
            await one(i)
        finally:
            if not asyncio.current_task().cancelling():  # type: ignore[union-attr]
                del run.in_flight[i]
                run.latencies.append(time.perf_counter() - scheduled)

    def send(i: int) -> None:
        run.late.append(time.perf_counter() - start - i / rate)
        tasks.append(asyncio.create_task(timed(i)))
        if i == total - 1:
            all_sent.set()

    def clock() -> None:
        # The timetable is kept by a thread, not by asyncio.sleep: the event loop's timers fire on whole
        # milliseconds (epoll's timeout), ~0.6 ms late at the median here, and that lateness of the client would
        # count as the server's latency. A sleeping thread wakes ~0.1 ms after its time and wakes the loop at once.
        for i in range(total):
            wait = start + i / rate - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            if stop.is_set():
                return
            loop.call_soon_threadsafe(send, i)

    if total == 0:
        all_sent.set()
    clock_thread = threading.Thread(target=clock, name="timetable", daemon=True)
    clock_thread.start()
    try:
        await all_sent.wait()
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=max(5.0, seconds))
            cut = time.perf_counter()
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            run.unanswered = len(pending)
            run.latencies += [cut - scheduled for scheduled in run.in_flight.values()]
    finally:
        stop.set()
        clock_thread.join()
    run.sent = total
    run.span_s = time.perf_counter() - start


async def _offer(host: str, port: int, api_key: str, rate: float, seconds: float, lookups: list[tuple[int, bool]],
                 connections: int) -> _Run:
    """Send ``rate`` requests/s for ``seconds`` on a fixed timetable; latency from each scheduled time."""
    run = _Run()
    pool = _Connections(host, port, connections)
    head = f"Host: {host}:{port}\r\nAuthorization: Bearer {api_key}\r\nAccept: application/json\r\n\r\n"

    async def one(i: int) -> None:
        index, hit = lookups[i % len(lookups)]
        phone = _national(index) if i % 2 else _phone(index)
        request = f"GET /v1/customers/lookup?phone={quote(phone)} HTTP/1.1\r\n{head}".encode()
        try:
            status = await pool.get(request, 10.0)
        except (OSError, TimeoutError, ValueError, IndexError, asyncio.IncompleteReadError) as exc:
            run.errors[type(exc).__name__] += 1
            return
        run.statuses[status] += 1
        if status != (200 if hit else 404):
            run.errors[f"status {status} for a {'hit' if hit else 'miss'}"] += 1

    try:
        await _paced(rate, seconds, one, run)
    finally:
        await pool.close()
    return run


def _statement_args(settings: Settings, key_name: str, key: str) -> tuple[Any, ...]:
    """The parameters the API binds to its statement for a phone lookup (masked) by a ``service`` key: the
    identifier's key, the caller, and the role's limits, which the statement keeps as the API's does."""
    from connectors.frontline.access import Principal
    from connectors.frontline.limits import limits_of

    limits = limits_of(settings, Principal(key_name, "service"))
    return (key, False, key_name, "service", "lookup", "phone", key, None, limits.per_s, limits.burst,
            limits.daily_customers, limits.shards)


async def _made_shards(hot: Any, settings: Settings, key_name: str) -> None:
    """The shards of ``key_name``'s bucket, full, as the API makes them before a key's first lookup."""
    from connectors.frontline.access import Principal
    from connectors.frontline.limits import SHARDS, limits_of

    limits = limits_of(settings, Principal(key_name, "service"))
    await hot.execute(SHARDS, key_name, limits.burst / limits.shards, limits.shards)


def _statement_paced(settings: Settings, secret: bytes, rate: float, seconds: float, lookups: list[tuple[int, bool]],
                     connections: int) -> _Run:
    """The API's statement alone on the API's own connections (:class:`~connectors.frontline.pg.HotPool`), on the
    same timetable as the HTTP lookups: the denominator of the HTTP / statement ratio, measured as its numerator."""
    from connectors.frontline.lookup import _AUDITED_BY_KEY
    from connectors.frontline.pg import HotPool
    from touchpoint.core.normalise import normalise

    keys = [normalise("phone", _national(index) if i % 2 else _phone(index), region=settings.phone_region,
                      secret=secret).key for i, (index, _) in enumerate(lookups)]

    async def main() -> _Run:
        run = _Run()
        hot = HotPool(settings, max_size=connections)
        await hot.open()
        await _made_shards(hot, settings, "bench-paced")
        # Connections opened before the timetable starts, as the HTTP side's warm-up opened the API's.
        await asyncio.gather(*(hot.fetchrow("SELECT pg_sleep(0.05)") for _ in range(connections)))

        async def one(i: int) -> None:
            key = keys[i % len(keys)]
            row = await hot.fetchrow(_AUDITED_BY_KEY, *_statement_args(settings, "bench-paced", key))
            run.statuses[row[0]] += 1

        try:
            await _paced(rate, seconds, one, run)
        finally:
            await hot.close()
        return run

    return asyncio.run(main())


async def _one_at_a_time(host: str, port: int, api_key: str, lookups: list[tuple[int, bool]]) -> list[float]:
    """The lookups one after another on one keep-alive connection: the service time, with no queue."""
    pool = _Connections(host, port, 1)
    head = f"Host: {host}:{port}\r\nAuthorization: Bearer {api_key}\r\nAccept: application/json\r\n\r\n"
    latencies = []
    try:
        for i, (index, _) in enumerate(lookups):
            phone = _national(index) if i % 2 else _phone(index)
            request = f"GET /v1/customers/lookup?phone={quote(phone)} HTTP/1.1\r\n{head}".encode()
            began = time.perf_counter()
            await pool.get(request, 10.0)
            latencies.append(time.perf_counter() - began)
    finally:
        await pool.close()
    return latencies


def _raw(settings: Settings, secret: bytes, lookups: list[tuple[int, bool]]) -> tuple[list[float], list[float]]:
    """The API's SQL on the API's own connection kind for each lookup, one after another: (card read times, the
    API's statement: read + audit row, committed)."""
    from connectors.frontline.lookup import _AUDITED_BY_KEY, _READ_BY_KEY
    from connectors.frontline.pg import HotPool
    from touchpoint.core.normalise import normalise

    async def run() -> tuple[list[float], list[float]]:
        query, whole = [], []
        hot = HotPool(settings, max_size=1)
        await hot.open()
        await _made_shards(hot, settings, "bench-raw")
        try:
            for i, (index, _) in enumerate(lookups):
                key = normalise("phone", _national(index) if i % 2 else _phone(index), secret=secret).key
                began = time.perf_counter()
                await hot.fetchrow(_READ_BY_KEY, key, False)
                queried = time.perf_counter()
                await hot.fetchrow(_AUDITED_BY_KEY, *_statement_args(settings, "bench-raw", key))
                done = time.perf_counter()
                query.append(queried - began)
                whole.append(done - queried)
        finally:
            await hot.close()
        return query, whole

    return asyncio.run(run())


def _breakdown(settings: Settings, secret: bytes, customers: int, api_cpu_s: float, rate: float,
               say: Any) -> None:
    """Print what one lookup's CPU in the API is made of: the parts of its work timed one by one in this process."""
    from connectors.frontline.lookup import _AUDITED_BY_KEY, _Outcome, agent_card
    from connectors.frontline.pg import HotPool
    from connectors.platform.keystore import PostgresKeyStore
    from touchpoint.core.normalise import normalise

    picked = random.Random(7).sample(range(customers), min(2_000, customers))
    phones = [_national(n) if i % 2 else _phone(n) for i, n in enumerate(picked)]
    began = time.process_time()
    keys = [normalise("phone", phone, region=settings.phone_region, secret=secret).key for phone in phones]
    normalising = (time.process_time() - began) / len(keys)

    async def statements() -> tuple[list[Any], float]:
        hot = HotPool(settings, max_size=1)  # the API's own connections
        await hot.open()
        await _made_shards(hot, settings, "bench-breakdown")
        try:
            rows = []
            began = time.process_time()
            for key in keys:
                rows.append(await hot.fetchrow(_AUDITED_BY_KEY, *_statement_args(settings, "bench-breakdown", key)))
            return rows, (time.process_time() - began) / len(keys)
        finally:
            await hot.close()

    rows, statement = asyncio.run(statements())
    found = [row[2:] for row in rows if row[0] == 200]
    keystore = PostgresKeyStore(settings)  # unwraps data keys with the master key; no connection for that
    began = time.process_time()
    cards = [agent_card(text, masked, at, names, wrapped, keystore) for _, _, text, masked, at, names, wrapped in found]
    opening = (time.process_time() - began) / max(len(found), 1)
    began = time.process_time()
    for (customer_id, as_of, *_), card in zip(found, cards, strict=True):
        _Outcome(200, customer_id=customer_id, as_of=as_of, masked=card).body()
    answering = (time.process_time() - began) / max(len(found), 1)
    rest = api_cpu_s - normalising - statement - opening - answering
    say(f"one lookup's CPU at {rate:g} req/s, {api_cpu_s * 1e3:.3f} ms in the API: normalising the phone "
        f"{normalising * 1e6:.0f} us, the statement (card read, limits, audit row, commit) on the driver's side "
        f"{statement * 1e6:.0f} us, opening the customer numbers (the projection stores the rest masked) "
        f"{opening * 1e6:.0f} us, the answer's bytes {answering * 1e6:.0f} us; HTTP server, routing, key check and "
        f"event loop the rest, {rest * 1e6:.0f} us (parts timed in this process, {len(keys)} lookups each); "
        f"{_load()}", flush=True)


_BARE_BODY = b'{"card":"' + b"x" * 10_000 + b'"}'


async def bare_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """An ASGI app that answers every request with 10 kB of JSON: the floor of the server and the load generator."""
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(_BARE_BODY))]})
    await send({"type": "http.response.body", "body": _BARE_BODY})


def _bare_floor(host: str, rate: float, seconds: float, connections: int) -> tuple[float, float, float]:
    """The load generator against :func:`bare_app` under uvicorn, one process: (p50 s, p99 s, CPU s per request)."""
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "uvicorn", "bench.lookup:bare_app", "--host", host,  # noqa: S603
                               "--port", str(port), "--log-level", "warning", "--no-access-log",
                               "--no-proxy-headers"], cwd=Path(__file__).resolve().parent.parent,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection((host, port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError("the bare ASGI app did not start") from None
                time.sleep(0.2)
        hits = [(n, True) for n in range(1_000)]
        asyncio.run(_offer(host, port, "-", rate, 1.0, hits, connections))  # warm-up
        cpu = _cpu_s(server.pid)
        run = asyncio.run(_offer(host, port, "-", rate, seconds, hits, connections))
        cpu = _cpu_s(server.pid) - cpu
        return _pct(run.latencies, 0.5), _pct(run.latencies, 0.99), cpu / max(len(run.latencies), 1)
    finally:
        stop_child(server)


# --- processes ---

def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds so far of a process and its live children (the API's worker processes)."""
    def stat(p: int | str) -> list[str]:
        with open(f"/proc/{p}/stat", encoding="ascii") as fh:
            return fh.read().rpartition(")")[2].split()

    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = stat(entry)
        except OSError:
            continue  # gone meanwhile
        if int(entry) == pid or int(fields[1]) == pid:
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def _spawn(verb: str, env: dict[str, str], logs: Path, nice: int = 0) -> subprocess.Popen[bytes]:
    with (logs / f"{verb}.log").open("wb") as out:
        return subprocess.Popen([sys.executable, "-m", "touchpoint", verb], env=env, stdin=subprocess.DEVNULL,
                                stdout=out, stderr=subprocess.STDOUT,
                                preexec_fn=(lambda: os.nice(nice)) if nice else None)  # noqa: PLW1509


def _wait_ready(base_url: str, api: subprocess.Popen[bytes], logs: Path, timeout_s: float = 60) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if api.poll() is not None:
            raise RuntimeError(f"the API exited with {api.returncode}: {(logs / 'api.log').read_text()[-2000:]}")
        try:
            if httpx.get(f"{base_url}/readyz", timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"the API was not ready in {timeout_s:.0f}s: {(logs / 'api.log').read_text()[-2000:]}")


def _settle(pid: int, timeout_s: float = 30.0) -> None:
    """Wait until the API has finished what an overloaded phase left it (it idles: < 10 % of a core)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        before = _cpu_s(pid)
        time.sleep(0.5)
        if _cpu_s(pid) - before < 0.05:
            return


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.lookup", description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=1_000_000, help="cards in the read model")
    parser.add_argument("--template-customers", type=int, default=1_000,
                        help="size of the folded population whose cards are replicated")
    parser.add_argument("--template-days", type=int, default=365)
    parser.add_argument("--load-workers", type=int, default=2, help="COPY connections loading the read model")
    parser.add_argument("--rates", type=float, nargs="+", default=[200.0, 1000.0], help="requests/s offered")
    parser.add_argument("--seconds", type=float, default=20.0, help="measured seconds per rate")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds at the first rate before measuring")
    parser.add_argument("--connections", type=int, default=64, help="the load generator's connection pool")
    parser.add_argument("--miss-share", type=float, default=0.05, help="share of phones that match nobody")
    parser.add_argument("--raw", type=int, default=5_000, help="sequential raw PostgreSQL lookups per rate")
    parser.add_argument("--ingest-rate", type=float, default=300.0, help="events/s published meanwhile (0: none)")
    parser.add_argument("--one-at-a-time", type=int, default=1_000,
                        help="lookups sent one after another before the rates (0: none)")
    parser.add_argument("--pipeline-nice", type=int, default=10,
                        help="CPU niceness of the worker, the projection writers and the publisher (0: as the API)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", action="store_true",
                        help="print the figures as one JSON object on stdout (the report goes to stderr)")
    parser.add_argument("--tiny", action="store_true",
                        help="a smoke run: 1,000 customers, 2 s at 20 then 50 requests/s, ingest at 50 events/s")
    args = parser.parse_args(argv)
    if args.tiny:
        args.customers, args.template_customers, args.template_days = 1_000, 50, 60
        args.rates, args.seconds, args.warmup, args.raw, args.ingest_rate = [20.0, 50.0], 2.0, 1.0, 200, 50.0
    if (args.customers < 1 or args.template_customers < 1 or args.load_workers < 1 or args.seconds <= 0
            or min(args.rates) <= 0):
        parser.error("--customers, --template-customers, --load-workers, --seconds and --rates must be positive")
    out = sys.stderr if args.json else sys.stdout

    def say(*parts: object, **kwargs: Any) -> None:
        kwargs.pop("file", None)
        print(*parts, file=kwargs.pop("to", out), **kwargs)

    figures: dict[str, Any] = {"cards": args.customers}
    # A SIGTERM (a timeout) still stops the children and drops the database and topics in the finally below.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    say(machine_line())
    say(f"start: {_load()}", flush=True)

    import psycopg
    from kafka import KafkaAdminClient
    from psycopg import sql

    from connectors.frontline.access import digest
    from connectors.platform.topics import ensure_topics
    from projections.migrate import migrate
    from touchpoint.settings import load_settings

    run_id = uuid.uuid4().hex[:10]
    base = load_settings()
    settings = base.model_copy(update={"topic_prefix": f"bench-{run_id}", "pg_database": f"touchpoint_bench_{run_id}"})
    secret = settings.identifier_key.get_secret_value().encode()
    admin = settings.pg_conninfo("postgres")
    try:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(settings.pg_database)))
    except psycopg.OperationalError as exc:
        say(f"PostgreSQL at {settings.pg_host}:{settings.pg_port} is not reachable (touchpoint stack up?): {exc}",
              to=sys.stderr)
        return 2
    children: list[subprocess.Popen[bytes]] = []
    spawn_ctx = multiprocessing.get_context("spawn")
    stop_ingest = spawn_ctx.Event()
    publisher: Any = None
    logs = Path(tempfile.mkdtemp(prefix="bench-lookup-"))
    try:
        ensure_topics(settings)
        migrate(settings)
        conninfo = settings.pg_conninfo()
        env = {**os.environ, "TOUCHPOINT_TOPIC_PREFIX": settings.topic_prefix,
               "TOUCHPOINT_PG_DATABASE": settings.pg_database, "TOUCHPOINT_LOG_LEVEL": "WARNING"}
        if args.ingest_rate > 0:  # started first: they have joined their groups by the time it matters
            children += [_spawn(verb, env, logs, args.pipeline_nice) for verb in ("worker", "project")]

        began = time.perf_counter()
        templates, folded = _templates(args.template_customers, args.template_days, args.seed, secret)
        sizes = sorted(len(t) for t, *_ in templates)
        say(f"templates: {folded} events of {args.template_customers} generated customers x {args.template_days} "
              f"days folded into {len(templates)} cards (JSON without identifiers p50 {sizes[len(sizes) // 2]:,} B, "
              f"max {sizes[-1]:,} B) in {time.perf_counter() - began:.1f}s; {_load()}", flush=True)
        began = time.perf_counter()
        _fill(settings, templates, args.customers, secret, settings.topic(_TOPIC), args.load_workers)
        took = time.perf_counter() - began
        with psycopg.connect(conninfo) as conn:
            size = conn.execute("SELECT pg_size_pretty(pg_total_relation_size('customers')), "
                                "pg_size_pretty(pg_total_relation_size('customer_identifiers'))").fetchone()
        say(f"read model: {args.customers:,} customers and {2 * args.customers:,} identifier keys loaded with COPY "
              f"+ ANALYZE in {took:.1f}s ({args.customers / took:,.0f} customers/s); customers {size[0]}, "
              f"customer_identifiers {size[1]}; {_load()}", flush=True)  # type: ignore[index]

        api_key = secrets.token_urlsafe(32)
        port = _free_port()
        api_env = {**env, "TOUCHPOINT_API_PORT": str(port),
                   "TOUCHPOINT_API_KEYS": json.dumps({digest(api_key): {"name": "bench-service", "role": "service"}})}
        api = _spawn("api", api_env, logs)
        children.append(api)
        host = settings.gateway_host
        base_url = f"http://{host}:{port}"
        _wait_ready(base_url, api, logs)

        published = spawn_ctx.Value("q", 0)
        ingest_began = 0.0
        rng = random.Random(args.seed)
        # The preparation's objects (templates, rows) out of the load generator's collections: a full collection
        # of them paused it for tens of milliseconds, counted as the API's latency.
        gc.collect()
        gc.freeze()
        if args.warmup > 0:
            warm = asyncio.run(_offer(host, port, api_key, args.rates[0], args.warmup,
                                      _lookups(rng, args.customers, 5_000, args.miss_share), args.connections))
            say(f"warm-up: {warm.sent} requests at {args.rates[0]:g}/s, not counted; {_load()}", flush=True)
        if args.one_at_a_time > 0:
            serial = asyncio.run(_one_at_a_time(host, port, api_key, _lookups(rng, args.customers, args.one_at_a_time,
                                                                              args.miss_share)))
            figures["one_at_a_time_p99_ms"] = round(_pct(serial, 0.99) * 1e3, 2)
            say(f"HTTP lookup one at a time ({len(serial)} on one connection, no queue: the service time): "
                f"{_ms(serial)}; {_load()}", flush=True)

        def measure(rate: float, phase: str) -> tuple[_Run, float, list[float], list[float]]:
            """One rate: the HTTP figures and the API's CPU per request, then the raw statement's figures."""
            _settle(api.pid)  # requests cancelled by an earlier phase may still be running in the API
            lookups = _lookups(rng, args.customers, int(rate * args.seconds), args.miss_share)
            api_cpu, own_cpu = _cpu_s(api.pid), time.process_time()
            result = asyncio.run(_offer(host, port, api_key, rate, args.seconds, lookups, args.connections))
            api_cpu, own_cpu = _cpu_s(api.pid) - api_cpu, time.process_time() - own_cpu
            errors = sum(result.errors.values()) + result.unanswered
            if result.unanswered:
                result.errors[f"unanswered {max(5.0, args.seconds):g}s after the last send (cancelled; "
                              "counted at their wait so far)"] = result.unanswered
            done = len(result.latencies) - result.unanswered
            statuses = ", ".join(f"{s}: {c}" for s, c in sorted(result.statuses.items()))
            per_request = api_cpu / max(done, 1)
            say(f"HTTP lookup at {rate:g} req/s offered, {phase}, {args.customers:,} customers: "
                f"{_ms(result.latencies)}; "
                f"achieved {done / result.span_s:,.0f} req/s ({done} in {result.span_s:.1f}s; {statuses}); "
                f"errors {errors}{' ' + str(dict(result.errors)) if errors else ''}; "
                f"CPU per request: API {per_request * 1e3:.2f} ms, load generator "
                f"{own_cpu / max(done, 1) * 1e3:.2f} ms; {_load()}", flush=True)
            query, whole = _raw(settings, secret, lookups[:args.raw])
            say(f"raw PostgreSQL, {len(query)} sequential lookups after it: card query {_ms(query)}; "
                f"read + audit row + commit (the API's statement) {_ms(whole)}; {_load()}", flush=True)
            paced = _statement_paced(settings, secret, rate, min(args.seconds, 10.0), lookups, args.connections)
            say(f"raw PostgreSQL, the API's statement at {rate:g}/s on the same timetable ({len(paced.latencies)} "
                f"on the API's kind of connections): {_ms(paced.latencies)}; {_load()}", flush=True)
            http50, http99 = _pct(result.latencies, 0.5), _pct(result.latencies, 0.99)
            say(f"ratio HTTP / the API's statement at {rate:g} req/s: p50 {http50 / _pct(paced.latencies, 0.5):.1f}x, "
                f"p99 {http99 / _pct(paced.latencies, 0.99):.1f}x (against the statements one after another: p50 "
                f"{http50 / _pct(whole, 0.5):.1f}x, p99 {http99 / _pct(whole, 0.99):.1f}x; HTTP / card query: p50 "
                f"{http50 / _pct(query, 0.5):.1f}x); the timetable kept to p50 {_pct(result.late, 0.5) * 1e3:.2f} ms, "
                f"p99 {_pct(result.late, 0.99) * 1e3:.2f} ms late", flush=True)
            return result, per_request, paced.latencies, whole

        cpu_per_request: dict[float, float] = {}
        for rate in args.rates:
            result, cpu_per_request[rate], paced, whole = measure(rate, "pipeline idle")
            done = len(result.latencies) - result.unanswered
            key = f"{rate:g}"
            figures[f"p99_ms_at_{key}"] = round(_pct(result.latencies, 0.99) * 1e3, 2)
            figures[f"achieved_at_{key}"] = round(done / result.span_s, 1)
            figures[f"http_p50_over_statement_p50_at_{key}"] = round(
                _pct(result.latencies, 0.5) / _pct(paced, 0.5), 2)
            figures[f"http_p50_over_sequential_statement_p50_at_{key}"] = round(
                _pct(result.latencies, 0.5) / _pct(whole, 0.5), 2)
        # The worst rate's figure (CPU per request rises as the rate falls: fewer requests share each wake-up).
        figures["api_cpu_ms"] = round(max(cpu_per_request.values()) * 1e3, 3)
        figures["api_cpu_ms_by_rate"] = {f"{rate:g}": round(cpu * 1e3, 3) for rate, cpu in cpu_per_request.items()}
        _breakdown(settings, secret, args.customers, cpu_per_request[args.rates[0]], args.rates[0], say)
        floor = _bare_floor(host, args.rates[0], args.seconds, args.connections)
        figures["bare_asgi_p50_ms"] = round(floor[0] * 1e3, 2)
        say(f"floor of this load generator and server: a bare ASGI app (uvicorn, one process, a 10 kB answer) at "
            f"{args.rates[0]:g} req/s: p50 {floor[0] * 1e3:.2f} ms, p99 {floor[1] * 1e3:.2f} ms, "
            f"{floor[2] * 1e3:.2f} ms of CPU per request; {_load()}", flush=True)

        if args.ingest_rate > 0:
            with psycopg.connect(conninfo, autocommit=True) as conn:
                rows_before = conn.execute("SELECT count(*) FROM interactions").fetchone()[0]  # type: ignore[index]
            ready = spawn_ctx.Event()
            needed = args.ingest_rate * (args.seconds + 60)
            publisher = spawn_ctx.Process(target=_publish_events, daemon=True, args=(
                settings.topic_prefix, settings.pg_database, args.ingest_rate, max(20, int(needed / 30) + 1), 365,
                ready, stop_ingest, published, args.pipeline_nice))
            publisher.start()
            if not ready.wait(120):
                raise RuntimeError("the event publisher did not start in 120 s")
            ingest_began = time.perf_counter()
            say(f"ingest: publishing generated events at {args.ingest_rate:g}/s to {settings.topic_prefix}.* "
                f"(worker and projection writers running at nice {args.pipeline_nice})", flush=True)
            time.sleep(5)  # the pipeline under way
            result, _, _, _ = measure(args.rates[0], f"ingest at {args.ingest_rate:g} events/s")
            figures[f"p99_ms_at_{args.rates[0]:g}_with_ingest"] = round(_pct(result.latencies, 0.99) * 1e3, 2)
        if publisher is not None:
            stop_ingest.set()
            publisher.join(30)
            span = time.perf_counter() - ingest_began
            with psycopg.connect(conninfo, autocommit=True) as conn:
                rows_after = conn.execute("SELECT count(*) FROM interactions").fetchone()[0]  # type: ignore[index]
            say(f"ingest meanwhile: {published.value} events published in {span:.1f}s "  # type: ignore[attr-defined]
                  f"({published.value / span:,.0f}/s), {rows_after - rows_before} interaction rows "  # type: ignore[attr-defined]
                  f"projected during the measurement", flush=True)
        if args.json:
            print(json.dumps(figures, sort_keys=True), flush=True)
        return 0
    finally:
        stop_ingest.set()
        if publisher is not None:
            publisher.join(10)
            if publisher.is_alive():
                publisher.terminate()
        for child in children:
            stop_child(child)
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(settings.pg_database)))
        kafka_admin = KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
        try:
            # The prefix's topics, and the worker's Faust leader topic (``<prefix>-__assignor-__leader``).
            ours = [t for t in kafka_admin.list_topics() if t.startswith((settings.topic_prefix + ".",
                                                                          settings.topic_prefix + "-"))]
            if ours:
                kafka_admin.delete_topics(ours)
        finally:
            kafka_admin.close()
        for log in sorted(logs.iterdir()):
            log.unlink()
        logs.rmdir()


if __name__ == "__main__":
    raise SystemExit(main())
