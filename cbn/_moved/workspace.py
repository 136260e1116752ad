"""Deprecated name of :mod:`cbn.architecture` (kept for one release; see cbn/_moved/__init__.py)."""
from cbn import architecture
from cbn._moved import alias

alias(__name__, architecture)
