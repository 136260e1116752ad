"""Gather the examples' results folders (default results/*) into one REPORT.md, next to the
numbers the course and the original report published. Same as the ``cbn-report`` command.

    python examples/report.py [--results results] [--out results/REPORT.md]
"""
from __future__ import annotations

import sys

from cbn.lab.report import main

if __name__ == "__main__":
    sys.exit(main())
