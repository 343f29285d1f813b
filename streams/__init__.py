"""The worker's stream processors: thin stages around the pure core, run by a Faust app.

A stage takes a batch, calls the core, emits, and writes its table (:mod:`streams.batch`); the
decisions live in :mod:`touchpoint.core`.
"""
