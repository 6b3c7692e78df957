"""``python -m sage_fast.evaluate``: see ``sage_fast.evaluate.run``."""

from .run import main

main()
