"""The Apache Kafka broker of the local stack: one KRaft node, broker and controller.

Its jars come from Maven Central through the machine's Maven (version pinned
in ``kafka-pom.xml``, fetched once into the stack's home and reused while the
pom is unchanged); it runs on the machine's Java 17. The storage is formatted
once with a cluster id kept beside it. Replication factor 1 and few
partitions for the internal topics suit a single node: with the defaults (3
replicas) transactions and consumer groups would hang.
"""

from __future__ import annotations

import base64
import hashlib
import shutil
import subprocess
import uuid
from importlib import resources
from pathlib import Path
from typing import Any

from touchpoint.errors import StackError
from touchpoint.kafka_security import kafka_python_options
from touchpoint.settings import Settings
from touchpoint.stack.process import Component, port_open

JAVA_HEAP = "-Xmx768m"


def _require(tool: str, hint: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise StackError(f"kafka: `{tool}` not found on PATH; {hint}")
    return path


def jars_dir(home: Path) -> Path:
    """Where the broker's jars are fetched to under a stack home."""
    return home.resolve() / "kafka" / "libs"


def kafka_component(settings: Settings, broker_properties: dict[str, str] | None = None) -> Component:
    """The broker as a stack component.

    Its client listener speaks ``settings.kafka_security_protocol``: with the
    default ``PLAINTEXT`` the broker is configured as it always was. With a
    ``SASL_*`` protocol the listener takes ``kafka_sasl_mechanism`` and the
    settings' user is created (SCRAM) when the storage is formatted, so the
    clients built from the same settings get in. TLS needs a keystore the
    settings do not describe: pass its ``ssl.*`` lines in ``broker_properties``
    (added to the broker's configuration as they are).
    """
    home = settings.home.resolve()
    base = home / "kafka"
    libs = jars_dir(home)
    data = base / "data"
    props = base / "server.properties"
    host, port = settings.kafka_host_port
    controller_port = settings.kafka_controller_port
    protocol = settings.kafka_security_protocol
    sasl = protocol.startswith("SASL_")
    mechanism = settings.kafka_sasl_mechanism
    user, password = settings.kafka_sasl_username, settings.kafka_sasl_password.get_secret_value()

    def fetch_jars() -> None:
        pom_text = resources.files("touchpoint.stack").joinpath("kafka-pom.xml").read_text()
        stamp = libs / ".pom-sha256"
        digest = hashlib.sha256(pom_text.encode()).hexdigest()
        if stamp.exists() and stamp.read_text() == digest:
            return
        mvn = _require("mvn", "install Maven (Debian package `maven`) so the broker's jars can be fetched")
        _require("java", "install a Java 17 runtime (Debian package `openjdk-17-jre-headless`)")
        base.mkdir(parents=True, exist_ok=True)
        pom = base / "pom.xml"
        pom.write_text(pom_text)
        if libs.exists():
            shutil.rmtree(libs)
        print("kafka: fetching the broker's jars from Maven Central (first run only)...", flush=True)
        result = subprocess.run(  # noqa: S603
            [mvn, "-B", "-q", "-f", str(pom), "dependency:copy-dependencies",
             f"-DoutputDirectory={libs}", "-DincludeScope=runtime"],
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
        )
        if result.returncode != 0:
            raise StackError(
                "kafka: Maven could not fetch the broker's jars from Maven Central "
                f"(exit {result.returncode}); is Maven Central reachable?\n{(result.stdout + result.stderr)[-2000:]}"
            )
        stamp.write_text(digest)

    def security_lines() -> list[str]:
        lines: list[str] = []
        if sasl:
            # The broker talks to itself (inter-broker) as the settings' user.
            jaas = ("org.apache.kafka.common.security.scram.ScramLoginModule required "
                    f'username="{user}" password="{password}";')
            lines += [
                f"sasl.enabled.mechanisms={mechanism}",
                f"sasl.mechanism.inter.broker.protocol={mechanism}",
                f"listener.name.{protocol.lower()}.{mechanism.lower()}.sasl.jaas.config={jaas}",
            ]
        lines += [f"{name}={value}" for name, value in (broker_properties or {}).items()]
        return lines

    def write_config() -> None:
        if sasl:  # it holds the SCRAM user's password
            props.touch(mode=0o600)
            props.chmod(0o600)
        props.write_text(
            "\n".join(
                [
                    "# Written by `touchpoint stack up`; edits are overwritten.",
                    "process.roles=broker,controller",
                    "node.id=1",
                    f"controller.quorum.voters=1@{host}:{controller_port}",
                    f"listeners={protocol}://{host}:{port},CONTROLLER://{host}:{controller_port}",
                    f"advertised.listeners={protocol}://{host}:{port}",
                    "controller.listener.names=CONTROLLER",
                    f"inter.broker.listener.name={protocol}",
                    f"listener.security.protocol.map={protocol}:{protocol},CONTROLLER:PLAINTEXT",
                    f"log.dirs={data}",
                    f"num.partitions={settings.topic_partitions}",
                    # The project creates its topics with explicit configs.
                    "auto.create.topics.enable=false",
                    "offsets.topic.replication.factor=1",
                    "offsets.topic.num.partitions=6",
                    "transaction.state.log.replication.factor=1",
                    "transaction.state.log.min.isr=1",
                    "transaction.state.log.num.partitions=6",
                    "group.initial.rebalance.delay.ms=0",
                    "log.retention.hours=-1",
                    *security_lines(),
                    "",
                ]
            )
        )

    def format_storage() -> None:
        if (data / "meta.properties").exists():
            return
        cluster_id = "-"
        while cluster_id.startswith("-"):
            # As Kafka's own Uuid.randomUuid: an id starting with "-" reads as an option to the tool.
            cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        # SCRAM users live in the cluster's metadata: the settings' user is written with the storage.
        scram = ["--add-scram", f"{mechanism}=[name={user},password={password}]"] if sasl else []
        result = subprocess.run(  # noqa: S603
            [_require("java", "install Java 17"), "-cp", f"{libs}/*", "kafka.tools.StorageTool",
             "format", "-t", cluster_id, "-c", str(props), "--ignore-formatted", *scram],
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
        )
        if result.returncode != 0:
            output = (result.stdout + result.stderr)[-2000:]
            if password:
                output = output.replace(password, "***")
            raise StackError(f"kafka: formatting the storage failed:\n{output}")

    def prepare() -> None:
        fetch_jars()
        data.mkdir(parents=True, exist_ok=True)
        write_config()
        format_storage()

    def argv() -> list[str]:
        return [
            _require("java", "install Java 17"),
            JAVA_HEAP,
            "-Xms256m",
            "-XX:+UseG1GC",
            "-Djava.awt.headless=true",
            # slf4j-simple: INFO and up, with timestamps.
            "-Dorg.slf4j.simpleLogger.showDateTime=true",
            "-Dorg.slf4j.simpleLogger.defaultLogLevel=info",
            "-cp",
            f"{libs}/*",
            "kafka.Kafka",
            str(props),
        ]

    def ready() -> bool:
        if not port_open(host, port):
            return False
        return broker_answers(settings.kafka_bootstrap, **kafka_python_options(settings))

    return Component(
        name="kafka",
        home=home,
        host=host,
        ports=(port, controller_port),
        marker=str(props),
        prepare=prepare,
        argv=argv,
        ready=ready,
        describe=f"bootstrap {settings.kafka_bootstrap}",
    )


def broker_answers(bootstrap: str, **options: Any) -> bool:
    """True when an admin client can list topics (the broker has finished starting).

    :param options: the clients' security options (:func:`touchpoint.kafka_security.kafka_python_options`).
    """
    from kafka.admin import KafkaAdminClient
    from kafka.errors import KafkaError

    try:
        admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=3000, client_id="touchpoint-stack",
                                 **options)
    except (KafkaError, OSError, ValueError):
        return False
    try:
        admin.list_topics()
        return True
    except (KafkaError, OSError):
        return False
    finally:
        admin.close()

