"""``python -m sage_ref``: the accuracy study (see ``sage_ref.study``)."""

from .study import main

raise SystemExit(main())
