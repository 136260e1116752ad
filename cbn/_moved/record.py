"""Deprecated name of :mod:`cbn.lab.record` (kept for one release; see cbn/_moved/__init__.py)."""
from cbn._moved import alias
from cbn.lab import record

alias(__name__, record)
