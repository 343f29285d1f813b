"""Benchmarks are not tests, but CI proves they still run: each at a tiny size, on the real stack."""

from __future__ import annotations

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
    ],
    ids=["fold", "loyalty", "alerts"],
)
def test_benchmark_runs_at_a_tiny_size(settings: Settings, args: list[str], expected: list[str]) -> None:
    result = subprocess.run([sys.executable, "-m", *args], env=settings_env(settings), cwd=REPO,
                            capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for text in expected:
        assert text in result.stdout, result.stdout[-3000:]
