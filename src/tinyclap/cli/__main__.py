"""`python -m tinyclap.cli` (also what `torchrun -m tinyclap.cli distill ...` runs)."""

import sys

from tinyclap.cli import main

sys.exit(main())
