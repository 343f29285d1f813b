"""Adapters between Touchpoint and the outside, one package per concept.

``intake`` (the ways in), ``frontline`` (the lookup API and the agent page), ``operations`` (alerts for
people, the clock, privacy commands) and ``platform`` (registry, the serdes of events and alerts, the
log's control records, topics, consumer batches, key store: what the others and the stages stand on).
No stage or projection imports ``operations``.
"""
