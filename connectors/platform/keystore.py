"""The key store: one data key per identifier, behind one small interface (DESIGN.md §6).

:class:`KeyStore` is the interface the edge, the lookup API and erasure use;
:class:`PostgresKeyStore` keeps the keys in PostgreSQL (``identifier_keys``,
migration 0008), each wrapped with AES-256-GCM under a master key derived
from the ``privacy_master_key`` setting, so a dump of the table alone opens
nothing. A KMS-backed store would implement the same three methods.

No process caches data keys: a destroyed key is gone for every reader at
once. The edge reads a batch's keys in one statement and makes the missing
ones in one more; a person erased and then seen again gets a new
key, which cannot open the old pseudonyms.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Awaitable, Callable, Collection, Sequence
from typing import Any, Protocol, TypeVar

import psycopg
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from psycopg_pool import AsyncConnectionPool

from touchpoint.core.pseudonym import DATA_KEY_BYTES
from touchpoint.errors import TouchpointError
from touchpoint.settings import Settings

_SELECT = "SELECT key, wrapped FROM identifier_keys WHERE key = ANY(%s)"

WRAPPED_OF_CARD = """
SELECT array_agg(k.key ORDER BY k.key), array_agg(k.wrapped ORDER BY k.key)
FROM identifier_keys k
WHERE k.key IN (
    SELECT unnest(card.agent_keys)
    UNION ALL
    SELECT split_part(v.value, ':', 2) || ':' || split_part(v.value, ':', 3)
    FROM json_each(CASE WHEN card.agent_keys IS NULL AND json_typeof(card.view -> 'identifiers') = 'object'
                        THEN card.view -> 'identifiers' ELSE '{}' END) AS i (kind, values),
         json_array_elements_text(CASE WHEN json_typeof(i.values) = 'array' THEN i.values ELSE '[]' END) AS v (value)
    WHERE left(v.value, 4) = 'tp1:'
    UNION ALL
    SELECT split_part(n.name, ':', 2) || ':' || split_part(n.name, ':', 3)
    FROM (SELECT CASE WHEN card.agent_keys IS NULL AND json_typeof(card.view -> 'person') = 'object'
                      THEN card.view -> 'person' ->> 'name' END) AS n (name)
    WHERE left(n.name, 5) = 'tp1t:'
)"""
"""A lateral subquery over a row ``card`` with a ``view`` (a rendered card) and ``agent_keys``: one row of two
arrays, the keys and wrapped data keys that open what the card shows, for :meth:`PostgresKeyStore.open_wrapped`;
NULLs when there are none. Those are ``agent_keys`` when given (stored with the card by the customers
projection); otherwise the view's pseudonyms' (``tp1:<kind>:<32 hex>:…``, key ``<kind>:<32 hex>``) and its
person's sealed name's (``tp1t:<kind>:<32 hex>:~…``). Keys destroyed (an erased person) are absent."""

T = TypeVar("T")


class KeyStoreError(TouchpointError):
    """The key store cannot be reached or holds a key the master key does not open."""


class KeyStore(Protocol):
    """Data keys by identifier key (``"<kind>:<32 hex>"``)."""

    async def data_keys(self, keys: Collection[str], *, create: bool) -> dict[str, bytes]:
        """The data key of each of ``keys`` that has one (``create``: make the missing ones first)."""

    async def destroy(self, keys: Collection[str]) -> int:
        """Destroy the data keys of ``keys``; returns how many existed."""

    async def close(self) -> None:
        """Release the connection."""


class PostgresKeyStore:
    """:class:`KeyStore` on the settings' PostgreSQL database.

    :param pool: an autocommit pool to borrow a connection from per call (the lookup API's);
        without one, the store keeps one connection of its own, opened on first use.
    """

    def __init__(self, settings: Settings, pool: AsyncConnectionPool | None = None) -> None:
        self._conninfo = settings.pg_conninfo()
        secret = settings.privacy_master_key.get_secret_value().encode()
        self._master = AESGCM(hashlib.sha256(b"touchpoint key store\0" + secret).digest())
        self._conn: psycopg.AsyncConnection | None = None
        self._pool = pool

    async def _connection(self) -> psycopg.AsyncConnection:
        if self._conn is None or self._conn.closed or self._conn.broken:
            try:
                self._conn = await psycopg.AsyncConnection.connect(self._conninfo, autocommit=True)
            except psycopg.OperationalError as exc:
                raise KeyStoreError(f"the key store's database cannot be reached: {exc}") from exc
        return self._conn

    def _wrap(self, key: str, data_key: bytes) -> bytes:
        nonce = os.urandom(12)
        return nonce + self._master.encrypt(nonce, data_key, key.encode())

    def _unwrap(self, key: str, wrapped: bytes) -> bytes:
        try:
            return self._master.decrypt(wrapped[:12], wrapped[12:], key.encode())
        except InvalidTag as exc:
            raise KeyStoreError(f"the data key of {key} does not open with this master key "
                                "(is privacy_master_key the one it was made with?)") from exc

    async def data_keys(self, keys: Collection[str], *, create: bool) -> dict[str, bytes]:
        if not keys:
            return {}
        return await self._on_connection(self._data_keys, sorted(set(keys)), create)

    async def _on_connection(self, use: Callable[..., Awaitable[T]], *args: Any) -> T:
        """``use(connection, *args)`` on a pooled or the store's own connection; outages as KeyStoreError."""
        try:
            if self._pool is not None:
                async with self._pool.connection() as conn:
                    return await use(conn, *args)
            return await use(await self._connection(), *args)
        except psycopg.OperationalError as exc:
            raise KeyStoreError(f"the key store's database failed: {exc}") from exc
        except psycopg.errors.UndefinedTable as exc:
            # A worker may start before the projections process applied the migrations: wait, don't crash.
            raise KeyStoreError("the key store's table is missing (apply the migrations: touchpoint db migrate)") \
                from exc

    async def _data_keys(self, conn: psycopg.AsyncConnection, wanted: list[str], create: bool) -> dict[str, bytes]:
        rows = await (await conn.execute(_SELECT, (wanted,))).fetchall()
        missing = sorted(set(wanted).difference(key for key, _ in rows)) if create else []
        if missing:
            # Another process may make some of them meanwhile: its keys win, read back with ours.
            await conn.execute(
                "INSERT INTO identifier_keys (key, wrapped) SELECT * FROM unnest(%s::text[], %s::bytea[]) "
                "ON CONFLICT (key) DO NOTHING",
                (missing, [self._wrap(k, os.urandom(DATA_KEY_BYTES)) for k in missing]))
            rows += await (await conn.execute(_SELECT, (missing,))).fetchall()
        return {key: self._unwrap(key, bytes(wrapped)) for key, wrapped in rows}

    def open_wrapped(self, keys: Sequence[str], wrapped: Sequence[bytes]) -> dict[str, bytes]:
        """The data keys of rows read from ``identifier_keys`` by a caller's own statement.

        The lookup API reads a card and its wrapped keys in one statement (:data:`WRAPPED_OF_CARD`)
        instead of asking :meth:`data_keys` in a second round trip.
        """
        return {key: self._unwrap(key, bytes(blob)) for key, blob in zip(keys, wrapped, strict=True)}

    async def destroy(self, keys: Collection[str]) -> int:
        if not keys:
            return 0
        return await self._on_connection(self._destroy, sorted(set(keys)))

    @staticmethod
    async def _destroy(conn: psycopg.AsyncConnection, keys: list[str]) -> int:
        cur = await conn.execute("DELETE FROM identifier_keys WHERE key = ANY(%s)", (keys,))
        return cur.rowcount

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.close()
            self._conn = None

    async def __aenter__(self) -> PostgresKeyStore:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
