"""How every Kafka client of Touchpoint connects: the one place settings become client options.

Three client libraries meet Kafka here, and each wants the same facts in
its own shape:

* kafka-python (``KafkaConsumer``, ``KafkaProducer``, ``KafkaAdminClient``):
  file paths and a user name and password as keyword arguments;
* aiokafka (``AIOKafkaProducer``, ``AIOKafkaConsumer``, ``AIOKafkaClient``):
  the same keywords, but TLS as a ready :class:`ssl.SSLContext`;
* confluent-kafka (the stages' batch loops, :mod:`streams.batch`): librdkafka's
  dotted configuration names, TLS as file paths;
* Faust: one ``broker_credentials`` object (``faust.SASLCredentials`` or
  ``faust.SSLCredentials``) in the app's config, which its aiokafka transport
  hands to every producer and consumer it makes.

Each construction site adds ``**kafka_python_options(settings)`` (or the
aiokafka or Faust variant) to its own arguments and nothing else. With the
default ``PLAINTEXT`` the functions return nothing at all, so the local
stack's clients are built exactly as before.

The password leaves its :class:`~pydantic.SecretStr` only here, into the
returned mapping handed straight to the client, and even there it is a
:class:`Secret`: the string itself for the client's SCRAM code, but stars
wherever it is ``repr()``-ed. kafka-python's admin client logs its whole
configuration at DEBUG (``Starting KafkaAdminClient with configuration:
{...}``); a dict shows its values' ``repr``, so that line shows stars.
Still: never log these mappings on purpose.
"""

from __future__ import annotations

import ssl
from typing import Any

from touchpoint.settings import Settings


class Secret(str):
    """A secret handed to a client library: the value for every string operation, stars when ``repr()``-ed."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "'**********'"


def describe_connection(settings: Settings) -> str:
    """Where and how clients connect, for error messages: never a secret, always the user and protocol."""
    protocol = settings.kafka_security_protocol
    if protocol == "PLAINTEXT":
        return settings.kafka_bootstrap
    how: list[str] = [protocol]
    if protocol.startswith("SASL_"):
        how.append(f"{settings.kafka_sasl_mechanism} user {settings.kafka_sasl_username!r}")
    if settings.kafka_ssl_certfile is not None:
        how.append(f"client certificate {settings.kafka_ssl_certfile}")
    return f"{settings.kafka_bootstrap} ({', '.join(how)})"


def _tls(settings: Settings) -> bool:
    return settings.kafka_security_protocol in ("SSL", "SASL_SSL")


def _sasl(settings: Settings) -> dict[str, Any]:
    if not settings.kafka_security_protocol.startswith("SASL_"):
        return {}
    return {
        "sasl_mechanism": settings.kafka_sasl_mechanism,
        # Both libraries take SCRAM's credentials under the PLAIN mechanism's names.
        "sasl_plain_username": settings.kafka_sasl_username,
        "sasl_plain_password": Secret(settings.kafka_sasl_password.get_secret_value()),
    }


def ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """The TLS context for aiokafka and Faust, or None when the protocol has no TLS.

    The server's certificate and host name are always verified (against
    ``kafka_ssl_cafile``, else the system's CAs).
    """
    if not _tls(settings):
        return None
    from aiokafka.helpers import create_ssl_context

    key_password = settings.kafka_ssl_key_password
    return create_ssl_context(
        cafile=settings.kafka_ssl_cafile,
        certfile=settings.kafka_ssl_certfile,
        keyfile=settings.kafka_ssl_keyfile,
        password=Secret(key_password.get_secret_value()) if key_password is not None else None,
    )


def kafka_python_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for kafka-python's ``KafkaConsumer``, ``KafkaProducer`` and ``KafkaAdminClient``.

    Empty for ``PLAINTEXT``.
    """
    if settings.kafka_security_protocol == "PLAINTEXT":
        return {}
    options: dict[str, Any] = {"security_protocol": settings.kafka_security_protocol, **_sasl(settings)}
    if _tls(settings):
        options["ssl_check_hostname"] = True
        for option, path in (("ssl_cafile", settings.kafka_ssl_cafile), ("ssl_certfile", settings.kafka_ssl_certfile),
                             ("ssl_keyfile", settings.kafka_ssl_keyfile)):
            if path is not None:
                options[option] = str(path)
        if settings.kafka_ssl_key_password is not None:
            options["ssl_password"] = Secret(settings.kafka_ssl_key_password.get_secret_value())
    return options


def aiokafka_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for aiokafka's ``AIOKafkaProducer``, ``AIOKafkaConsumer`` and ``AIOKafkaClient``.

    Empty for ``PLAINTEXT``.
    """
    if settings.kafka_security_protocol == "PLAINTEXT":
        return {}
    options: dict[str, Any] = {"security_protocol": settings.kafka_security_protocol, **_sasl(settings)}
    context = ssl_context(settings)
    if context is not None:
        options["ssl_context"] = context
    return options


def confluent_options(settings: Settings) -> dict[str, Any]:
    """librdkafka configuration entries for confluent-kafka's ``Consumer`` and ``Producer``.

    Empty for ``PLAINTEXT``. librdkafka verifies the server's host name by default (``https``); it is set
    anyway so that a change of default cannot turn it off.
    """
    protocol = settings.kafka_security_protocol
    if protocol == "PLAINTEXT":
        return {}
    options: dict[str, Any] = {"security.protocol": protocol}
    if protocol.startswith("SASL_"):
        options.update({"sasl.mechanism": settings.kafka_sasl_mechanism,
                        "sasl.username": settings.kafka_sasl_username,
                        "sasl.password": Secret(settings.kafka_sasl_password.get_secret_value())})
    if _tls(settings):
        options["ssl.endpoint.identification.algorithm"] = "https"
        for option, path in (("ssl.ca.location", settings.kafka_ssl_cafile),
                             ("ssl.certificate.location", settings.kafka_ssl_certfile),
                             ("ssl.key.location", settings.kafka_ssl_keyfile)):
            if path is not None:
                options[option] = str(path)
        if settings.kafka_ssl_key_password is not None:
            options["ssl.key.password"] = Secret(settings.kafka_ssl_key_password.get_secret_value())
    return options


def faust_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for ``faust.App``: its ``broker_credentials``, or nothing for ``PLAINTEXT``."""
    import faust

    protocol = settings.kafka_security_protocol
    if protocol == "PLAINTEXT":
        return {}
    context = ssl_context(settings)
    if protocol == "SSL":
        assert context is not None
        return {"broker_credentials": faust.SSLCredentials(context)}
    # SASLCredentials says SASL_SSL exactly when it is given a TLS context.
    return {"broker_credentials": faust.SASLCredentials(
        username=settings.kafka_sasl_username,
        password=Secret(settings.kafka_sasl_password.get_secret_value()),
        ssl_context=context,
        mechanism=settings.kafka_sasl_mechanism,
    )}
