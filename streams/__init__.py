"""Faust stream processors: thin agents around the pure core.

An agent loops, decodes, calls the core, writes its table and emits; the
decisions live in :mod:`touchpoint.core`.
"""
