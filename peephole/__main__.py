"""`python -m peephole`: the client's CLI (also installed as `peephole`)."""

import sys

from peephole.cli import main

sys.exit(main())
