"""Deprecated name of :mod:`cbn.lab.tables` (kept for one release; see cbn/_moved/__init__.py)."""
from cbn._moved import alias
from cbn.lab import tables

alias(__name__, tables)
