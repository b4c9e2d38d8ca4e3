"""``python -m mi``: the ``mi`` command line (see :mod:`mi.cli`)."""

import sys

from mi.cli import command

if __name__ == "__main__":
    sys.exit(command())
