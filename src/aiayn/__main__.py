"""``python -m aiayn`` (and ``torchrun -m aiayn``) runs the command line."""

import sys

from aiayn.cli import main

sys.exit(main())
