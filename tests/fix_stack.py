"""Pytest plugin: the real local stack for integration and end-to-end tests.

The stack (Kafka, PostgreSQL, registry) is the project's own, started by
``touchpoint stack up`` (idempotent, so a running stack is reused). Every
test session gets a unique topic prefix and a fresh database, so reruns
never see old data; the database is dropped at the end.
"""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from touchpoint.settings import Settings, load_settings
from touchpoint.stack.process import stop_child

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module", autouse=True)
def collect_module_garbage() -> Iterator[None]:
    """Collect garbage as each module ends: a socket or transport a module left unclosed is then reported
    against that module's last test, not against whichever later test a collection happens to run in."""
    yield
    gc.collect()


@pytest.fixture(scope="session")
def base_settings() -> Settings:
    """The local stack's settings, as ``touchpoint stack up`` uses them."""
    return load_settings(home=REPO / ".touchpoint")


@pytest.fixture(scope="session")
def stack_up(base_settings: Settings) -> Settings:
    """Start the stack if it is not running (no-op when it is)."""
    from touchpoint.stack import stack

    stack.up(base_settings, report=lambda line: None)
    return base_settings


@pytest.fixture(scope="session")
def run_id() -> str:
    return uuid.uuid4().hex[:10]


@contextmanager
def scoped(settings: Settings, database: str, topic_prefix: str | None = None) -> Iterator[Settings]:
    """``settings`` on a fresh, migrated database (dropped afterwards) and, if given, a topic prefix of its own."""
    from connectors.platform.topics import ensure_topics
    from projections.migrate import migrate

    admin = settings.pg_conninfo("postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
    update: dict[str, str] = {"pg_database": database}
    if topic_prefix is not None:
        update["topic_prefix"] = topic_prefix
    narrowed = settings.model_copy(update=update)
    try:
        if topic_prefix is not None:
            ensure_topics(narrowed)
        migrate(narrowed)
        yield narrowed
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database)))


@pytest.fixture(scope="session")
def settings(stack_up: Settings, run_id: str) -> Iterator[Settings]:
    """Settings for this test session: unique topics, a fresh database, migrated and with topics created."""
    with scoped(stack_up, f"touchpoint_test_{run_id}", f"test-{run_id}") as session_settings:
        yield session_settings


def settings_env(settings: Settings) -> dict[str, str]:
    """Environment that makes a child ``touchpoint`` process use these settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOUCHPOINT_")}
    env.update({
        "TOUCHPOINT_HOME": str(settings.home),
        "TOUCHPOINT_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "TOUCHPOINT_TOPIC_PREFIX": settings.topic_prefix,
        "TOUCHPOINT_PG_PORT": str(settings.pg_port),
        "TOUCHPOINT_PG_DATABASE": settings.pg_database,
        "TOUCHPOINT_REGISTRY_URL": settings.registry_url,
    })
    return env


def spawn_touchpoint(settings: Settings, *args: str, log: Path,
                     env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Start ``python -m touchpoint ARGS`` with these settings (plus ``env``), output to ``log``."""
    with log.open("wb") as out:
        return subprocess.Popen(  # noqa: S603
            [sys.executable, "-m", "touchpoint", *args], env={**settings_env(settings), **(env or {})}, stdout=out,
            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=REPO,
        )


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 20) -> int:
    """Terminate a child and wait for it; kill if it does not stop in time."""
    return stop_child(proc, timeout)
