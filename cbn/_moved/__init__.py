"""The old names of the modules that moved into :mod:`cbn.lab`, kept for one release.

``cbn/__init__.py`` appends this folder to ``cbn.__path__``, so ``import cbn.search`` finds
``search.py`` here, which warns once (DeprecationWarning) and puts the moved module in its place:
``cbn.search`` *is* ``cbn.lab.search``, so attributes set on either are seen through both. Nothing
here is imported by ``import cbn``; only importing an old name loads the lab module it names.
The import contract (pyproject.toml, ``[tool.importlinter]``) lists these modules as the one
allowed way from the library's names up to the lab.
"""
import importlib
import sys
import warnings


def alias(old: str, new: str) -> None:
    """Make module ``old`` (being imported from this folder) the module ``new``, with a warning."""
    name = "cbn." + old.rsplit(".", 1)[-1]
    module = importlib.import_module(new)
    warnings.warn(f"{name} is deprecated and goes in the next release; import {new} instead",
                  DeprecationWarning, stacklevel=3)  # the importing line (warnings skips importlib)
    sys.modules[name] = module
    sys.modules[old] = module

