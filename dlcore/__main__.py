"""``python -m dlcore``: the ``dlcore`` command without the console script."""

from .cli import main

raise SystemExit(main())
