"""``python -m multidiff.cli ...``: the command line (as ``python -m multidiff``)."""

import sys

from . import main

sys.exit(main())
