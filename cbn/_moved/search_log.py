"""Deprecated name of :mod:`cbn.lab.search_log` (kept for one release; see cbn/_moved/__init__.py)."""
from cbn._moved import alias
from cbn.lab import search_log

alias(__name__, search_log)
