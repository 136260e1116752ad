"""Deprecated name of :mod:`cbn.lab.plots` (kept for one release; see cbn/_moved/__init__.py)."""
from cbn._moved import alias
from cbn.lab import plots

alias(__name__, plots)
