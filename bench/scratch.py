"""A scratch topic prefix and database for one benchmark run, removed at the end.

New benchmarks use :func:`scratch`; the older ones still carry their own
copy of these steps (bench/lookup.py, projections.py, loyalty.py, alerts.py).
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
from kafka.admin import KafkaAdminClient
from psycopg import sql

from connectors.platform.topics import ensure_topics
from projections.migrate import migrate
from touchpoint.settings import Settings, load_settings


@contextmanager
def scratch(name: str) -> Iterator[Settings]:
    """The local settings with a fresh, migrated database and topic prefix ``bench-<name>-<id>``."""
    run_id = uuid.uuid4().hex[:8]
    settings = load_settings().model_copy(update={
        "topic_prefix": f"bench-{name}-{run_id}", "pg_database": f"touchpoint_bench_{name}_{run_id}"})
    admin = settings.pg_conninfo("postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(settings.pg_database)))
    try:
        ensure_topics(settings)
        migrate(settings)
        yield settings
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(settings.pg_database)))
        kafka_admin = KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
        try:
            # The prefix's topics and the worker's Faust leader topic (``<prefix>-__assignor-__leader``).
            ours = [t for t in kafka_admin.list_topics()
                    if t.startswith((settings.topic_prefix + ".", settings.topic_prefix + "-"))]
            if ours:
                kafka_admin.delete_topics(ours)
        finally:
            kafka_admin.close()


def spawn(settings: Settings, verb: str, log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """``python -m touchpoint VERB`` on the scratch settings (plus ``env``), output to ``log``."""
    env = {**os.environ, "TOUCHPOINT_TOPIC_PREFIX": settings.topic_prefix,
           "TOUCHPOINT_PG_DATABASE": settings.pg_database, "TOUCHPOINT_LOG_LEVEL": "WARNING", **(env or {})}
    with log.open("wb") as out:
        return subprocess.Popen([sys.executable, "-m", "touchpoint", verb], env=env,  # noqa: S603
                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)

