"""Deprecated name of :mod:`cbn.lab.experiment` (kept for one release; see cbn/_moved/__init__.py)."""
from cbn._moved import alias
from cbn.lab import experiment

alias(__name__, experiment)
