"""`python -m esper ...`: the same command as `esper ...` (handy where scripts are not on PATH)."""

import sys

from esper.cli import main

sys.exit(main())
