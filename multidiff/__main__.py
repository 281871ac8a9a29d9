"""``python -m multidiff ...`` (and ``torchrun ... -m multidiff train CONFIG``): the command line."""

import sys

from .cli import main

sys.exit(main())
