"""``python -m sage_ref``: the accuracy study (see :mod:`sage_ref.study`)."""

from .study import main

raise SystemExit(main())
