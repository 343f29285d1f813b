"""``python -m touchpoint``: the same CLI as the ``touchpoint`` console script."""

from backbone.cli import main

main()
