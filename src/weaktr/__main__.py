"""``python -m weaktr`` is the CLI (also under torchrun)."""

from weaktr.cli import main

raise SystemExit(main())
