"""Restarts on a private stack: the broker, then PostgreSQL, stopped and started again mid-stream.

The shared local stack must never be disturbed (other sessions run tests on
it), so this module brings up a stack of its own: its own home under
``.touchpoint/``, its own ports, the jars and the registry's distribution
shared with the main home (symlinks, no second download). Each test runs a
generated population through a worker and the projection writers (child
processes, as in ``test_faults.py``) while a publisher keeps sending; one
component of the private stack is stopped mid-stream and started again.
After the pipeline drains:

* no process exited or was restarted (a worker or a writer that dies is a
  crash loop waiting for a supervisor);
* the read model and the alert topics equal the fold of the worker's input
  log (``oracle.assert_equals_oracle``: same customers, merges, ledger and
  alerts), every published event is exactly one interaction row;
* the read model's checksum equals the one a rebuild from the log gives.
"""

from __future__ import annotations

import gc
import json
import shutil
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from subprocess import Popen
from typing import Any

import psycopg
import pytest

from connectors.intake.producer import Delivered, EventProducer, Refused
from connectors.operations.clock import publish_tick
from projections.checksum import checksum
from projections.rebuild import rebuild
from tests.e2e.oracle import assert_equals_oracle, committed, drained
from tests.e2e.test_faults import latest, population, rebuilds
from tests.e2e.test_pipeline import wait_until
from tests.fix_stack import REPO, scoped, spawn_touchpoint, stop_process
from touchpoint.settings import Settings, load_settings
from touchpoint.stack import stack

pytestmark = [
    pytest.mark.integration,
    # aiokafka (the publisher's client) can leave the transport of a connection attempt made while the
    # broker is away to the garbage collector; run_with_fault collects before it returns, so the warning
    # meets this filter here instead of failing whichever later test the collector happens to run in.
    pytest.mark.filterwarnings(
        "ignore:Exception ignored in. <function _SelectorTransport.__del__:pytest.PytestUnraisableExceptionWarning"),
]

_T0 = time.monotonic()


def say(line: str) -> None:
    """Progress on stdout (``pytest -s`` shows it), with seconds since the module started."""
    print(f"[restarts {time.monotonic() - _T0:6.1f}s] {line}", flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def private_stack() -> Iterator[Settings]:
    """A stack of this module's own (home, Kafka, controller, PostgreSQL and registry ports), down at the end."""
    # Under the main home, not /tmp: as root the cluster runs as `postgres`, which must reach it.
    home = REPO / ".touchpoint" / f"restarts-{uuid.uuid4().hex[:8]}"
    settings = load_settings(
        home=home, kafka_bootstrap=f"127.0.0.1:{free_port()}", kafka_controller_port=free_port(),
        pg_port=free_port(), registry_url=f"http://127.0.0.1:{free_port()}/apis/ccompat/v7")
    stack.share_downloads(settings, REPO / ".touchpoint")
    try:
        stack.up(settings, report=say)
        yield settings
    finally:
        stack.down(settings, report=say)
        shutil.rmtree(home, ignore_errors=True)


@dataclass
class Publisher:
    """Publishes events in small paced batches from a thread, retrying what Kafka did not acknowledge.

    A channel system that keeps going through an outage: a ``Failed`` result
    is safe to send again (the event id is the idempotency key downstream).
    """

    settings: Settings
    events: list[dict[str, Any]]
    batch: int = 40
    #: Events sent in one first batch, so the stages downstream have a backlog from the start.
    burst: int = 0
    pause_s: float = 0.3
    sent: int = 0
    failed: int = 0
    error: BaseException | None = None
    _thread: threading.Thread = field(init=False)

    def __post_init__(self) -> None:
        self._thread = threading.Thread(target=self._run, name="publisher", daemon=True)

    def start(self) -> Publisher:
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            # One producer for the whole stream: the writer schema's id is registered once, then cached.
            with EventProducer(self.settings, timeout_s=5) as producer:
                starts = [0, *range(self.burst or self.batch, len(self.events), self.batch)]
                for start, end in zip(starts, [*starts[1:], len(self.events)], strict=True):
                    todo = self.events[start:end]
                    while todo:
                        results = producer.publish(todo, datetime.now(UTC))
                        assert not [r for r in results if isinstance(r, Refused)], results
                        delivered = {r.event_id for r in results if isinstance(r, Delivered)}
                        self.failed += len(todo) - len(delivered)
                        todo = [e for e in todo if e["event_id"] not in delivered]
                        if todo:
                            time.sleep(1.0)
                    self.sent = end
                    time.sleep(self.pause_s)
            self.sent = len(self.events)
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            self.error = exc

    def check(self) -> None:
        """Raise what made the publisher stop, if anything did."""
        if self.error is not None:
            raise AssertionError(f"the publisher failed after {self.sent} events") from self.error

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), f"the publisher is stuck after {self.sent} events"
        self.check()


def interaction_ids(settings: Settings) -> list[str]:
    with psycopg.connect(settings.pg_conninfo(), connect_timeout=3) as conn:
        return [event_id for event_id, in conn.execute("SELECT event_id FROM interactions")]


def alive(*procs: Popen[bytes]) -> None:
    for proc in procs:
        assert proc.poll() is None, f"{proc.args} exited with {proc.returncode}"


def run_with_fault(settings: Settings, tmp_path: Path, seed: int,
                   fault: Callable[[Publisher, Popen[bytes], Popen[bytes]], None], burst: int = 0,
                   writers_after: int = 0, pause_s: float = 0.3) -> dict[str, Any]:
    """Worker + writers + a paced publisher; ``fault`` runs mid-stream; then drain and check everything.

    :param burst: events the publisher sends at once first.
    :param pause_s: the publisher's pause between its batches of 40 events after that.
    :param writers_after: start the projection writers only once the worker folded this many
        events (so they start with a backlog).
    """
    events = population(seed)
    worker = spawn_touchpoint(settings, "worker", log=tmp_path / "worker.log")
    procs: tuple[Popen[bytes], ...] = (worker,)
    try:
        wait_until(lambda: rebuilds(tmp_path / "worker.log") >= 1, 90, "the worker to start", procs)
        publisher = Publisher(settings, events, burst=burst, pause_s=pause_s).start()
        wait_until(lambda: publisher.check() or committed(settings) >= writers_after, 120,
                   "the worker to fold a first part", procs)
        writer = spawn_touchpoint(settings, "project", log=tmp_path / "project.log")
        procs = (worker, writer)
        fault(publisher, worker, writer)
        publisher.join(180)
        say(f"published all {len(events)} events ({publisher.failed} sends failed and were retried)")
        publish_tick(settings, latest(events) + timedelta(days=120))
        began = time.monotonic()
        wait_until(lambda: drained(settings), 180, "the worker and the projections to drain", procs)
        say(f"drained in {time.monotonic() - began:.1f}s")
        alive(*procs)  # no crash, no restart: the same two processes all along
    finally:
        for proc in procs:
            stop_process(proc)
    gc.collect()  # the publisher's leftovers from the outage, under this module's filter (see pytestmark)
    worker_log = (tmp_path / "worker.log").read_text(errors="replace")
    project_log = (tmp_path / "project.log").read_text(errors="replace")
    # Built at start; once more at most, if the outage fenced the state table's transactional writer.
    recovered = worker_log.count("identity state rebuilt")
    assert 1 <= recovered <= 2, recovered
    # (Tracebacks of reset connections are logged by the Kafka clients while the broker is away: not crashes.)
    assert "Crashed" not in worker_log, "a Faust agent crashed (its supervisor restarts it: a crash loop)"
    assert "Unexpected error in sender routine" not in worker_log + project_log

    counts = assert_equals_oracle(settings)
    # Every published event exactly once in the read model (interactions are keyed by event id).
    ids = interaction_ids(settings)
    assert len(ids) == len(set(ids)) and set(ids) == {e["event_id"] for e in events}
    # The live read model is the one the log rebuilds.
    live = checksum(settings.pg_conninfo())
    report = rebuild(settings, progress=False)
    rebuilt = checksum(settings.pg_conninfo())
    assert rebuilt == live, ("the live read model differs from a rebuild from the log",
                             [(a, b) for a, b in zip(live.tables, rebuilt.tables, strict=True) if a != b])
    say(f"{counts}; rebuilt from {report.total} records: checksum equal ({live.total[:12]})")
    return {"events": len(events), "failed_sends": publisher.failed, "worker_log": worker_log,
            "project_log": project_log}


@pytest.fixture
def isolated(private_stack: Settings, request: pytest.FixtureRequest) -> Iterator[Settings]:
    """A database and topics of this test's own on the private stack."""
    name = request.node.name.removeprefix("test_")[:24]
    with scoped(private_stack, f"restarts_{name}", topic_prefix=f"restarts-{name.replace('_', '-')}") as own:
        yield own


def test_kafka_broker_stopped_and_started_mid_stream(private_stack: Settings, isolated: Settings,
                                                     tmp_path: Path) -> None:
    settings = isolated
    outage: dict[str, float] = {}

    def bounce_broker(publisher: Publisher, worker: Popen[bytes], writer: Popen[bytes]) -> None:
        wait_until(lambda: publisher.check() or committed(settings) >= 300, 120, "the worker to fold a first part",
                   (worker, writer))
        assert publisher.sent < len(publisher.events), "the fault must land while events are still coming"
        say(f"stopping the broker: {publisher.sent} events sent, {committed(settings)} folded")
        began = time.monotonic()
        stack.stop(private_stack, "kafka", report=say)
        time.sleep(3)  # every client notices: the publisher's sends fail meanwhile
        alive(worker, writer)
        stack.start(private_stack, "kafka", report=say)
        outage["s"] = time.monotonic() - began
        say(f"broker back after {outage['s']:.1f}s; {publisher.sent} events sent")

    result = run_with_fault(settings, tmp_path, 41, bounce_broker)
    assert outage["s"] > 5
    assert result["failed_sends"] > 0, "the publisher ran into the outage"


def test_postgres_stopped_and_started_mid_stream(private_stack: Settings, isolated: Settings,
                                                 tmp_path: Path) -> None:
    settings = isolated

    def bounce_postgres(publisher: Publisher, worker: Popen[bytes], writer: Popen[bytes]) -> None:
        # Mid-stream for the writers: they started with thousands of records to write (the worker folded
        # most of the population first); PostgreSQL goes as soon as their first rows are in.
        wait_until(lambda: publisher.check() or len(interaction_ids(settings)) > 0, 120,
                   "the projections to write a first part", (worker, writer))
        stack.stop(private_stack, "postgres", report=say)
        assert publisher.sent < len(publisher.events), "the fault must land while events are still coming"
        say(f"PostgreSQL stopped: {publisher.sent} events sent, {committed(settings)} folded")
        time.sleep(6)
        alive(worker, writer)
        stack.start(private_stack, "postgres", report=say)
        say(f"PostgreSQL back; {publisher.sent} events sent")

    # (The producer library needs PostgreSQL too, for its key store: the publisher's sends fail meanwhile.)
    result = run_with_fault(settings, tmp_path, 42, bounce_postgres, burst=1500, writers_after=1400,
                            pause_s=1.0)
    backoffs: dict[str, list[float]] = {}
    for line in result["project_log"].splitlines():
        if "projection write failed; retrying" in line:
            record = json.loads(line)
            backoffs.setdefault(record["projection"], []).append(record["backoff_s"])
    say(f"projection writes retried, backoffs per projection: {backoffs}")
    # A writer busy at the time hits the outage and waits it out backing off (0.5 s, 1 s, 2 s, ...), never
    # spinning: one outage, one growing sequence per writer. On a quiet machine the writers may have
    # written their whole backlog before PostgreSQL went (COPY is fast), and then meet the outage only
    # as the closed connection of their next batch: one retry. Either way each writer that wrote after
    # the outage felt it, and none spun.
    for projection, waits in backoffs.items():
        assert waits == [min(0.5 * 2**n, 10.0) for n in range(len(waits))], (projection, waits)
        assert len(waits) <= 6, (projection, waits)
    assert backoffs, "the writers met the outage (a failed write, retried after a backoff)"
