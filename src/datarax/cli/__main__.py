"""``python -m datarax.cli``: the ``datarax`` command line (used by the demo's fresh process)."""

from datarax.cli import main

raise SystemExit(main())
