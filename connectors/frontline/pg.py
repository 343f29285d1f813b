"""The lookup API's connections to PostgreSQL on asyncpg, for the lookup's statement (the card's read and its
audit row) and the audit rows of refusals.

Measured on this machine (2,000 statements on one connection, client CPU
each): psycopg's async cursor 72-94 µs for ``SELECT $1`` and 180-240 µs for
the card's read; asyncpg 48 and 61. The rest of the API (readiness, lag,
the audit trail's reader, erasure) stays on psycopg like every other part
of the project.

:class:`HotPool` hands connections out itself rather than through asyncpg's
pool: its acquire, release, idle timers and per-statement timeout were
~20 % of the API's CPU at 200 lookups/s in a py-spy profile. The
statements here change no session state (no SET, LISTEN, advisory lock or
cursor) and run in autocommit, so a connection goes back as it came; one
whose statement failed other than by PostgreSQL's answer is closed, never
reused.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import Any

import asyncpg

from touchpoint.settings import Settings

__all__ = ["UNAVAILABLE", "HotPool", "configure"]

UNAVAILABLE: tuple[type[Exception], ...] = (
    asyncpg.PostgresConnectionError, asyncpg.InterfaceError, asyncpg.CannotConnectNowError, OSError,
    asyncio.TimeoutError, asyncpg.QueryCanceledError)
"""What this pool raises when PostgreSQL cannot be reached or does not answer in time (answered 503 and retried
by the caller)."""

_STATEMENT_TIMEOUT_S = 5.0


async def configure(conn: asyncpg.Connection) -> None:
    """A connection as the pool makes them: json as its bytes."""
    # json comes back as its bytes, unparsed: a lookup copies the card's text into its answer.
    await conn.set_type_codec("json", encoder=bytes, decoder=bytes, schema="pg_catalog", format="binary")


class HotPool:
    """Up to ``max_size`` asyncpg connections on the settings' database, opened in the app's lifespan.

    A statement waits at most ``statement_timeout_s``: PostgreSQL cancels it then (``statement_timeout``), and a
    watchdog checking once a second closes a connection whose statement is still unanswered a second later
    (PostgreSQL unreachable), which fails the statement with :data:`UNAVAILABLE`. One check a second rather
    than a timer per statement.
    """

    def __init__(self, settings: Settings, *, max_size: int,
                 statement_timeout_s: float = _STATEMENT_TIMEOUT_S) -> None:
        self._url = settings.pg_url()
        self._server_settings = {"synchronous_commit": settings.api_audit_commit,
                                 "statement_timeout": str(int(statement_timeout_s * 1000))}
        self._max_size = max_size
        self._timeout_s = statement_timeout_s
        self._idle: list[asyncpg.Connection] = []
        self._opened = 0  # connections open or being opened
        self._waiters: deque[asyncio.Future[asyncpg.Connection | None]] = deque()
        self._busy: dict[asyncpg.Connection, float] = {}  # connection -> when its statement was sent
        self._watchdog: asyncio.Task[None] | None = None

    async def open(self) -> None:
        self._watchdog = asyncio.create_task(self._watch(), name="hot-pool watchdog")
        try:
            self._give(await self._take())  # PostgreSQL answers: fail the lifespan now rather than the first lookup
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            await asyncio.gather(self._watchdog, return_exceptions=True)
            self._watchdog = None
        idle, self._idle = self._idle, []
        for conn in idle:
            self._opened -= 1
            await conn.close(timeout=self._timeout_s)
        for conn in list(self._busy):
            conn.terminate()

    async def fetchrow(self, sql: str, *args: Any) -> Any:
        """``sql``'s first row (or None), in autocommit."""
        conn = await self._take()
        self._busy[conn] = time.monotonic()
        try:
            row = await conn.fetchrow(sql, *args)
        except asyncpg.PostgresError:  # PostgreSQL's answer: the connection is as it was
            self._busy.pop(conn, None)
            self._give(conn)
            raise
        except BaseException:  # cut off mid-statement (cancelled, lost, timed out): never reused
            self._busy.pop(conn, None)
            self._discard(conn)
            raise
        self._busy.pop(conn, None)
        self._give(conn)
        return row

    async def execute(self, sql: str, *args: Any) -> None:
        """Run ``sql`` in autocommit."""
        await self.fetchrow(sql, *args)

    async def _take(self) -> asyncpg.Connection:
        while True:
            while self._idle:
                conn = self._idle.pop()
                if not conn.is_closed():
                    return conn
                self._opened -= 1
            if self._watchdog is None:
                raise asyncpg.InterfaceError("the lookup API's connections are not open")
            if self._opened < self._max_size:
                self._opened += 1
                conn = None
                try:
                    conn = await asyncpg.connect(self._url, timeout=self._timeout_s,
                                                 server_settings=self._server_settings)
                    await configure(conn)
                except BaseException:
                    if conn is not None:  # opened, then cut off while configured: never leave it to the collector
                        conn.terminate()
                    self._opened -= 1
                    self._wake(None)
                    raise
                return conn
            waiter: asyncio.Future[asyncpg.Connection | None] = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                handed = await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled() and (conn := waiter.result()) is not None:
                    self._give(conn)  # handed over as this caller gave up: to the next one
                else:
                    self._waiters.remove(waiter)
                raise
            if handed is not None:
                return handed
            # a connection was closed: a place to open one again

    def _give(self, conn: asyncpg.Connection) -> None:
        if self._watchdog is None:  # closed while its statement ran: nobody will take it again
            self._discard(conn)
        elif not self._wake(conn):
            self._idle.append(conn)

    def _discard(self, conn: asyncpg.Connection) -> None:
        conn.terminate()
        self._opened -= 1
        self._wake(None)

    def _wake(self, conn: asyncpg.Connection | None) -> bool:
        """Hand ``conn`` (or a free place, None) to the longest waiting caller; whether there was one."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return True
        return False

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            overdue = time.monotonic() - self._timeout_s - 1.0
            for conn, sent in list(self._busy.items()):
                if sent < overdue:
                    conn.terminate()  # its statement fails with ConnectionDoesNotExistError, then it is discarded
