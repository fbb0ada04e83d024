"""``python -m nnsight_remote serve MODEL ... | keygen ...`` (see :mod:`nnsight_remote.serve`)."""

import sys

from .serve import main

if __name__ == "__main__":
    sys.exit(main())
