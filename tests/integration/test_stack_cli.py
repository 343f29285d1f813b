"""`touchpoint stack up | status | down` on a second stack of its own (own home, own ports)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator

import pytest

from tests.fix_stack import REPO

pytestmark = pytest.mark.integration


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def second_stack_env() -> Iterator[dict[str, str]]:
    home = REPO / ".touchpoint" / f"cli-test-{uuid.uuid4().hex[:8]}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOUCHPOINT_")}
    env |= {
        "TOUCHPOINT_HOME": str(home),
        "TOUCHPOINT_KAFKA_BOOTSTRAP": f"127.0.0.1:{free_port()}",
        "TOUCHPOINT_KAFKA_CONTROLLER_PORT": str(free_port()),
        "TOUCHPOINT_PG_PORT": str(free_port()),
        "TOUCHPOINT_REGISTRY_URL": f"http://127.0.0.1:{free_port()}/apis/ccompat/v7",
    }
    yield env
    cli(env, "stack", "down")
    shutil.rmtree(home, ignore_errors=True)


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603
        [sys.executable, "-m", "touchpoint", *args], env=env, capture_output=True, text=True, timeout=400,
        stdin=subprocess.DEVNULL, cwd=REPO,
    )


def test_port_taken_is_a_clear_error(second_stack_env: dict[str, str]) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        env = {**second_stack_env, "TOUCHPOINT_KAFKA_BOOTSTRAP": f"127.0.0.1:{port}"}
        result = cli(env, "stack", "up")
    assert result.returncode == 1
    assert f"kafka: port 127.0.0.1:{port} is taken by another process" in result.stderr
    assert "Traceback" not in result.stderr


def test_up_twice_status_down(second_stack_env: dict[str, str]) -> None:
    first = cli(second_stack_env, "stack", "up")
    assert first.returncode == 0, first.stdout + first.stderr
    assert [line.split(":")[0] for line in first.stdout.splitlines() if "started" in line] == [
        "kafka", "postgres", "registry"]

    second = cli(second_stack_env, "stack", "up")
    assert second.returncode == 0, second.stderr
    assert second.stdout.count("already running") == 3

    status = cli(second_stack_env, "stack", "status")
    assert status.returncode == 0 and status.stdout.count(", ready") == 3, status.stdout

    down = cli(second_stack_env, "stack", "down")
    assert down.returncode == 0
    assert [line.split(":")[0] for line in down.stdout.splitlines() if ": stopped" in line] == [
        "registry", "postgres", "kafka"]
    after = cli(second_stack_env, "stack", "status")
    assert after.returncode == 3 and after.stdout.count(": stopped") == 3
