"""Plain-SQL migrations applied in file-name order, each recorded once.

Each file runs in its own transaction together with its row in
``schema_migrations``, so a failed migration leaves nothing half-applied and
a rerun applies only what is pending. An advisory lock keeps two processes
from migrating at once.
"""

from __future__ import annotations

from importlib import resources

import psycopg

from touchpoint.settings import Settings

_LOCK_ID = 7_410_001  # arbitrary, constant: Touchpoint's migration lock


def migration_files() -> list[tuple[str, str]]:
    """(name, sql) of every migration, in order."""
    folder = resources.files("projections").joinpath("migrations")
    return sorted((f.name, f.read_text()) for f in folder.iterdir() if f.name.endswith(".sql"))


def migrate(settings: Settings, conninfo: str | None = None) -> list[str]:
    """Apply pending migrations; returns the names applied."""
    applied = []
    with psycopg.connect(conninfo or settings.pg_conninfo(), autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (_LOCK_ID,))
        try:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations "
                "(name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = {row[0] for row in conn.execute("SELECT name FROM schema_migrations")}
            for name, sql in migration_files():
                if name in done:
                    continue
                with conn.transaction():
                    conn.execute(sql)  # our own files, not user input
                    conn.execute("INSERT INTO schema_migrations (name) VALUES (%s)", (name,))
                applied.append(name)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_ID,))
    return applied
