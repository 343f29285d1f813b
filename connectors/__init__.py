"""Adapters between Touchpoint and the outside: Kafka topics, producers, registry client."""
