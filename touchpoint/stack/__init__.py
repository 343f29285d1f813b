"""The local default stack: Kafka (KRaft), PostgreSQL and a schema registry.

``touchpoint stack up | down | status | logs`` drive it. Every component is
a :class:`~touchpoint.stack.process.Component`: it knows how to prepare
itself (fetch jars, format storage, init a cluster), the argv that runs it,
and how to tell that it is ready. Only processes started here are ever
stopped (pid files under the stack's home), and ``up`` run twice finds them
already running.
"""
