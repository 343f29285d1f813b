"""``python -m touchpoint``: the same CLI as the ``touchpoint`` console script."""

from touchpoint.cli import main

main()
