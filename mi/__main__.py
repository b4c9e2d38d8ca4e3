"""``python -m mi``: the ``mi`` command line (see :mod:`mi.cli`)."""

import sys

from mi.cli import main

if __name__ == "__main__":
    sys.exit(main())
