"""Deprecated name of :mod:`cbn.lab.search_log` (kept for one release; see cbn/_moved/__init__.py)."""
from cbn._moved import alias

alias(__name__, "cbn.lab.search_log")
