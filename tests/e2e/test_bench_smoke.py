"""Benchmarks are not tests, but CI proves they still run: each at a tiny size, on the real stack."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.fix_stack import REPO, settings_env
from touchpoint.settings import Settings

pytestmark = pytest.mark.integration


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["bench.fold", "--customers", "40", "--days", "30"], ["events/s", "machine: ", "validate"]),
        (["bench.loyalty", "--tiny"], ["purchases/s", "entries/s", "replay: "]),
        (["bench.alerts", "--tiny"], ["customers/s", "tick publish -> alert received", "worker stopped"]),
        (["bench.privacy", "--tiny"], ["machine: ", "µs/event once known", "erasure of a customer with 200 events"]),
    ],
    ids=["fold", "loyalty", "alerts", "privacy"],
)
def test_benchmark_runs_at_a_tiny_size(settings: Settings, args: list[str], expected: list[str]) -> None:
    result = subprocess.run([sys.executable, "-m", *args], env=settings_env(settings), cwd=REPO,
                            capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for text in expected:
        assert text in result.stdout, result.stdout[-3000:]


def test_projections_benchmark_runs_at_a_tiny_size(settings: Settings) -> None:
    result = subprocess.run([sys.executable, "-m", "bench.projections", "--tiny"], env=settings_env(settings),
                            cwd=REPO, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL,
                            check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for text in ("machine: ", "write throughput: ", "records/s", "rebuild: rebuilt from", "(equal;"):
        assert text in result.stdout, result.stdout[-3000:]


def test_lookup_benchmark_runs_at_a_tiny_size(settings: Settings) -> None:
    """bench.lookup --tiny: 1,000 cards, the API, a worker and projection writers, ~20 s."""
    result = subprocess.run([sys.executable, "-m", "bench.lookup", "--tiny"], env=settings_env(settings), cwd=REPO,
                            capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for text in ("machine: ", "read model: 1,000 customers", "HTTP lookup at 20 req/s", "HTTP lookup at 50 req/s",
                 "raw PostgreSQL", "ratio HTTP / the API's statement", "ingest meanwhile: "):
        assert text in result.stdout, result.stdout[-3000:]
    assert "errors 0;" in result.stdout, result.stdout[-3000:]


def test_pipeline_benchmark_runs_at_a_tiny_size(settings: Settings) -> None:
    """bench.pipeline --tiny --json: 3,000 events, each stage alone, the pipeline, its oracle, ~60 s."""
    result = subprocess.run([sys.executable, "-m", "bench.pipeline", "--tiny", "--json"], env=settings_env(settings),
                            cwd=REPO, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL,
                            check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    figures = json.loads(result.stdout.splitlines()[-1])
    assert figures["events"] == 3000 and figures["oracle_equal"] is True, figures
    for key in ("ceiling_events_per_s", "pipeline_events_per_s", "ingest_events_per_s", "identity_events_per_s",
                "profile_events_per_s", "projections_records_per_s", "p99_ms_at_half", "worker_rss_mib"):
        assert figures[key] > 0, (key, figures)


def test_projections_benchmark_prints_json(settings: Settings) -> None:
    result = subprocess.run([sys.executable, "-m", "bench.projections", "--tiny", "--json"],
                            env=settings_env(settings), cwd=REPO, capture_output=True, text=True, timeout=300,
                            stdin=subprocess.DEVNULL, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    figures = json.loads(result.stdout)
    assert figures["checksum_equal"] is True and figures["rebuild_records_per_s"] > 0, figures
