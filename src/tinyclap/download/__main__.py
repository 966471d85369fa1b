"""`python -m tinyclap.download KIND NAME` (the same as `tinyclap download KIND NAME`)."""

import sys

from tinyclap.cli.download import main

sys.exit(main())
