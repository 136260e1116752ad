"""Deprecated name of :mod:`cbn.lab.cli` (kept for one release; see cbn/_moved/__init__.py)."""
from cbn._moved import alias
from cbn.lab import cli

alias(__name__, cli)
