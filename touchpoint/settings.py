"""One frozen settings object for the whole process.

Built once at the entry point (CLI, worker, API) from ``TOUCHPOINT_*``
environment variables and passed to whatever needs it; nothing else reads the
environment. Defaults describe the local default stack started by
``touchpoint stack up``, on ports chosen not to collide with a system Kafka or
PostgreSQL.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Every knob Touchpoint has; see the README for what each does."""

    model_config = SettingsConfigDict(env_prefix="TOUCHPOINT_", frozen=True, extra="forbid")

    # Where the local stack keeps its downloads, data, logs and pid files.
    home: Path = Field(default=Path(".touchpoint"))

    kafka_bootstrap: str = "127.0.0.1:19092"
    kafka_controller_port: int = 19093
    # Topic defaults; replication factor 1 suits the single local broker.
    topic_partitions: int = 3
    topic_replication_factor: int = 1
    topic_prefix: str = "touchpoint"

    pg_host: str = "127.0.0.1"
    pg_port: int = 55432
    pg_user: str = "touchpoint"
    pg_password: SecretStr = SecretStr("touchpoint")
    pg_database: str = "touchpoint"

    registry_url: str = "http://127.0.0.1:18081/apis/ccompat/v7"

    # HTTP ingest gateway (touchpoint gateway).
    gateway_host: str = "127.0.0.1"
    gateway_port: int = 18080
    gateway_max_body_bytes: int = 1_048_576
    gateway_max_events: int = 1000
    # Who may post events: sha256 hex of each key -> its source system and scope, {"name": "sms-provider",
    # "channels": ["sms"], "types": ["sms", "consent"]} ("*" for every one) plus optional "rate_per_s",
    # "burst" and "max_body_bytes" (JSON in TOUCHPOINT_GATEWAY_KEYS). No key configured: every post is
    # refused. ``python -m connectors.access new-key --name NAME --channels ... --types ...`` makes one.
    gateway_keys: dict[str, dict[str, Any]] = Field(default_factory=dict)
    # A JSON file of more such entries, re-read when it changes: keys rotate without a restart.
    gateway_keys_file: Path | None = None
    # Requests per second per source whose entry names no rate (a token bucket in each gateway process,
    # holding two seconds' worth unless the entry names a burst).
    gateway_rate_per_s: float = Field(default=50.0, gt=0)

    # Front-line lookup API (touchpoint api), on the gateway's host.
    api_port: int = 18082
    # Who may call it: sha256 hex of each API key -> {"name": ..., "role": "agent" | "operations" |
    # "admin"} (JSON in TOUCHPOINT_API_KEYS). Only hashes are configured, never keys; see
    # connectors/access.py (``python -m connectors.access new-key`` makes a key and its entry).
    api_keys: dict[str, dict[str, str]] = Field(default_factory=dict)
    # A JSON file of more such entries, re-read when it changes: keys rotate without a restart.
    api_keys_file: Path | None = None

    # Phone numbers written nationally are read as numbers of this region (ISO 3166 code).
    phone_region: str = "GB"

    # Loyalty rules file (YAML or JSON, see touchpoint/core/loyalty_rules.yaml); unset: the shipped rules.
    loyalty_rules: Path | None = None

    # Keys the hash of identifiers used as partition keys; set a real secret outside the local stack.
    identifier_key: SecretStr = SecretStr("local-stack-identifier-key")
    # Wraps the key store's data keys (connectors/keystore.py); set a real secret outside the local stack.
    privacy_master_key: SecretStr = SecretStr("local-stack-master-key")

    log_level: str = "INFO"
    log_json: bool = True
    # Empty: spans go to the console exporter (if tracing is on); else OTLP/HTTP.
    otlp_endpoint: str = ""
    tracing: bool = False

    @property
    def kafka_host_port(self) -> tuple[str, int]:
        """The first bootstrap server as (host, port)."""
        host, _, port = self.kafka_bootstrap.split(",")[0].rpartition(":")
        return host, int(port)

    @property
    def registry_host_port(self) -> tuple[str, int]:
        """Host and port the registry URL points at."""
        rest = self.registry_url.split("://", 1)[-1].split("/", 1)[0]
        host, _, port = rest.rpartition(":")
        return host, int(port)

    def pg_conninfo(self, database: str | None = None) -> str:
        """A libpq connection string (the password included: never log it)."""
        from psycopg.conninfo import make_conninfo

        return make_conninfo(
            host=self.pg_host,
            port=self.pg_port,
            user=self.pg_user,
            password=self.pg_password.get_secret_value(),
            dbname=database or self.pg_database,
        )

    def topic(self, name: str) -> str:
        """A Touchpoint topic name, e.g. ``topic("dlq")`` -> ``touchpoint.dlq``."""
        return f"{self.topic_prefix}.{name}"


def load_settings(**overrides: object) -> Settings:
    """Build the settings from the environment, with explicit overrides on top."""
    return Settings(**overrides)  # type: ignore[arg-type]
