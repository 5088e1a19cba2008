"""``python -m cnnkit``: the same entry point as the ``cnnkit`` command."""

from cnnkit.cli import main

raise SystemExit(main())
