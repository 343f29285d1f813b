"""Adapters between Touchpoint and the outside, one package per concept.

``intake`` (the ways in), ``frontline`` (the lookup API and the agent page), ``operations`` (alerts,
the clock, privacy commands) and ``platform`` (registry, serde, topics, consumer batches, key store:
what the others and the stages stand on).
"""
