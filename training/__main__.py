"""`python -m training ...` (the same as the `peephole-train` console script): see cli.py."""

import sys

from training.cli import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
