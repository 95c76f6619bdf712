"""``python -m ocrl.cli``, as torchrun launches the command, is the ``ocrl`` command."""

from ocrl.cli import main

raise SystemExit(main())
