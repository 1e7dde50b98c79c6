"""``python -m atomlimit``: the same as the ``atomlimit`` command."""

import sys

from atomlimit.cli import main

sys.exit(main())
