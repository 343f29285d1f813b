"""Touchpoint: an event-sourced omnichannel customer-interaction backbone.

This package holds the pure core (domain logic with no I/O) and the glue
(settings, errors, logging, telemetry, CLI, composition root). Kafka,
Faust and PostgreSQL adapters live in the sibling packages ``streams``,
``connectors`` and ``projections``.
"""

__version__ = "0.1.0"
