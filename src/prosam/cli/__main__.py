"""``python -m prosam.cli``."""

import sys

from prosam.cli import main

sys.exit(main())
