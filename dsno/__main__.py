"""`python -m dsno ...` (and `torchrun -m dsno ...`) is the `dsno` command."""

import sys

from .cli import main

sys.exit(main())
