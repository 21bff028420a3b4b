"""``python -m bench``: run every benchmark and print the table."""

from bench.cli import main

raise SystemExit(main())
