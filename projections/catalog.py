"""Which topics feed each projection and which tables it writes: the read model's catalogue.

Apart from :mod:`projections.run` so that the lag report, the rebuild and the checksum read it without
importing the writers' runner (which imports the lag report).
"""

from __future__ import annotations

PROJECTION_TOPICS = {"interactions": ["customer-events"], "customers": ["customer-views"], "loyalty": ["loyalty"],
                     "alerts": ["alerts.dormancy", "alerts.churn"]}
"""Each projection's topics (names without the prefix), for lag reports and rebuilds."""

READ_MODEL_TABLES = {"interactions": ["interactions"],
                     "customers": ["customers", "customer_aliases", "customer_identifiers"],
                     "loyalty": ["loyalty_ledger"], "alerts": ["alerts"]}
"""Each projection's tables: what a rebuild empties and a checksum covers (not ``projection_offsets``)."""


def read_model_tables() -> list[str]:
    """Every read-model table, in a fixed order."""
    return [table for tables in READ_MODEL_TABLES.values() for table in tables]
