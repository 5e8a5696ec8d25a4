"""``python -m lighthouse_store`` is the ``lighthouse-store`` command."""

from lighthouse_store.cli import main

raise SystemExit(main())
