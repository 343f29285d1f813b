"""Services started before their topics exist make them and process what comes.

Started the way a newcomer does (``touchpoint worker`` and ``touchpoint
project`` on a new topic prefix, ``touchpoint topics`` later), the worker
logged "Ignoring missing topic" and neither it nor the projection writers
ever processed an event until restarted: idle, looking healthy. Each service
now creates the topics it needs, with their configs, before it consumes;
``touchpoint topics --check`` is their readiness check.
"""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest

from backbone.demo import sample_events
from connectors.intake.producer import Delivered, EventProducer
from connectors.platform.topics import missing_topics, topic_specs
from tests.e2e.test_pipeline import wait_until
from tests.fix_stack import REPO, scoped, settings_env, spawn_touchpoint, stop_process
from touchpoint.settings import Settings

pytestmark = pytest.mark.integration


def topics_check(settings: Settings) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "touchpoint", "topics", "--check"], env=settings_env(settings),
                          cwd=REPO, capture_output=True, text=True, timeout=60, check=False)


def test_worker_and_projections_started_first_make_their_topics_and_process_events(
        stack_up: Settings, run_id: str, tmp_path: Path) -> None:
    with scoped(stack_up, f"touchpoint_fresh_{run_id}") as migrated:
        settings = migrated.model_copy(update={"topic_prefix": f"fresh-{run_id}"})
        assert sorted(missing_topics(settings)) == sorted(spec.name for spec in topic_specs(settings))
        before = topics_check(settings)
        assert before.returncode == 3 and settings.topic("accepted") in before.stderr, before

        worker = spawn_touchpoint(settings, "worker", log=tmp_path / "worker.log")
        writer = spawn_touchpoint(settings, "project", log=tmp_path / "project.log")
        try:
            wait_until(lambda: not missing_topics(settings), 120, "the services to make their topics",
                       (worker, writer))
            after = topics_check(settings)
            assert after.returncode == 0, after

            now = datetime.now(UTC)
            events = sample_events(f"fresh-{run_id}", now)
            with EventProducer(settings) as producer:
                results = producer.publish(events, now)
            assert all(isinstance(r, Delivered) for r in results), results

            def interactions() -> set[str]:
                with psycopg.connect(settings.pg_conninfo()) as conn:
                    return {row[0] for row in conn.execute("SELECT event_id FROM interactions")}

            ids = {str(e["event_id"]) for e in events}
            def customers() -> set[str]:
                with psycopg.connect(settings.pg_conninfo()) as conn:
                    return {row[0] for row in conn.execute("SELECT customer_id FROM customers")}

            wait_until(lambda: ids <= interactions(), 120, "the events' rows", (worker, writer))
            # One person, recognised across the five channels (the card's projection runs beside the other).
            wait_until(customers, 60, "the customer's card", (worker, writer))
            assert len(customers()) == 1
        finally:
            assert stop_process(writer) == 0, (tmp_path / "project.log").read_text()[-3000:]
            stop_process(worker)
