"""Stands in for the compiled core ``cbn._ops`` (built from ``_ops.pyx``) where it has not
been built: Python's import system prefers the extension module beside this file, so this
file runs only from a source tree without it, and says what to do.

It also gives the compiled core a name import tools can see: ``from . import _ops`` is an
arrow to this module, the bottom of the library (pyproject.toml, ``[tool.importlinter]``).
"""
import os

raise ImportError(
    f"you are importing cbn from its source tree ({os.path.dirname(os.path.abspath(__file__))}) "
    "without the compiled extension cbn._ops; run `pip install .` and start Python outside the "
    "source folder, or build in place with `python setup.py build_ext --inplace`")
