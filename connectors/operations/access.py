"""The access watch: judges the lookup audit trail window by window and publishes access alerts.

It runs in the lookup API, in one of its processes at a time: the one holding a PostgreSQL advisory lock
(on a connection of its own, so the lock goes with a process that dies). Every ``window_s`` seconds, a
couple of seconds after the window closed (so the audit rows of lookups answered in it are committed), it

1. counts each key's lookups in the window from ``lookup_audit`` (refusals by rate or block included),
2. reads each key's usual volume from the windows it judged before (``lookup_windows``, ``history_days``),
   and the keys blocked at their ceiling in the window (``lookup_blocks``),
3. asks :func:`touchpoint.core.access.access_alerts` and publishes what it says on
   ``touchpoint.alerts.access`` (:mod:`connectors.platform.access_wire`, keyed by key name), then
4. records the window's counts and how far it has judged (``access_watch``), in one transaction.

An alert published and not yet recorded (a crash between 3 and 4) is published again with the same id.
A watch that was away judges the windows it missed, at most a day of them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from kafka import KafkaProducer
from kafka.errors import KafkaError

from connectors.platform.access_wire import AccessAlertSerde
from connectors.platform.registry import RegistryClient
from touchpoint.core.access import AccessConfig, Block, KeyWindow, access_alerts, usual_volume
from touchpoint.core.instants import epoch_ms
from touchpoint.errors import TouchpointError
from touchpoint.kafka_security import kafka_python_options
from touchpoint.settings import Settings

__all__ = ["AccessWatch", "access_topic"]

log = logging.getLogger(__name__)

_LOCK = 0x746F7563_68616363  # pg advisory lock id: one watch among the API's processes
_GRACE_S = 2.0  # after a window's end, before judging it: its last lookups' audit rows are committed
_CATCH_UP = timedelta(days=1)
_LOOKUP_ENDPOINTS = ("lookup", "customer", "agent_page")

_COUNTS = """
SELECT key_name, role, count(*), count(DISTINCT customer_id), count(*) FILTER (WHERE status IN (403, 429))
FROM lookup_audit WHERE at >= %(start)s AND at < %(end)s AND endpoint = ANY(%(endpoints)s)
GROUP BY key_name, role
"""
_HISTORY = """
SELECT key_name, array_agg(lookups) FROM lookup_windows
WHERE window_start >= %(since)s AND window_start < %(start)s GROUP BY key_name
"""
_BLOCKS = """
SELECT key_name, role, customers, ceiling, since FROM lookup_blocks WHERE since >= %(start)s AND since < %(end)s
"""


def access_topic(settings: Settings) -> str:
    """Where access alerts go: ``touchpoint.alerts.access``."""
    return settings.topic("alerts.access")


class AccessWatch:
    """The watch loop (:meth:`run`) and one window's work (:meth:`judge`), for the lookup API's lifespan.

    :param config: the window, the multiple and the minimum; ``history_days`` of windows make the usual volume.
    :param clock: the wall clock (tests pass their own).
    """

    def __init__(self, settings: Settings, config: AccessConfig, *, history_days: int = 7,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.settings, self.config, self.clock = settings, config, clock
        self.history = timedelta(days=history_days)
        self._producer: KafkaProducer | None = None
        self._registry: RegistryClient | None = None
        self._serde: AccessAlertSerde | None = None
        self._first: datetime | None = None  # the first window to judge, until one is recorded
        #: Alerts published so far by this watch (a count, for logs and tests).
        self.published = 0

    async def run(self) -> None:
        """Hold the lock (or wait for it), then judge every window as it closes; never returns."""
        window = timedelta(seconds=self.config.window_s)
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(self.settings.pg_conninfo(),
                                                                 autocommit=True) as conn:
                    while not (await (await conn.execute("SELECT pg_try_advisory_lock(%s)", (_LOCK,)))
                               .fetchone() or (False,))[0]:
                        await asyncio.sleep(self.config.window_s)  # another process watches
                    log.info("access watch: this process judges the lookup windows",
                             extra={"window_s": self.config.window_s})
                    while True:
                        judged = await self.judge_due(conn)
                        now = self.clock()
                        upto = await self._judged_until(conn) or now
                        wait = (upto + window - now).total_seconds() + _GRACE_S
                        if not judged:
                            await asyncio.sleep(max(0.2, wait))
            except asyncio.CancelledError:
                raise
            except (psycopg.Error, OSError, TouchpointError, KafkaError) as exc:
                log.warning("access watch failed, retried in %d s: %s", self.config.window_s, exc)
                self._close_producer()
                await asyncio.sleep(self.config.window_s)
            except Exception:  # a defect of ours: said loudly, and the watch goes on rather than dying unseen
                log.exception("access watch failed unexpectedly, retried in %d s", self.config.window_s)
                self._close_producer()
                await asyncio.sleep(self.config.window_s)

    async def judge_due(self, conn: psycopg.AsyncConnection[Any]) -> int:
        """Judge every window closed (and past the grace) since the last one judged; returns how many."""
        window = timedelta(seconds=self.config.window_s)
        now = self.clock()
        start = await self._judged_until(conn) or self._first
        if start is None or start < now - _CATCH_UP:  # nothing judged yet (or long ago): from the last window closed
            start = self._first = datetime.fromtimestamp(
                epoch_ms(now) // (self.config.window_s * 1000) * self.config.window_s, UTC) - window
        done = 0
        while start + window + timedelta(seconds=_GRACE_S) <= now:
            await self.judge(conn, start)
            start += window
            done += 1
        return done

    async def judge(self, conn: psycopg.AsyncConnection[Any], start: datetime) -> list[dict[str, Any]]:
        """One window: count, decide, publish, record. Returns the alerts published."""
        end = start + timedelta(seconds=self.config.window_s)
        span = {"start": start, "end": end, "endpoints": list(_LOOKUP_ENDPOINTS), "since": start - self.history}
        windows = [KeyWindow(name, role, n, customers, refused)
                   for name, role, n, customers, refused in await (await conn.execute(_COUNTS, span)).fetchall()]
        usual = {name: usual_volume(counts)
                 for name, counts in await (await conn.execute(_HISTORY, span)).fetchall()}
        blocks = [Block(name, role, customers, ceiling, epoch_ms(since))
                  for name, role, customers, ceiling, since in await (await conn.execute(_BLOCKS, span)).fetchall()]
        alerts = access_alerts(epoch_ms(start), windows, usual, blocks, self.config)
        if alerts:
            await asyncio.to_thread(self._publish, alerts)
        async with conn.transaction():
            async with conn.cursor() as cur:
                await cur.executemany(
                    "INSERT INTO lookup_windows (key_name, window_start, lookups) VALUES (%s, %s, %s) "
                    "ON CONFLICT (key_name, window_start) DO UPDATE SET lookups = excluded.lookups",
                    [(w.key_name, start, w.lookups) for w in windows])
            await conn.execute("INSERT INTO access_watch (id, judged_until) VALUES (1, %(end)s) "
                               "ON CONFLICT (id) DO UPDATE SET judged_until = excluded.judged_until", span)
            # What no window or ceiling reads any more: windows older than the history, other days' customers.
            await conn.execute("DELETE FROM lookup_windows WHERE window_start < %(since)s", span)
            await conn.execute("DELETE FROM lookup_seen WHERE day < (now() AT TIME ZONE 'UTC')::date - 1")
        return alerts

    @staticmethod
    async def _judged_until(conn: psycopg.AsyncConnection[Any]) -> datetime | None:
        row = await (await conn.execute("SELECT judged_until FROM access_watch WHERE id = 1")).fetchone()
        return row[0] if row else None

    def _publish(self, alerts: list[dict[str, Any]]) -> None:
        if self._producer is None:
            self._registry = RegistryClient(self.settings.registry_url)
            self._serde = AccessAlertSerde(self._registry)
            self._producer = KafkaProducer(bootstrap_servers=self.settings.kafka_bootstrap,
                                           client_id="touchpoint-access-watch", acks="all", enable_idempotence=True,
                                           max_block_ms=10_000, request_timeout_ms=10_000,
                                           **kafka_python_options(self.settings))
        assert self._serde is not None
        topic = access_topic(self.settings)
        sent = [self._producer.send(topic, key=alert["key_name"].encode(), value=self._serde.serialize(alert))
                for alert in alerts]
        self._producer.flush(timeout=15)
        for future in sent:
            future.get(timeout=15)  # raises the KafkaError of a send that failed: the window is judged again
        for alert in alerts:
            log.warning("access alert: %s", alert["text"], extra={"key_name": alert["key_name"],
                                                                 "reason": alert["reason"]})
        self.published += len(alerts)

    def _close_producer(self) -> None:
        if self._producer is not None:
            self._producer.close(timeout=5)
            self._producer = None
        if self._registry is not None:
            self._registry.close()
            self._registry = None

    def close(self) -> None:
        """Close the Kafka producer and the registry client (the lifespan's end)."""
        self._close_producer()
