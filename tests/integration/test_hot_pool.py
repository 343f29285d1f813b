"""The lookup API's own connection handling (:class:`connectors.frontline.pg.HotPool`) on the stack's PostgreSQL:
bounded waits, no connection lost to a failure or a cancelled caller, never more connections than allowed."""

from __future__ import annotations

import asyncio
import time

import asyncpg
import pytest

from connectors.frontline.pg import UNAVAILABLE, HotPool
from touchpoint.settings import Settings

pytestmark = pytest.mark.integration


def _run(settings: Settings, body, **pool_args):  # type: ignore[no-untyped-def]
    async def main():  # type: ignore[no-untyped-def]
        hot = HotPool(settings, **{"max_size": 2, **pool_args})
        await hot.open()
        try:
            return await body(hot)
        finally:
            await hot.close()

    return asyncio.run(main())


def test_statements_share_at_most_max_size_connections(settings: Settings) -> None:
    async def body(hot: HotPool) -> tuple[list[int], int]:
        pids = await asyncio.gather(*(hot.fetchrow("SELECT pg_backend_pid(), pg_sleep(0.1)") for _ in range(8)))
        return [row[0] for row in pids], len(hot._idle)

    pids, idle = _run(settings, body)
    assert len(pids) == 8 and len(set(pids)) == 2 and idle == 2


def test_a_failed_statement_keeps_its_connection(settings: Settings) -> None:
    async def body(hot: HotPool) -> tuple[int, int]:
        first = (await hot.fetchrow("SELECT pg_backend_pid()"))[0]
        with pytest.raises(asyncpg.DivisionByZeroError):
            await hot.fetchrow("SELECT 1 / 0")
        return first, (await hot.fetchrow("SELECT pg_backend_pid()"))[0]

    first, after = _run(settings, body, max_size=1)
    assert first == after


def test_a_cancelled_caller_does_not_lose_a_place(settings: Settings) -> None:
    async def body(hot: HotPool) -> int:
        for _ in range(3):  # more cancellations than places: a lost place would hang the last statement
            slow = asyncio.create_task(hot.fetchrow("SELECT pg_sleep(2)"))
            await asyncio.sleep(0.2)
            slow.cancel()
            await asyncio.gather(slow, return_exceptions=True)
        waiting = asyncio.create_task(hot.fetchrow("SELECT pg_sleep(0.3)"))
        queued = asyncio.create_task(hot.fetchrow("SELECT 7"))  # waits for the only place, then is cancelled
        await asyncio.sleep(0.05)
        queued.cancel()
        await asyncio.gather(waiting, queued, return_exceptions=True)
        async with asyncio.timeout(5):
            return (await hot.fetchrow("SELECT 42"))[0]

    assert _run(settings, body, max_size=1) == 42


def test_a_slow_statement_is_cut_off_as_unavailable(settings: Settings) -> None:
    async def body(hot: HotPool) -> float:
        began = time.monotonic()
        with pytest.raises(UNAVAILABLE):
            await hot.fetchrow("SELECT pg_sleep(10)")
        return time.monotonic() - began

    assert _run(settings, body, statement_timeout_s=0.5) < 3


def test_an_unanswered_statement_is_cut_off_by_the_watchdog(settings: Settings) -> None:
    """PostgreSQL not answering at all (here: its own timeout switched off on the only connection) fails the
    statement within the timeout and the watchdog's second, and the next statement gets a new connection."""
    async def body(hot: HotPool) -> tuple[float, object]:
        await hot.execute("SET statement_timeout = 0")
        began = time.monotonic()
        with pytest.raises(UNAVAILABLE):
            await hot.fetchrow("SELECT pg_sleep(30)")
        took = time.monotonic() - began
        return took, (await hot.fetchrow("SHOW statement_timeout"))[0]

    took, timeout = _run(settings, body, max_size=1, statement_timeout_s=0.5)
    assert 0.5 < took < 4 and timeout == "500ms"


def test_unreachable_postgres_is_unavailable(settings: Settings) -> None:
    async def main() -> None:
        hot = HotPool(settings.model_copy(update={"pg_port": 1}), max_size=1)
        with pytest.raises(UNAVAILABLE):
            await hot.open()

    asyncio.run(main())
