"""`python -m cifarlab` (also `torchrun -m cifarlab`)."""

import sys

from .cli import main

sys.exit(main())
