"""cbn: k-layer fully connected networks with batch normalization, trained with mini-batch
SGD, cyclical learning rates and L2 regularization, on Cython kernels over BLAS.

Main entry points: ``Network``, ``CyclicLR``, ``fit``, ``gradcheck`` and ``cbn.data.load_cifar10``.
"""
# Load the OpenBLAS that cbn._ops links to (the scipy-openblas32 wheel) before anything imports
# _ops: in-place and editable builds find it only this way (see setup.py).
import scipy_openblas32  # noqa: F401

try:
    from . import _ops  # noqa: F401
except ImportError:
    import os as _os

    _here = _os.path.dirname(_os.path.abspath(__file__))
    if any(name.startswith("_ops.") and name.endswith((".so", ".pyd"))
           for name in _os.listdir(_here)):
        raise  # built, yet failing to load: the original error says why
    raise ImportError(
        f"you are importing cbn from its source tree ({_here}) without the compiled extension "
        "cbn._ops; run `pip install .` and start Python outside the source folder, or build "
        "in place with `python setup.py build_ext --inplace`") from None

from . import data, kernels, optim
from .augment import Augment
from .gradcheck import GradcheckResult, gradcheck
from .network import Network
from .schedule import ConstantLR, CosineAnnealingLR, CyclicLR, OneCycleLR
from .train import DivergenceError, History, TrainingInterrupted, fit
from .threads import share_pool as _share_pool

_share_pool()  # NumPy's OpenBLAS on cbn's threads (cbn.threads)

# The old names of the modules that moved into cbn.lab (cbn.search, cbn.plots, ...) resolve from
# this folder for one release (cbn/_moved/__init__.py); nothing there is imported here.
__path__.append(__path__[0] + "/_moved")

__version__ = "0.1.0"

__all__ = [
    "data", "kernels", "optim", "Augment", "Network", "CyclicLR", "ConstantLR", "CosineAnnealingLR",
    "OneCycleLR", "fit", "History", "DivergenceError", "TrainingInterrupted",
    "gradcheck", "GradcheckResult", "__version__",
]
