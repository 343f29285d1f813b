"""Secured connections as settings: what each client is given, and that no secret is ever shown.

Pure logic (no broker, no database): the settings object and the one module
that turns it into client options (``touchpoint/kafka_security.py``). The
real handshakes are in ``tests/integration/test_secured.py``.
"""

from __future__ import annotations

import ssl
import subprocess
from pathlib import Path

import faust
import pytest
from psycopg.conninfo import conninfo_to_dict
from pydantic import ValidationError

from touchpoint.kafka_security import aiokafka_options, describe_connection, faust_options, kafka_python_options
from touchpoint.settings import Settings, load_settings

PASSWORD = "pw-unit-8c1f2e"  # noqa: S105 - a test value


def sasl(**extra: object) -> Settings:
    given: dict[str, object] = {"kafka_security_protocol": "SASL_PLAINTEXT", "kafka_sasl_mechanism": "SCRAM-SHA-256",
                                "kafka_sasl_username": "svc-worker", "kafka_sasl_password": PASSWORD}
    return load_settings(**{**given, **extra})


def test_plaintext_default_gives_every_client_no_options_at_all() -> None:
    settings = load_settings()
    assert settings.kafka_security_protocol == "PLAINTEXT"
    assert kafka_python_options(settings) == {}
    assert aiokafka_options(settings) == {}
    assert faust_options(settings) == {}


def test_sasl_plaintext_options_for_each_client() -> None:
    settings = sasl()
    expected = {"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "SCRAM-SHA-256",
                "sasl_plain_username": "svc-worker", "sasl_plain_password": PASSWORD}
    assert kafka_python_options(settings) == expected
    assert aiokafka_options(settings) == expected
    credentials = faust_options(settings)["broker_credentials"]
    assert isinstance(credentials, faust.SASLCredentials)
    assert (credentials.protocol.value, credentials.mechanism.value) == ("SASL_PLAINTEXT", "SCRAM-SHA-256")
    assert (credentials.username, credentials.password) == ("svc-worker", PASSWORD)
    assert PASSWORD not in repr(credentials)


def test_options_show_stars_where_a_library_logs_them() -> None:
    # kafka-python's admin client logs its whole configuration at DEBUG: a dict shows its values' repr.
    for options in (kafka_python_options(sasl()), aiokafka_options(sasl())):
        assert PASSWORD not in repr(options) and PASSWORD not in str(options) and PASSWORD not in f"{options}"
        assert options["sasl_plain_password"].encode() == PASSWORD.encode()  # what SCRAM hashes


def test_connection_described_for_errors_names_user_and_protocol_never_the_password() -> None:
    assert describe_connection(load_settings()) == "127.0.0.1:19092"
    described = describe_connection(sasl(kafka_security_protocol="SASL_SSL"))
    assert described == "127.0.0.1:19092 (SASL_SSL, SCRAM-SHA-256 user 'svc-worker')"


@pytest.fixture(scope="module")
def pem(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A self-signed certificate and its key (openssl), enough to build a TLS context."""
    where = tmp_path_factory.mktemp("pem")
    cert, key = where / "cert.pem", where / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=test",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return {"cert": cert, "key": key}


def test_sasl_ssl_options_carry_a_verifying_tls_context_and_the_files(pem: dict[str, Path]) -> None:
    settings = sasl(kafka_security_protocol="SASL_SSL", kafka_ssl_cafile=pem["cert"],
                    kafka_ssl_certfile=pem["cert"], kafka_ssl_keyfile=pem["key"])
    python = kafka_python_options(settings)
    assert python["security_protocol"] == "SASL_SSL"
    assert (python["ssl_cafile"], python["ssl_certfile"], python["ssl_keyfile"]) == (
        str(pem["cert"]), str(pem["cert"]), str(pem["key"]))
    assert python["ssl_check_hostname"] is True
    aio = aiokafka_options(settings)
    assert aio["security_protocol"] == "SASL_SSL"
    context = aio["ssl_context"]
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    credentials = faust_options(settings)["broker_credentials"]
    assert credentials.protocol.value == "SASL_SSL"
    assert isinstance(credentials.ssl_context, ssl.SSLContext)


def test_ssl_with_a_client_certificate_gives_faust_ssl_credentials(pem: dict[str, Path]) -> None:
    settings = load_settings(kafka_security_protocol="SSL", kafka_ssl_cafile=pem["cert"],
                             kafka_ssl_certfile=pem["cert"], kafka_ssl_keyfile=pem["key"])
    python = kafka_python_options(settings)
    assert python["security_protocol"] == "SSL"
    assert "sasl_mechanism" not in python and "sasl_plain_password" not in python
    assert faust_options(settings)["broker_credentials"].protocol.value == "SSL"


def test_sasl_without_credentials_fails_at_start_naming_the_settings() -> None:
    with pytest.raises(ValidationError, match="TOUCHPOINT_KAFKA_SASL_USERNAME and TOUCHPOINT_KAFKA_SASL_PASSWORD"):
        load_settings(kafka_security_protocol="SASL_SSL", kafka_sasl_username="svc")


@pytest.mark.parametrize("given", [
    # A misspelt name: pydantic would echo the value it refuses ("input_value=...").
    {"kafka_sasl_pasword": PASSWORD},
    {"pg_pasword": PASSWORD},
    {"kafka_security_protocol": "SASL_SSL", "kafka_sasl_password": PASSWORD, "pg_password": PASSWORD,
     "kafka_ssl_certfile": "/only/the/cert.pem"},
])
def test_a_refused_setting_never_echoes_the_password_given_with_it(given: dict[str, object]) -> None:
    with pytest.raises(ValidationError) as refused:
        load_settings(**given)
    assert PASSWORD not in str(refused.value)
    assert PASSWORD not in repr(refused.value)


def test_settings_never_show_their_secrets() -> None:
    settings = sasl(pg_password=PASSWORD + "-pg", kafka_ssl_key_password=PASSWORD + "-key")
    for shown in (repr(settings), str(settings), settings.model_dump_json(), str(settings.model_dump())):
        assert PASSWORD not in shown


def test_environment_variables_configure_the_secured_connections(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {"KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
                        "KAFKA_SASL_USERNAME": "svc", "KAFKA_SASL_PASSWORD": PASSWORD,
                        "PG_SSLMODE": "verify-full", "PG_SSLROOTCERT": "/etc/touchpoint/pg-ca.pem"}.items():
        monkeypatch.setenv(f"TOUCHPOINT_{name}", value)
    settings = load_settings()
    assert settings.kafka_sasl_mechanism == "SCRAM-SHA-512"
    assert settings.kafka_sasl_password.get_secret_value() == PASSWORD
    assert conninfo_to_dict(settings.pg_conninfo())["sslmode"] == "verify-full"


def test_pg_conninfo_carries_the_tls_parameters() -> None:
    settings = load_settings(pg_sslmode="verify-full", pg_sslrootcert="/etc/touchpoint/pg-ca.pem",
                             pg_sslcert="/etc/touchpoint/client.pem", pg_sslkey="/etc/touchpoint/client.key")
    params = conninfo_to_dict(settings.pg_conninfo("postgres"))
    assert params["sslmode"] == "verify-full"
    assert params["sslrootcert"] == "/etc/touchpoint/pg-ca.pem"
    assert params["sslcert"] == "/etc/touchpoint/client.pem"
    assert params["sslkey"] == "/etc/touchpoint/client.key"
    assert params["dbname"] == "postgres"


def test_pg_conninfo_without_tls_settings_is_as_before() -> None:
    params = conninfo_to_dict(load_settings().pg_conninfo())
    assert not {"sslmode", "sslrootcert", "sslcert", "sslkey"} & params.keys()


def test_pg_client_certificate_needs_its_key() -> None:
    with pytest.raises(ValidationError, match="TOUCHPOINT_PG_SSLCERT and TOUCHPOINT_PG_SSLKEY go together"):
        load_settings(pg_sslcert="/etc/touchpoint/client.pem")


def test_the_local_registry_logs_in_to_a_secured_kafka_as_the_settings_say(pem: dict[str, Path]) -> None:
    from touchpoint.stack.registry import kafka_client_properties

    assert kafka_client_properties(load_settings()) == []
    lines = kafka_client_properties(sasl(kafka_security_protocol="SASL_SSL", kafka_ssl_cafile=pem["cert"]))
    assert "apicurio.kafka.common.security.protocol=SASL_SSL" in lines
    assert "apicurio.kafka.common.sasl.mechanism=SCRAM-SHA-256" in lines
    assert ("apicurio.kafka.common.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule "
            f'required username="svc-worker" password="{PASSWORD}";') in lines
    assert f"apicurio.kafka.common.ssl.truststore.location={pem['cert']}" in lines
