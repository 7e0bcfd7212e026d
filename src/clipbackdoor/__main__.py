"""``python -m clipbackdoor`` (and ``torchrun -m clipbackdoor``) runs the command line."""

import sys

from clipbackdoor.cli import main

sys.exit(main())
