"""A stable digest of the read model, so "a rebuild gives the same rows" is one comparison.

Each read-model table (``READ_MODEL_TABLES`` in :mod:`projections.run`) is
hashed on its own: every row as one canonical JSON array (PostgreSQL's
``jsonb`` text form, times in UTC), rows in primary-key order under the "C"
collation, one line each, into SHA-256. The total is the SHA-256 of the
``table:digest`` lines in table order. The digest is independent of the
server's locale and time zone and of the order rows were written in.

Left out, because two equal read models may differ there:

* bookkeeping: ``projection_offsets`` (not a read-model table at all) and each
  row's ``source_topic`` / ``source_partition`` / ``source_offset`` (a key's
  position depends on which cards a compacted topic still holds, and the
  same content replayed under another prefix has other topic names);
* wall-clock columns: ``updated_at`` and ``recorded_at``.

Every other column is in, including ones later migrations add.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import psycopg
from psycopg import sql

from projections.catalog import read_model_tables
from touchpoint.errors import StackError

EXCLUDED_COLUMNS = frozenset({"source_topic", "source_partition", "source_offset", "updated_at", "recorded_at"})
"""Columns no digest covers: positions in the log and wall-clock instants."""

_FETCH = 10_000


@dataclass(frozen=True)
class TableDigest:
    """One table's digest and how many rows it covers."""

    table: str
    rows: int
    sha256: str


@dataclass(frozen=True)
class Checksum:
    """Per-table digests and their total."""

    tables: tuple[TableDigest, ...]
    total: str

    def lines(self) -> list[str]:
        """What ``touchpoint projections checksum`` prints: one line per table, then the total."""
        width = max(len(t.table) for t in self.tables)
        out = [f"{t.table:<{width}}  {t.rows:>10} rows  {t.sha256}" for t in self.tables]
        out.append(f"{'total':<{width}}  {sum(t.rows for t in self.tables):>10} rows  {self.total}")
        return out


def _columns(conn: psycopg.Connection, table: str) -> tuple[list[str], list[tuple[str, str]]]:
    """(hashed columns in table order, primary key as (column, type) in key order) of ``table``."""
    columns = [name for name, in conn.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_schema = current_schema() "
        "AND table_name = %s ORDER BY ordinal_position", (table,))]
    if not columns:
        raise StackError(f"checksum: table {table} does not exist (run `touchpoint db migrate`)")
    key = conn.execute(
        "SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_index i "
        "JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, n) ON true "
        "JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum "
        "WHERE i.indrelid = %s::regclass AND i.indisprimary ORDER BY k.n", (table,)).fetchall()
    if not key:
        raise StackError(f"checksum: table {table} has no primary key, so its rows have no defined order")
    return [c for c in columns if c not in EXCLUDED_COLUMNS], [(name, kind) for name, kind in key]


def table_digest(conn: psycopg.Connection, table: str) -> TableDigest:
    """The digest of one table (read in a server-side cursor, so memory stays flat)."""
    columns, key = _columns(conn, table)
    order = sql.SQL(", ").join(
        sql.SQL("{} COLLATE \"C\"").format(sql.Identifier(name)) if kind == "text" else sql.Identifier(name)
        for name, kind in key)
    query = sql.SQL("SELECT jsonb_build_array({})::text FROM {} ORDER BY {}").format(
        sql.SQL(", ").join(map(sql.Identifier, columns)), sql.Identifier(table), order)
    digest = hashlib.sha256()
    rows = 0
    with conn.cursor(name=f"checksum_{table}") as cur:
        cur.itersize = _FETCH
        cur.execute(query)
        for (line,) in cur:
            digest.update(line.encode())
            digest.update(b"\n")
            rows += 1
    return TableDigest(table, rows, digest.hexdigest())


def checksum(conninfo: str, tables: Sequence[str] | None = None) -> Checksum:
    """Digest the read model at ``conninfo`` (all of :data:`READ_MODEL_TABLES` unless ``tables``).

    One repeatable-read transaction, so a writer running meanwhile cannot make
    the tables disagree with each other.
    """
    if tables is None:
        tables = read_model_tables()
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute("SET TIME ZONE 'UTC'")  # timestamptz as text follows the session's zone
        conn.execute("SET extra_float_digits = 1")  # the shortest exact float text, whatever the server's default
        with conn.transaction():
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            digests = tuple(table_digest(conn, table) for table in tables)
    total = hashlib.sha256("".join(f"{d.table}:{d.sha256}\n" for d in digests).encode()).hexdigest()
    return Checksum(digests, total)
