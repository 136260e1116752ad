"""Deprecated name of :mod:`cbn.lab.options` (kept for one release; see cbn/_moved/__init__.py)."""
from cbn._moved import alias
from cbn.lab import options

alias(__name__, options)
