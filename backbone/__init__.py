"""The composition root: the ``touchpoint`` command line and the demo wire the other packages together.

Nothing imports this package (``python -m touchpoint`` and the console script only call into it): the
pure core and the contract at the bottom, the adapters (``streams``, ``projections``, ``connectors``) in
the middle, this on top. ``docs/architecture.md`` states the rule; ``tests/unit/test_layers.py`` checks it.
"""
