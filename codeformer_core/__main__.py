"""``python -m codeformer_core``: the same command line as the ``codeformer`` script."""
from __future__ import annotations

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
