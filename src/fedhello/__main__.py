"""``python -m fedhello``: the ``fedhello`` command (what ``fedhello sweep --jobs`` starts per cell)."""

from fedhello.cli import main

raise SystemExit(main())
