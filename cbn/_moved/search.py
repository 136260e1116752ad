"""Deprecated name of :mod:`cbn.lab.search` (kept for one release; see cbn/_moved/__init__.py)."""
from cbn._moved import alias
from cbn.lab import search

alias(__name__, search)
