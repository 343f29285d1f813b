"""The stack's PostgreSQL: a round trip and the migrations."""

from __future__ import annotations

import psycopg
import pytest

from projections.migrate import migrate, migration_files
from touchpoint.settings import Settings

pytestmark = pytest.mark.integration


def test_round_trip(settings: Settings) -> None:
    with psycopg.connect(settings.pg_conninfo()) as conn:
        conn.execute("CREATE TEMP TABLE t (id int PRIMARY KEY, doc jsonb)")
        conn.execute("INSERT INTO t VALUES (%s, %s::jsonb)", (1, '{"a": 1}'))
        assert conn.execute("SELECT doc->>'a', current_database() FROM t").fetchone() == ("1", settings.pg_database)


def test_migrations_recorded_and_rerun_is_noop(settings: Settings) -> None:
    assert migrate(settings) == []
    with psycopg.connect(settings.pg_conninfo()) as conn:
        names = [r[0] for r in conn.execute("SELECT name FROM schema_migrations ORDER BY name")]
    assert names == [name for name, _ in migration_files()]
