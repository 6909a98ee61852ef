"""`python -m extender` runs the command line."""

from extender.cli import main

raise SystemExit(main())
