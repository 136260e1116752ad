"""Deprecated name of :mod:`cbn.lab.report` (kept for one release; see cbn/_moved/__init__.py)."""
from cbn._moved import alias
from cbn.lab import report

alias(__name__, report)
