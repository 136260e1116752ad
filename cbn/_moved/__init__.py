"""The old names of the modules that moved into :mod:`cbn.lab` or were renamed
(``cbn.kernels``: :mod:`cbn.ops`; ``cbn.workspace``: :mod:`cbn.architecture`), kept for one
release.

``cbn/__init__.py`` appends this folder to ``cbn.__path__``, so ``import cbn.search`` finds
``search.py`` here, which warns once (DeprecationWarning) and puts the moved module in its place:
``cbn.search`` *is* ``cbn.lab.search``, so attributes set on either are seen through both. Nothing
here is imported by ``import cbn``; only importing an old name loads the lab module it names.
Each imports its module statically, so import tools see the arrow from the library's
namespace up to the lab; the import contract (pyproject.toml, ``[tool.importlinter]``) puts
this package beside ``cbn.__main__`` above the lab, as the one way from a library name up.
"""
import sys
import warnings
from types import ModuleType


def alias(old: str, module: ModuleType) -> None:
    """Make module ``old`` (being imported from this folder) the moved ``module``, with a
    warning."""
    name = "cbn." + old.rsplit(".", 1)[-1]
    warnings.warn(f"{name} is deprecated and goes in the next release; import "
                  f"{module.__name__} instead", DeprecationWarning,
                  stacklevel=3)  # the importing line (warnings skips importlib's frames)
    sys.modules[name] = module
    sys.modules[old] = module

