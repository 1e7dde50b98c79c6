"""``python -m atomlimit``: the same as the ``atomlimit`` command."""

import sys

from atomlimit._cli import main

sys.exit(main())
