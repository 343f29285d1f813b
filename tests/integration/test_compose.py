"""docker-compose.yml is valid Compose and runs the same versions as the local stack."""

from __future__ import annotations

import re
import shutil
import subprocess
from importlib import resources

import pytest

from tests.fix_stack import REPO
from touchpoint.stack.registry import APICURIO_VERSION

COMPOSE = (REPO / "docker-compose.yml").read_text()


def compose_command() -> list[str]:
    if subprocess.run(["docker", "compose", "version"], capture_output=True, check=False).returncode == 0:
        return ["docker", "compose"]
    legacy = shutil.which("docker-compose")
    if legacy is None:
        pytest.fail("neither `docker compose` nor `docker-compose` is installed (./run test installs the latter)")
    return [legacy]


def test_compose_config_is_valid() -> None:
    result = subprocess.run([*compose_command(), "config", "-q"], cwd=REPO, capture_output=True, text=True,
                            check=False)
    assert result.returncode == 0, result.stderr


def test_compose_pins_match_the_local_stack() -> None:
    pom = resources.files("touchpoint.stack").joinpath("kafka-pom.xml").read_text()
    kafka_version = re.search(r"<artifactId>kafka_2\.13</artifactId>\s*<version>([^<]+)</version>", pom)
    assert kafka_version is not None
    assert f"image: apache/kafka:{kafka_version.group(1)}" in COMPOSE
    assert f"image: apicurio/apicurio-registry:{APICURIO_VERSION}" in COMPOSE
    assert "image: postgres:15" in COMPOSE


@pytest.mark.parametrize("service", ["kafka", "postgres", "registry", "worker", "projections", "gateway"])
def test_every_long_running_service_has_a_healthcheck(service: str) -> None:
    block = _service_block(service)
    assert "healthcheck:" in block


def _service_block(service: str) -> str:
    lines = COMPOSE.split("\n")
    start = lines.index(f"  {service}:")
    block = []
    for line in lines[start + 1:]:
        if line.startswith("  ") and not line.startswith("    "):
            break
        block.append(line)
    return "\n".join(block)
