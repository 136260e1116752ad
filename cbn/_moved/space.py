"""Deprecated name of :mod:`cbn.lab.space` (kept for one release; see cbn/_moved/__init__.py)."""
from cbn._moved import alias
from cbn.lab import space

alias(__name__, space)
