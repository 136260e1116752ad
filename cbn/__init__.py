"""cbn: k-layer fully connected networks with batch normalization, trained with mini-batch
SGD, cyclical learning rates and L2 regularization, on Cython kernels over BLAS.

Main entry points: ``Network``, ``CyclicLR``, ``fit``, ``gradcheck`` and ``cbn.data.load_cifar10``.
"""
# Load the OpenBLAS that cbn._ops links to (the scipy-openblas32 wheel) before anything imports
# _ops: in-place and editable builds find it only this way (see setup.py).
import scipy_openblas32  # noqa: F401

# The compiled core; from a source tree without it, cbn/_ops.py says how to build it.
from . import _ops  # noqa: F401

from . import data, ops, optim
from .augment import Augment, Mixup
from .ema import EMA
from .gradcheck import GradcheckResult, gradcheck
from .network import Network
from .schedule import ConstantLR, CosineAnnealingLR, CyclicLR, OneCycleLR
from .train import DivergenceError, History, TrainingInterrupted, fit
from .threads import share_pool as _share_pool

_share_pool()  # NumPy's OpenBLAS on cbn's threads (cbn.threads)

# The old names of the modules that moved into cbn.lab (cbn.search, cbn.plots, ...) or were
# renamed (cbn.kernels, cbn.workspace) resolve from this folder for one release
# (cbn/_moved/__init__.py); nothing there is imported here.
__path__.append(__path__[0] + "/_moved")


def __getattr__(name: str):
    """``cbn.kernels`` without importing it first: the old name of ``cbn.ops``."""
    if name in ("kernels", "workspace"):
        import importlib
        return importlib.import_module(f"cbn.{name}")  # warns (cbn/_moved)
    raise AttributeError(f"module 'cbn' has no attribute {name!r}")

__version__ = "0.1.0"

__all__ = [
    "data", "ops", "optim", "Augment", "Mixup", "EMA", "Network", "CyclicLR", "ConstantLR",
    "CosineAnnealingLR", "OneCycleLR", "fit", "History", "DivergenceError", "TrainingInterrupted",
    "gradcheck", "GradcheckResult", "__version__",
]
