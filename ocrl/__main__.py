"""``python -m ocrl`` is the ``ocrl`` command."""

from ocrl.cli import main

raise SystemExit(main())
