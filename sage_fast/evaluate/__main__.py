"""``python -m sage_fast.evaluate``: see :mod:`sage_fast.evaluate.run`."""

from .run import main

main()
