"""docker-compose.yml is valid Compose, runs the same versions as the local stack, and its `secured` profile fits."""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
import yaml
from psycopg.conninfo import conninfo_to_dict

from tests.fix_stack import REPO
from touchpoint.settings import WORKER_PROCESSES, WORKER_STAGES, Settings
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


@pytest.mark.parametrize("service", ["kafka", "postgres", "registry", "worker", "projections", "gateway", "api"])
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


# -- the `secured` profile ---------------------------------------------------------------------------

SECURED_APPS = ["setup-secured", "worker-secured", "worker-profile-secured", "projections-secured", "clock-secured",
                "gateway-secured", "api-secured"]
SECURED = ["kafka-secured", "postgres-secured", "registry-secured", *SECURED_APPS]


@functools.cache
def rendered(*profile: str) -> dict[str, Any]:
    """The compose model as Compose resolves it (anchors merged, variables interpolated), parsed."""
    result = subprocess.run([*compose_command(), *profile, "config"], cwd=REPO, capture_output=True, text=True,
                            check=False, env={k: v for k, v in os.environ.items() if not k.startswith("TOUCHPOINT_")})
    assert result.returncode == 0, result.stderr
    model: dict[str, Any] = yaml.safe_load(result.stdout)
    return model  # shared between tests: read it, never change it


def test_the_secured_profile_parses_and_stays_out_of_the_default_stack() -> None:
    default = rendered()
    secured = rendered("--profile", "secured")
    assert set(SECURED) <= set(secured["services"])
    for name in SECURED:
        assert secured["services"][name]["profiles"] == ["secured"], name
    # `docker compose up` starts the same services as before; the profile's need it named.
    for name in ("kafka", "postgres", "registry", "setup", "worker", "worker-profile", "projections", "clock",
                 "gateway", "api"):
        assert "profiles" not in default["services"][name], name


@pytest.mark.parametrize("service", ["kafka-secured", "postgres-secured", "registry-secured", "worker-secured",
                                     "worker-profile-secured", "projections-secured", "gateway-secured", "api-secured"])
def test_every_long_running_secured_service_has_a_healthcheck(service: str) -> None:
    assert "healthcheck" in rendered("--profile", "secured")["services"][service]


@pytest.mark.parametrize("profile", [(), ("--profile", "secured")])
def test_the_worker_services_run_every_stage_once_as_the_demo_groups_them(profile: tuple[str, ...]) -> None:
    suffix = "-secured" if profile else ""
    services = rendered(*profile)["services"]
    groups = [services[f"{name}{suffix}"]["environment"]["TOUCHPOINT_WORKER_STAGES"]
              for name in ("worker", "worker-profile")]
    assert tuple(groups) == WORKER_PROCESSES
    assert sorted(stage for group in groups for stage in group.split(",")) == sorted(WORKER_STAGES)


def test_no_secret_value_is_written_in_the_compose_file() -> None:
    secret = re.compile(r"PASSWORD|SECRET|_KEY$|_KEYS$")
    for name, service in rendered("--profile", "secured")["services"].items():
        if name not in SECURED:
            continue
        for variable, value in (service.get("environment") or {}).items():
            if secret.search(variable):
                # Passed through from the environment of `docker compose` (null), or empty when unset.
                assert value in (None, ""), f"{name}: {variable} has a value in the compose file"


@pytest.mark.parametrize("service", SECURED_APPS)
def test_the_secured_apps_environment_is_valid_touchpoint_settings(service: str, tmp_path: Path) -> None:
    env = rendered("--profile", "secured")["services"][service]["environment"]
    given = {name.removeprefix("TOUCHPOINT_").lower(): value for name, value in env.items()}
    for name, value in given.items():
        if value is None:  # a secret passed through: stands for whatever the operator sets
            given[name] = "svc-touchpoint" if name == "kafka_sasl_username" else f"secret-for-{name}"
    for keys in ("gateway_keys", "api_keys", "api_limits"):  # JSON maps (key digests, roles), not strings
        if keys in given:
            given[keys] = {}
    settings = Settings(**given)  # extra="forbid": a misspelt variable fails here
    assert settings.kafka_security_protocol == "SASL_SSL"
    assert settings.kafka_sasl_mechanism == "SCRAM-SHA-512"
    assert settings.kafka_ssl_cafile == Path("/run/secrets/touchpoint_ca")
    assert "touchpoint_ca" in [s if isinstance(s, str) else s["source"]
                               for s in rendered("--profile", "secured")["services"][service]["secrets"]]
    assert conninfo_to_dict(settings.pg_conninfo())["sslmode"] == "verify-full"
    # What the broker is told to accept is what the clients are told to use.
    broker = (REPO / "deploy" / "secured" / "kafka.properties").read_text()
    assert f"sasl.enabled.mechanisms={settings.kafka_sasl_mechanism}" in broker
    assert f"SASL_SSL://{settings.kafka_bootstrap}" in broker


def run_broker_command(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """The kafka-secured container's command, run by bash here with its Kafka tools replaced by stubs."""
    script = rendered("--profile", "secured")["services"]["kafka-secured"]["command"]
    assert script[:2] == ["bash", "-ec"]
    body = script[2].replace("$$", "$")  # Compose's escape for a literal $
    tools = tmp_path / "bin"
    tools.mkdir()
    for tool in ("kafka-storage.sh", "kafka-server-start.sh"):
        (tools / tool).write_text(f'#!/bin/sh\necho "{tool} $*" >> {tmp_path}/calls\n')
        (tools / tool).chmod(0o755)
    body = (body.replace("/tmp/", f"{tmp_path}/").replace("/opt/kafka/bin/", f"{tools}/")
            .replace("/etc/touchpoint/kafka.properties", str(REPO / "deploy" / "secured" / "kafka.properties")))
    return subprocess.run(["bash", "-ec", body], capture_output=True, text=True, check=False,
                          env={"PATH": os.environ["PATH"], **env})


def test_the_secured_broker_logs_in_as_the_settings_user_and_creates_it(tmp_path: Path) -> None:
    done = run_broker_command(tmp_path, TOUCHPOINT_KAFKA_SASL_USERNAME="svc", TOUCHPOINT_KAFKA_SASL_PASSWORD="pw-1")
    assert done.returncode == 0, done.stderr
    server = (tmp_path / "server.properties").read_text()
    assert ('listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.'
            'ScramLoginModule required username="svc" password="pw-1";') in server
    assert oct((tmp_path / "server.properties").stat().st_mode & 0o777) == "0o600"
    calls = (tmp_path / "calls").read_text()
    assert "--add-scram SCRAM-SHA-512=[name=svc,password=pw-1]" in calls
    assert f"kafka-server-start.sh {tmp_path}/server.properties" in calls


def test_the_secured_broker_refuses_to_start_without_credentials(tmp_path: Path) -> None:
    done = run_broker_command(tmp_path, TOUCHPOINT_KAFKA_SASL_USERNAME="svc")
    assert done.returncode != 0
    assert "set TOUCHPOINT_KAFKA_SASL_PASSWORD" in done.stderr
    assert not (tmp_path / "calls").exists()
