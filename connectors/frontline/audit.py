"""The lookup audit trail, written in groups: one commit (one WAL flush) for the lookups running together.

Every lookup, page view and refusal of the lookup API writes one
``lookup_audit`` row, and nothing is answered before its row is committed
(what was not recorded was not shown). A commit waits for PostgreSQL to
flush the WAL to disk, which was half of a lookup's time in PostgreSQL when
each lookup committed its own row. So rows are committed in groups:
:meth:`AuditTrail.record` queues the row and waits; while one group's
``INSERT`` and commit are in flight the rows of the lookups arriving
meanwhile queue up and go together in the next one. A lookup alone still
commits alone, at once (no timer delays it); at 1,000 lookups a second a
flush carries several rows.

The promise is unchanged: when a lookup is answered its row is committed and
flushed (``synchronous_commit`` as the server has it, ``on`` on our stack),
so it survives a crash of the API, of PostgreSQL or of the machine. When the
write fails, every lookup of the group fails with :class:`AuditUnavailable`
and is answered 503, without the card.
"""

from __future__ import annotations

import asyncio
from typing import NamedTuple

import asyncpg

from connectors.frontline.pg import UNAVAILABLE, HotPool
from touchpoint.errors import TouchpointError

__all__ = ["UNAVAILABLE", "AuditRow", "AuditTrail", "AuditUnavailable", "HotPool"]

_INSERT = """
INSERT INTO lookup_audit (key_name, role, endpoint, identifier_kind, identifier_key, customer_id, status, unmasked)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::int2[],
                     $8::bool[])
"""


class AuditRow(NamedTuple):
    """One ``lookup_audit`` row: who (key name, role), through which door, by what, whom, and the answer."""

    key_name: str
    role: str
    endpoint: str
    identifier_kind: str | None
    identifier_key: str | None
    customer_id: str | None
    status: int
    unmasked: bool


class AuditUnavailable(TouchpointError):
    """The audit rows could not be committed: the lookups they record must not be answered."""


class AuditTrail:
    """Commits :class:`AuditRow` s in groups on connections of ``pool`` (autocommit)."""

    def __init__(self, pool: HotPool) -> None:
        self._pool = pool
        self._queued: list[tuple[AuditRow, asyncio.Future[None]]] = []
        self._writer: asyncio.Task[None] | None = None
        #: Groups committed and rows in them (the benchmark reports rows per flush).
        self.groups = 0
        self.rows = 0

    async def record(self, row: AuditRow) -> None:
        """Return once ``row`` is committed. :raises AuditUnavailable: it could not be."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queued.append((row, done))
        if self._writer is None:
            self._writer = asyncio.create_task(self._write())
        await done

    async def _write(self) -> None:
        group: list[tuple[AuditRow, asyncio.Future[None]]] = []
        try:
            while self._queued:
                group, self._queued = self._queued, []
                try:
                    async with self._pool.acquire() as conn:
                        await conn.execute(_INSERT, *(list(column) for column in zip(*(row for row, _ in group),
                                                                                     strict=True)))
                except (asyncpg.PostgresError, *UNAVAILABLE) as exc:
                    _settle(group, AuditUnavailable(f"the lookup audit cannot be written: {type(exc).__name__}: {exc}"))
                else:
                    self.groups += 1
                    self.rows += len(group)
                    _settle(group, None)
        except BaseException:  # cancelled (the server stops): nobody waits for good, nothing unrecorded is shown
            _settle(group + self._queued, AuditUnavailable("the lookup API is stopping"))
            self._queued = []
            raise
        finally:
            self._writer = None


def _settle(group: list[tuple[AuditRow, asyncio.Future[None]]], failure: AuditUnavailable | None) -> None:
    for _, done in group:
        if not done.done():
            if failure is None:
                done.set_result(None)
            else:
                done.set_exception(failure)
