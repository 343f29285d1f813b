"""One frozen settings object for the whole process.

Built once at the entry point (CLI, worker, API) from ``TOUCHPOINT_*``
environment variables and passed to whatever needs it; nothing else reads the
environment. Defaults describe the local default stack started by
``touchpoint stack up``, on ports chosen not to collide with a system Kafka or
PostgreSQL.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

WORKER_STAGES = ("ingest", "identity", "profile")
"""The worker's stages in pipeline order (streams/)."""

WORKER_PROCESSES = ("ingest,identity", "profile")
"""How the demo, the benchmark and docker-compose.yml run the stages: one worker process per group.

A process computes on one core at a time (Python's GIL), and the profile costs more than ingest and
identity together; apart, each has a core of its own (bench.pipeline, 100,000 events, same settings
otherwise: 4,736-5,538 events/s against 4,445 in one process). ``touchpoint worker`` alone runs every stage.
"""


class LookupLimits(BaseModel):
    """How much one lookup API key may read (connectors/frontline/limits.py)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    per_minute: float = Field(gt=0, description="Lookups a minute, sustained.")
    burst: int = Field(ge=1, description="Lookups at once after a quiet spell (the bucket's size).")
    daily_customers: int | None = Field(default=None, ge=1, description=(
        "Distinct customers a UTC day, after which the key is refused until an admin lifts it; null: none."))


DEFAULT_LOOKUP_LIMITS: dict[str, LookupLimits] = {
    # A person at a desk: a few callers a minute, a short burst (a caller on hold, a colleague's question).
    "agent": LookupLimits(per_minute=6, burst=10, daily_customers=200),
    "operations": LookupLimits(per_minute=12, burst=20, daily_customers=500),
    "admin": LookupLimits(per_minute=12, burst=20, daily_customers=500),
    # A system answering calls for the whole contact centre (a CTI screen pop, an IVR).
    "service": LookupLimits(per_minute=120_000, burst=2_000, daily_customers=1_000_000),
}
"""Each role's limits unless ``TOUCHPOINT_API_LIMITS`` (or a key's own entry) says otherwise."""


class Settings(BaseSettings):
    """Every knob Touchpoint has, each with a comment below (docs/operating.md gives the overview)."""

    # hide_input_in_errors: a refused value (a password among them) is never echoed in the error's text.
    model_config = SettingsConfigDict(env_prefix="TOUCHPOINT_", frozen=True, extra="forbid",
                                      hide_input_in_errors=True)

    # Where the local stack keeps its downloads, data, logs and pid files.
    home: Path = Field(default=Path(".touchpoint"))

    kafka_bootstrap: str = "127.0.0.1:19092"
    kafka_controller_port: int = 19093
    # Topic defaults; replication factor 1 suits the single local broker.
    topic_partitions: int = 3
    topic_replication_factor: int = 1
    topic_prefix: str = "touchpoint"
    # How long the channel topics (events.<channel>) keep a record, in days: the only topics where a
    # channel system's clear identifiers may land before ingest seals them (DESIGN.md §6). Must outlast
    # the longest time ingest may be down, or events it has not read yet are deleted.
    channel_retention_days: float = Field(default=7.0, gt=0)
    # How clients reach Kafka (touchpoint/kafka_security.py turns these into each client's options).
    # PLAINTEXT (the local stack), SSL (TLS, optionally with a client certificate), SASL_PLAINTEXT or
    # SASL_SSL (SCRAM user name and password, over TLS for the latter).
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: Literal["SCRAM-SHA-256", "SCRAM-SHA-512"] = "SCRAM-SHA-512"
    kafka_sasl_username: str = ""
    kafka_sasl_password: SecretStr = SecretStr("")
    # PEM files: the CA that signed the brokers' certificates (unset: the system's CAs), and the
    # client's certificate and key for brokers that authenticate clients by certificate (mTLS).
    kafka_ssl_cafile: Path | None = None
    kafka_ssl_certfile: Path | None = None
    kafka_ssl_keyfile: Path | None = None
    kafka_ssl_key_password: SecretStr | None = None

    pg_host: str = "127.0.0.1"
    pg_port: int = 55432
    pg_user: str = "touchpoint"
    pg_password: SecretStr = SecretStr("touchpoint")
    pg_database: str = "touchpoint"
    # libpq's TLS parameters; unset: libpq's defaults (sslmode "prefer"). "verify-full" checks the
    # server's certificate against pg_sslrootcert and its name; pg_sslcert/pg_sslkey: a client certificate.
    pg_sslmode: Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"] | None = None
    pg_sslrootcert: Path | None = None
    pg_sslcert: Path | None = None
    pg_sslkey: Path | None = None

    registry_url: str = "http://127.0.0.1:18081/apis/ccompat/v7"

    # The stages a worker runs (comma-separated, of ingest, identity, profile): all by default; a subset
    # scales or measures one stage alone (bench.pipeline). Identity runs in one process at a time.
    worker_stages: str = "ingest,identity,profile"

    # HTTP ingest gateway (touchpoint gateway).
    gateway_host: str = "127.0.0.1"
    gateway_port: int = 18080
    gateway_max_body_bytes: int = 1_048_576
    gateway_max_events: int = 1000
    # Who may post events: sha256 hex of each key -> its source system and scope, {"name": "sms-provider",
    # "channels": ["sms"], "types": ["sms", "consent"]} ("*" for every one) plus optional "rate_per_s",
    # "burst" and "max_body_bytes" (JSON in TOUCHPOINT_GATEWAY_KEYS). No key configured: every post is
    # refused. ``python -m connectors.frontline.access new-key --name NAME --channels ... --types ...`` makes one.
    gateway_keys: dict[str, dict[str, Any]] = Field(default_factory=dict)
    # A JSON file of more such entries, re-read when it changes: keys rotate without a restart.
    gateway_keys_file: Path | None = None
    # Requests per second per source whose entry names no rate (a token bucket in each gateway process,
    # holding two seconds' worth unless the entry names a burst).
    gateway_rate_per_s: float = Field(default=50.0, gt=0)

    # Front-line lookup API (touchpoint api), on the gateway's host.
    api_port: int = 18082
    # Who may call it: sha256 hex of each API key -> {"name": ..., "role": "agent" | "operations" |
    # "admin" | "service"} plus optional limits of its own ("per_minute", "burst", "daily_customers") (JSON in
    # TOUCHPOINT_API_KEYS). Only hashes are configured, never keys; see connectors/frontline/access.py
    # (``python -m connectors.frontline.access new-key`` makes a key and its entry).
    api_keys: dict[str, dict[str, Any]] = Field(default_factory=dict)
    # A JSON file of more such entries, re-read when it changes: keys rotate without a restart.
    api_keys_file: Path | None = None
    # Server processes; unset: one per core but one, at least one (the API shares its machine with
    # PostgreSQL and the pipeline: on two cores one process answered 1,000 lookups/s at 0.41 ms of CPU each
    # with a p99 of 5.8 ms, two processes 0.46 ms and 13-53 ms; bench.lookup, docs/read-model-and-lookup.md).
    api_workers: int | None = Field(default=None, ge=1)
    # synchronous_commit of the lookup's statement, i.e. when its audit row is durable (see
    # docs/read-model-and-lookup.md): "off" (committed before the answer, on disk within ~0.6 s: a crash
    # of PostgreSQL's machine may lose the rows of the lookups answered just before), "remote_write"
    # (also on a synchronous standby's memory, with one configured), "on" (flushed before the answer).
    api_audit_commit: Literal["off", "local", "remote_write", "remote_apply", "on"] = "off"
    # Lookups per key, by role: {"agent": {"per_minute": 6, "burst": 10, "daily_customers": 200}, ...} (JSON;
    # roles not given keep DEFAULT_LOOKUP_LIMITS; a key's entry may name its own). Over the rate: 429 with
    # Retry-After; past the daily ceiling of distinct customers: 403 until an admin lifts the block. Kept in
    # PostgreSQL by the lookup's own statement, so every API process shares them.
    api_limits: dict[Literal["agent", "operations", "admin", "service"], LookupLimits] = Field(default_factory=dict)
    # The access watch (one of the API's processes): a key whose lookups in a window are at least the minimum
    # and more than the multiple of its usual volume per window (over the history's days), or that was blocked
    # at its ceiling, is an alert on touchpoint.alerts.access (connectors/operations/access.py).
    api_access_window_s: int = Field(default=300, ge=1)
    api_access_multiple: float = Field(default=5.0, ge=1)
    api_access_min_lookups: int = Field(default=30, ge=1)
    api_access_history_days: int = Field(default=7, ge=1)

    # Phone numbers written nationally are read as numbers of this region (ISO 3166 code).
    phone_region: str = "GB"

    # Loyalty rules file (YAML or JSON, see touchpoint/core/loyalty_rules.yaml); unset: the shipped rules.
    loyalty_rules: Path | None = None
    # How long (in the log's time, from when it arrived) a refund of a purchase its customer does not hold
    # yet waits for the purchase (a late purchase, or a merge that brings it) before it is dead-lettered.
    refund_hold_days: int = Field(default=30, ge=0)

    # Customer value (docs/value.md), written into a value model by `touchpoint value fit --out`: the share of
    # spend that is margin, CLV's yearly discount rate and horizon, and the horizon of expected purchases.
    value_margin: float = Field(default=0.3, ge=0, le=1)
    value_annual_discount: float = Field(default=0.1, ge=0)
    value_horizon_months: int = Field(default=12, ge=1)
    value_expected_days: int = Field(default=90, ge=1)

    # Most messages a stream stage (ingest, identity, profile) takes at once; a full batch means a backlog
    # (streams/batch.py). 1,000 -> 4,000 made the profile alone 7,157 -> 8,685 events/s.
    stage_batch_size: int = Field(default=4000, ge=1)

    # Keys the hash of identifiers used as partition keys; set a real secret outside the local stack.
    identifier_key: SecretStr = SecretStr("local-stack-identifier-key")
    # Wraps the key store's data keys (connectors/platform/keystore.py); set a real secret outside the local stack.
    privacy_master_key: SecretStr = SecretStr("local-stack-master-key")

    log_level: str = "INFO"
    log_json: bool = True
    # Empty: spans go to the console exporter (if tracing is on); else OTLP/HTTP.
    otlp_endpoint: str = ""
    tracing: bool = False

    @model_validator(mode="after")
    def _kafka_security_is_complete(self) -> Settings:
        """Fail at start-up, naming the missing setting, rather than at the first connection."""
        sasl = self.kafka_security_protocol.startswith("SASL_")
        if sasl and not (self.kafka_sasl_username and self.kafka_sasl_password.get_secret_value()):
            raise ValueError(
                f"kafka_security_protocol {self.kafka_security_protocol} needs TOUCHPOINT_KAFKA_SASL_USERNAME "
                "and TOUCHPOINT_KAFKA_SASL_PASSWORD"
            )
        if (self.kafka_ssl_certfile is None) != (self.kafka_ssl_keyfile is None):
            raise ValueError("TOUCHPOINT_KAFKA_SSL_CERTFILE and TOUCHPOINT_KAFKA_SSL_KEYFILE go together")
        if (self.pg_sslcert is None) != (self.pg_sslkey is None):
            raise ValueError("TOUCHPOINT_PG_SSLCERT and TOUCHPOINT_PG_SSLKEY go together")
        named = {name.strip() for name in self.worker_stages.split(",") if name.strip()}
        unknown = named - set(WORKER_STAGES)
        if unknown or not named:
            raise ValueError(f"TOUCHPOINT_WORKER_STAGES names {', '.join(sorted(unknown)) or 'no stage'}; "
                             f"give some of {', '.join(WORKER_STAGES)}")
        return self

    @property
    def stages(self) -> tuple[str, ...]:
        """The worker's stages, in pipeline order."""
        named = {name.strip() for name in self.worker_stages.split(",")}
        return tuple(stage for stage in WORKER_STAGES if stage in named)

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

        tls = {
            name: str(value)
            for name, value in (("sslmode", self.pg_sslmode), ("sslrootcert", self.pg_sslrootcert),
                                ("sslcert", self.pg_sslcert), ("sslkey", self.pg_sslkey))
            if value is not None
        }
        return make_conninfo(
            host=self.pg_host,
            port=self.pg_port,
            user=self.pg_user,
            password=self.pg_password.get_secret_value(),
            dbname=database or self.pg_database,
            **tls,
        )

    def pg_url(self, database: str | None = None) -> str:
        """The same connection as a ``postgresql://`` URL, for asyncpg (the password included: never log it)."""
        from urllib.parse import quote, urlencode

        tls = {name: str(value) for name, value in (("sslmode", self.pg_sslmode), ("sslrootcert", self.pg_sslrootcert),
                                                    ("sslcert", self.pg_sslcert), ("sslkey", self.pg_sslkey))
               if value is not None}
        host = f"[{self.pg_host}]" if ":" in self.pg_host else self.pg_host
        query = f"?{urlencode(tls)}" if tls else ""
        return (f"postgresql://{quote(self.pg_user, safe='')}:{quote(self.pg_password.get_secret_value(), safe='')}"
                f"@{host}:{self.pg_port}/{quote(database or self.pg_database, safe='')}{query}")

    def topic(self, name: str) -> str:
        """A Touchpoint topic name, e.g. ``topic("dlq")`` -> ``touchpoint.dlq``; ``resolved`` and the state
        tables carry the version of the rules they were derived with (:data:`DERIVED_VERSION`)."""
        if name in _DERIVED_TOPICS:
            return f"{self.topic_prefix}.{name}.v{DERIVED_VERSION}"
        return f"{self.topic_prefix}.{name}"

    def stage_group(self, stage: str) -> str:
        """The consumer group of one worker stage (``ingest``, ``identity``, ``profile``).

        E.g. ``touchpoint.stage-identity``.

        One group per stage: a stage's consumers rebalance among themselves, never pausing the others,
        and its committed offsets say how far that stage got.
        """
        version = f".v{DERIVED_VERSION}" if stage in _REPROCESSING_STAGES else ""
        return f"{self.topic_prefix}.stage-{stage}{version}"


DERIVED_VERSION = 3
"""The version of identity's and the profile's rules that ``resolved`` and the state tables were derived with.

Bump it when a change to those rules makes what an earlier version derived disagree with what the new
stages decide (version 2: identity decides survivors and ids by event time, so the views an earlier
``resolved`` built carry ids the new identity does not use; version 3: guardrails decide in event time,
components resolved again and folded anew). The identity and profile stages then start
on new topics and consumer groups: identity reprocesses ``accepted`` from its beginning into the new
``resolved``, the profile folds that and re-emits the customer streams, which every projection takes
idempotently. The earlier version's topics can be deleted once the new stages have caught up.
"""
_DERIVED_TOPICS = frozenset({"resolved", "identity-state", "profile-state"})
_REPROCESSING_STAGES = frozenset({"identity", "profile"})


def load_settings(**overrides: object) -> Settings:
    """Build the settings from the environment, with explicit overrides on top."""
    return Settings(**overrides)  # type: ignore[arg-type]
