"""``python -m cbn``: the ``cbn`` command (see :mod:`cbn.cli`)."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
