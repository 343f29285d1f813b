"""The lookup API's asyncpg pool, for the lookup's statement (the card's read and its audit row) and the audit
rows of refusals.

Measured on this machine (2,000 statements on one connection, client CPU
each): psycopg's async cursor 72-94 µs for ``SELECT $1`` and 180-240 µs for
the card's read; asyncpg 48 and 61. The rest of the API (readiness, lag,
the audit trail's reader, erasure) stays on psycopg like every other part
of the project.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg

from touchpoint.settings import Settings

__all__ = ["UNAVAILABLE", "HotPool", "configure"]

UNAVAILABLE: tuple[type[Exception], ...] = (
    asyncpg.PostgresConnectionError, asyncpg.InterfaceError, asyncpg.CannotConnectNowError, OSError,
    asyncio.TimeoutError)
"""What this pool raises when PostgreSQL cannot be reached (answered 503 and retried by the caller)."""

_STATEMENT_TIMEOUT_S = 5.0


async def configure(conn: asyncpg.Connection) -> None:
    """A connection as the pool makes them: json as its bytes."""
    # json comes back as its bytes, unparsed: a lookup copies the card's text into its answer.
    await conn.set_type_codec("json", encoder=bytes, decoder=bytes, schema="pg_catalog", format="binary")


async def _keep_session(_: asyncpg.Connection) -> None:
    """No reset query when a connection goes back to the pool: these statements change no session state
    (no SET, LISTEN, advisory lock or cursor), and asyncpg's default reset is a round trip per release
    (9 % of the API's CPU in a py-spy profile at 200 lookups/s). An open transaction is still rolled back."""


class HotPool:
    """An asyncpg pool on the settings' database, opened in the app's lifespan."""

    def __init__(self, settings: Settings, *, max_size: int) -> None:
        self._url = settings.pg_url()
        self._audit_commit = settings.api_audit_commit
        self._max_size = max_size
        self._pool: asyncpg.Pool | None = None

    async def open(self) -> None:
        # A statement's wait is bounded by command_timeout (a timer in asyncpg's protocol), so an acquire waits at
        # most for statements in flight: no timeout context per acquire (~15 µs a lookup in a profile).
        self._pool = await asyncpg.create_pool(self._url, min_size=2, max_size=self._max_size, init=configure,
                                                reset=_keep_session, command_timeout=_STATEMENT_TIMEOUT_S,
                                                server_settings={"synchronous_commit": self._audit_commit})

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()

    @asynccontextmanager
    async def acquire(self) -> AsyncIterator[Any]:
        """A connection of the pool (autocommit unless a transaction is opened on it)."""
        if self._pool is None:
            raise asyncpg.InterfaceError("the lookup API's pool is not open")
        async with self._pool.acquire() as conn:
            yield conn
