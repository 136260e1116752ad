"""Deprecated name of :mod:`cbn.ops` (kept for one release; see cbn/_moved/__init__.py)."""
from cbn import ops
from cbn._moved import alias

alias(__name__, ops)
