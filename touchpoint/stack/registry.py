"""The schema registry of the local stack: Apicurio Registry 3 from Maven Central.

Apicurio publishes a runnable distribution on Maven Central
(``io.apicurio:apicurio-registry-app:<v>:tar.gz:all``: a Quarkus runner jar
plus its ``lib/``); we fetch it with the machine's Maven, unpack it under the
stack's home and run it on Java 17. 3.0.9 is the newest release whose
classes target Java 17 (3.3.x needs Java 21). Storage is KafkaSQL: schemas
live in the stack's Kafka (``kafkasql-journal`` topic), so ids survive a
registry restart and stay valid for the messages already in the log.

With a secured Kafka (``TOUCHPOINT_KAFKA_SECURITY_PROTOCOL``) its KafkaSQL
clients log in with the settings' SCRAM user and trust the settings' CA:
Apicurio takes any Kafka client property as ``apicurio.kafka.common.*``, here
from a file of ours (mode 0600, it holds the password) named by
``quarkus.config.locations``.

Touchpoint talks to it only through its Confluent-compatible API
(``/apis/ccompat/v7``), so ``TOUCHPOINT_REGISTRY_URL`` can point at any
Confluent-compatible registry instead.
"""

from __future__ import annotations

import shutil
import subprocess
import tarfile
from pathlib import Path

import httpx

from touchpoint.errors import StackError
from touchpoint.settings import Settings
from touchpoint.stack.process import Component, port_open

APICURIO_VERSION = "3.0.9"
ARTIFACT = f"io.apicurio:apicurio-registry-app:{APICURIO_VERSION}:tar.gz:all"
RUNNER = f"apicurio-registry-app-{APICURIO_VERSION}-runner.jar"


def dist_dir(home: Path) -> Path:
    """Where the unpacked distribution lives under a stack home."""
    return home.resolve() / "registry" / APICURIO_VERSION


def kafka_client_properties(settings: Settings) -> list[str]:
    """Apicurio's properties for logging in to a secured Kafka as the settings say ([] for PLAINTEXT)."""
    protocol = settings.kafka_security_protocol
    if protocol == "PLAINTEXT":
        return []
    if settings.kafka_ssl_certfile is not None:
        raise StackError("registry: the local registry does not take client certificates; use SCRAM (SASL_SSL)")
    lines = [f"apicurio.kafka.common.security.protocol={protocol}"]
    if protocol.startswith("SASL_"):
        password = settings.kafka_sasl_password.get_secret_value()
        lines += [
            f"apicurio.kafka.common.sasl.mechanism={settings.kafka_sasl_mechanism}",
            "apicurio.kafka.common.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule "
            f'required username="{settings.kafka_sasl_username}" password="{password}";',
        ]
    if protocol in ("SSL", "SASL_SSL"):
        lines.append("apicurio.kafka.common.ssl.endpoint.identification.algorithm=https")
        if settings.kafka_ssl_cafile is not None:
            lines += ["apicurio.kafka.common.ssl.truststore.type=PEM",
                      f"apicurio.kafka.common.ssl.truststore.location={settings.kafka_ssl_cafile.resolve()}"]
    return lines


def registry_component(settings: Settings) -> Component:
    """The registry as a stack component (started after Kafka, which stores its schemas)."""
    home = settings.home.resolve()
    base = home / "registry"
    dist = dist_dir(home)
    host, port = settings.registry_host_port
    origin = settings.registry_url.split("/apis/", 1)[0]

    def prepare() -> None:
        if (dist / RUNNER).exists():
            return
        mvn = shutil.which("mvn")
        if mvn is None:
            raise StackError("registry: `mvn` not found; install Maven (Debian package `maven`)")
        download = base / "download"
        print(f"registry: fetching Apicurio Registry {APICURIO_VERSION} from Maven Central (first run only)...",
              flush=True)
        result = subprocess.run(  # noqa: S603
            [mvn, "-B", "-q", "dependency:copy", f"-Dartifact={ARTIFACT}", f"-DoutputDirectory={download}"],
            capture_output=True, text=True, stdin=subprocess.DEVNULL, cwd=home,
        )
        if result.returncode != 0:
            raise StackError(
                f"registry: Maven could not fetch {ARTIFACT} (exit {result.returncode}):\n"
                f"{(result.stdout + result.stderr)[-2000:]}"
            )
        staging = base / "unpacking"
        shutil.rmtree(staging, ignore_errors=True)
        with tarfile.open(next(download.glob("*.tar.gz"))) as archive:
            archive.extractall(staging, filter="data")
        shutil.rmtree(dist, ignore_errors=True)
        staging.rename(dist)
        shutil.rmtree(download)

    def argv() -> list[str]:
        java = shutil.which("java")
        if java is None:
            raise StackError("registry: `java` not found; install a Java 17 runtime")
        secured: list[str] = []
        client_properties = kafka_client_properties(settings)
        if client_properties:
            config = base / "kafka-client.properties"
            config.touch(mode=0o600)
            config.chmod(0o600)  # it holds the password
            config.write_text("\n".join(["# Written by `touchpoint stack up`; edits are overwritten.",
                                         *client_properties, ""]))
            secured = [f"-Dquarkus.config.locations={config}"]
        return [
            java, "-Xmx384m", "-XX:+UseSerialGC",
            f"-Dquarkus.http.host={host}", f"-Dquarkus.http.port={port}",
            "-Dapicurio.storage.kind=kafkasql",
            f"-Dapicurio.kafkasql.bootstrap.servers={settings.kafka_bootstrap}",
            *secured,
            "-jar", str(dist / RUNNER),
        ]

    def ready() -> bool:
        if not port_open(host, port):
            return False
        try:
            return httpx.get(f"{origin}/health/ready", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    return Component(
        name="registry",
        home=home,
        host=host,
        ports=(port,),
        marker=RUNNER,
        prepare=prepare,
        argv=argv,
        ready=ready,
        describe=settings.registry_url,
        start_timeout_s=120.0,
    )
