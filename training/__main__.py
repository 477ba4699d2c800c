"""`python -m training ...` (the same as the `peephole-train` console script): see cli.py."""

import sys

from training.cli import main

sys.exit(main())
