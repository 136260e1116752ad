"""``python -m cbn``: the ``cbn`` command (see :mod:`cbn.lab.cli`)."""
import sys

from .lab.cli import main

if __name__ == "__main__":
    sys.exit(main())
